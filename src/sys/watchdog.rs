//! The kernel's watchdog device, as the trial boot's deadline: the
//! early-boot step arms it and lets go of it without the magic close, so
//! it keeps counting and resets the machine when the deadline passes
//! (the one-shot boot entry is spent by then: the machine comes back on
//! the old system); `commit` disarms it (the magic close, `V`).
//!
//! Written here rather than with a crate: it is one device file, one
//! ioctl ([`crate::sys::ioctl::watchdog_set_timeout`]) and one byte.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// The first watchdog's device node.
pub const DEVICE: &str = "/dev/watchdog";

/// Arm the watchdog at `DEVICE` to reset the machine in `seconds` unless
/// someone disarms it; returns the seconds the driver took. Refused
/// (nothing armed) where it could never be disarmed again (`nowayout`).
pub fn arm(seconds: u32) -> Result<u32> {
    if nowayout() {
        return Err(Error::new(
            ErrorKind::KernelLacks,
            "the watchdog was built or loaded with nowayout: once armed it could never be disarmed by `commit`",
        ));
    }
    // devtmpfs makes the node as the driver registers: none now, none later
    if !Path::new(DEVICE).exists() {
        return Err(Error::new(
            ErrorKind::KernelLacks,
            "no watchdog: the kernel has none, and the image no softdog module",
        ));
    }
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(DEVICE)
        .map_err(|e| Error::io("open the watchdog", e).with_path(DEVICE))?;
    let took = crate::sys::ioctl::watchdog_set_timeout(&dev, seconds)
        .map_err(|e| Error::io("set the watchdog's timeout", e.into()).with_path(DEVICE))?;
    // a keepalive, so the deadline counts from now
    dev.write_all(b"\0")
        .map_err(|e| Error::io("ping the watchdog", e).with_path(DEVICE))?;
    // closed without 'V': the kernel says "watchdog did not stop!" and it
    // goes on counting
    drop(dev);
    Ok(took)
}

/// What [`disarm`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disarmed {
    /// It was counting; it is stopped now.
    Stopped,
    /// No watchdog device (nothing was armed).
    NoWatchdog,
}

/// Stop the watchdog armed by [`arm`] (the magic close). An error when
/// another program holds it open (systemd's `RuntimeWatchdogSec=`: it
/// then keeps it fed) or it will not stop.
pub fn disarm() -> Result<Disarmed> {
    let mut dev = match std::fs::OpenOptions::new().write(true).open(DEVICE) {
        Ok(dev) => dev,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Disarmed::NoWatchdog),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{DEVICE} is held open by another program (systemd's RuntimeWatchdogSec=?): it keeps the trial's watchdog fed, so the deadline no longer applies"
                ),
            ));
        }
        Err(e) => return Err(Error::io("open the watchdog", e).with_path(DEVICE)),
    };
    dev.write_all(b"V")
        .map_err(|e| Error::io("disarm the watchdog", e).with_path(DEVICE))?;
    drop(dev);
    if counting().is_some() {
        return Err(Error::new(
            ErrorKind::KernelLacks,
            format!("{DEVICE} did not stop after the magic close"),
        ));
    }
    Ok(Disarmed::Stopped)
}

/// Whether the loaded softdog (or the kernel's default) refuses to stop.
fn nowayout() -> bool {
    std::fs::read_to_string("/sys/module/softdog/parameters/nowayout")
        .is_ok_and(|v| matches!(v.trim(), "Y" | "1"))
}

/// Whether the first watchdog is counting, and the seconds it says are
/// left (`timeleft`, where the driver tells; None otherwise).
pub fn counting() -> Option<Option<u64>> {
    let dir = Path::new("/sys/class/watchdog/watchdog0");
    let state = std::fs::read_to_string(dir.join("state")).ok()?;
    if state.trim() != "active" {
        return None;
    }
    Some(
        std::fs::read_to_string(dir.join("timeleft"))
            .ok()
            .and_then(|t| t.trim().parse().ok()),
    )
}
