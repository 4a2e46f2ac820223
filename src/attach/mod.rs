//! Attach: show a staged image as a block device without rebooting, built
//! from its map with a device-mapper `linear` table.
//!
//! A mounted filesystem claims its disk, so device-mapper cannot open the
//! disk itself (EBUSY): the table is backed by a loop device over the whole
//! disk, which liverestore attaches (with autoclear, so it goes away with
//! the table). The table only covers the container's extents, so even a
//! writable attachment cannot touch a byte outside the map.
//!
//! Modes: read-only (default); `overlay`, writable through a dm-snapshot
//! whose copy-on-write store is a sparse file in the state directory
//! (thrown away on detach: the staged image never changes); `direct`,
//! writable straight into the staged image.
//!
//! Without device-mapper, a read-only or direct attach falls back to a
//! FUSE file served from the map (`crate::attach::fuse_image`; its writes go
//! through `DiskWriter`) with a loop device on it.
//!
//! An attachment outlives the command; its record (`attached/NAME.json` in
//! the state directory) says what to take down. `detach` also cleans up
//! after an attach that was interrupted, by the names it uses.
//!
//! Also here: the FUSE fallback without device-mapper ([`fuse_image`]),
//! `test-restore` ([`test_restore`]), which attaches, checks and detaches,
//! and [`root_dir::RootDir`], the one way any part of liverestore opens a
//! path inside a mounted image (nothing in an image is trusted: its
//! symlinks resolve inside it, only regular files of bounded size are
//! read).
//!
//! Owns: the devices and mounts that show a staging. May not: write a
//! staged byte except through the map (a table built from it, or
//! `DiskWriter` in the FUSE fallback); leave a device, mount or process
//! behind after `detach`.

pub(crate) mod fuse_image;
pub(crate) mod root_dir;
pub mod test_restore;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::stage::staged;
use crate::store::record::StagingState;
use crate::store::state_dir::{StateDir, StateLock};
use crate::sys::dm::{self, Target};
use crate::sys::loop_device::{LoopDevice, LoopOptions};

const SECTOR: u64 = 512;

/// How a staged image is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    ReadOnly,
    /// Writable; writes go to a throw-away copy-on-write store.
    Overlay,
    /// Writable; writes change the staged image.
    Direct,
}

/// A live attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub mode: AttachMode,
    /// The block device showing the image.
    pub device: String,
    /// How: "device-mapper", or "fuse" (read-only fallback).
    pub backend: String,
    /// Device-mapper devices, top first.
    pub dm_devices: Vec<String>,
    /// Loop devices attached for it (the whole disk; the overlay store).
    pub loop_devices: Vec<AttachedLoop>,
    /// The overlay's copy-on-write store.
    pub cow_file: Option<String>,
    /// The userspace fallback: where the image file is served, and by
    /// which process.
    #[serde(default)]
    pub fuse_mount: Option<String>,
    #[serde(default)]
    pub fuse_pid: Option<u32>,
}

impl Attachment {
    /// Nothing built yet.
    fn new(name: &str, mode: AttachMode, backend: &str) -> Attachment {
        Attachment {
            name: name.to_string(),
            mode,
            device: String::new(),
            backend: backend.into(),
            dm_devices: Vec::new(),
            loop_devices: Vec::new(),
            cow_file: None,
            fuse_mount: None,
            fuse_pid: None,
        }
    }
}

/// A loop device and what it was attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedLoop {
    pub device: String,
    pub backing: String,
}

/// Device-mapper names of an attachment, from [`StagingRecord::instance`].
fn dm_name(instance: &str) -> String {
    format!("liverestore-{instance}")
}
fn dm_base_name(instance: &str) -> String {
    format!("liverestore-{instance}-base")
}
fn cow_path(state: &StateDir, name: &str) -> PathBuf {
    state.attachments_dir().join(format!("{name}.cow"))
}

/// The attachment of `name`, if it is attached.
pub fn attachment(state: &StateDir, name: &str) -> Result<Option<Attachment>> {
    state
        .read_state(&state.attachment_path(name))
        .map_err(|e| match e.kind() {
            ErrorKind::Corrupt => Error::new(
                ErrorKind::Corrupt,
                format!("{e}; `liverestore detach {name}` cleans up"),
            ),
            _ => e,
        })
}

fn save(state: &StateLock<'_>, a: &Attachment) -> Result<()> {
    state.write_state(&state.attachment_path(&a.name), a)
}

