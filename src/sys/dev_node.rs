//! Device nodes: open a kernel control device (telling "this kernel lacks
//! it" from other failures), and wait for a new block device's node.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// Open the control device at `path` read-write. Missing, or a node with
/// no driver behind it (ENODEV, ENXIO: left by a tool on a kernel without
/// the feature): the kernel lacks the feature, and `missing` says what to
/// do ([`ErrorKind::KernelLacks`]).
pub fn open_control(path: &str, missing: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| {
            let no_driver = [rustix::io::Errno::NODEV, rustix::io::Errno::NXIO]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
            if e.kind() == std::io::ErrorKind::NotFound || no_driver {
                Error::new(ErrorKind::KernelLacks, missing)
            } else {
                Error::io("cannot open the control device", e).with_path(path)
            }
        })
}

/// The node of a new block device appears (devtmpfs, udev) shortly after.
pub fn wait_for(path: &Path) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} did not appear (no devtmpfs or udev?)", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
