//! The container: an ordinary file of the host filesystem whose blocks hold
//! the staged image. Allocate → pin → map, in that order (as Android's
//! `fiemap_writer` does): `fallocate` gives unwritten extents (the
//! filesystem keeps reading zeros, nothing is written twice), the immutable
//! flag stops every tool from moving or freeing the blocks (ext4's
//! move-extent refuses immutable inodes, xfs_fsr skips them), and FIEMAP
//! then tells where the blocks are.
//!
//! vfat differs in three ways, handled here: it has no unwritten extents
//! (preallocating writes zeros once, through the page cache, which is then
//! synced and dropped), no FIEMAP (the map comes from FIBMAP, one query
//! per cluster — a cluster is contiguous by definition — and each merged
//! run's last block is checked), and no immutable flag (the file gets the
//! FAT read-only and system attributes, which defragmenters leave alone;
//! nothing in Linux moves a FAT file's clusters). Its inode numbers are made
//! up per mount, so a vfat container is known by its map alone.
//!
//! btrfs differs in two: the container is made No-CoW (`chattr +C`) while
//! it is still empty, so its preallocated extents stay where they are,
//! uncompressed and unchecksummed; and FIEMAP's addresses are btrfs's
//! logical ones, translated to the device through the chunk tree
//! (`crate::map::btrfs`; `single` data chunks only). The immutable flag
//! does not stop a balance, which relocates every chunk: the map
//! re-derived before each use then differs, and the staging is refused.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, IFlags};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::map::device_layout::DeviceLayout;
use crate::map::extent_map::ExtentMap;
use crate::map::{btrfs, fiemap};
use crate::space::hostfs::FsKind;

/// FAT attributes that pin a container on vfat: read-only and system.
const FAT_PIN_ATTRIBUTES: u32 = 0x01 | 0x04;

/// File name suffix of containers.
pub const SUFFIX: &str = ".liverestore";

/// The container path for staging `name` in `dir`.
pub fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SUFFIX}"))
}

/// The path of the `index`-th file (counting from 1) of staging `name` in
/// `dir`: the first is [`path_for`], later ones (a split container or a
/// segment set) are `NAME+2.liverestore`, … ('+' never occurs in a name).
pub fn piece_path_for(dir: &Path, name: &str, index: usize) -> PathBuf {
    if index <= 1 {
        path_for(dir, name)
    } else {
        dir.join(format!("{name}+{index}{SUFFIX}"))
    }
}

/// Whether `file_name` is one of the container files of staging `name`.
pub fn is_container_of(file_name: &str, name: &str) -> bool {
    let Some(stem) = file_name
        .strip_suffix(SUFFIX)
        .and_then(|s| s.strip_prefix(name))
    else {
        return false;
    };
    stem.is_empty()
        || stem
            .strip_prefix('+')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An open container file.
#[derive(Debug)]
pub struct ContainerFile {
    path: PathBuf,
    file: File,
    fs: FsKind,
}

fn sync_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .op(|| "sync the directory".into())
            .map_err(|e| e.with_path(parent))?;
    }
    Ok(())
}

