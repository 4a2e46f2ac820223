//! Finding out where a directory really lives: its filesystem, the partition
//! under it, and the whole disk under that.
//!
//! The parsers (mountinfo, kernel command line, superblock UUIDs, sysfs
//! layout) are pure functions over text/bytes or a sysfs root directory, so
//! they are tested without touching the machine's own disks.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::map::device_layout::{DeviceLayout, DiskId, MAX_DEPTH};
use crate::sys::dm::Target;

/// Filesystems a container can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    /// FAT12/16/32 mounted as vfat: no FIEMAP (FIBMAP instead), no
    /// unwritten extents, files of at most 4 GiB − 1 (containers are split).
    Vfat,
    /// btrfs on one device: containers are No-CoW (`chattr +C` before they
    /// are allocated), and FIEMAP's addresses are logical, translated
    /// through the chunk tree (`crate::map::btrfs`; the `single` data
    /// profile only).
    Btrfs,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Vfat => "vfat",
            FsKind::Btrfs => "btrfs",
        }
    }
}

/// What must not run on a filesystem of `kind` while a staging is on it,
/// and how liverestore notices when it did (`plan`, `stage` and
/// `activate` say it); `on_volume`: the filesystem is on a logical volume.
pub fn cautions(kind: FsKind, on_volume: bool) -> Vec<String> {
    let mut out = Vec::new();
    if on_volume {
        out.push("LVM: while a staging is here, run no `pvmove`, `lvconvert`, `lvreduce` or snapshot (`lvcreate -s`) of this volume (an `lvextend` is fine: it moves nothing): they move its segments, or make the volume something other than linear. liverestore re-derives the map through the kernel's device-mapper tables before every use and refuses a staging whose volume moved or changed (exit 18 or 12); it never guesses".into());
    }
    if kind == FsKind::Btrfs {
        out.push("btrfs: while a staging is here, run no balance (btrfsmaintenance's btrfs-balance.timer, `btrfs balance`), no `btrfs filesystem defragment` of this directory and no snapshot of its subvolume (snapper, timeshift): a balance moves the container's chunks and a snapshot shares its blocks. liverestore re-derives the map through the chunk tree before every use and refuses a staging whose map changed or whose blocks are shared (exit 18 or 11); it never guesses".into());
    }
    out
}

/// Decide from the mount's filesystem type whether we can stage on it.
pub fn classify_fs(fs_type: &str) -> Result<FsKind> {
    let refuse = |why: String| Err(Error::new(ErrorKind::UnsupportedFilesystem, why));
    match fs_type {
        "ext4" => Ok(FsKind::Ext4),
        "xfs" => Ok(FsKind::Xfs),
        "vfat" => Ok(FsKind::Vfat),
        "btrfs" => Ok(FsKind::Btrfs),
        "bcachefs" | "zfs" => refuse(format!(
            "{fs_type} is copy-on-write: its FIEMAP addresses are logical and it moves data; pick a directory on ext4, xfs, vfat or btrfs"
        )),
        "tmpfs" | "ramfs" | "devtmpfs" | "proc" | "sysfs" => refuse(format!(
            "{fs_type} lives in memory, not on a disk; pick a directory on ext4, xfs, vfat or btrfs"
        )),
        "overlay" | "aufs" | "squashfs" | "erofs" => refuse(format!(
            "{fs_type} is a layered or read-only filesystem whose blocks are not on one disk; pick a directory on ext4, xfs, vfat or btrfs"
        )),
        "nfs" | "nfs4" | "cifs" | "smb3" | "ceph" | "9p" | "glusterfs" | "afs" | "virtiofs" => {
            refuse(format!(
                "{fs_type} is a network filesystem, not a local disk; pick a directory on ext4, xfs, vfat or btrfs"
            ))
        }
        t if t.starts_with("fuse") => refuse(format!(
            "{fs_type} is a FUSE filesystem whose block layout is unknown; pick a directory on ext4, xfs, vfat or btrfs"
        )),
        "ext2" | "ext3" => refuse(format!(
            "{fs_type} cannot preallocate files (no extents); pick a directory on ext4, xfs, vfat or btrfs"
        )),
        "msdos" => refuse(
            "msdos (FAT with 8.3 names only) cannot hold container names; mount it as vfat".into(),
        ),
        "exfat" | "ntfs" | "ntfs3" | "fuseblk" => refuse(format!(
            "{fs_type} hosts are not supported yet; pick a directory on ext4, xfs, vfat or btrfs"
        )),
        other => refuse(format!(
            "{other} is not supported; pick a directory on ext4, xfs, vfat or btrfs"
        )),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that is mounted here (`/` unless a
    /// bind mount or a btrfs subvolume).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/self/mountinfo. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (major, minor) = pre.get(2)?.split_once(':')?;
            Some(MountEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: PathBuf::from(unescape_octal(pre.get(3)?)),
                mount_point: PathBuf::from(unescape_octal(pre.get(4)?)),
                fs_type: (*post.first()?).to_string(),
                source: unescape_octal(post.get(1)?),
            })
        })
        .collect()
}

