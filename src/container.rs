//! The container: an ordinary file of the host filesystem whose blocks hold
//! the staged image. Allocate → pin → map, in that order (as Android's
//! `fiemap_writer` does): `fallocate` gives unwritten extents (the
//! filesystem keeps reading zeros, nothing is written twice), the immutable
//! flag stops every tool from moving or freeing the blocks (ext4's
//! move-extent refuses immutable inodes, xfs_fsr skips them), and FIEMAP
//! then tells where the blocks are.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, IFlags};

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::extent_map::ExtentMap;
use crate::fiemap;

/// File name suffix of containers.
pub const SUFFIX: &str = ".liverestore";

/// The container path for staging `name` in `dir`.
pub fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SUFFIX}"))
}

/// An open container file.
#[derive(Debug)]
pub struct ContainerFile {
    path: PathBuf,
    file: File,
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
            file,
        };
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
        sync_parent(path)?;
        Ok(this)
    }

    /// Open an existing container read-only (enough for FIEMAP and flags).
    pub fn open(path: &Path) -> Result<ContainerFile> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| Error::io("cannot open the container", e).with_path(path))?;
        Ok(ContainerFile {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .op(|| "stat the container".into())?
            .len())
    }

    /// (inode number, inode generation).
    pub fn identity(&self) -> Result<(u64, u32)> {
        let ino = self
            .file
            .metadata()
            .op(|| "stat the container".into())?
            .ino();
        let generation = crate::sys::inode_generation(&self.file)
            .map_err(|e| Error::from(e).with_path(&self.path))?;
        Ok((ino, generation))
    }

    pub fn is_pinned(&self) -> Result<bool> {
        let flags = rustix::fs::ioctl_getflags(&self.file)
            .map_err(|e| Error::from(e).with_path(&self.path))?;
        Ok(flags.contains(IFlags::IMMUTABLE))
    }

    /// Set or clear the immutable flag.
    pub fn set_pinned(&self, pinned: bool) -> Result<()> {
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

    /// Read the container's extents (FIEMAP with SYNC) and build its map
    /// onto the disk, given the byte offset of the filesystem on the disk.
    pub fn map(&self, fs_start: u64, block_size: u64) -> Result<ExtentMap> {
        let size = self.size()?;
        let raw = crate::sys::fiemap(&self.file).map_err(|e| {
            Error::from(e)
                .with_kind(ErrorKind::UnsupportedFilesystem)
                .with_path(&self.path)
        })?;
        let extents =
            fiemap::validate(&raw, size, block_size).map_err(|e| e.with_path(&self.path))?;
        ExtentMap::from_file_extents(&extents, size, fs_start).map_err(|e| e.with_path(&self.path))
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