impl ContainerFile {
    /// Create `path` (which must not exist) and preallocate `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<ContainerFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ErrorKind::NameInUse
                } else {
                    ErrorKind::Io
                };
                Error::io("cannot create the container", e)
                    .with_kind(kind)
                    .with_path(path)
            })?;
        let this = ContainerFile {
            path: path.to_path_buf(),
            fs: fs_kind_of(&file, path)?,
            file,
        };
        if this.fs == FsKind::Btrfs {
            // No-CoW while it is empty (btrfs takes the flag only then): its
            // extents stay where they are allocated, never compressed or
            // checksummed, so the raw disk's bytes are the file's
            let mut flags = rustix::fs::ioctl_getflags(&this.file)
                .map_err(|e| Error::from(e).with_path(path))?;
            flags.insert(IFlags::NOCOW);
            rustix::fs::ioctl_setflags(&this.file, flags).map_err(|e| {
                Error::from(e)
                    .with_kind(ErrorKind::UnsupportedFilesystem)
                    .with_path(path)
            })?;
            let set = rustix::fs::ioctl_getflags(&this.file)
                .map_err(|e| Error::from(e).with_path(path))?;
            if !set.contains(IFlags::NOCOW) {
                return Err(Error::new(
                    ErrorKind::UnsupportedFilesystem,
                    "btrfs did not keep the No-CoW flag (chattr +C) on the new container",
                )
                .with_path(path));
            }
        }
        rustix::fs::fallocate(&this.file, FallocateFlags::empty(), 0, size)
            .map_err(|e| Error::from(e).with_path(path))
            .map_err(|e| match e.kind() {
                ErrorKind::NoSpace => Error::new(
                    ErrorKind::NoSpace,
                    format!("not enough free space for a {size}-byte container"),
                )
                .with_path(path),
                _ => e,
            })?;
        this.file
            .sync_all()
            .op(|| "sync the container".into())
            .map_err(|e| e.with_path(path))?;
        // Where preallocation wrote zeros through the page cache (vfat), the
        // now clean pages are dropped: nothing may ever write them back over
        // the staged bytes, and nobody reads the image through the file.
        rustix::fs::fadvise(&this.file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| Error::from(e).with_path(path))?;
        sync_parent(path)?;
        Ok(this)
    }

    /// Open an existing container read-only (enough for its map and flags).
    pub fn open(path: &Path) -> Result<ContainerFile> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| Error::io("cannot open the container", e).with_path(path))?;
        Ok(ContainerFile {
            path: path.to_path_buf(),
            fs: fs_kind_of(&file, path)?,
            file,
        })
    }

    pub fn size(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .op(|| "stat the container".into())?
            .len())
    }

    /// (inode number, inode generation); (0, 0) on vfat, whose inode
    /// numbers do not survive a remount.
    pub fn identity(&self) -> Result<(u64, u32)> {
        if self.fs == FsKind::Vfat {
            return Ok((0, 0));
        }
        let ino = self
            .file
            .metadata()
            .op(|| "stat the container".into())?
            .ino();
        let generation = crate::sys::ioctl::inode_generation(&self.file)
            .map_err(|e| Error::from(e).with_path(&self.path))?;
        Ok((ino, generation))
    }

    pub fn is_pinned(&self) -> Result<bool> {
        if self.fs == FsKind::Vfat {
            let attrs = crate::sys::ioctl::fat_attributes(&self.file)
                .map_err(|e| Error::from(e).with_path(&self.path))?;
            return Ok(attrs & FAT_PIN_ATTRIBUTES == FAT_PIN_ATTRIBUTES);
        }
        let flags = rustix::fs::ioctl_getflags(&self.file)
            .map_err(|e| Error::from(e).with_path(&self.path))?;
        Ok(flags.contains(IFlags::IMMUTABLE))
    }

    /// Set or clear the immutable flag (on vfat: the read-only and system
    /// attributes).
    pub fn set_pinned(&self, pinned: bool) -> Result<()> {
        if self.fs == FsKind::Vfat {
            let mut attrs = crate::sys::ioctl::fat_attributes(&self.file)
                .map_err(|e| Error::from(e).with_path(&self.path))?;
            if pinned {
                attrs |= FAT_PIN_ATTRIBUTES;
            } else {
                attrs &= !FAT_PIN_ATTRIBUTES;
            }
            crate::sys::ioctl::set_fat_attributes(&self.file, attrs)
                .map_err(|e| Error::from(e).with_path(&self.path))?;
            return self.file.sync_all().op(|| "sync the container".into());
        }
        let mut flags = rustix::fs::ioctl_getflags(&self.file)
            .map_err(|e| Error::from(e).with_path(&self.path))?;
        flags.set(IFlags::IMMUTABLE, pinned);
        rustix::fs::ioctl_setflags(&self.file, flags).map_err(|e| {
            Error::from(e).with_path(&self.path).with_kind(
                if rustix::process::geteuid().is_root() {
                    ErrorKind::Io
                } else {
                    ErrorKind::NotRoot
                },
            )
        })?;
        self.file.sync_all().op(|| "sync the container".into())
    }

    /// Read the container's extents (FIEMAP with SYNC; FIBMAP on vfat) and
    /// build its map onto the disk, given where the filesystem's device is
    /// on the disk and its block (cluster) size.
    pub fn map(&self, device: &DeviceLayout, block_size: u64) -> Result<ExtentMap> {
        let size = self.size()?;
        if self.fs == FsKind::Vfat {
            let extents = self.fibmap_extents(size, block_size)?;
            return ExtentMap::from_file_extents(&extents, size, device)
                .map_err(|e| e.with_path(&self.path));
        }
        let raw = crate::sys::ioctl::fiemap(&self.file).map_err(|e| {
            Error::from(e)
                .with_kind(ErrorKind::UnsupportedFilesystem)
                .with_path(&self.path)
        })?;
        if self.fs == FsKind::Btrfs
            && raw
                .iter()
                .any(|e| e.fe_flags & fiemap::FIEMAP_EXTENT_SHARED != 0)
        {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                "the container's blocks are shared with a btrfs snapshot or a reflinked copy: a write through the disk would change that copy too. Delete the snapshot (`btrfs subvolume delete`, then `btrfs subvolume sync` until btrfs has dropped it) and try again; keep the staging's subvolume out of snapper and timeshift",
            )
            .with_path(&self.path));
        }
        let mut extents =
            fiemap::validate(&raw, size, block_size).map_err(|e| e.with_path(&self.path))?;
        if self.fs == FsKind::Btrfs {
            extents = self.btrfs_device_extents(&extents)?;
        }
        ExtentMap::from_file_extents(&extents, size, device).map_err(|e| e.with_path(&self.path))
    }

    /// btrfs: FIEMAP's logical addresses as offsets on the filesystem's
    /// one device, through the chunk tree read from the kernel now (a
    /// balance since moves them, and the map then differs). The file must
    /// still be No-CoW.
    fn btrfs_device_extents(
        &self,
        extents: &[fiemap::FileExtent],
    ) -> Result<Vec<fiemap::FileExtent>> {
        let fail = |e: rustix::io::Errno| {
            Error::from(e)
                .with_kind(ErrorKind::UnsupportedFilesystem)
                .with_path(&self.path)
        };
        let flags = rustix::fs::ioctl_getflags(&self.file).map_err(fail)?;
        if !flags.contains(IFlags::NOCOW) {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                "the container is not No-CoW (chattr +C): btrfs may move or checksum its blocks",
            )
            .with_path(&self.path));
        }
        crate::space::hostfs::btrfs_single_device_fsid(&self.file, &self.path)?;
        // the chunk items, a search answer at a time, each search from past
        // the last chunk found; one that does not move on ends it
        let mut chunks = Vec::new();
        let mut from = 0;
        loop {
            let mut args =
                btrfs::chunk_search_args(from, crate::sys::ioctl::BTRFS_SEARCH_ARGS_SIZE);
            crate::sys::ioctl::btrfs_tree_search(&self.file, &mut args).map_err(fail)?;
            let got = btrfs::parse_search_answer(&args).map_err(|e| e.with_path(&self.path))?;
            let Some(next) = btrfs::next_search_from(&got).filter(|&n| n > from) else {
                break;
            };
            chunks.extend(got);
            from = next;
        }
        // one device: every stripe is on it
        let devid = chunks
            .iter()
            .find(|c| c.flags & btrfs::BLOCK_GROUP_DATA != 0)
            .and_then(|c| c.stripes.first())
            .map_or(1, |s| s.devid);
        btrfs::to_device(extents, &chunks, devid).map_err(|e| e.with_path(&self.path))
    }
}