/// The mount that contains `path` (canonical): the longest mount point that
/// is a prefix of it; among equal ones, the last mounted (it hides the others).
pub fn mount_for<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// Does the kernel command line forbid writing mounted block devices
/// (`bdev_allow_write_mounted=0`, Linux ≥ 6.8)?
pub fn cmdline_forbids_write_mounted(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|arg| {
        arg.strip_prefix("bdev_allow_write_mounted=")
            .is_some_and(|v| matches!(v, "0" | "n" | "N" | "no" | "off" | "false"))
    })
}

/// The filesystem UUID from the first 2 KiB of an ext4 or xfs device (for
/// vfat: the volume serial number, as `ABCD-1234` like blkid prints it).
pub fn fs_uuid(kind: FsKind, head: &[u8]) -> Option<String> {
    let (magic_ok, at) = match kind {
        FsKind::Vfat => {
            if head.get(510..512)? != [0x55, 0xaa] {
                return None;
            }
            // FAT32 (BPB_FATSz16 == 0) keeps BS_VolID at 67, FAT12/16 at 39.
            let at = if head.get(22..24)? == [0, 0] { 67 } else { 39 };
            let id = u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?);
            return Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff));
        }
        // ext4 superblock at 1024: s_magic at +0x38, s_uuid at +0x68
        FsKind::Ext4 => (
            head.get(1024 + 0x38..1024 + 0x3a)? == [0x53, 0xef],
            1024 + 0x68,
        ),
        // xfs superblock at 0: "XFSB", sb_uuid at +32
        FsKind::Xfs => (head.get(0..4)? == b"XFSB", 32),
        // btrfs superblock at 64 KiB: fsid at +0x20, "_BHRfS_M" at +0x40
        FsKind::Btrfs => (
            head.get(BTRFS_SUPER + 0x40..BTRFS_SUPER + 0x48)? == b"_BHRfS_M",
            BTRFS_SUPER + 0x20,
        ),
    };
    let bytes: [u8; 16] = head.get(at..at + 16)?.try_into().ok()?;
    magic_ok.then(|| uuid::Uuid::from_bytes(bytes).to_string())
}

/// Where btrfs's superblock is.
const BTRFS_SUPER: usize = 0x10000;

/// How many bytes from a filesystem's start [`fs_uuid`] needs.
pub fn fs_head_len(kind: FsKind) -> usize {
    match kind {
        FsKind::Btrfs => BTRFS_SUPER + 4096,
        _ => 2048,
    }
}

/// The UUID of the btrfs filesystem that `f` (at `path`) is on, from
/// the kernel (`BTRFS_IOC_FS_INFO`); refused when it spans several
/// devices.
pub fn btrfs_single_device_fsid(f: &fs::File, path: &Path) -> Result<uuid::Uuid> {
    let info = crate::sys::ioctl::btrfs_fs_info(f).map_err(|e| {
        Error::from(e)
            .with_kind(ErrorKind::UnsupportedFilesystem)
            .with_path(path)
    })?;
    let (devices, fsid) = crate::map::btrfs::parse_fs_info(&info)
        .ok_or_else(|| Error::new(ErrorKind::UnsupportedFilesystem, "BTRFS_IOC_FS_INFO answer"))?;
    if devices != 1 {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "this btrfs spans {devices} devices: a container's data could be on any of them, and the map, the early boot and the free-space checks follow one disk; pick a directory on a single-device filesystem"
            ),
        )
        .with_path(path));
    }
    Ok(fsid)
}