/// The device-mapper table that shows the image of `rec`: one `linear`
/// line per extent of `map`, on `disk` (`MAJOR:MINOR` of `disk_path`).
/// A writable table writes the disk as surely as `DiskWriter` does, so it
/// is held to the same bounds with the same check
/// ([`crate::map::disk_io::check_map_within`]): nothing outside the
/// staging's partitions and unallocated segments.
pub fn linear_table(
    rec: &crate::store::record::StagingRecord,
    map: &crate::map::extent_map::ExtentMap,
    (disk, disk_path): (&str, &Path),
) -> Result<Vec<Target>> {
    crate::map::disk_io::check_map_within(map, &rec.disk_bounds(), disk_path)?;
    Ok(map
        .extents()
        .iter()
        .map(|e| Target {
            start: e.logical / SECTOR,
            length: e.length.div_ceil(SECTOR),
            kind: "linear".into(),
            params: format!("{disk} {}", e.disk / SECTOR),
        })
        .collect())
}

/// Attach the staged image `name` (complete, map still valid).
pub fn attach(state: &StateLock<'_>, name: &str, mode: AttachMode) -> Result<Attachment> {
    crate::stage::plan::require_root()?;
    let rec = state.load(name)?;
    if let Some(a) = attachment(state, name)? {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is already attached at {} (`liverestore detach {name}` first)",
                a.device
            ),
        ));
    }
    if rec.state != StagingState::Complete {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is {}, not complete: only a complete staging can be attached",
                rec.state.as_str()
            ),
        ));
    }
    let checked = staged::revalidate(&rec)?;
    fs::create_dir_all(state.attachments_dir())
        .op(|| "cannot create the attachment directory".into())?;
    if !dm::available() {
        if mode == AttachMode::Overlay {
            return Err(Error::new(
                ErrorKind::KernelLacks,
                "an overlay attach needs device-mapper, which this kernel lacks (try `modprobe dm-mod`); read-only and --rw=direct attach work without it",
            ));
        }
        return attach_fuse(state, &rec, mode);
    }
    let instance = rec.instance();
    for n in [dm_name(&instance), dm_base_name(&instance)] {
        if dm::exists(&n)? {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "device-mapper device {n} is left over from an interrupted attach: `liverestore detach {name}` removes it"
                ),
            ));
        }
    }
    let image_map = rec.image_map()?;
    let mut made = Attachment::new(name, mode, "device-mapper");
    let result = build(
        state,
        &rec,
        &checked.target.disk_path,
        &image_map,
        mode,
        &mut made,
    );
    match result {
        Ok(()) => {
            save(state, &made)?;
            Ok(made)
        }
        Err(e) => {
            let _ = take_down(&made);
            Err(e)
        }
    }
}

fn build(
    state: &StateLock<'_>,
    rec: &crate::store::record::StagingRecord,
    disk: &Path,
    image_map: &crate::map::extent_map::ExtentMap,
    mode: AttachMode,
    made: &mut Attachment,
) -> Result<()> {
    let name = rec.name.as_str();
    let instance = &rec.instance();
    let (disk_loop, _hold_disk) = LoopDevice::attach(
        disk,
        LoopOptions {
            writable: mode == AttachMode::Direct,
            autoclear: true,
            direct_io: true,
        },
    )?;
    made.loop_devices.push(AttachedLoop {
        device: disk_loop.path.display().to_string(),
        backing: disk.display().to_string(),
    });
    let table = linear_table(rec, image_map, (&disk_loop.dev_t(), disk))?;
    let uuid = format!("LIVERESTORE-{}", rec.id);
    match mode {
        AttachMode::ReadOnly | AttachMode::Direct => {
            let dev = dm::create(
                &dm_name(instance),
                &uuid,
                &table,
                mode == AttachMode::ReadOnly,
            )?;
            made.dm_devices.push(dm_name(instance));
            made.device = dev.path().display().to_string();
        }
        AttachMode::Overlay => {
            let base = dm::create(
                &dm_base_name(instance),
                &format!("{uuid}-base"),
                &table,
                true,
            )?;
            made.dm_devices.insert(0, dm_base_name(instance));
            let cow = cow_path(state, name);
            let _ = fs::remove_file(&cow);
            let f = fs::File::create(&cow)
                .op(|| "cannot create the overlay store".into())
                .map_err(|e| e.with_path(&cow))?;
            // Sparse: only what is written takes space on the host.
            f.set_len(rec.image.size.max(16 << 20) + (16 << 20))
                .op(|| "cannot size the overlay store".into())
                .map_err(|e| e.with_path(&cow))?;
            drop(f);
            made.cow_file = Some(cow.display().to_string());
            let (cow_loop, _hold_cow) = LoopDevice::attach(
                &cow,
                LoopOptions {
                    writable: true,
                    autoclear: true,
                    direct_io: false,
                },
            )?;
            made.loop_devices.push(AttachedLoop {
                device: cow_loop.path.display().to_string(),
                backing: cow.display().to_string(),
            });
            let sectors = rec.image.size.div_ceil(SECTOR);
            let snap = [Target {
                start: 0,
                length: sectors,
                kind: "snapshot".into(),
                params: format!("{}:{} {} N 8", base.major, base.minor, cow_loop.dev_t()),
            }];
            let dev = dm::create(&dm_name(instance), &uuid, &snap, false)?;
            made.dm_devices.insert(0, dm_name(instance));
            made.device = dev.path().display().to_string();
        }
    }
    Ok(())
}

