//! `export`: stream a staging out of the map into an ordinary archive file
//! (or a pipe), for offline or remote keeping of a warm standby or any
//! staged image. What `export` writes, `stage` takes back (with the SHA-256
//! file written next to it) and `verify` then accepts.
//!
//! The bytes are read from the raw disk through the re-derived map (as
//! `verify` reads them, several reads in flight) and each chunk is checked
//! against the BLAKE3 recorded while staging before it is written out:
//! nothing is exported that differs from what was staged. The reading runs
//! in the `idle` I/O class by default ([`crate::sys::io_priority`]), so the
//! running system's own I/O goes first.
//!
//! Formats ([`ExportFormat`]): the raw image compressed with zstd
//! ([`zstd_out`], multithreaded; zero runs compress to almost nothing), or
//! qcow2 ([`qcow2_out`], written by `imago`; all-zero clusters are left
//! unallocated). A file is written under a temporary name in the same
//! directory, synced and renamed into place only when it is complete, so a
//! failed export leaves nothing behind.
//!
//! Owns: reading a staging out and writing archive files. May not: write a
//! disk (it only reads one) or change a record.

pub mod qcow2_out;
pub mod zstd_out;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::DiskReader;
use crate::progress::Progress;
use crate::stage::{ChunkRun, staged, verify, zero_runs};
use crate::store::durable;
use crate::store::state_dir::StateDir;
use crate::sys::io_priority::{self, IoClass, IoPriority};

/// The archive formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// The raw image, compressed with zstd (`.img.zst`).
    RawZstd,
    /// A qcow2 image (uncompressed clusters; zero clusters unallocated).
    Qcow2,
}

/// Where the archive goes.
#[derive(Debug, Clone)]
pub enum ExportTarget {
    File(PathBuf),
    /// Standard output (raw+zstd only: qcow2 needs to seek).
    Stdout,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub target: ExportTarget,
    pub format: ExportFormat,
    /// zstd's level (1–19).
    pub level: i32,
    /// Read in the idle I/O class (the default) rather than the caller's.
    pub idle_io: bool,
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub name: String,
    /// The file written, or `-` for standard output.
    pub output: String,
    pub format: ExportFormat,
    /// The image's size (bytes read from the disk and checked).
    pub image_size: u64,
    /// Image bytes in all-zero 64 KiB runs (left unallocated in qcow2,
    /// compressed away in zstd).
    pub zero_bytes: u64,
    /// Zero bytes added after the image to fill its last 512-byte sector
    /// (qcow2 only: QEMU rounds a qcow2 size down to whole sectors). The
    /// SHA-256 is then the padded image's.
    pub padding: u64,
    /// The archive's own size in bytes.
    pub bytes_out: u64,
    /// SHA-256 of the image's bytes (what `stage` checks, not the
    /// archive file's own hash).
    pub sha256: String,
    /// The `sha256sum`-style file written next to the archive.
    pub sha256_file: Option<PathBuf>,
    /// The I/O class the reads ran in, as the kernel reported it.
    pub io_priority: String,
    pub seconds: f64,
}

/// Where the bytes of one export go, in image order.
pub trait ArchiveWriter {
    /// Append the image's bytes at `offset` (always the next ones);
    /// `runs` splits them into data and all-zero runs of whole
    /// [`crate::stage::ZERO_GRAIN`]s, as staging splits them.
    fn write(&mut self, offset: u64, bytes: &[u8], runs: &[ChunkRun]) -> Result<()>;
    /// Finish the archive (trailers, tables) and make it durable; its size.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Export staging `name` as `opts` says.
pub fn export(
    state: &StateDir,
    name: &str,
    opts: &ExportOptions,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let rec = state.load(name)?;
    verify::check_verifiable(&rec)?;
    if opts.format == ExportFormat::Qcow2 && matches!(opts.target, ExportTarget::Stdout) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "qcow2 cannot be streamed (its tables are written last): give --output FILE, or export raw+zstd to `-`",
        ));
    }
    let partial = match &opts.target {
        ExportTarget::File(path) => Some(PartialFile::new(path)?),
        ExportTarget::Stdout => None,
    };
    // The reads run on a thread of their own in the chosen I/O class (the
    // readers it starts inherit it); the caller's class is left alone.
    std::thread::scope(|s| {
        s.spawn(|| export_in_class(&rec, opts, partial, progress))
            .join()
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Io,
                    "the export thread ended unexpectedly",
                ))
            })
    })
}

