//! test-restore: "test my backup for real, then throw it away". Attach a
//! staged filesystem image through a throw-away overlay, check it with the
//! filesystem's own fsck (read-only), mount it, run a command against it,
//! and always take everything down again. The staged image is never
//! changed. Without device-mapper (no overlay) the test runs read-only.

use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;

use crate::attach::{self, AttachMode};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::state_dir::StateLock;

/// What a test-restore found.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub name: String,
    pub device: String,
    /// Mounted read-only (no device-mapper for an overlay here).
    pub read_only: bool,
    pub filesystem: Option<String>,
    /// The read-only fsck: command, exit status, clean or not.
    pub fsck_command: Option<String>,
    pub fsck_status: Option<i32>,
    pub fsck_clean: bool,
    pub mounted: bool,
    pub mount_error: Option<String>,
    pub command: Option<String>,
    pub command_status: Option<i32>,
    pub passed: bool,
}

/// The filesystem on `dev`, from its superblock magic.
pub fn detect_filesystem(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0x438, &[0x53, 0xef]) {
        return Some("ext4");
    }
    if at(0, b"XFSB") {
        return Some("xfs");
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if at(0x52, b"FAT32   ") || at(0x36, b"FAT16   ") || at(0x36, b"FAT12   ") {
        return Some("vfat");
    }
    None
}

/// The read-only check for `fs` on `dev`.
fn fsck_command(fs: &str, dev: &str) -> Vec<String> {
    let v: &[&str] = match fs {
        "ext4" => &["e2fsck", "-f", "-n"],
        "xfs" => &["xfs_repair", "-n"],
        "btrfs" => &["btrfs", "check", "--readonly"],
        "vfat" => &["fsck.vfat", "-n"],
        _ => &[],
    };
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.push(dev.to_string());
    v
}

/// The first bytes of `device`: enough for [`detect_filesystem`].
pub(crate) fn read_head(device: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; 0x10048];
    let f = std::fs::File::open(device)
        .op(|| "cannot open the attached device".into())
        .map_err(|e| e.with_path(device))?;
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    head.truncate(n);
    Ok(head)
}

/// Mount `device` (a filesystem of type `fs`) at `mnt`, creating it.
/// Read-only mounts skip journal replay (ext4 `noload`, xfs
/// `norecovery`): the device may not take writes at all.
pub(crate) fn mount(device: &str, fs: &str, mnt: &std::path::Path, read_only: bool) -> Result<()> {
    std::fs::create_dir_all(mnt)
        .op(|| "cannot create the mount point".into())
        .map_err(|e| e.with_path(mnt))?;
    let (flags, data) = if read_only {
        let data = match fs {
            "ext4" => Some(c"noload"),
            "xfs" => Some(c"norecovery"),
            _ => None,
        };
        (rustix::mount::MountFlags::RDONLY, data)
    } else {
        (rustix::mount::MountFlags::empty(), None)
    };
    rustix::mount::mount(device, mnt, fs, flags, data).map_err(|e| Error::from(e).with_path(mnt))
}

/// Mount `device` (a filesystem of type `fs`) read-write at `mnt`, run
/// `f` on the mount point, then write everything back (`syncfs`, which
/// reports errors) and unmount, also when `f` failed; `f`'s error first.
pub(crate) fn with_mounted_rw<T>(
    device: &str,
    fs: &str,
    mnt: &std::path::Path,
    f: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<T> {
    mount(device, fs, mnt, false)?;
    let out = f(mnt);
    let synced = std::fs::File::open(mnt)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(Into::into))
        .map_err(|e| Error::io("sync the attached filesystem", e).with_path(mnt));
    let unmounted = attach::unmount(mnt);
    let _ = std::fs::remove_dir(mnt);
    let out = out?;
    synced?;
    unmounted?;
    Ok(out)
}

/// Mount point for the test of a staging ([`StagingRecord::instance`]).
///
/// [`StagingRecord::instance`]: crate::store::record::StagingRecord::instance
fn mount_point(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/liverestore/test-{instance}"))
}