/// Attach without device-mapper (read-only or direct): a FUSE file served
/// by a background `liverestore serve-image`, with a loop device on it.
fn attach_fuse(
    state: &StateLock<'_>,
    rec: &crate::store::record::StagingRecord,
    mode: AttachMode,
) -> Result<Attachment> {
    let name = rec.name.as_str();
    let writable = mode == AttachMode::Direct;
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::new(
            ErrorKind::KernelLacks,
            "this kernel has neither device-mapper nor FUSE: attach needs one of them (try `modprobe dm-mod` or `modprobe fuse`)",
        ));
    }
    let mnt = PathBuf::from(format!("/run/liverestore/fuse-{}", rec.instance()));
    fs::create_dir_all(&mnt)
        .op(|| "cannot create the FUSE mount point".into())
        .map_err(|e| e.with_path(&mnt))?;
    let exe = std::env::current_exe().op(|| "cannot find liverestore's own binary".into())?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("--state-dir")
            .arg(state.root())
            .arg("serve-image")
            .arg(name)
            .arg(&mnt)
            .args(writable.then_some("--writable"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .op(|| "cannot start the FUSE server".into())?
    };
    let mut made = Attachment {
        fuse_mount: Some(mnt.display().to_string()),
        fuse_pid: Some(child.id()),
        ..Attachment::new(name, mode, "fuse")
    };
    let file = mnt.join(crate::attach::fuse_image::FILE_NAME);
    let start = std::time::Instant::now();
    let served = loop {
        if fs::metadata(&file).is_ok_and(|m| m.len() == rec.image.size) {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(Error::new(
                ErrorKind::Io,
                format!("the FUSE server for '{name}' exited ({status})"),
            ));
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            break Err(Error::new(
                ErrorKind::Io,
                format!("the FUSE server for '{name}' did not come up"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let result = served.and_then(|()| {
        let (dev, _hold) = LoopDevice::attach(
            &file,
            LoopOptions {
                writable,
                autoclear: false,
                direct_io: false,
            },
        )?;
        made.device = dev.path.display().to_string();
        made.loop_devices.push(AttachedLoop {
            device: dev.path.display().to_string(),
            backing: file.display().to_string(),
        });
        save(state, &made)
    });
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            let _ = take_down(&made);
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Unmount the FUSE mount and wait for its server to exit.
fn stop_fuse(mnt: &Path, pid: Option<u32>) -> Result<()> {
    // Never lazily: a FUSE file still open (a loop device over it that
    // someone holds) would keep its server running after a "detach".
    if !try_unmount(mnt)? {
        return Err(Error::new(
            ErrorKind::Busy,
            format!(
                "the FUSE file at {} is still in use (a mount or a program holding its loop device?): stop using it and run `liverestore detach` again",
                mnt.display()
            ),
        ));
    }
    if let Some(pid) = pid {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        for _ in 0..100 {
            // Gone, or a zombie of an earlier attach's process.
            let state = fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = fs::remove_dir(mnt);
    Ok(())
}

/// Unmount `mnt`, waiting out a brief EBUSY (a process that is just
/// leaving it), then lazily; not mounted (any more) is fine.
pub(crate) fn unmount(mnt: &Path) -> Result<()> {
    if try_unmount(mnt)? {
        return Ok(());
    }
    rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| Error::io("cannot unmount", e.into()).with_path(mnt))
}

/// Unmount `mnt`, waiting up to 5 s while it is busy; whether it is
/// unmounted (not mounted any more is fine).
fn try_unmount(mnt: &Path) -> Result<bool> {
    use rustix::io::Errno;
    for _ in 0..50 {
        match rustix::mount::unmount(mnt, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => return Ok(true),
            Err(e) if e == Errno::INVAL || e == Errno::NOENT => return Ok(true),
            Err(e) if e == Errno::BUSY => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Err(Error::io("cannot unmount", e.into()).with_path(mnt)),
        }
    }
    Ok(false)
}

/// Remove what `a` names, top first; loop devices and the store last.
fn take_down(a: &Attachment) -> Result<()> {
    for n in &a.dm_devices {
        dm::remove(n)?;
    }
    // Autoclear normally detached them with the tables; detach explicitly
    // only a device still attached to what we attached it to (its number
    // may since have been reused by someone else).
    for l in &a.loop_devices {
        let Ok(dev) = LoopDevice::open(Path::new(&l.device)) else {
            continue;
        };
        let ours = match (dev.backing()?, fs::metadata(&l.backing)) {
            (Some((d, i)), Ok(m)) => {
                use std::os::unix::fs::MetadataExt;
                (d, i) == (m.dev(), m.ino())
            }
            _ => false,
        };
        if ours {
            dev.detach()?;
        }
    }
    if let Some(m) = &a.fuse_mount {
        stop_fuse(Path::new(m), a.fuse_pid)?;
    }
    if let Some(c) = &a.cow_file {
        match fs::remove_file(c) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot delete the overlay store", e).with_path(c)),
        }
    }
    Ok(())
}

/// Take down the attachment of `name`: device-mapper devices, loop devices,
/// the overlay store, the record. Also cleans up after an interrupted
/// attach (by the device names attach uses).
pub fn detach(state: &StateLock<'_>, name: &str) -> Result<Attachment> {
    crate::stage::plan::require_root()?;
    crate::store::record::validate_name(name)?;
    let recorded = match attachment(state, name) {
        Ok(a) => a,
        Err(e) if e.kind() == ErrorKind::Corrupt => None,
        Err(e) => return Err(e),
    };
    let a = match recorded {
        Some(a) => a,
        None => {
            // Leftovers of an interrupted attach, if any.
            let mut left = Attachment::new(name, AttachMode::ReadOnly, "device-mapper");
            if dm::available()
                && let Ok(rec) = state.load(name)
            {
                let instance = rec.instance();
                for n in [dm_name(&instance), dm_base_name(&instance)] {
                    if dm::exists(&n)? {
                        left.dm_devices.push(n);
                    }
                }
            }
            let cow = cow_path(state, name);
            if cow.exists() {
                left.cow_file = Some(cow.display().to_string());
            }
            if left.dm_devices.is_empty() && left.cow_file.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("'{name}' is not attached"),
                ));
            }
            left
        }
    };
    take_down(&a)?;
    state.remove_state(&state.attachment_path(name))?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::extent_map::{ExtentMap, MapExtent};

    #[test]
    fn table_follows_the_map() {
        let map = ExtentMap::new(
            vec![
                MapExtent {
                    logical: 0,
                    disk: 1 << 20,
                    length: 8192,
                },
                MapExtent {
                    logical: 8192,
                    disk: 10 << 20,
                    length: 4096,
                },
            ],
            8192 + 4000,
        )
        .unwrap();
        let rec = crate::store::record::tests::sample_record();
        let disk = ("7:3", Path::new("/dev/loop3"));
        let t = linear_table(&rec, &map, disk).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].start, t[0].length), (0, 16));
        assert_eq!(t[0].params, "7:3 2048");
        assert_eq!((t[1].start, t[1].length), (16, 8));
        assert_eq!(t[1].params, "7:3 20480");
    }

    /// The table is held to the staging's bounds as `DiskWriter` is: a
    /// map reaching outside its partition never becomes a table.
    #[test]
    fn table_outside_the_staging_is_refused() {
        let rec = crate::store::record::tests::sample_record();
        let (lo, hi) = (rec.host.start, rec.host.start + rec.host.size);
        for disk in [lo - 4096, hi - 4096, hi + (1 << 20)] {
            let map = ExtentMap::new(
                vec![MapExtent {
                    logical: 0,
                    disk,
                    length: 8192,
                }],
                8192,
            )
            .unwrap();
            let e = linear_table(&rec, &map, ("7:3", Path::new("/dev/loop3"))).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{disk}: {e}");
            assert!(e.message().contains("outside the staging's space"), "{e}");
        }
    }
}
