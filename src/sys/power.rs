//! Restarting the machine, for `activate --reboot`.
//!
//! Through systemd when it runs (`systemctl reboot`: services stop,
//! filesystems are unmounted cleanly); otherwise (an initramfs, a
//! container-less minimal system) the filesystems are synced and the
//! kernel restarts at once (`reboot(2)`), as `reboot -f` does.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, ErrorKind, Result};

/// Whether systemd is the running init (its documented test).
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Have systemd read its unit files again, when it runs (a unit added or
/// removed). Best effort: a failure leaves the change for the next boot.
pub fn daemon_reload() {
    if systemd_runs() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
}

/// Restart the machine now. Returns only when that failed.
pub fn reboot() -> Result<()> {
    if systemd_runs() {
        let status = Command::new("systemctl")
            .arg("reboot")
            .status()
            .map_err(|e| Error::io("run systemctl reboot", e))?;
        return if status.success() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Io,
                format!("systemctl reboot failed ({status}): the trial is armed; reboot by hand"),
            ))
        };
    }
    rustix::fs::sync();
    rustix::system::reboot(rustix::system::RebootCommand::Restart)
        .map_err(|e| Error::io("reboot(2)", e.into()))
}
