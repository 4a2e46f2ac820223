//! Native activation: when a staged image is one contiguous run of the
//! disk outside every partition (`stage --contiguous --unallocated`), it
//! boots as an ordinary partition — a GPT entry over exactly its bytes
//! ([`crate::boot::partition_entry`]) and `root=PARTUUID=…` — with the restored
//! system's own kernel and initrd, and no device-mapper: the early-boot
//! step appended to the initrd only notes the boot and arms the trial's
//! deadline ([`crate::boot::plan::BootPlan::native`]). The partitions of a whole-disk image get an entry each,
//! with the type, name, attributes and partition GUID they had in the
//! image (a new GUID where the disk already uses that one), so the
//! restored system finds them as it expects.
//!
//! An image staged whole into the logical volume `--lvm-free` made boots
//! natively from that volume ([`VolumeBoot`]): `root=` names it and the
//! restored initrd's own LVM activates it; nothing on the disk changes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::boot::partition_entry::{self, EntryKind, PartitionEntry, TableKind};
use crate::error::{Error, ErrorKind, Result};
use crate::store::record::StagingRecord;

/// One partition entry a native activation added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeBoot {
    /// The staging it covers.
    pub staging: String,
    /// The disk's name at activation (for messages).
    pub disk: String,
    /// The disk's identity: `rollback` finds the disk by it, under
    /// whatever name it has then (None in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_identity: Option<crate::store::record::DiskInfo>,
    pub sector_size: u64,
    pub kind: EntryKind,
    pub partition: PartitionEntry,
}

impl NativeBoot {
    fn new(
        rec: &StagingRecord,
        disk: &Path,
        sector_size: u64,
        kind: EntryKind,
        partition: PartitionEntry,
    ) -> NativeBoot {
        NativeBoot {
            staging: rec.name.clone(),
            disk: disk.display().to_string(),
            disk_identity: Some(crate::store::record::DiskInfo {
                path: disk.display().to_string(),
                ..rec.disk.clone()
            }),
            sector_size,
            kind,
            partition,
        }
    }

    /// The root argument of the restored system's boot.
    pub fn root_arg(&self) -> String {
        format!("root=PARTUUID={}", self.partition.partuuid)
    }
}

/// A native boot from the logical volume that `stage --lvm-free` made for
/// the image: the volume is the image from its first byte, so the
/// restored system's own initrd finds its root there once LVM has
/// activated the volume — `root=/dev/mapper/VG-LV` (initramfs-tools'
/// lvm2 script activates the volume `root=` names) and `rd.lvm.lv=VG/LV`
/// (dracut activates the volumes named so). Nothing on the disk changes:
/// no partition entry; [`check_volume_initrd`] makes sure first that the
/// restored initrd carries LVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBoot {
    /// The staging it boots.
    pub staging: String,
    pub vg: String,
    pub lv: String,
}

impl VolumeBoot {
    /// The root arguments of the restored system's boot.
    pub fn root_arg(&self) -> String {
        format!(
            "root=/dev/mapper/{} rd.lvm.lv={}/{}",
            crate::space::lvm::dm_name(&self.vg, &self.lv),
            self.vg,
            self.lv
        )
    }
}

/// The volume `rec` can boot natively from: its one logical volume
/// (`--lvm-free`), when the image's map is that volume's from its first
/// byte (both maps normalized: the same bytes, however split). None: a
/// staging in files, in unallocated space, or not whole in its volume.
pub fn volume_of(rec: &StagingRecord) -> Option<VolumeBoot> {
    let [v] = rec.volumes()[..] else {
        return None;
    };
    let volume = v.map().ok()?.slice(0, rec.image.size).ok()?;
    (rec.image_map().ok()? == volume).then(|| VolumeBoot {
        staging: rec.name.clone(),
        vg: v.vg.clone(),
        lv: v.lv.clone(),
    })
}

/// The paths at which initrds carry LVM's tool: initramfs-tools' lvm2
/// hook and dracut's lvm module copy it from the image.
fn is_lvm_tool(path: &str) -> bool {
    matches!(path, "sbin/lvm" | "usr/sbin/lvm")
}