/// The kind of filesystem `file` is on, from its `statfs` magic: vfat is
/// told apart (it pins and maps differently); anything else is treated as
/// ext4/xfs, which `hostfs` alone admits.
fn fs_kind_of(file: &File, path: &Path) -> Result<FsKind> {
    /// `MSDOS_SUPER_MAGIC` from `<linux/magic.h>`.
    const MSDOS_SUPER_MAGIC: u64 = 0x4d44;
    const XFS_SUPER_MAGIC: u64 = 0x5846_5342;
    const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
    let st = rustix::fs::fstatfs(file).map_err(|e| Error::from(e).with_path(path))?;
    Ok(match st.f_type as u64 {
        MSDOS_SUPER_MAGIC => FsKind::Vfat,
        XFS_SUPER_MAGIC => FsKind::Xfs,
        BTRFS_SUPER_MAGIC => FsKind::Btrfs,
        _ => FsKind::Ext4,
    })
}

impl ContainerFile {
    /// The extents of a vfat file from FIBMAP: one query per cluster, runs
    /// of consecutive clusters merged, and each run's last block checked.
    fn fibmap_extents(&self, size: u64, cluster: u64) -> Result<Vec<fiemap::FileExtent>> {
        let fail = |e: rustix::io::Errno| {
            Error::from(e)
                .with_kind(ErrorKind::UnsupportedFilesystem)
                .with_path(&self.path)
        };
        let block = u64::from(crate::sys::ioctl::fibmap_block_size(&self.file).map_err(fail)?);
        if block == 0 || !cluster.is_multiple_of(block) {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                format!(
                    "FIBMAP counts {block}-byte blocks, not a divisor of the {cluster}-byte cluster"
                ),
            )
            .with_path(&self.path));
        }
        let per_cluster = cluster / block;
        let query = |b: u64| -> Result<u64> {
            let b = u32::try_from(b).map_err(|_| fail(rustix::io::Errno::FBIG))?;
            crate::sys::ioctl::fibmap(&self.file, b)
                .map(u64::from)
                .map_err(fail)
        };
        let starts = (0..size.div_ceil(cluster))
            .map(|c| query(c * per_cluster))
            .collect::<Result<Vec<u64>>>()?;
        let extents = fiemap::extents_from_block_map(&starts, per_cluster, block, size)
            .map_err(|e| e.with_path(&self.path))?;
        for e in &extents {
            let last = (e.logical + e.length) / block - 1;
            let expected = (e.physical + e.length) / block - 1;
            if query(last)? != expected {
                return Err(Error::new(
                    ErrorKind::UnsupportedFilesystem,
                    format!("FIBMAP: block {last} is not where its cluster run says ({expected})"),
                )
                .with_path(&self.path));
            }
        }
        Ok(extents)
    }
}

/// Unpin and delete a container, then sync its directory. A missing file
/// is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match ContainerFile::open(path) {
        Ok(c) => {
            if c.is_pinned()? {
                c.set_pinned(false)?;
            }
        }
        Err(_) if !path.exists() => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::remove_file(path)
        .op(|| "delete the container".into())
        .map_err(|e| e.with_path(path))?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_names() {
        let d = Path::new("/d");
        assert_eq!(piece_path_for(d, "web", 1), Path::new("/d/web.liverestore"));
        assert_eq!(
            piece_path_for(d, "web", 3),
            Path::new("/d/web+3.liverestore")
        );
        assert!(is_container_of("web.liverestore", "web"));
        assert!(is_container_of("web+12.liverestore", "web"));
        assert!(!is_container_of("web+.liverestore", "web"));
        assert!(!is_container_of("web-p1.liverestore", "web"));
        assert!(!is_container_of("web+2x.liverestore", "web"));
        assert!(!is_container_of("web", "web"));
    }
}
