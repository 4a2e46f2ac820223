//! Stable identities of the disk, partition and filesystem that hold a
//! container: GPT disk GUID / MBR signature, partition UUID, filesystem UUID
//! and serial. Paths like /dev/sda can change between boots; these do not.

use std::fs::File;

use crate::error::Result;
use crate::space::hostfs::{self, HostTarget};
use crate::store::record::{DiskInfo, HostInfo};

/// The MBR disk signature (hex) from sector 0, if it holds an MBR that is
/// not GPT's protective one.
pub fn mbr_signature(sector0: &[u8]) -> Option<String> {
    if sector0.len() < 512 || sector0[510..512] != [0x55, 0xaa] {
        return None;
    }
    let protective = (0..4).any(|i| sector0[446 + 16 * i + 4] == 0xee);
    if protective {
        return None;
    }
    let sig = u32::from_le_bytes(sector0[440..444].try_into().ok()?);
    (sig != 0).then(|| format!("{sig:08x}"))
}

fn gpt_ids(target: &HostTarget) -> (Option<String>, Option<String>) {
    let Ok(mut f) = File::open(&target.disk_path) else {
        return (None, None);
    };
    let Ok(gpt) = gptman::GPT::read_from(&mut f, u64::from(target.block.logical_sector_size))
    else {
        return (None, None);
    };
    let disk = uuid::Uuid::from_bytes_le(gpt.header.disk_guid).to_string();
    let part = target
        .block
        .partition_number
        .and_then(|n| gpt.iter().find(|(i, _)| *i == n))
        .filter(|(_, e)| e.is_used())
        .map(|(_, e)| uuid::Uuid::from_bytes_le(e.unique_partition_guid).to_string());
    (Some(disk), part)
}

/// Describe the host side of `target` (needs read access to the disk).
pub fn describe(target: &HostTarget) -> Result<(HostInfo, DiskInfo)> {
    let head = crate::map::disk_io::read_raw(
        &target.disk_path,
        target.block.start,
        hostfs::fs_head_len(target.fs),
    )?;
    let sector0 = crate::map::disk_io::read_raw(&target.disk_path, 0, 512)?;
    let (gpt_guid, gpt_part) = gpt_ids(target);
    let mbr = if gpt_guid.is_none() {
        mbr_signature(&sector0)
    } else {
        None
    };
    let partition_uuid = gpt_part.or_else(|| {
        let n = target.block.partition_number?;
        mbr.as_ref().map(|sig| format!("{sig}-{n:02x}"))
    });
    let host = HostInfo {
        fs_type: target.fs.as_str().to_string(),
        fs_uuid: hostfs::fs_uuid(target.fs, &head),
        mount_point: target.mount.mount_point.display().to_string(),
        device: format!("/dev/{}", target.block.name),
        start: target.block.start,
        size: target.block.size,
        partition_number: target.block.partition_number,
        partition_uuid,
        volume_pieces: if target.block.layout.is_contiguous() {
            Vec::new()
        } else {
            target.block.layout.pieces().to_vec()
        },
    };
    let disk = DiskInfo {
        path: target.disk_path.display().to_string(),
        size: target.block.disk_size,
        logical_sector_size: target.block.logical_sector_size,
        physical_sector_size: target.block.physical_sector_size,
        gpt_guid,
        mbr_signature: mbr,
        serial: target.block.serial.clone(),
    };
    Ok((host, disk))
}

/// The identity of the whole disk `dev` (a block device or an image
/// file): GPT disk GUID, else MBR signature, with its size; `path` is
/// `dev`; no serial (which [`DiskInfo::same_disk`] then does not compare).
pub fn disk_identity(dev: &std::path::Path, logical_sector_size: u32) -> Result<DiskInfo> {
    let file =
        File::open(dev).map_err(|e| crate::error::Error::io("open a disk", e).with_path(dev))?;
    let size = crate::sys::ioctl::block_device_size(&file)
        .or_else(|_| file.metadata().map(|m| m.len()))
        .map_err(|e| crate::error::Error::io("find the size of a disk", e).with_path(dev))?;
    let sector0 = crate::map::disk_io::read_raw(dev, 0, 512)?;
    let mut f = &file;
    let gpt_guid = gptman::GPT::read_from(&mut f, u64::from(logical_sector_size.max(512)))
        .ok()
        .map(|g| uuid::Uuid::from_bytes_le(g.header.disk_guid).to_string());
    let mbr_signature = gpt_guid
        .is_none()
        .then(|| mbr_signature(&sector0))
        .flatten();
    Ok(DiskInfo {
        path: dev.display().to_string(),
        size,
        logical_sector_size,
        physical_sector_size: logical_sector_size,
        gpt_guid,
        mbr_signature,
        serial: None,
    })
}

/// The disk `info` describes, found by its identity among the whole disks
/// the kernel has now (`/sys/block`), under the name it has now: exactly
/// one must match, else [`crate::ErrorKind::NotFound`] (the disk is gone,
/// or two disks claim the same identity: a clone).
pub fn find_disk(info: &DiskInfo) -> Result<std::path::PathBuf> {
    let mut found = Vec::new();
    let dir = std::fs::read_dir("/sys/block")
        .map_err(|e| crate::error::Error::io("list the disks (/sys/block)", e))?;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["dm-", "ram", "zram", "sr", "md", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let sectors: u64 = std::fs::read_to_string(entry.path().join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors * 512 != info.size {
            continue;
        }
        let dev = std::path::Path::new("/dev").join(&name);
        if let Ok(candidate) = disk_identity(&dev, info.logical_sector_size)
            && candidate.same_disk(info)
        {
            found.push(dev);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(crate::error::Error::new(
            crate::ErrorKind::NotFound,
            format!(
                "the disk (GPT {}, MBR {}, {} bytes; called {} before) is not attached now",
                info.gpt_guid.as_deref().unwrap_or("-"),
                info.mbr_signature.as_deref().unwrap_or("-"),
                info.size,
                info.path
            ),
        )),
        _ => Err(crate::error::Error::new(
            crate::ErrorKind::NotFound,
            format!(
                "several disks have the identity of {} ({}): a clone? refusing to guess",
                info.path,
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_signatures() {
        let mut s = vec![0u8; 512];
        assert_eq!(mbr_signature(&s), None);
        s[510] = 0x55;
        s[511] = 0xaa;
        s[440..444].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        assert_eq!(mbr_signature(&s).as_deref(), Some("deadbeef"));
        s[446 + 4] = 0xee;
        assert_eq!(mbr_signature(&s), None);
    }
}
