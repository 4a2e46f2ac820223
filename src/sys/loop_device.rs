//! Loop devices: attach a file or a block device, find what one is
//! attached to, detach. Used to give device-mapper a handle on a disk that
//! a mounted filesystem already claims, and for overlay stores.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::dev_node;
use crate::sys::ioctl;

const CONTROL: &str = "/dev/loop-control";

/// An attached loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
}

/// How to attach.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    pub writable: bool,
    /// Detach by itself when the last user closes it (device-mapper holds
    /// it open while a table uses it).
    pub autoclear: bool,
    /// Bypass the backing's page cache (falls back to cached I/O when the
    /// backing refuses it).
    pub direct_io: bool,
}

impl LoopDevice {
    /// Attach `backing` to a free loop device. The returned file keeps the
    /// device open: with `autoclear`, the kernel detaches it as soon as the
    /// last opener closes it, so hold the file until its real user (a
    /// device-mapper table) has it open.
    pub fn attach(backing: &Path, opts: LoopOptions) -> Result<(LoopDevice, File)> {
        let control = dev_node::open_control(
            CONTROL,
            "this kernel has no loop devices (no /dev/loop-control; try `modprobe loop`)",
        )?;
        let file = OpenOptions::new()
            .read(true)
            .write(opts.writable)
            .open(backing)
            .map_err(|e| {
                Error::io("cannot open the loop device's backing", e).with_path(backing)
            })?;
        let mut flags = 0;
        if !opts.writable {
            flags |= ioctl::LO_FLAGS_READ_ONLY;
        }
        if opts.autoclear {
            flags |= ioctl::LO_FLAGS_AUTOCLEAR;
        }
        // Another process may take the free device between the two calls
        // (or one just detached may still be going away): then ask again,
        // a little later each time — up to about 6 s in all, so that
        // several tools attaching at once (losetup, snapd, another
        // liverestore) all get theirs.
        for attempt in 0..64u64 {
            let number = ioctl::loop_get_free(&control)
                .map_err(|e| Error::io("no free loop device", e.into()))?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            dev_node::wait_for(&path)?;
            let dev = OpenOptions::new()
                .read(true)
                .write(opts.writable)
                .open(&path)
                .map_err(|e| Error::io("cannot open the loop device", e).with_path(&path))?;
            let mut r = ioctl::loop_configure(
                &dev,
                &file,
                flags
                    | if opts.direct_io {
                        ioctl::LO_FLAGS_DIRECT_IO
                    } else {
                        0
                    },
            );
            if opts.direct_io && r == Err(rustix::io::Errno::INVAL) {
                r = ioctl::loop_configure(&dev, &file, flags);
            }
            match r {
                Ok(()) => return Ok((LoopDevice { number, path }, dev)),
                Err(e) if e == rustix::io::Errno::BUSY => {
                    std::thread::sleep(std::time::Duration::from_millis(5 * (attempt.min(20) + 1)));
                    continue;
                }
                Err(e) => {
                    return Err(
                        Error::io("cannot attach the loop device", e.into()).with_path(&path)
                    );
                }
            }
        }
        Err(Error::new(
            ErrorKind::Busy,
            "every free loop device was taken by someone else; try again",
        ))
    }

    /// The loop device at `path` (which must be one).
    pub fn open(path: &Path) -> Result<LoopDevice> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io("cannot stat the loop device", e).with_path(path))?;
        let major = rustix::fs::major(meta.rdev());
        if !meta.file_type().is_block_device() || major != 7 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("{} is not a loop device", path.display()),
            ));
        }
        Ok(LoopDevice {
            number: rustix::fs::minor(meta.rdev()),
            path: path.to_path_buf(),
        })
    }

    /// `MAJOR:MINOR`, as device-mapper tables name devices.
    pub fn dev_t(&self) -> String {
        format!("7:{}", self.number)
    }

    /// (device, inode) of the backing, or None if nothing is attached.
    pub fn backing(&self) -> Result<Option<(u64, u64)>> {
        let dev = File::open(&self.path)
            .map_err(|e| Error::io("cannot open the loop device", e).with_path(&self.path))?;
        match ioctl::loop_status(&dev) {
            Ok(info) => Ok(Some((info.lo_device, info.lo_inode))),
            Err(e) if e == rustix::io::Errno::NXIO => Ok(None),
            Err(e) => {
                Err(Error::io("cannot query the loop device", e.into()).with_path(&self.path))
            }
        }
    }

    /// Detach (the kernel defers it while the device is open).
    pub fn detach(&self) -> Result<()> {
        let dev = File::open(&self.path)
            .map_err(|e| Error::io("cannot open the loop device", e).with_path(&self.path))?;
        match ioctl::loop_clear(&dev) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::NXIO => Ok(()),
            Err(e) => {
                Err(Error::io("cannot detach the loop device", e.into()).with_path(&self.path))
            }
        }
    }
}