/// The block device under mount `m` ("major:minor"): the mount's own
/// number; for btrfs, which numbers its mounts and subvolumes
/// anonymously, its one device from the kernel ([`btrfs_device`]; `dir`:
/// a directory of it).
pub fn mount_device(m: &MountEntry, dir: &Path) -> Result<(u32, u32)> {
    match m.fs_type.as_str() {
        "btrfs" => btrfs_device(dir, Path::new("/sys")),
        _ => Ok((m.major, m.minor)),
    }
}

/// The one device under the btrfs filesystem of `dir` ("major:minor"),
/// from the kernel: its device count (`BTRFS_IOC_FS_INFO`) and
/// `sys/fs/btrfs/FSID/devices/` (`sys`: the sysfs root). Refused when it
/// spans several devices.
pub fn btrfs_device(dir: &Path, sys: &Path) -> Result<(u32, u32)> {
    let f = fs::File::open(dir)
        .op(|| "cannot open the directory".into())
        .map_err(|e| e.with_path(dir))?;
    let fsid = btrfs_single_device_fsid(&f, dir)?;
    let list = sys.join("fs/btrfs").join(fsid.to_string()).join("devices");
    let names: Vec<PathBuf> = fs::read_dir(&list)
        .op(|| "list the btrfs filesystem's devices".into())
        .map_err(|e| e.with_path(&list))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let [one] = names.as_slice() else {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!("{} lists {} devices, not one", list.display(), names.len()),
        ));
    };
    let dev = fs::read_to_string(one.join("dev"))
        .op(|| "read the device's number".into())
        .map_err(|e| e.with_path(one))?;
    let (major, minor) = dev.trim().split_once(':').ok_or_else(|| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            format!("device number '{}'", dev.trim()),
        )
    })?;
    let parse = |v: &str| {
        v.parse::<u32>().map_err(|_| {
            Error::new(
                ErrorKind::UnsupportedDevice,
                format!("device number '{}'", dev.trim()),
            )
        })
    };
    Ok((parse(major)?, parse(minor)?))
}

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysBlock {
    /// Kernel name of the device holding the filesystem (e.g. `sda2`).
    pub name: String,
    /// Kernel name of the whole disk (e.g. `sda`); equal to `name` when the
    /// filesystem is on the whole disk.
    pub disk_name: String,
    pub disk_major: u32,
    pub disk_minor: u32,
    pub partition_number: Option<u32>,
    /// Byte offset of the device's first byte on the disk.
    pub start: u64,
    pub size: u64,
    pub disk_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub serial: Option<String>,
    /// Where the device's bytes are on the disk: one piece for a
    /// partition or disk; a logical volume's segments, composed.
    pub layout: DeviceLayout,
}

/// Whether kernel block device name `name` is a device-mapper device's
/// (`dm-N`).
pub fn is_device_mapper_name(name: &str) -> bool {
    name.starts_with("dm-")
}

impl SysBlock {
    /// Whether the device is a device-mapper device (a logical volume),
    /// whose bytes are wherever its layout says.
    pub fn is_device_mapper(&self) -> bool {
        is_device_mapper_name(&self.name)
    }
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_num(path: &Path) -> Result<u64> {
    read_trim(path).and_then(|s| s.parse().ok()).ok_or_else(|| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            "cannot read a number from sysfs",
        )
        .with_path(path)
    })
}

