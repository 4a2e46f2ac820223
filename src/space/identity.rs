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
    let head = crate::map::disk_io::read_raw(&target.disk_path, target.block.start, 2048)?;
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
