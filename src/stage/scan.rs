//! A raw scan of a disk for liverestore headers: finds staged images with
//! no help from the host filesystem or the state directory.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::store::header;

/// A header found on the disk.
#[derive(Debug, Clone, Serialize)]
pub struct FoundHeader {
    pub disk_offset: u64,
    pub valid: bool,
    pub error: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub state: Option<String>,
    pub image_size: Option<u64>,
    pub container: Option<String>,
}

/// Headers start on sector boundaries (containers start on filesystem
/// blocks, which are whole sectors).
const STEP: usize = 512;
const WINDOW: usize = 8 << 20;

pub(crate) fn read_header_at(file: &File, at: u64) -> Result<crate::store::record::StagingRecord> {
    let mut b0 = vec![0u8; header::BLOCK0_SIZE];
    file.read_exact_at(&mut b0, at)
        .op(|| "read the header".into())?;
    let block0 = header::decode_block0(&b0)?;
    if block0.self_disk_offset != at {
        return Err(Error::new(
            crate::ErrorKind::Corrupt,
            format!(
                "header copy: it belongs at disk byte {}",
                block0.self_disk_offset
            ),
        ));
    }
    let mut bytes = vec![0u8; block0.used_len() as usize];
    for run in block0.boot_map.translate(0, block0.used_len())? {
        let dst = &mut bytes[run.buf_offset as usize..(run.buf_offset + run.length) as usize];
        file.read_exact_at(dst, run.disk)
            .op(|| "read the header".into())?;
    }
    header::decode_body(&block0, &bytes)
}

/// Scan all of `disk` (a block device or an image file).
pub fn scan(disk: &Path, progress: &dyn Progress) -> Result<Vec<FoundHeader>> {
    let file = File::open(disk)
        .op(|| "cannot open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    let meta = file.metadata().op(|| "stat the disk".into())?;
    let size = if meta.file_type().is_block_device() {
        crate::sys::ioctl::block_device_size(&file).map_err(|e| Error::from(e).with_path(disk))?
    } else {
        meta.len()
    };
    let mut found = Vec::new();
    let mut buf = vec![0u8; WINDOW];
    let mut pos = 0u64;
    progress.begin("scan", size);
    while pos < size {
        let len = ((size - pos) as usize).min(WINDOW);
        file.read_exact_at(&mut buf[..len], pos)
            .op(|| "read the disk".into())
            .map_err(|e| e.with_path(disk).with_offset(pos))?;
        for off in (0..len).step_by(STEP) {
            if !header::has_magic(&buf[off..]) {
                continue;
            }
            let at = pos + off as u64;
            let entry = match read_header_at(&file, at) {
                Ok(rec) => FoundHeader {
                    disk_offset: at,
                    valid: true,
                    error: None,
                    id: Some(rec.id.to_string()),
                    name: Some(rec.name),
                    state: Some(rec.state.as_str().to_string()),
                    image_size: Some(rec.image.size),
                    container: Some(rec.container.path),
                },
                Err(e) => FoundHeader {
                    disk_offset: at,
                    valid: false,
                    error: Some(e.to_string()),
                    id: None,
                    name: None,
                    state: None,
                    image_size: None,
                    container: None,
                },
            };
            found.push(entry);
        }
        pos += len as u64;
        progress.update(pos);
    }
    progress.end();
    Ok(found)
}

/// Stagings on the disk under `target` that none of the `known` records
/// is, found by their on-disk headers alone: the first block of every
/// container file (`*.liverestore`) of every mounted filesystem of that
/// disk (each walked on its own, as `find -xdev` would) is read on the
/// raw disk. A lost state directory therefore cannot make their space
/// look free. (A header lives at the start of its first container, a
/// file; the image data a lost record's unallocated segments hold carry
/// no mark of their own, so the files are where to look. Reading the
/// whole raw disk, as `scan` does, would find the same headers in time
/// proportional to the disk, not to its files.)
pub fn unknown_stagings(
    target: &crate::space::hostfs::HostTarget,
    known: &[crate::store::record::StagingRecord],
) -> Result<Vec<crate::store::record::StagingRecord>> {
    use crate::space::hostfs;
    let disk = File::open(&target.disk_path)
        .op(|| "open the disk".into())
        .map_err(|e| e.with_path(&target.disk_path))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .op(|| "read /proc/self/mountinfo".into())?;
    let mut seen_fs = Vec::new();
    let mut found = Vec::new();
    for m in hostfs::parse_mountinfo(&mountinfo) {
        if seen_fs.contains(&(m.major, m.minor)) {
            continue;
        }
        // only this disk's filesystems, each once; which disk a mount is
        // on is read from sysfs (and device-mapper's tables, btrfs's device
        // list): no other filesystem is touched
        let on_this_disk = hostfs::mount_device(&m, &m.mount_point)
            .ok()
            .and_then(|(major, minor)| {
                hostfs::SysBlock::resolve(Path::new("/sys"), major, minor).ok()
            })
            .is_some_and(|b| {
                (b.disk_major, b.disk_minor) == (target.block.disk_major, target.block.disk_minor)
            });
        if !on_this_disk {
            continue;
        }
        let Ok(fs) = hostfs::discover(&m.mount_point) else {
            continue;
        };
        seen_fs.push((m.major, m.minor));
        // the mounted tree only (btrfs: the mounted subvolume's own
        // number, which its files carry, not the mount's)
        let dev = match m.fs_type.as_str() {
            "btrfs" => match std::fs::metadata(&m.mount_point) {
                Ok(meta) => meta.dev(),
                Err(_) => continue,
            },
            _ => rustix::fs::makedev(m.major, m.minor),
        };
        let mut dirs = vec![m.mount_point.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let path = entry.path();
                if meta.dev() != dev {
                    continue;
                }
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = entry.file_name();
                if !meta.is_file()
                    || !name
                        .to_string_lossy()
                        .ends_with(crate::space::container::SUFFIX)
                {
                    continue;
                }
                let Ok(map) = crate::space::container::ContainerFile::open(&path)
                    .and_then(|c| c.map(&fs.block.layout, fs.fs_block_size))
                else {
                    continue;
                };
                let Some(first) = map.extents().first() else {
                    continue;
                };
                if let Ok(rec) = read_header_at(&disk, first.disk)
                    && !known.iter().any(|k| k.id == rec.id)
                    && !found
                        .iter()
                        .any(|f: &crate::store::record::StagingRecord| f.id == rec.id)
                {
                    found.push(rec);
                }
            }
        }
    }
    Ok(found)
}