fn export_in_class(
    rec: &crate::store::record::StagingRecord,
    opts: &ExportOptions,
    partial: Option<PartialFile>,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let started = Instant::now();
    if opts.idle_io {
        io_priority::set_current(IoPriority(IoClass::Idle))?;
    }
    let io_class = io_priority::current()?.describe();
    let checked = staged::revalidate(rec)?;
    let align = checked.target.io_align();
    let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
    verify::check_header(rec, &reader, align)?;

    // QEMU reads a qcow2 image's size in whole sectors (rounded down):
    // the image is padded with zeros to the next one, and the SHA-256
    // (the report's and the file's) is the padded image's, which is what
    // `stage` of the qcow2 gets.
    let padding = match opts.format {
        ExportFormat::Qcow2 => rec.image.size.next_multiple_of(512) - rec.image.size,
        ExportFormat::RawZstd => 0,
    };
    let mut out: Box<dyn ArchiveWriter> = match (&opts.format, &partial) {
        (ExportFormat::RawZstd, Some(p)) => Box::new(zstd_out::ZstdWriter::new(
            p.create()?,
            rec.image.size,
            opts.level,
            Some(&p.temp),
        )?),
        (ExportFormat::RawZstd, None) => Box::new(zstd_out::ZstdWriter::new(
            std::io::stdout(),
            rec.image.size,
            opts.level,
            None,
        )?),
        (ExportFormat::Qcow2, Some(p)) => Box::new(qcow2_out::Qcow2Writer::create(
            &p.temp,
            rec.image.size + padding,
        )?),
        (ExportFormat::Qcow2, None) => unreachable!("refused above"),
    };
    let mut sha = Sha256::new();
    let mut zero_bytes = 0u64;
    let recorded = &rec.image.chunk_blake3;
    verify::read_image_chunks(
        rec,
        &reader,
        align,
        "export",
        progress,
        |index, bytes, blake3| {
            if recorded.get(index as usize) != Some(&blake3) {
                return Err(Error::new(
                    ErrorKind::VerifyFailed,
                    format!(
                        "chunk {index} of '{}' on the disk differs from what was staged: nothing exported; run `liverestore verify {}`",
                        rec.name, rec.name
                    ),
                ));
            }
            sha.update(bytes);
            let runs = zero_runs(bytes);
            zero_bytes += runs
                .iter()
                .filter(|r| r.zero)
                .map(|r| r.len as u64)
                .sum::<u64>();
            out.write(index * rec.image.chunk_size, bytes, &runs)
        },
    )?;
    let staged_sha256 = hex::encode(sha.clone().finalize());
    if let Some(recorded) = &rec.image.sha256
        && *recorded != staged_sha256
    {
        return Err(Error::new(
            ErrorKind::VerifyFailed,
            format!(
                "'{}' read back with SHA-256 {staged_sha256}, but {recorded} is recorded: nothing exported",
                rec.name
            ),
        ));
    }
    sha.update(vec![0u8; padding as usize]);
    let sha256 = hex::encode(sha.finalize());
    let bytes_out = out.finish()?;
    let (output, sha256_file) = match partial {
        Some(p) => {
            let file = p.commit()?;
            let sums = write_sha256_file(&file, &sha256, opts.format, &rec.name)?;
            (file.display().to_string(), Some(sums))
        }
        None => ("-".to_string(), None),
    };
    Ok(ExportReport {
        name: rec.name.clone(),
        output,
        format: opts.format,
        image_size: rec.image.size,
        zero_bytes,
        padding,
        bytes_out,
        sha256,
        sha256_file,
        io_priority: io_class,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// An archive file being written: a temporary name beside the final one,
/// removed unless [`PartialFile::commit`] renamed it into place.
struct PartialFile {
    path: PathBuf,
    temp: PathBuf,
    committed: bool,
}

impl PartialFile {
    fn new(path: &Path) -> Result<PartialFile> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "{} exists: remove it or choose another --output",
                    path.display()
                ),
            )
            .with_path(path));
        }
        let file_name = path.file_name().ok_or_else(|| {
            Error::new(ErrorKind::InvalidState, "--output must name a file").with_path(path)
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("{} is not a directory", dir.display()),
            )
            .with_path(&dir));
        }
        let temp = dir.join(format!(
            ".{}.partial-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        Ok(PartialFile {
            path: path.to_path_buf(),
            temp,
            committed: false,
        })
    }

    fn create(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.temp)
            .map_err(|e| Error::io("create the export file", e).with_path(&self.temp))
    }

    /// Rename the (synced) temporary file into place and sync the
    /// directory; the final path.
    fn commit(mut self) -> Result<PathBuf> {
        // Never over a file that appeared meanwhile (one atomic rename).
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(
            cwd,
            &self.temp,
            cwd,
            &self.path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{} appeared while exporting: not replaced",
                        self.path.display()
                    ),
                )
                .with_path(&self.path));
            }
            Err(e) => {
                return Err(
                    Error::io("rename the export into place", e.into()).with_path(&self.path)
                );
            }
        }
        self.committed = true;
        durable::sync_parent(&self.path)?;
        Ok(self.path.clone())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The name the SHA-256 line gives the image: the archive's name without
/// `.zst` (the bytes the hash is of), or the staging's name for qcow2.
fn image_name(archive: &Path, format: ExportFormat, staging: &str) -> String {
    let file = archive
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match format {
        ExportFormat::RawZstd => file
            .strip_suffix(".zst")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{staging}.img")),
        ExportFormat::Qcow2 => format!("{staging}.img"),
    }
}

/// Write `ARCHIVE.sha256` durably: the image's SHA-256 in `sha256sum`
/// style, which `stage ARCHIVE` finds and checks (it hashes the image it
/// stages, not the archive file).
fn write_sha256_file(
    archive: &Path,
    sha256: &str,
    format: ExportFormat,
    staging: &str,
) -> Result<PathBuf> {
    let path = PathBuf::from(format!("{}.sha256", archive.display()));
    let line = format!("{sha256}  {}\n", image_name(archive, format, staging));
    durable::replace_file(&path, line.as_bytes(), 0o644)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_line_names_the_image_not_the_archive() {
        let z = ExportFormat::RawZstd;
        assert_eq!(image_name(Path::new("/a/web.img.zst"), z, "web"), "web.img");
        assert_eq!(image_name(Path::new("web.raw"), z, "web"), "web.img");
        assert_eq!(
            image_name(Path::new("/x/web.qcow2"), ExportFormat::Qcow2, "web"),
            "web.img"
        );
    }

    #[test]
    fn a_partial_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.zst");
        let p = PartialFile::new(&path).unwrap();
        let temp = p.temp.clone();
        p.create().unwrap();
        assert!(temp.exists());
        drop(p);
        assert!(!temp.exists() && !path.exists());

        let p = PartialFile::new(&path).unwrap();
        std::fs::write(&p.temp, b"x").unwrap();
        assert_eq!(p.commit().unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        let e = PartialFile::new(&path).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
    }
}
