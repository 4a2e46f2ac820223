//! The command line: the clap definitions and one function per command
//! (`XArgs::run`), each returning a typed, `Serialize` report that the one
//! renderer ([`output`]) prints as text or as the JSON envelope every
//! command shares. `src/main.rs` only calls [`main`].
//!
//! The files follow the library's folders: [`stage`] (plan, stage, list,
//! info, verify, map, discard, scan, adopt), [`export`], [`standby`] (snapshot), [`attach`] (attach, detach,
//! test-restore, customize), [`boot`] (activate, status, commit, rollback,
//! initrd).

pub mod args;
pub mod attach;
pub mod boot;
pub mod ddi;
pub mod docs;
pub mod export;
pub mod output;
pub mod stage;
pub mod standby;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::error::Result;
use crate::progress::{JsonProgress, NoProgress, Progress, Tee, TerminalProgress};
use crate::store::state_dir::{DEFAULT_STATE_DIR, StateDir};
use output::{Report, render, render_error};

/// The exit codes, as `--help` shows them; `docs/` and the README list
/// the same (a unit test checks every error kind is here).
pub const EXIT_CODES: &str = "\
Exit codes:
   0  success
   1  unexpected internal error (a bug: please report it)
   2  usage error
  10  not root
  11  unsupported filesystem (btrfs, tmpfs, overlay, network, …)
  12  unsupported device (LUKS, md RAID, LVM other than linear, kernel refuses disk writes)
  13  not enough free space
  14  bad image (missing, unreadable, truncated, longer than announced)
  15  invalid name
  16  name already in use
  17  no such staged image
  18  map changed since staging (file replaced, moved, unpinned)
  19  corrupt state file or on-disk header
  20  verification failed (data on disk differs from the recorded hashes;
      a test-restore that failed)
  21  busy: another liverestore holds the lock
  22  invalid state for this operation (e.g. resuming a complete image)
  23  I/O error
  24  the kernel lacks what is needed (device-mapper, loop, FUSE)
  25  no boot loader to drive (no writable efivarfs, no usable GRUB)
  26  signature rejected (bad signature, unknown, expired or revoked key,
      not a signature file)
  27  the machine's policy forbids it (an unsigned staging under
      require_signature)";

/// Restore a disk or partition image onto the disk the running Linux
/// system lives on, while it keeps running.
///
/// The image is written into the pinned extents of an ordinary file (the
/// container) of a mounted ext4, xfs, vfat or btrfs filesystem (on a
/// partition or a linear LVM volume), straight through the whole-disk device. The host filesystem never sees the data and stays
/// intact; every write is checked against the container's map. Then the
/// image is booted once as a trial, and kept (commit) or not (rollback).
///
/// Typical use:
///   liverestore plan root.img --dir /var/tmp        # what would happen
///   liverestore stage root.img --name web --dir /var/tmp
///   liverestore test-restore web                     # fsck + mount a throw-away copy
///   liverestore activate web                         # boot it next time, once
///   liverestore commit                               # (in the restored system) keep it
///   liverestore rollback                             # or go back
#[derive(Parser, Debug)]
#[command(name = "liverestore", version, verbatim_doc_comment, after_help = EXIT_CODES)]
pub struct Cli {
    /// Where records of staged images are kept.
    #[arg(long, global = true, env = "LIVERESTORE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Machine-readable output: JSON lines on stdout (progress and note
    /// events, then one result or error object with "ok"; see
    /// docs/json-output.md).
    #[arg(long, global = true)]
    pub json: bool,

    /// Keep PATH up to date in the Prometheus text format that
    /// node_exporter's textfile collector reads (put it in the collector's
    /// directory, named *.prom): progress, bytes written, state, last
    /// success and exit code of each staging's operations, labelled by
    /// `name` and `operation`; written atomically when a command that
    /// changes something starts, every 2 s while it works, and when it
    /// ends. Other stagings' and operations' series in the file are kept.
    #[arg(
        long,
        global = true,
        env = "LIVERESTORE_METRICS_FILE",
        value_name = "PATH"
    )]
    pub metrics_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each one's help is its arguments' doc comment.
