//! The userspace fallback for `attach` on a kernel without device-mapper:
//! a FUSE filesystem with one file, `image`, whose bytes are read from the
//! raw disk through the staged image's map; `attach` then puts a loop
//! device over that file. Served by a background `liverestore serve-image
//! NAME MOUNTPOINT [--writable]` process that exits when the filesystem is
//! unmounted (by `detach`).
//!
//! Writable (`attach --rw=direct`, used by `customize`): writes go through
//! a [`DiskWriter`] — the one choke point for disk writes — confined to
//! the staging's map; a write that is not sector-aligned is read, patched
//! and written back whole.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::error::{Error, Result};
use crate::map::disk_io::{AlignedBuf, DiskWriter};
use crate::map::extent_map::ExtentMap;
use crate::store::state_dir::StateDir;

const ROOT: INodeNo = INodeNo(1);
const IMAGE: INodeNo = INodeNo(2);
/// The file's name inside the mount.
pub const FILE_NAME: &str = "image";
const TTL: Duration = Duration::from_secs(3600);

struct ImageFs {
    disk: File,
    map: ExtentMap,
    size: u64,
    /// Writable: the writer (container offsets) and where the image starts
    /// in the container, and the sector size writes are aligned to.
    writer: Option<std::sync::Mutex<DiskWriter>>,
    data_offset: u64,
    align: u64,
}

impl ImageFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o555, 0, 2)
        } else if self.writer.is_some() {
            (FileType::RegularFile, 0o644, self.size, 1)
        } else {
            (FileType::RegularFile, 0o444, self.size, 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Image bytes [offset, offset+len) from the disk, through the map.
    fn read_image(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let len = len.min(self.size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        if len == 0 {
            return Ok(buf);
        }
        let runs = self
            .map
            .translate(offset, len)
            .map_err(std::io::Error::other)?;
        for r in runs {
            let dst = &mut buf[r.buf_offset as usize..(r.buf_offset + r.length) as usize];
            self.disk.read_exact_at(dst, r.disk)?;
        }
        Ok(buf)
    }

    /// Flush what was written to the disk, and answer.
    fn reply_sync(&self, reply: ReplyEmpty) {
        match self.sync() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn sync(&self) -> Result<()> {
        match &self.writer {
            Some(w) => w
                .lock()
                .map_err(|_| Error::new(crate::ErrorKind::Io, "writer poisoned"))?
                .sync(),
            None => Ok(()),
        }
    }

    /// Write `data` at image offset `offset` through the writer: whole
    /// sectors, the partial ones at either end read and patched first.
    fn write_image(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let Some(writer) = &self.writer else {
            return Err(rustix::io::Errno::ROFS.into());
        };
        let end = offset + data.len() as u64;
        if end > self.size {
            return Err(rustix::io::Errno::FBIG.into());
        }
        let a = self.align;
        let start = offset / a * a;
        let stop = end.div_ceil(a) * a;
        let mut buf = AlignedBuf::new((stop - start) as usize);
        if start != offset || stop != end {
            // The image size is a multiple of the sector size (staging
            // requires it), so [start, stop) is all image.
            let old = self.read_image(start, stop - start)?;
            buf[..old.len()].copy_from_slice(&old);
        }
        buf[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        let mut w = writer
            .lock()
            .map_err(|_| std::io::Error::other("writer poisoned"))?;
        w.write_at(self.data_offset + start, buf.whole())
            .map_err(std::io::Error::other)
    }
}

impl Filesystem for ImageFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.attr(IMAGE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == ROOT || ino == IMAGE {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != IMAGE {
            reply.error(Errno::EISDIR);
        } else if flags.acc_mode() != OpenAccMode::O_RDONLY && self.writer.is_none() {
            reply.error(Errno::EROFS);
        } else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
        match self.read_image(offset, u64::from(size)) {
            Ok(data) => reply.data(&data),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != IMAGE {
            return reply.error(Errno::EISDIR);
        }
        match self.write_image(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(Errno::from_i32(
                e.raw_os_error()
                    .unwrap_or(rustix::io::Errno::IO.raw_os_error()),
            )),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_sync(reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.reply_sync(reply);
    }

    fn destroy(&mut self) {
        let _ = self.sync();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (IMAGE, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Serve the image of `name` at `mountpoint` until it is unmounted. The
/// map is revalidated first; the disk is opened read-only, and with
/// `writable` also for writes through a [`DiskWriter`].
pub fn serve(state: &StateDir, name: &str, mountpoint: &Path, writable: bool) -> Result<()> {
    let rec = state.load(name)?;
    let checked = crate::stage::staged::revalidate(&rec)?;
    let disk = File::open(&checked.target.disk_path)
        .map_err(|e| Error::io("cannot open the disk", e).with_path(&checked.target.disk_path))?;
    let writer = if writable {
        let w = DiskWriter::for_staging(&rec, &checked.target, checked.map.clone())?;
        Some(std::sync::Mutex::new(w))
    } else {
        None
    };
    let fs = ImageFs {
        disk,
        map: rec.image_map()?,
        size: rec.image.size,
        writer,
        data_offset: rec.container.data_offset,
        align: checked.target.io_align(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::FSName(format!("liverestore-{name}")),
        MountOption::Subtype("liverestore".into()),
    ];
    fuser::mount(fs, mountpoint, &config)
        .map_err(|e| Error::io("cannot serve the image over FUSE", e).with_path(mountpoint))
}