/// Refuse ([`ErrorKind::InvalidState`]) to boot `boot` natively when the
/// restored system's initrd has no LVM: it would wait for its root for
/// ever. Ok(false): its compression is one liverestore does not read, so
/// it could not tell.
pub fn check_volume_initrd(boot: &VolumeBoot, kernel_version: &str, initrd: &[u8]) -> Result<bool> {
    match crate::boot::initrd::initrd_holds(initrd, is_lvm_tool)? {
        Some(true) => Ok(true),
        None => Ok(false),
        Some(false) => Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{}' cannot boot natively from {}/{}: its initrd for kernel {kernel_version} has no LVM (no /sbin/lvm in it), so it would never find its root; install lvm2 in the image and make its initrd again, or boot it mapped (--boot mapped)",
                boot.staging, boot.vg, boot.lv
            ),
        )),
    }
}

/// The disk bytes a partition entry would cover: the image's one extent,
/// rounded up to whole sectors, inside one unallocated segment; None when
/// the image is not laid out so.
pub fn image_range(rec: &StagingRecord) -> Option<(u64, u64)> {
    let map = rec.image_map().ok()?;
    let [e] = map.extents() else {
        return None;
    };
    let ss = u64::from(rec.disk.logical_sector_size).max(512);
    let length = rec.image.size.div_ceil(ss) * ss;
    rec.unallocated_ranges()
        .iter()
        .any(|&(lo, hi)| e.disk >= lo && e.disk + length <= hi)
        .then_some((e.disk, length))
}

/// The entry's kind and its preferred GUID: as in the image's table for
/// a partition of a whole-disk image, a Linux filesystem otherwise.
fn kind_of(rec: &StagingRecord) -> (EntryKind, Option<uuid::Uuid>) {
    let entry = rec.image.partition.as_ref().and_then(|p| p.entry());
    let parse = |s: &Option<String>| s.as_deref().and_then(|g| g.parse::<uuid::Uuid>().ok());
    match entry {
        Some(e) => (
            EntryKind {
                type_guid: parse(&e.type_guid).unwrap_or(partition_entry::LINUX_FS_TYPE),
                name: e
                    .label
                    .clone()
                    .filter(|l| !l.is_empty())
                    .unwrap_or_else(|| format!("liverestore {}", rec.name)),
                attributes: e.attributes,
                mbr_type: e.mbr_type,
            },
            parse(&e.guid),
        ),
        None => (EntryKind::linux(&format!("liverestore {}", rec.name)), None),
    }
}

