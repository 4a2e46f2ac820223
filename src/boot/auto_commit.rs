//! `liverestore auto-commit`: the restored system's side of `customize
//! --auto-commit` ([`crate::customize::auto_commit`] put it there). Run by
//! its systemd unit after the boot: the health check is tried every
//! [`RETRY`] until it passes, then the trial is committed (as
//! `liverestore commit`) and the unit, its settings and this program's
//! copy are removed; if it does not pass in time, the machine reboots,
//! and the one-shot trial being over, the old system starts.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::boot::activate::{self, Committed};
use crate::customize::auto_commit::{self as installed, Settings};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::store::state_dir::StateDir;

/// Time between two runs of the health check.
pub const RETRY: Duration = Duration::from_secs(5);

/// A commit made by the health check.
#[derive(Debug, Serialize)]
pub struct AutoCommitted {
    pub health: String,
    /// Runs of the check, and seconds from the start to the passing one.
    pub checks: u32,
    pub passed_after_secs: u64,
    pub committed: Committed,
    /// The files of the auto-commit removed from this system.
    pub removed: Vec<String>,
}

/// Read the settings `customize` put at [`installed::SETTINGS`].
pub fn settings() -> Result<Settings> {
    let path = Path::new(installed::SETTINGS);
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io("read the auto-commit settings", e).with_path(path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(ErrorKind::Corrupt, "the auto-commit settings are not valid")
            .with_path(path)
            .with_source(e)
    })
}

/// Wait for the health check, then commit and remove the auto-commit; or
/// reboot when it does not pass within the settings' time.
pub fn run(state: &StateDir, progress: &dyn Progress) -> Result<AutoCommitted> {
    crate::stage::plan::require_root()?;
    let settings = settings()?;
    if !activate::booted_restored() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "this system was not started by liverestore: there is no trial to commit",
        ));
    }
    let start = Instant::now();
    let within = Duration::from_secs(settings.within_secs);
    let mut checks = 0;
    loop {
        checks += 1;
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &settings.health])
            .status()
            .map_err(|e| Error::io("run the health check", e))?;
        if status.success() {
            break;
        }
        if start.elapsed() + RETRY > within {
            progress.note(&format!(
                "the health check `{}` did not pass within {} s ({checks} runs, the last {status}): rebooting; the trial is over, the old system starts",
                settings.health, settings.within_secs
            ));
            crate::sys::power::reboot()?;
            return Err(Error::new(
                ErrorKind::InvalidState,
                "the health check did not pass: rebooting to the old system",
            ));
        }
        std::thread::sleep(RETRY);
    }
    let passed_after_secs = start.elapsed().as_secs();
    progress.note(&format!(
        "the health check passed after {passed_after_secs} s ({checks} runs): committing"
    ));
    let committed = activate::commit(&state.lock()?)?;
    let mut removed = Vec::new();
    for file in [
        installed::WANTS_PATH,
        installed::UNIT_PATH,
        installed::SETTINGS,
        installed::BINARY,
    ] {
        match std::fs::remove_file(file) {
            Ok(()) => removed.push(file.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => progress.note(&format!("could not remove {file}: {e}")),
        }
    }
    let _ = std::fs::remove_dir(installed::DIR);
    crate::sys::power::daemon_reload();
    Ok(AutoCommitted {
        health: settings.health,
        checks,
        passed_after_secs,
        committed,
        removed,
    })
}