#[derive(Subcommand, Debug)]
pub enum Command {
    Plan(stage::PlanArgs),
    Stage(stage::StageArgs),
    List(stage::ListArgs),
    Info(stage::InfoArgs),
    Verify(stage::VerifyArgs),
    Map(stage::MapArgs),
    Discard(stage::DiscardArgs),
    Scan(stage::ScanArgs),
    Adopt(stage::AdoptArgs),
    Export(export::ExportArgs),
    Snapshot(standby::SnapshotArgs),
    Activate(boot::ActivateArgs),
    Ddi(ddi::DdiArgs),
    Status(boot::StatusArgs),
    Rollback(boot::RollbackArgs),
    Commit(boot::CommitArgs),
    AutoCommit(boot::AutoCommitArgs),
    HealthyBoot(boot::HealthyBootArgs),
    CountBoot(boot::CountBootArgs),
    Initrd(boot::InitrdArgs),
    Attach(attach::AttachArgs),
    Detach(attach::DetachArgs),
    TestRestore(attach::TestRestoreArgs),
    Customize(attach::CustomizeArgs),
    Completions(docs::CompletionsArgs),
    #[command(hide = true)]
    ServeImage(attach::ServeImageArgs),
    #[command(hide = true)]
    GenerateDocs(docs::GenerateDocsArgs),
}

impl Command {
    /// The staging this command acts on, as its metrics and journal
    /// entries name it (empty for what acts on the running system); None:
    /// a command that changes nothing writes neither.
    fn staging_label(&self) -> Option<String> {
        match self {
            Command::Stage(a) => Some(a.name.clone().unwrap_or_default()),
            Command::Verify(a) => Some(a.name.clone()),
            Command::Export(a) => Some(a.name.clone()),
            Command::Snapshot(a) => a.name.clone().or_else(|| a.refresh.clone()),
            Command::Discard(a) => Some(a.name.clone()),
            Command::Activate(a) => Some(a.name.clone()),
            Command::Attach(a) => Some(a.name.clone()),
            Command::Detach(a) => Some(a.name.clone()),
            Command::TestRestore(a) => Some(a.name.clone()),
            Command::Customize(a) => Some(a.name.clone()),
            Command::Commit(_)
            | Command::Rollback(_)
            | Command::AutoCommit(_)
            | Command::HealthyBoot(_)
            | Command::CountBoot(_) => Some(String::new()),
            _ => None,
        }
    }
}

/// What every command gets besides its arguments.
pub struct Context {
    pub state: StateDir,
    pub json: bool,
    pub progress: Box<dyn Progress>,
    /// Told how the command ended, before anything it does after its
    /// report (`activate --reboot`).
    pub observers: Observers,
}

/// What also hears how a command that changes something went: the
/// metrics file and the journal.
#[derive(Default)]
pub struct Observers {
    metrics: Option<std::sync::Arc<crate::metrics::MetricsFile>>,
    journal: Option<std::sync::Arc<crate::journal::Journal>>,
}

impl Observers {
    fn end(&self, code: u8) {
        if let Some(m) = &self.metrics {
            m.finish(code);
        }
        if let Some(j) = &self.journal {
            j.finish(code);
        }
    }
}

impl Context {
    fn new(state_dir: &std::path::Path, json: bool) -> Context {
        let progress: Box<dyn Progress> = if json {
            Box::new(JsonProgress::default())
        } else if rustix::termios::isatty(std::io::stderr()) {
            Box::new(TerminalProgress::default())
        } else {
            Box::new(NoProgress)
        };
        Context {
            state: StateDir::new(state_dir),
            json,
            progress,
            observers: Observers::default(),
        }
    }

    /// For a command that changes state: root, then the state directory's
    /// lock, held for the whole command and passed down to everything it
    /// calls (a second liverestore gets `busy` at once).
    pub fn lock(&self) -> Result<crate::store::state_dir::StateLock<'_>> {
        crate::stage::plan::require_root()?;
        self.state.lock()
    }

    /// [`Context::lock`] for a command that starts something new (`stage`,
    /// `discard`, `activate`): a trial that ended without a commit is
    /// cleaned up first, as `rollback` does, and a note says so.
    pub fn lock_after_ended_trial(&self) -> Result<crate::store::state_dir::StateLock<'_>> {
        let state = self.lock()?;
        crate::boot::activate::clean_up_ended_trial(&state, self.progress.as_ref())?;
        Ok(state)
    }
}

