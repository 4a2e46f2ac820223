//! The restored system's view of how it was booted: the disk it runs
//! from (under the device-mapper root of a mapped boot, or holding the
//! root partition of a native one) and its own on-disk header, found at
//! the offset the kernel command line gives (`liverestore.header=`) and
//! checked to be the staging it names (`liverestore.id=`). The header
//! tells what the activation was and what the old system was
//! ([`ActivationNote`]).

use std::path::{Path, PathBuf};

use crate::boot::plan::DM_NAME;
use crate::error::{Error, ErrorKind, Result};
use crate::space::hostfs;
use crate::store::record::{ActivationNote, StagingRecord};

/// The kernel argument with the disk offset of the staging's header.
pub const HEADER_ARG: &str = "liverestore.header=";

/// The disk the restored system runs from.
pub struct RestoredDisk {
    pub path: PathBuf,
    /// Its logical sector size.
    pub sector_size: u64,
}

/// The disk the running restored system was booted from.
pub fn disk() -> Result<RestoredDisk> {
    let (name, dev) = match dm_disk(Path::new("/sys/block")) {
        Ok(d) => d,
        // a native boot: the disk whose partition is the root
        Err(e) if e.kind() == ErrorKind::InvalidState => {
            let root = hostfs::discover(Path::new("/"))?;
            (
                root.block.disk_name.clone(),
                format!("{}:{}", root.block.disk_major, root.block.disk_minor),
            )
        }
        Err(e) => return Err(e),
    };
    let (major, minor) = dev
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::new(ErrorKind::UnsupportedDevice, format!("device {dev}")))?;
    Ok(RestoredDisk::at(&hostfs::dev_node(&name, major, minor)?))
}

impl RestoredDisk {
    /// The disk whose node is `node` (`/dev/vda`).
    pub fn at(node: &Path) -> RestoredDisk {
        let name = node.file_name().unwrap_or_default().to_string_lossy();
        RestoredDisk {
            sector_size: hostfs::logical_sector_size(&name),
            path: node.to_path_buf(),
        }
    }
}

/// The disk under the device-mapper device [`DM_NAME`]: (name, "major:minor").
fn dm_disk(sys_block: &Path) -> Result<(String, String)> {
    let none = || {
        Error::new(
            ErrorKind::InvalidState,
            format!("no device-mapper device '{DM_NAME}': was this system started by liverestore?"),
        )
    };
    let dm = std::fs::read_dir(sys_block)
        .map_err(|e| Error::io("list block devices", e).with_path(sys_block))?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("dm/name")).is_ok_and(|n| n.trim() == DM_NAME))
        .ok_or_else(none)?;
    let slaves: Vec<String> = std::fs::read_dir(dm.join("slaves"))
        .map_err(|e| Error::io("list the device-mapper device's disks", e).with_path(&dm))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let [disk] = slaves.as_slice() else {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!("'{DM_NAME}' sits on {} devices, not one disk", slaves.len()),
        ));
    };
    let dev = std::fs::read_to_string(sys_block.join(disk).join("dev"))
        .map_err(|e| Error::io("read the disk's device number", e))?;
    Ok((disk.clone(), dev.trim().to_string()))
}

/// The (id, header offset) a command line names; None for a boot made
/// before liverestore put them there.
pub fn header_args(cmdline: &str) -> Option<(uuid::Uuid, u64)> {
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    Some((
        arg(super::ID_ARG)?.parse().ok()?,
        arg(HEADER_ARG)?.parse().ok()?,
    ))
}

/// The running restored system's own staging, read from its on-disk
/// header (None: the command line does not say where it is).
pub fn own_record() -> Result<Option<StagingRecord>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some((id, offset)) = header_args(&cmdline) else {
        return Ok(None);
    };
    let d = disk()?;
    let file = std::fs::File::open(&d.path)
        .map_err(|e| Error::io("open the disk", e).with_path(&d.path))?;
    let rec = crate::stage::scan::read_header_at(&file, offset)
        .map_err(|e| e.with_path(&d.path).with_offset(offset))?;
    if rec.id != id {
        return Err(Error::new(
            ErrorKind::MapChanged,
            format!(
                "the header at byte {offset} of {} is '{}' ({}), not the staging this system was booted from ({id})",
                d.path.display(),
                rec.name,
                rec.id
            ),
        ));
    }
    Ok(Some(rec))
}

/// The activation the header describes, if the command line says where
/// the header is and it holds one.
pub fn own_note() -> Result<Option<ActivationNote>> {
    Ok(own_record()?.and_then(|r| r.activation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_under_the_mapped_root() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        std::fs::create_dir_all(sys.join("dm-0/dm")).unwrap();
        std::fs::write(sys.join("dm-0/dm/name"), format!("{DM_NAME}\n")).unwrap();
        assert_eq!(
            dm_disk(sys).unwrap_err().kind(),
            ErrorKind::Io,
            "no slaves directory"
        );
        std::fs::create_dir_all(sys.join("dm-0/slaves/vda")).unwrap();
        std::fs::create_dir_all(sys.join("vda")).unwrap();
        std::fs::write(sys.join("vda/dev"), "254:0\n").unwrap();
        assert_eq!(dm_disk(sys).unwrap(), ("vda".into(), "254:0".into()));
        std::fs::write(sys.join("dm-0/dm/name"), "other\n").unwrap();
        assert_eq!(dm_disk(sys).unwrap_err().kind(), ErrorKind::InvalidState);
    }

    #[test]
    fn where_the_header_is() {
        let id = uuid::Uuid::from_u128(5);
        assert_eq!(
            header_args(&format!(
                "ro liverestore.id={id} liverestore.header=1048576 quiet"
            )),
            Some((id, 1048576))
        );
        assert_eq!(header_args(&format!("liverestore.id={id}")), None);
        assert_eq!(header_args("liverestore.header=1 liverestore.id=x"), None);
    }
}