impl SysBlock {
    /// Describe block device `major:minor` from the sysfs tree at `sys`
    /// (normally `/sys`); a device-mapper device through its live tables
    /// (`crate::sys::dm::status`). md RAID is refused.
    pub fn resolve(sys: &Path, major: u32, minor: u32) -> Result<SysBlock> {
        Self::resolve_with(sys, major, minor, &mut |name| {
            crate::sys::dm::status(name)?
                .map(|info| info.targets)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::UnsupportedDevice,
                        format!("device-mapper device {name} vanished"),
                    )
                })
        })
    }

    /// [`SysBlock::resolve`] with the device-mapper tables from `tables`
    /// (by device-mapper name).
    pub fn resolve_with(
        sys: &Path,
        major: u32,
        minor: u32,
        tables: &mut dyn FnMut(&str) -> Result<Vec<Target>>,
    ) -> Result<SysBlock> {
        let dir = block_dir(sys, major, minor)?;
        let name = file_name(&dir);
        if dir.join("dm").exists() {
            let ((dmaj, dmin), layout) =
                stacked_layout(sys, (major, minor), 0, tables).map_err(|e| {
                    let what = read_trim(&dir.join("dm/name")).unwrap_or_default();
                    Error::new(e.kind(), format!("/dev/{name} ({what}): {}", e.message()))
                })?;
            let disk = Self::resolve_with(sys, dmaj, dmin, tables)?;
            return Ok(SysBlock {
                name,
                partition_number: None,
                start: layout.disk_start().unwrap_or(0),
                size: layout.size(),
                layout,
                ..disk
            });
        }
        let stacked = dir.join("md").exists()
            || fs::read_dir(dir.join("slaves"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
        if stacked {
            return Err(Error::new(
                ErrorKind::UnsupportedDevice,
                format!(
                    "{name} is a software RAID (md) device: its offsets are not disk offsets; not supported"
                ),
            ));
        }
        let (disk_dir, partition_number, start) = if dir.join("partition").exists() {
            let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
            (
                parent,
                Some(read_num(&dir.join("partition"))? as u32),
                read_num(&dir.join("start"))? * 512,
            )
        } else {
            (dir.clone(), None, 0)
        };
        let disk_name = file_name(&disk_dir);
        let dev = read_trim(&disk_dir.join("dev")).ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedDevice, "disk has no dev number").with_path(&disk_dir)
        })?;
        let (dmaj, dmin) = dev
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| {
                Error::new(ErrorKind::UnsupportedDevice, "bad dev number in sysfs")
                    .with_path(&disk_dir)
            })?;
        let serial = [
            "device/serial",
            "serial",
            "device/wwid",
            "wwid",
            "loop/backing_file",
        ]
        .iter()
        .find_map(|p| read_trim(&disk_dir.join(p)));
        let size = read_num(&dir.join("size"))? * 512;
        Ok(SysBlock {
            name,
            disk_name,
            disk_major: dmaj,
            disk_minor: dmin,
            partition_number,
            start,
            size,
            disk_size: read_num(&disk_dir.join("size"))? * 512,
            logical_sector_size: read_num(&disk_dir.join("queue/logical_block_size"))? as u32,
            physical_sector_size: read_num(&disk_dir.join("queue/physical_block_size"))? as u32,
            serial,
            layout: DeviceLayout::contiguous(start, size),
        })
    }
}

/// The sysfs directory of block device `major:minor`.
fn block_dir(sys: &Path, major: u32, minor: u32) -> Result<PathBuf> {
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    fs::canonicalize(&link).map_err(|e| {
        Error::io(
            format!("no block device {major}:{minor} in sysfs (is the filesystem on a disk?)"),
            e,
        )
        .with_kind(ErrorKind::UnsupportedDevice)
        .with_path(&link)
    })
}

fn file_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The disk and layout of block device `dev`: a partition or disk from
/// sysfs, a device-mapper device composed from its table and, in turn,
/// its lower devices'.
fn stacked_layout(
    sys: &Path,
    dev: DiskId,
    depth: usize,
    tables: &mut dyn FnMut(&str) -> Result<Vec<Target>>,
) -> Result<(DiskId, DeviceLayout)> {
    let dir = block_dir(sys, dev.0, dev.1)?;
    if !dir.join("dm").exists() {
        let b = SysBlock::resolve_with(sys, dev.0, dev.1, tables)?;
        return Ok(((b.disk_major, b.disk_minor), b.layout));
    }
    if depth >= MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!("device-mapper devices stacked more than {MAX_DEPTH} deep"),
        ));
    }
    let name = read_trim(&dir.join("dm/name")).ok_or_else(|| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            "a device-mapper device without a name",
        )
        .with_path(&dir)
    })?;
    let targets = tables(&name)?;
    DeviceLayout::compose(&targets, &mut |lower| {
        stacked_layout(sys, lower, depth + 1, tables)
    })
}

