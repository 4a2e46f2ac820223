//! `export`: a staging out into an archive file or a pipe.

use std::path::PathBuf;

use super::Context;
use super::args::human_bytes;
use super::output::Report;
use crate::error::{Error, ErrorKind, Result};
use crate::export::{ExportFormat, ExportOptions, ExportReport, ExportTarget};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// The raw image compressed with zstd (stage takes `.zst` back).
    #[value(name = "raw-zstd", alias = "zstd")]
    RawZstd,
    /// qcow2: zero clusters left unallocated (needs a file, not `-`).
    Qcow2,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum IoPriorityArg {
    /// Only when the disk is otherwise idle (`ionice -c3`).
    Idle,
    /// Like any other process.
    Normal,
}

/// Stream a staged image out into an ordinary archive file.
///
/// For offline or remote keeping of a staging (a warm standby, a tested
/// restore): every byte is read from the disk through the map, checked
/// against the hashes recorded while staging (nothing is exported that
/// differs from what was staged) and written as the raw image compressed
/// with zstd, or as qcow2. The reads run in the idle I/O class by default,
/// so the running system's own I/O goes first (honoured by the BFQ and
/// mq-deadline schedulers).
///
/// The file is written under a temporary name beside FILE and renamed
/// when complete (a failed export leaves nothing); FILE.sha256 then holds
/// the SHA-256 of the image inside (not of the archive file), in
/// `sha256sum` style, so `stage FILE` checks it:
///   liverestore export web --output /srv/archive/web.img.zst
///   liverestore stage /srv/archive/web.img.zst --name web2 --dir /var/tmp
///   liverestore export web --output web.qcow2 --format qcow2
///   liverestore export web --output - | ssh backup 'cat > web.img.zst'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// The staging to export (complete, not being customized).
    pub(crate) name: String,
    /// The archive file to write (it must not exist), or `-` for standard
    /// output (raw-zstd only).
    #[arg(long, short, value_name = "FILE|-")]
    output: String,
    #[arg(long, value_enum, default_value = "raw-zstd")]
    format: FormatArg,
    /// zstd compression level (1 fastest … 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// I/O class of the disk reads.
    #[arg(long, value_enum, default_value = "idle")]
    io_priority: IoPriorityArg,
}

impl ExportArgs {
    pub fn run(self, cx: &Context) -> Result<ExportReport> {
        let target = if self.output == "-" {
            if cx.json {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "--output - sends the image to standard output, where --json would write too: give --output FILE, or leave out --json",
                ));
            }
            if rustix::termios::isatty(std::io::stdout()) {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "standard output is a terminal: redirect it, or give --output FILE",
                ));
            }
            ExportTarget::Stdout
        } else {
            ExportTarget::File(PathBuf::from(&self.output))
        };
        crate::stage::plan::require_root()?;
        let opts = ExportOptions {
            target,
            format: match self.format {
                FormatArg::RawZstd => ExportFormat::RawZstd,
                FormatArg::Qcow2 => ExportFormat::Qcow2,
            },
            level: self.level,
            idle_io: matches!(self.io_priority, IoPriorityArg::Idle),
        };
        crate::export::export(&cx.state, &self.name, &opts, cx.progress.as_ref())
    }
}

impl Report for ExportReport {
    fn print_text(&self) {
        // With `--output -` standard output carries the image.
        let text = format!(
            "'{}' exported to {} ({}): {} image ({} of it zeros) in {}, {:.1} s, I/O class {}\nsha256 {} (of the image){}",
            self.name,
            self.output,
            match self.format {
                ExportFormat::RawZstd => "raw, zstd",
                ExportFormat::Qcow2 => "qcow2",
            },
            human_bytes(self.image_size),
            human_bytes(self.zero_bytes),
            human_bytes(self.bytes_out),
            self.seconds,
            self.io_priority,
            self.sha256,
            self.sha256_file
                .as_ref()
                .map(|p| format!(", written to {}", p.display()))
                .unwrap_or_default()
        );
        if self.output == "-" {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}