/// Attach `name` read-only, mount its filesystem read-only (no journal
/// replay), run `f` on the mount point, and take everything down again,
/// also on error.
pub fn with_mounted<T>(
    state: &StateLock<'_>,
    name: &str,
    f: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<T> {
    let instance = state.load(name)?.instance();
    let a = attach::attach(state, name, AttachMode::ReadOnly)?;
    let result = (|| {
        let fs = detect_filesystem(&read_head(&a.device)?).ok_or_else(|| {
            Error::new(
                ErrorKind::BadImage,
                format!("'{name}' holds no filesystem liverestore recognizes"),
            )
        })?;
        let mnt = PathBuf::from(format!("/run/liverestore/mount-{instance}"));
        mount(&a.device, fs, &mnt, true)?;
        let out = f(&mnt);
        attach::unmount(&mnt)?;
        let _ = std::fs::remove_dir(&mnt);
        out
    })();
    let down = attach::detach(state, name);
    let out = result?;
    down?;
    Ok(out)
}

/// Run the test; the attachment is always taken down, also on error.
pub fn test_restore(
    state: &StateLock<'_>,
    name: &str,
    command: Option<&str>,
) -> Result<TestReport> {
    let instance = state.load(name)?.instance();
    // Without device-mapper there is no overlay: test read-only instead
    // (the FUSE fallback), mounted without journal replay.
    let a = match attach::attach(state, name, AttachMode::Overlay) {
        Err(e) if e.kind() == ErrorKind::KernelLacks => {
            attach::attach(state, name, AttachMode::ReadOnly)?
        }
        other => other?,
    };
    let read_only = a.mode == AttachMode::ReadOnly;
    let result = run(name, &instance, &a.device, command, read_only);
    let down = attach::detach(state, name);
    let report = result?;
    down?;
    Ok(report)
}

fn run(
    name: &str,
    instance: &str,
    device: &str,
    command: Option<&str>,
    read_only: bool,
) -> Result<TestReport> {
    let fs = detect_filesystem(&read_head(device)?);
    let mut report = TestReport {
        name: name.to_string(),
        device: device.to_string(),
        read_only,
        filesystem: fs.map(str::to_string),
        fsck_command: None,
        fsck_status: None,
        fsck_clean: false,
        mounted: false,
        mount_error: None,
        command: command.map(str::to_string),
        command_status: None,
        passed: false,
    };
    let Some(fs) = fs else {
        report.mount_error = Some("no filesystem liverestore recognizes (ext4, xfs, btrfs, vfat); a whole-disk image must be staged split into partitions".into());
        return Ok(report);
    };
    let check = fsck_command(fs, device);
    report.fsck_command = Some(check.join(" "));
    // Every tool's output goes to stderr: stdout is the report's (a JSON
    // line with --json).
    let to_stderr = || std::process::Stdio::from(std::io::stderr());
    match Command::new(&check[0])
        .args(&check[1..])
        .stdout(to_stderr())
        .status()
    {
        Ok(s) => {
            report.fsck_status = s.code();
            report.fsck_clean = s.success();
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot run {} ({e}): install it to test {fs} images",
                    check[0]
                ),
            ));
        }
    }
    let mnt = mount_point(instance);
    std::fs::create_dir_all(&mnt)
        .op(|| "cannot create the mount point".into())
        .map_err(|e| e.with_path(&mnt))?;
    match mount(device, fs, &mnt, read_only) {
        Ok(()) => report.mounted = true,
        Err(e) => report.mount_error = Some(format!("mount {device} ({fs}) failed: {e}")),
    }
    if report.mounted {
        if let Some(cmd) = command {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("LIVERESTORE_ROOT", &mnt)
                .current_dir(&mnt)
                .stdout(to_stderr())
                .status();
            report.command_status = Some(match status {
                Ok(s) => s.code().unwrap_or(128),
                Err(_) => 127,
            });
        }
        attach::unmount(&mnt)?;
    }
    let _ = std::fs::remove_dir(&mnt);
    report.passed =
        report.fsck_clean && report.mounted && report.command_status.is_none_or(|s| s == 0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_by_magic() {
        let mut b = vec![0u8; 0x10048];
        assert_eq!(detect_filesystem(&b), None);
        b[0x438] = 0x53;
        b[0x439] = 0xef;
        assert_eq!(detect_filesystem(&b), Some("ext4"));
        let mut x = vec![0u8; 512];
        x[..4].copy_from_slice(b"XFSB");
        assert_eq!(detect_filesystem(&x), Some("xfs"));
        let mut v = vec![0u8; 512];
        v[0x52..0x5a].copy_from_slice(b"FAT32   ");
        assert_eq!(detect_filesystem(&v), Some("vfat"));
        assert_eq!(
            fsck_command("ext4", "/dev/dm-0"),
            ["e2fsck", "-f", "-n", "/dev/dm-0"]
        );
    }
}