/// Everything about the place a container would be created in.
#[derive(Debug, Clone)]
pub struct HostTarget {
    /// The directory, canonical.
    pub dir: PathBuf,
    pub fs: FsKind,
    pub mount: MountEntry,
    pub block: SysBlock,
    /// `/dev/<disk>`; its device number was checked.
    pub disk_path: PathBuf,
    pub fs_block_size: u64,
    /// Bytes an unprivileged user could still allocate (ext4 keeps its
    /// root-reserved blocks for the running system).
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl HostTarget {
    /// Alignment of O_DIRECT I/O on the disk: its logical sector size.
    pub fn io_align(&self) -> u64 {
        u64::from(self.block.logical_sector_size).max(512)
    }

    /// Disk bytes `[start, end)` of the filesystem's device (a
    /// partition; a logical volume's segments): the only bytes a
    /// container's map may reach.
    pub fn disk_ranges(&self) -> Vec<(u64, u64)> {
        self.block.layout.disk_ranges()
    }
}

/// The largest file size the filesystem of `dir` allows, probed without
/// allocating anything: `lseek` past the filesystem's limit fails with
/// `EINVAL`, so a binary search over an empty temporary file finds it
/// (vfat: 4 GiB − 1; ext4: 16 TiB − one block).
pub fn max_file_size(dir: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let probe = dir.join(format!(".liverestore-probe-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&probe)
        .op(|| "create a probe file to find the largest file size".into())
        .map_err(|e| e.with_path(&probe))?;
    fs::remove_file(&probe)
        .op(|| "remove the probe file".into())
        .map_err(|e| e.with_path(&probe))?;
    let (mut ok, mut bad) = (0u64, 1u64 << 62);
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if file.seek(SeekFrom::Start(mid)).is_ok() {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    Ok(ok)
}

/// Find the device behind a block device number: `/dev/<name>`, checked.
pub fn dev_node(name: &str, major: u32, minor: u32) -> Result<PathBuf> {
    let path = PathBuf::from("/dev").join(name);
    let meta = fs::metadata(&path)
        .op(|| "the disk has no device node".to_string())
        .map_err(|e| e.with_kind(ErrorKind::UnsupportedDevice).with_path(&path))?;
    let rdev = meta.rdev();
    if !meta.file_type().is_block_device()
        || rustix::fs::major(rdev) != major
        || rustix::fs::minor(rdev) != minor
    {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!("{} is not block device {major}:{minor}", path.display()),
        ));
    }
    Ok(path)
}

/// The logical sector size of block device `name` (a kernel name, e.g.
/// `vda`), from sysfs; 512 where sysfs does not tell.
pub fn logical_sector_size(name: &str) -> u64 {
    read_trim(
        &Path::new("/sys/class/block")
            .join(name)
            .join("queue/logical_block_size"),
    )
    .and_then(|s| s.parse::<u64>().ok())
    .unwrap_or(512)
    .max(512)
}

/// Resolve `dir` to its filesystem, partition and disk, refusing anything
/// liverestore cannot stage on.
pub fn discover(dir: &Path) -> Result<HostTarget> {
    let canon = fs::canonicalize(dir)
        .op(|| "cannot open the directory".to_string())
        .map_err(|e| e.with_path(dir))?;
    let meta = fs::metadata(&canon)
        .op(|| "cannot stat".to_string())
        .map_err(|e| e.with_path(&canon))?;
    if !meta.is_dir() {
        return Err(Error::new(ErrorKind::Io, "not a directory").with_path(&canon));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .op(|| "cannot read /proc/self/mountinfo".into())?;
    let mounts = parse_mountinfo(&mountinfo);
    let mount = mount_for(&mounts, &canon).cloned().ok_or_else(|| {
        Error::new(
            ErrorKind::UnsupportedFilesystem,
            "no mount found for the directory",
        )
        .with_path(&canon)
    })?;
    let fs_kind = classify_fs(&mount.fs_type).map_err(|e| e.with_path(&canon))?;
    let (major, minor) = (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
    // (btrfs's subvolumes each have their own number)
    if fs_kind != FsKind::Btrfs && (major, minor) != (mount.major, mount.minor) {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "the directory's device {major}:{minor} is not its mount's {}:{}",
                mount.major, mount.minor
            ),
        )
        .with_path(&canon));
    }
    let (major, minor) = mount_device(&mount, &canon)?;
    let block = SysBlock::resolve(Path::new("/sys"), major, minor)?;
    let disk_path = dev_node(&block.disk_name, block.disk_major, block.disk_minor)?;
    let st = rustix::fs::statvfs(&canon).op(|| "statvfs".into())?;
    Ok(HostTarget {
        dir: canon,
        fs: fs_kind,
        mount,
        block,
        disk_path,
        fs_block_size: st.f_bsize,
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /tmp rw shared:2 - tmpfs tmpfs rw
41 22 7:1 / /mnt/with\\040space rw,relatime shared:3 - xfs /dev/loop0p1 rw,attr2
42 41 7:17 / /mnt/with\\040space/inner rw - btrfs /dev/loop1p1 rw
43 22 7:1 / /mnt/over rw - ext4 /dev/loop0p1 rw
44 22 7:2 / /mnt/over rw - xfs /dev/loop2 rw
bad line
";

    #[test]
    fn mountinfo_parsing_and_lookup() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[2].root, Path::new("/"));
        assert_eq!((m[2].major, m[2].minor), (7, 1));
        assert_eq!(m[2].fs_type, "xfs");
        let find = |p: &str| mount_for(&m, Path::new(p)).unwrap().fs_type.clone();
        assert_eq!(find("/etc"), "ext4");
        assert_eq!(find("/tmp/x"), "tmpfs");
        assert_eq!(find("/mnt/with space/a"), "xfs");
        assert_eq!(find("/mnt/with space/inner/b"), "btrfs");
        // "/tmpx" is not under "/tmp"
        assert_eq!(find("/tmpx"), "ext4");
        // the later mount on the same point hides the earlier one
        assert_eq!(mount_for(&m, Path::new("/mnt/over")).unwrap().minor, 2);
    }

    #[test]
    fn classification() {
        assert_eq!(classify_fs("ext4").unwrap(), FsKind::Ext4);
        assert_eq!(classify_fs("xfs").unwrap(), FsKind::Xfs);
        assert_eq!(classify_fs("vfat").unwrap(), FsKind::Vfat);
        assert_eq!(classify_fs("btrfs").unwrap(), FsKind::Btrfs);
        for t in [
            "bcachefs",
            "tmpfs",
            "overlay",
            "nfs4",
            "cifs",
            "fuse.sshfs",
            "ext3",
            "msdos",
            "ntfs3",
            "weirdfs",
        ] {
            let e = classify_fs(t).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedFilesystem);
            assert!(e.message().contains(t), "{}", e.message());
        }
        assert!(
            classify_fs("nfs")
                .unwrap_err()
                .message()
                .contains("network")
        );
    }