/// Run `args` and render what it reports (or its error); the exit code.
fn finish<R: Report>(name: &str, cx: &Context, report: Result<R>) -> u8 {
    match report {
        Ok(r) => {
            let code = render(name, cx.json, &r);
            // told before a reboot can cut the process short
            cx.observers.end(code);
            // The result line is out: an error now goes to stderr only.
            match r.after_render() {
                Ok(()) => code,
                Err(e) => {
                    let code = render_error(name, false, &e);
                    cx.observers.end(code);
                    code
                }
            }
        }
        Err(e) => {
            let code = render_error(name, cx.json, &e);
            cx.observers.end(code);
            code
        }
    }
}

/// Run one parsed command line; the process exit code.
pub fn run(cli: Cli, name: &str) -> u8 {
    let mut cx = Context::new(&cli.state_dir, cli.json);
    // What changes something is also told to the metrics file and the
    // journal, as it goes.
    let staging = cli.command.staging_label();
    let metrics = cli
        .metrics_file
        .as_deref()
        .zip(staging.as_deref())
        .map(|(path, staging)| {
            std::sync::Arc::new(crate::metrics::MetricsFile::start(path, staging, name))
        });
    let journal = staging
        .as_deref()
        .and_then(|staging| crate::journal::Journal::start(staging, name))
        .map(std::sync::Arc::new);
    let mut followers: Vec<Box<dyn Progress>> = Vec::new();
    if let Some(m) = &metrics {
        followers.push(Box::new(m.clone()));
    }
    if let Some(j) = &journal {
        followers.push(Box::new(j.clone()));
    }
    if !followers.is_empty() {
        followers.insert(0, std::mem::replace(&mut cx.progress, Box::new(NoProgress)));
        cx.progress = Box::new(Tee(followers));
    }
    cx.observers = Observers { metrics, journal };
    run_command(cli.command, name, &cx)
}

fn run_command(command: Command, name: &str, cx: &Context) -> u8 {
    match command {
        Command::Plan(a) => finish(name, cx, a.run(cx)),
        Command::Stage(a) => finish(name, cx, a.run(cx)),
        Command::List(a) => finish(name, cx, a.run(cx)),
        Command::Info(a) => finish(name, cx, a.run(cx)),
        Command::Verify(a) => finish(name, cx, a.run(cx)),
        Command::Map(a) => finish(name, cx, a.run(cx)),
        Command::Discard(a) => finish(name, cx, a.run(cx)),
        Command::Scan(a) => finish(name, cx, a.run(cx)),
        Command::Adopt(a) => finish(name, cx, a.run(cx)),
        Command::Export(a) => finish(name, cx, a.run(cx)),
        Command::Snapshot(a) => finish(name, cx, a.run(cx)),
        Command::Activate(a) => finish(name, cx, a.run(cx)),
        Command::Status(a) => finish(name, cx, a.run(cx)),
        Command::Ddi(a) => finish(name, cx, a.run(cx)),
        Command::Rollback(a) => finish(name, cx, a.run(cx)),
        Command::Commit(a) => finish(name, cx, a.run(cx)),
        Command::AutoCommit(a) => finish(name, cx, a.run(cx)),
        Command::HealthyBoot(a) => finish(name, cx, a.run(cx)),
        Command::CountBoot(a) => finish(name, cx, a.run(cx)),
        Command::Initrd(a) => finish(name, cx, a.run(cx)),
        Command::Attach(a) => finish(name, cx, a.run(cx)),
        Command::Detach(a) => finish(name, cx, a.run(cx)),
        Command::TestRestore(a) => finish(name, cx, a.run(cx)),
        Command::Customize(a) => finish(name, cx, a.run(cx)),
        Command::ServeImage(a) => finish(name, cx, a.run(cx)),
        Command::Completions(a) => finish(name, cx, a.run(cx)),
        Command::GenerateDocs(a) => finish(name, cx, a.run(cx)),
    }
}

/// The `liverestore` program: parse the arguments, run, render, exit. A
/// panic (a bug) exits 1, as documented, after its message.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let name = matches.subcommand_name().unwrap_or("").to_string();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match std::panic::catch_unwind(move || run(cli, &name)) {
        Ok(code) => ExitCode::from(code),
        Err(_) => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_error_kind_has_its_exit_code_documented() {
        for kind in crate::ErrorKind::ALL {
            let line = format!("\n  {}  ", kind.exit_code());
            assert!(EXIT_CODES.contains(&line), "{kind} ({line:?})");
        }
    }
}