/// Plan the entries of `recs` (all staged natively; the root first) in
/// a copy of the disk's table (GPT, or an MBR without logical partitions):
/// nothing is written. Refused when one is not contiguous outside every
/// partition, the disk has no usable table, or an entry does not fit.
pub fn prepare(recs: &[&StagingRecord]) -> Result<Vec<NativeBoot>> {
    let first = recs.first().expect("at least the root");
    // The disk by the name it has now, found by its identity: the table
    // written is that disk's, whatever it was called at staging.
    let disk_path = crate::stage::staged::revalidate(first)?.target.disk_path;
    let disk = disk_path.as_path();
    let ss = u64::from(first.disk.logical_sector_size).max(512);
    let sector0 = crate::map::disk_io::read_raw(disk, 0, 512)?;
    let ranges = recs
        .iter()
        .map(|rec| {
            image_range(rec).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "'{}' is not one contiguous range outside every partition: stage it with --unallocated --contiguous to boot it natively",
                        rec.name
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::new();
    match partition_entry::table_kind(&sector0) {
        Some(TableKind::Gpt) => {
            let mut f = std::fs::File::open(disk)
                .map_err(|e| Error::io("open the disk", e).with_path(disk))?;
            let mut gpt = gptman::GPT::read_from(&mut f, ss).map_err(|e| {
                Error::new(
                    ErrorKind::UnsupportedDevice,
                    format!("no usable GPT on {} ({e})", disk.display()),
                )
            })?;
            for (rec, &(start, length)) in recs.iter().zip(&ranges) {
                let (kind, wanted) = kind_of(rec);
                let kind = EntryKind {
                    mbr_type: None,
                    ..kind
                };
                // The image's own GUID, unless this disk or (as udev knows
                // them) another one already has it: root=PARTUUID must be
                // unambiguous.
                let guid = match wanted.filter(|g| {
                    !partition_entry::guid_in_use(&gpt, *g)
                        && !Path::new("/dev/disk/by-partuuid")
                            .join(g.to_string())
                            .exists()
                }) {
                    Some(g) => g,
                    None => crate::sys::random::uuid_v4()?,
                };
                let number = partition_entry::add(&mut gpt, start, length, &kind, guid)?;
                let partition = PartitionEntry {
                    number,
                    guid,
                    partuuid: guid.to_string(),
                    start,
                    length,
                };
                out.push(NativeBoot::new(rec, disk, ss, kind, partition));
            }
        }
        Some(TableKind::Mbr) => {
            let mut mbr = partition_entry::read_mbr(disk, ss)?;
            for (rec, &(start, length)) in recs.iter().zip(&ranges) {
                let (kind, _) = kind_of(rec);
                let sys = kind.mbr_type.unwrap_or(0x83);
                let kind = EntryKind {
                    mbr_type: Some(sys),
                    ..kind
                };
                let number = partition_entry::mbr_add(&mut mbr, start, length, sys)?;
                let partition = PartitionEntry {
                    number,
                    guid: uuid::Uuid::nil(),
                    partuuid: partition_entry::mbr_partuuid(&mbr, number),
                    start,
                    length,
                };
                out.push(NativeBoot::new(rec, disk, ss, kind, partition));
            }
        }
        None => {
            return Err(Error::new(
                ErrorKind::UnsupportedDevice,
                format!("{} has no partition table", disk.display()),
            ));
        }
    }
    Ok(out)
}

fn changed(number: u32, planned: u32) -> Error {
    Error::new(
        ErrorKind::MapChanged,
        format!(
            "the partition table changed since activation began (slot {number}, not {planned})"
        ),
    )
}

/// Write the entries planned by [`prepare`] (one table write) and tell
/// the kernel about each.
pub fn arm(entries: &[NativeBoot]) -> Result<()> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let disk = Path::new(&first.disk);
    if first.kind.mbr_type.is_some() {
        partition_entry::edit_mbr(disk, first.sector_size, |mbr| {
            for n in entries {
                let p = &n.partition;
                let sys = n.kind.mbr_type.unwrap_or(0x83);
                let number = partition_entry::mbr_add(mbr, p.start, p.length, sys)?;
                if number != p.number {
                    return Err(changed(number, p.number));
                }
            }
            Ok(())
        })?;
    } else {
        partition_entry::edit_table(disk, first.sector_size, |gpt| {
            for n in entries {
                let p = &n.partition;
                let number = partition_entry::add(gpt, p.start, p.length, &n.kind, p.guid)?;
                if number != p.number {
                    return Err(changed(number, p.number));
                }
            }
            Ok(())
        })?;
    }
    for n in entries {
        partition_entry::kernel_add(disk, &n.partition)?;
    }
    Ok(())
}

/// Take the entries out of the kernel's view and out of the table (each
/// only while it is still ours); whatever is already gone is fine.
pub fn disarm(entries: &[NativeBoot]) -> Result<()> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    // The disk by its identity, under the name it has now: a name kept
    // from the activation may belong to another disk after a reboot.
    let found = match &first.disk_identity {
        Some(id) => crate::space::identity::find_disk(id)?,
        None => std::path::PathBuf::from(&first.disk),
    };
    let disk = found.as_path();
    for n in entries {
        partition_entry::kernel_remove(disk, &n.partition)?;
    }
    if first.kind.mbr_type.is_some() {
        partition_entry::edit_mbr(disk, first.sector_size, |mbr| {
            for n in entries {
                let p = &n.partition;
                partition_entry::mbr_remove(mbr, p.number, p.start, p.length);
            }
            Ok(())
        })
    } else {
        partition_entry::edit_table(disk, first.sector_size, |gpt| {
            for n in entries {
                partition_entry::remove(gpt, n.partition.number, n.partition.guid)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::device_layout::LayoutPiece;
    use crate::map::extent_map::{ExtentMap, MapExtent};
    use crate::store::record::{Segment, VolumeSegment};

    const MIB: u64 = 1 << 20;

    /// `sample_record`'s 10 MiB image in volume `vg/lr-web-01` whose
    /// pieces are `pieces`, its header in a file.
    fn in_volume(pieces: Vec<LayoutPiece>) -> StagingRecord {
        let mut rec = crate::store::record::tests::sample_record();
        let extent = |logical, disk, length| MapExtent {
            logical,
            disk,
            length,
        };
        rec.map = Some(
            ExtentMap::new(
                vec![
                    extent(0, 2 * MIB, MIB),
                    extent(MIB, 50 * MIB, 6 * MIB),
                    extent(7 * MIB, 70 * MIB, 4 * MIB),
                ],
                11 * MIB,
            )
            .unwrap(),
        );
        rec.segments = vec![Segment::Volume(Box::new(VolumeSegment {
            vg: "vg-0".into(),
            lv: "lr-web-01".into(),
            length: 12 * MIB,
            dm_uuid: "LVM-x".into(),
            pieces,
        }))];
        rec
    }

    fn piece(start: u64, length: u64, disk: u64) -> LayoutPiece {
        LayoutPiece {
            start,
            length,
            disk,
        }
    }

    #[test]
    fn an_image_whole_in_its_volume_boots_from_it() {
        // pieces split elsewhere than the map's extents: the same bytes
        let rec = in_volume(vec![
            piece(0, 2 * MIB, 50 * MIB),
            piece(2 * MIB, 4 * MIB, 52 * MIB),
            piece(6 * MIB, 6 * MIB, 70 * MIB),
        ]);
        let boot = volume_of(&rec).expect("the image is its volume");
        assert_eq!(
            boot.root_arg(),
            "root=/dev/mapper/vg--0-lr--web--01 rd.lvm.lv=vg-0/lr-web-01"
        );
        // the image a MiB into its volume: not a root the initrd finds
        let off = in_volume(vec![
            piece(0, 7 * MIB, 49 * MIB),
            piece(7 * MIB, 5 * MIB, 70 * MIB),
        ]);
        assert_eq!(volume_of(&off), None);
        // a staging in files only
        assert_eq!(
            volume_of(&crate::store::record::tests::sample_record()),
            None
        );
    }

    #[test]
    fn a_volume_boot_needs_lvm_in_the_restored_initrd() {
        let boot = VolumeBoot {
            staging: "nat".into(),
            vg: "vg".into(),
            lv: "lr-nat".into(),
        };
        let archive = |name: &str| {
            let mut out = Vec::new();
            let b = cpio::NewcBuilder::new(name).mode(0o100755).nlink(1);
            let mut w = b.write(&mut out, 1);
            std::io::Write::write_all(&mut w, b"x").unwrap();
            w.finish().unwrap();
            cpio::newc::trailer(out).unwrap()
        };
        assert!(check_volume_initrd(&boot, "6.1.0-1", &archive("usr/sbin/lvm")).unwrap());
        assert!(check_volume_initrd(&boot, "6.1.0-1", &archive("sbin/lvm")).unwrap());
        let e = check_volume_initrd(&boot, "6.1.0-1", &archive("usr/sbin/cryptsetup")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidState);
        assert!(e.to_string().contains("no LVM"), "{e}");
        // an lz4 initrd: not read, not refused
        assert!(!check_volume_initrd(&boot, "6.1.0-1", &[0x02, 0x21, 0x4c, 0x18, 0]).unwrap());
    }
}