    #[test]
    fn a_btrfs_superblock_names_its_filesystem() {
        let mut head = vec![0u8; fs_head_len(FsKind::Btrfs)];
        assert_eq!(fs_uuid(FsKind::Btrfs, &head), None, "no magic");
        head[BTRFS_SUPER + 0x40..BTRFS_SUPER + 0x48].copy_from_slice(b"_BHRfS_M");
        head[BTRFS_SUPER + 0x20..BTRFS_SUPER + 0x30].copy_from_slice(&[0x11; 16]);
        assert_eq!(
            fs_uuid(FsKind::Btrfs, &head).unwrap(),
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(fs_uuid(FsKind::Btrfs, &head[..2048]), None, "cut short");
        assert!(cautions(FsKind::Btrfs, false)[0].contains("balance"));
        assert!(cautions(FsKind::Ext4, true)[0].contains("pvmove"));
        assert!(cautions(FsKind::Ext4, false).is_empty());
    }

    #[test]
    fn write_mounted_cmdline() {
        assert!(cmdline_forbids_write_mounted(
            "quiet bdev_allow_write_mounted=0 ro"
        ));
        assert!(cmdline_forbids_write_mounted("bdev_allow_write_mounted=n"));
        assert!(!cmdline_forbids_write_mounted("bdev_allow_write_mounted=1"));
        assert!(!cmdline_forbids_write_mounted("root=/dev/vda"));
    }

    #[test]
    fn superblock_uuids() {
        let mut ext = vec![0u8; 2048];
        ext[1024 + 0x38] = 0x53;
        ext[1024 + 0x39] = 0xef;
        ext[1024 + 0x68..1024 + 0x78].copy_from_slice(&[0x11; 16]);
        assert_eq!(
            fs_uuid(FsKind::Ext4, &ext).unwrap(),
            "11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(fs_uuid(FsKind::Xfs, &ext), None);
        let mut xfs = vec![0u8; 2048];
        xfs[0..4].copy_from_slice(b"XFSB");
        xfs[32..48].copy_from_slice(&[0xab; 16]);
        assert_eq!(
            fs_uuid(FsKind::Xfs, &xfs).unwrap(),
            "abababab-abab-abab-abab-abababababab"
        );
        assert_eq!(fs_uuid(FsKind::Ext4, &xfs[..100]), None);
        let mut fat32 = vec![0u8; 1024];
        fat32[510..512].copy_from_slice(&[0x55, 0xaa]);
        fat32[67..71].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
        assert_eq!(fs_uuid(FsKind::Vfat, &fat32).unwrap(), "1234-ABCD");
        let mut fat16 = fat32.clone();
        fat16[22] = 32;
        fat16[39..43].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert_eq!(fs_uuid(FsKind::Vfat, &fat16).unwrap(), "DEAD-BEEF");
        assert_eq!(fs_uuid(FsKind::Vfat, &xfs), None);
    }

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    #[test]
    fn sysfs_partition_and_whole_disk_and_stacked() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let disk = sys.join("devices/virtual/block/loop3");
        write(&disk.join("dev"), "7:3\n");
        write(&disk.join("size"), "2097152\n");
        write(&disk.join("queue/logical_block_size"), "512\n");
        write(&disk.join("queue/physical_block_size"), "4096\n");
        write(&disk.join("loop/backing_file"), "/tmp/disk.img\n");
        let part = disk.join("loop3p2");
        write(&part.join("partition"), "2\n");
        write(&part.join("start"), "2048\n");
        write(&part.join("size"), "1024000\n");
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&part, sys.join("dev/block/259:5")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("dev/block/7:3")).unwrap();

        let p = SysBlock::resolve(sys, 259, 5).unwrap();
        assert_eq!(p.name, "loop3p2");
        assert_eq!(p.disk_name, "loop3");
        assert_eq!((p.disk_major, p.disk_minor), (7, 3));
        assert_eq!(p.partition_number, Some(2));
        assert_eq!(p.start, 2048 * 512);
        assert_eq!(p.size, 1024000 * 512);
        assert_eq!(p.disk_size, 2097152 * 512);
        assert_eq!((p.logical_sector_size, p.physical_sector_size), (512, 4096));
        assert_eq!(p.serial.as_deref(), Some("/tmp/disk.img"));

        let d = SysBlock::resolve(sys, 7, 3).unwrap();
        assert_eq!(
            (d.start, d.partition_number, d.disk_name.as_str()),
            (0, None, "loop3")
        );

        // an LV of two segments on loop3p2 (data from 1 MiB into the PV)
        let dm = sys.join("devices/virtual/block/dm-0");
        write(&dm.join("dev"), "253:0\n");
        write(&dm.join("dm/name"), "vg-root\n");
        std::os::unix::fs::symlink(&dm, sys.join("dev/block/253:0")).unwrap();
        let lin = Target::linear;
        let mut tables = |name: &str| -> Result<Vec<Target>> {
            assert_eq!(name, "vg-root");
            Ok(vec![
                lin(0, 8192, "259:5 2048"),
                lin(8192, 4096, "259:5 20480"),
            ])
        };
        let lv = SysBlock::resolve_with(sys, 253, 0, &mut tables).unwrap();
        assert!(lv.is_device_mapper());
        assert_eq!(lv.name, "dm-0");
        assert_eq!(
            (lv.disk_name.as_str(), lv.disk_major, lv.disk_minor),
            ("loop3", 7, 3)
        );
        assert_eq!(lv.partition_number, None);
        assert_eq!((lv.start, lv.size), ((2048 + 2048) * 512, 12288 * 512));
        assert_eq!(
            lv.layout.disk_ranges(),
            vec![(4096 * 512, 12288 * 512), (22528 * 512, 26624 * 512)]
        );
        assert_eq!(lv.disk_size, 2097152 * 512);
        let mut striped = |_: &str| -> Result<Vec<Target>> {
            let mut t = lin(0, 8192, "259:5 2048");
            t.kind = "striped".into();
            Ok(vec![t])
        };
        let e = SysBlock::resolve_with(sys, 253, 0, &mut striped).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedDevice);
        assert!(
            e.to_string().contains("/dev/dm-0 (vg-root): a striped"),
            "{e}"
        );
        let md = sys.join("devices/virtual/block/md0");
        write(&md.join("dev"), "9:0\n");
        write(&md.join("md/level"), "raid1\n");
        std::os::unix::fs::symlink(&md, sys.join("dev/block/9:0")).unwrap();
        assert!(
            SysBlock::resolve(sys, 9, 0)
                .unwrap_err()
                .to_string()
                .contains("software RAID")
        );
        assert_eq!(
            SysBlock::resolve(sys, 1, 1).unwrap_err().kind(),
            ErrorKind::UnsupportedDevice
        );
    }
}
