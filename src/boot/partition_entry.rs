//! The partition entry of a native activation: a GPT entry covering
//! exactly a staged image's bytes (contiguous, outside every partition),
//! put in a free slot so that every existing partition keeps its number
//! (gptman keeps slots stable; the `gpt` crate would renumber), and told to
//! the running kernel with BLKPG (BLKRRPART fails while a partition of the
//! disk is in use). `rollback` removes it again.
//!
//! [`add`] and [`remove`] edit a table in memory (unit-tested on a table
//! in a `Vec`); [`edit_table`] reads the disk's table, applies an edit and
//! writes the result — the primary and backup areas, collected in memory
//! as gptman writes them — through [`DiskWriter::write_range`], confined
//! to those areas ([`edit_mbr`]: sector 0).

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use gptman::{GPT, GPTPartitionEntry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::map::disk_io::DiskWriter;

/// "Linux filesystem data" (`8300` in sgdisk).
pub const LINUX_FS_TYPE: Uuid = uuid::uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");

/// A partition entry liverestore added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// The slot (partition number).
    pub number: u32,
    /// GPT: its unique partition GUID (nil on an MBR disk).
    pub guid: Uuid,
    /// Its PARTUUID as Linux names it (`root=PARTUUID=…`): the GUID, or
    /// on an MBR disk `SSSSSSSS-NN` (disk signature, number).
    pub partuuid: String,
    /// Disk bytes `[start, start + length)`.
    pub start: u64,
    pub length: u64,
}

fn refuse(kind: ErrorKind, msg: String) -> Error {
    Error::new(kind, msg)
}

/// What an entry is besides where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryKind {
    pub type_guid: Uuid,
    pub name: String,
    pub attributes: u64,
    /// Set on an MBR disk: the type byte (GPT's fields are then unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbr_type: Option<u8>,
}

impl EntryKind {
    /// A Linux filesystem named `name`.
    pub fn linux(name: &str) -> EntryKind {
        EntryKind {
            type_guid: LINUX_FS_TYPE,
            name: name.into(),
            attributes: 0,
            mbr_type: None,
        }
    }
}

/// Add an entry of `kind` with GUID `guid` covering disk bytes
/// `[start, start + length)` to `gpt`, in the lowest free slot; returns
/// the slot. Refused: not sector-aligned, outside the usable sectors,
/// overlapping a partition, a GUID already in the table, no free slot.
pub fn add(gpt: &mut GPT, start: u64, length: u64, kind: &EntryKind, guid: Uuid) -> Result<u32> {
    let ss = gpt.sector_size;
    if length == 0 || !start.is_multiple_of(ss) || !length.is_multiple_of(ss) {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("bytes {start}+{length} are not whole {ss}-byte sectors"),
        ));
    }
    let (first, last) = (start / ss, (start + length) / ss - 1);
    if first < gpt.header.first_usable_lba || last > gpt.header.last_usable_lba {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!(
                "sectors {first}..={last} are outside the table's usable sectors {}..={}",
                gpt.header.first_usable_lba, gpt.header.last_usable_lba
            ),
        ));
    }
    if let Some((n, _)) = gpt
        .iter()
        .find(|(_, e)| e.is_used() && e.starting_lba <= last && first <= e.ending_lba)
    {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("sectors {first}..={last} overlap partition {n}"),
        ));
    }
    if guid_in_use(gpt, guid) {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("partition GUID {guid} is already in the table"),
        ));
    }
    let slot = gpt
        .iter()
        .find(|(_, e)| e.is_unused())
        .map(|(n, _)| n)
        .ok_or_else(|| {
            refuse(
                ErrorKind::NoSpace,
                "every slot of the partition table is in use".into(),
            )
        })?;
    gpt[slot] = GPTPartitionEntry {
        partition_type_guid: kind.type_guid.to_bytes_le(),
        unique_partition_guid: guid.to_bytes_le(),
        starting_lba: first,
        ending_lba: last,
        attribute_bits: kind.attributes,
        partition_name: kind.name.as_str().into(),
    };
    Ok(slot)
}

/// Whether a used entry of `gpt` has partition GUID `guid`.
pub fn guid_in_use(gpt: &GPT, guid: Uuid) -> bool {
    gpt.iter()
        .any(|(_, e)| e.is_used() && e.unique_partition_guid == guid.to_bytes_le())
}

/// Remove entry `number` if it is still the one with `guid`; whether it
/// was there.
pub fn remove(gpt: &mut GPT, number: u32, guid: Uuid) -> Result<bool> {
    let ours = gpt
        .iter()
        .find(|(n, _)| *n == number)
        .is_some_and(|(_, e)| e.is_used() && e.unique_partition_guid == guid.to_bytes_le());
    if ours {
        gpt.remove(number)
            .map_err(|e| Error::new(ErrorKind::Corrupt, "partition table").with_source(e))?;
    }
    Ok(ours)
}

/// The table's two areas on the disk, as gptman writes them: in memory,
/// preloaded with the disk's bytes; a write outside them is refused.
struct TableAreas {
    areas: Vec<(u64, Vec<u8>)>,
    pos: u64,
}

impl Write for TableAreas {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let pos = self.pos;
        let (start, bytes) = self
            .areas
            .iter_mut()
            .find(|(s, b)| pos >= *s && pos + buf.len() as u64 <= s + b.len() as u64)
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "a partition table write at byte {pos}+{} outside the table's areas",
                    buf.len()
                ))
            })?;
        let at = (pos - *start) as usize;
        bytes[at..at + buf.len()].copy_from_slice(buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for TableAreas {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            SeekFrom::End(_) => {
                return Err(std::io::Error::other("no end to seek from"));
            }
        };
        Ok(self.pos)
    }
}

/// Read the GPT of `disk` (logical sector size `ss`), apply `edit`, and
/// write the table back — primary and backup — through [`DiskWriter`].
pub fn edit_table<T>(disk: &Path, ss: u64, edit: impl FnOnce(&mut GPT) -> Result<T>) -> Result<T> {
    let mut f = std::fs::File::open(disk)
        .op(|| "open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    let mut gpt = GPT::read_from(&mut f, ss).map_err(|e| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            format!("no usable GPT on the disk ({e}): native activation needs one"),
        )
        .with_path(disk)
    })?;
    // a block device's size, or (tests) a disk image file's
    let disk_size = match crate::sys::ioctl::block_device_size(&f) {
        Ok(n) => n,
        Err(_) => f.metadata().op(|| "stat the disk".into())?.len(),
    };
    drop(f);
    let primary = (0, gpt.header.first_usable_lba * ss);
    let backup_start = (gpt.header.last_usable_lba + 1) * ss;
    let areas = [primary, (backup_start, disk_size - backup_start)];
    let mut overlay = TableAreas {
        areas: areas
            .iter()
            .map(|&(s, l)| Ok((s, crate::map::disk_io::read_raw(disk, s, l as usize)?)))
            .collect::<Result<_>>()?,
        pos: 0,
    };
    let out = edit(&mut gpt)?;
    gpt.write_into(&mut overlay).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("cannot write the partition table: {e}"),
        )
        .with_path(disk)
    })?;
    for (start, bytes) in overlay.areas {
        DiskWriter::write_range(disk, start, &bytes, ss)?;
    }
    Ok(out)
}

/// The kind of partition table a disk's first sector announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// GPT (a protective MBR), MBR, or nothing usable.
pub fn table_kind(sector0: &[u8]) -> Option<TableKind> {
    if sector0.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return None;
    }
    let protective = (0..4).any(|i| sector0[446 + 16 * i + 4] == 0xee);
    Some(if protective {
        TableKind::Gpt
    } else {
        TableKind::Mbr
    })
}

/// MBR: add a primary entry of type `sys` covering disk bytes
/// `[start, start + length)` in the lowest free primary slot (1–4);
/// returns the slot. Refused: not whole sectors, beyond what 32-bit sector
/// numbers reach, overlapping any partition (logical ones too), no free
/// primary slot.
pub fn mbr_add(mbr: &mut mbrman::MBR, start: u64, length: u64, sys: u8) -> Result<u32> {
    let ss = u64::from(mbr.sector_size);
    if length == 0 || !start.is_multiple_of(ss) || !length.is_multiple_of(ss) {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("bytes {start}+{length} are not whole {ss}-byte sectors"),
        ));
    }
    let (first, count) = (start / ss, length / ss);
    let (Ok(first32), Ok(count32)) = (u32::try_from(first), u32::try_from(count)) else {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("sectors {first}+{count} are beyond what an MBR entry can name"),
        ));
    };
    let last = first + count - 1;
    if let Some((n, _)) = mbr.iter().find(|(_, e)| {
        e.is_used()
            && u64::from(e.starting_lba) <= last
            && first < u64::from(e.starting_lba) + u64::from(e.sectors)
    }) {
        return Err(refuse(
            ErrorKind::UnsupportedDevice,
            format!("sectors {first}..={last} overlap partition {n}"),
        ));
    }
    let slot = (1..=4usize).find(|&i| mbr[i].is_unused()).ok_or_else(|| {
        refuse(
            ErrorKind::NoSpace,
            "all four primary slots of the MBR are in use".into(),
        )
    })?;
    mbr[slot] = mbrman::MBRPartitionEntry {
        boot: mbrman::BOOT_INACTIVE,
        first_chs: mbrman::CHS::empty(),
        sys,
        last_chs: mbrman::CHS::empty(),
        starting_lba: first32,
        sectors: count32,
    };
    Ok(slot as u32)
}

/// MBR: empty primary slot `number` if it still covers exactly
/// `[start, start + length)`; whether it did.
pub fn mbr_remove(mbr: &mut mbrman::MBR, number: u32, start: u64, length: u64) -> bool {
    let ss = u64::from(mbr.sector_size);
    let i = number as usize;
    let ours = (1..=4).contains(&i)
        && mbr[i].is_used()
        && u64::from(mbr[i].starting_lba) * ss == start
        && u64::from(mbr[i].sectors) * ss == length;
    if ours {
        mbr[i] = mbrman::MBRPartitionEntry::empty();
    }
    ours
}

/// The PARTUUID Linux gives partition `number` of an MBR disk.
pub fn mbr_partuuid(mbr: &mbrman::MBR, number: u32) -> String {
    format!(
        "{:08x}-{number:02x}",
        u32::from_le_bytes(mbr.header.disk_signature)
    )
}

/// Read the MBR of `disk`, apply `edit`, and write sector 0 back through
/// [`DiskWriter`]. Disks with logical partitions are refused (their
/// tables are spread over the disk).
pub fn edit_mbr<T>(
    disk: &Path,
    ss: u64,
    edit: impl FnOnce(&mut mbrman::MBR) -> Result<T>,
) -> Result<T> {
    let mut mbr = read_mbr(disk, ss)?;
    let mut overlay = TableAreas {
        areas: vec![(0, crate::map::disk_io::read_raw(disk, 0, ss as usize)?)],
        pos: 0,
    };
    let out = edit(&mut mbr)?;
    mbr.write_into(&mut overlay).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("cannot write the partition table: {e}"),
        )
        .with_path(disk)
    })?;
    let (start, bytes) = overlay.areas.remove(0);
    DiskWriter::write_range(disk, start, &bytes, ss)?;
    Ok(out)
}

/// The MBR of `disk`, refused when it has logical partitions.
pub fn read_mbr(disk: &Path, ss: u64) -> Result<mbrman::MBR> {
    let mut f = std::fs::File::open(disk)
        .op(|| "open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    let mbr = mbrman::MBR::read_from(&mut f, ss as u32).map_err(|e| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            format!("cannot read the MBR ({e})"),
        )
        .with_path(disk)
    })?;
    if !mbr.logical_partitions.is_empty() || mbr.iter().any(|(_, e)| e.is_extended()) {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            "the MBR has an extended partition: native activation on such disks is not supported (it boots mapped)",
        )
        .with_path(disk));
    }
    Ok(mbr)
}

/// Tell the running kernel about `entry` (BLKPG); a partition it already
/// knows at that number is fine.
pub fn kernel_add(disk: &Path, entry: &PartitionEntry) -> Result<()> {
    let f = std::fs::File::open(disk)
        .op(|| "open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    match crate::sys::ioctl::blkpg_add_partition(&f, entry.number, entry.start, entry.length) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::BUSY && kernel_knows(disk, entry) => Ok(()),
        Err(e) => Err(Error::from(e)
            .with_path(disk)
            .with_kind(ErrorKind::UnsupportedDevice)),
    }
}

/// Make the running kernel forget `entry`; already forgotten is fine.
pub fn kernel_remove(disk: &Path, entry: &PartitionEntry) -> Result<()> {
    let f = std::fs::File::open(disk)
        .op(|| "open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    match crate::sys::ioctl::blkpg_del_partition(&f, entry.number) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NXIO => Ok(()),
        Err(e) => Err(Error::from(e).with_path(disk)),
    }
}

/// Whether sysfs shows partition `entry.number` of `disk` at its place.
fn kernel_knows(disk: &Path, entry: &PartitionEntry) -> bool {
    let Some(name) = disk.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let dir = Path::new("/sys/class/block").join(name);
    let Ok(parts) = std::fs::read_dir(&dir) else {
        return false;
    };
    parts.flatten().any(|p| {
        let read = |f: &str| {
            std::fs::read_to_string(p.path().join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        read("partition") == Some(u64::from(entry.number))
            && read("start") == Some(entry.start / 512)
            && read("size") == Some(entry.length / 512)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A 100 MiB disk with partitions 1 (1..11 MiB) and 3 (50..60 MiB).
    fn table() -> GPT {
        let mut disk = std::io::Cursor::new(vec![0u8; (100 * MIB) as usize]);
        let mut gpt = GPT::new_from(&mut disk, 512, [7; 16]).unwrap();
        for (n, from, to) in [(1, 1, 11), (3, 50, 60)] {
            gpt[n] = GPTPartitionEntry {
                partition_type_guid: LINUX_FS_TYPE.to_bytes_le(),
                unique_partition_guid: [n as u8; 16],
                starting_lba: from * MIB / 512,
                ending_lba: to * MIB / 512 - 1,
                attribute_bits: 0,
                partition_name: "old".into(),
            };
        }
        gpt
    }

    #[test]
    fn an_entry_in_the_lowest_free_slot_over_exactly_the_bytes() {
        let mut gpt = table();
        let guid = Uuid::from_u128(0x1234);
        let n = add(
            &mut gpt,
            20 * MIB,
            30 * MIB,
            &EntryKind::linux("liverestore web"),
            guid,
        )
        .unwrap();
        assert_eq!(n, 2, "slot 2 is free; 1 and 3 keep their numbers");
        assert_eq!(gpt[2].starting_lba, 20 * MIB / 512);
        assert_eq!(gpt[2].ending_lba, 50 * MIB / 512 - 1);
        assert_eq!(gpt[2].partition_name.as_str(), "liverestore web");
        assert_eq!(Uuid::from_bytes_le(gpt[2].unique_partition_guid), guid);
        assert_eq!(gpt[3].partition_name.as_str(), "old");
        // written and read back, as a disk would hold it
        let mut disk = std::io::Cursor::new(vec![0u8; (100 * MIB) as usize]);
        gpt.write_into(&mut disk).unwrap();
        disk.set_position(0);
        let back = GPT::read_from(&mut disk, 512).unwrap();
        assert_eq!(back[2], gpt[2]);
        // removed only while it is still ours
        let mut gpt = back;
        assert!(!remove(&mut gpt, 2, Uuid::from_u128(9)).unwrap());
        assert!(remove(&mut gpt, 2, guid).unwrap());
        assert!(gpt[2].is_unused());
        assert!(!remove(&mut gpt, 2, guid).unwrap());
    }

    #[test]
    fn refusals() {
        let mut gpt = table();
        let g = Uuid::from_u128(1);
        let kind = |r: Result<u32>| r.unwrap_err().kind();
        let x = &EntryKind::linux("x");
        // a GUID the table already has
        assert_eq!(
            kind(add(
                &mut gpt,
                20 * MIB,
                MIB,
                x,
                Uuid::from_bytes_le([1; 16])
            )),
            ErrorKind::UnsupportedDevice
        );
        // overlaps partition 3
        assert_eq!(
            kind(add(&mut gpt, 40 * MIB, 20 * MIB, x, g)),
            ErrorKind::UnsupportedDevice
        );
        // not whole sectors
        assert_eq!(
            kind(add(&mut gpt, 20 * MIB + 100, MIB, x, g)),
            ErrorKind::UnsupportedDevice
        );
        // into the backup table's area
        assert_eq!(
            kind(add(&mut gpt, 99 * MIB, MIB, x, g)),
            ErrorKind::UnsupportedDevice
        );
        // no free slot
        for n in 1..=gpt.header.number_of_partition_entries {
            if gpt[n].is_unused() {
                gpt[n] = GPTPartitionEntry {
                    partition_type_guid: [1; 16],
                    unique_partition_guid: [
                        n as u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                    ],
                    starting_lba: 0,
                    ending_lba: 0,
                    attribute_bits: 0,
                    partition_name: "".into(),
                };
            }
        }
        // (entries of sector 0..0 overlap nothing in range 20 MiB..)
        assert_eq!(kind(add(&mut gpt, 20 * MIB, MIB, x, g)), ErrorKind::NoSpace);
    }

    #[test]
    fn mbr_entries_in_a_free_primary_slot() {
        let mut disk = std::io::Cursor::new(vec![0u8; (100 * MIB) as usize]);
        let mut mbr = mbrman::MBR::new_from(&mut disk, 512, [0x78, 0x56, 0x34, 0x12]).unwrap();
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: 2048,
            sectors: (10 * MIB / 512) as u32,
        };
        assert_eq!(
            mbr_add(&mut mbr, 5 * MIB, MIB, 0x83).unwrap_err().kind(),
            ErrorKind::UnsupportedDevice,
            "overlaps partition 1"
        );
        let n = mbr_add(&mut mbr, 20 * MIB, 30 * MIB, 0x83).unwrap();
        assert_eq!(n, 2);
        assert_eq!(mbr_partuuid(&mbr, n), "12345678-02");
        assert_eq!(mbr[2].starting_lba, (20 * MIB / 512) as u32);
        // written and read back
        mbr.write_into(&mut disk).unwrap();
        disk.set_position(0);
        let mut back = mbrman::MBR::read_from(&mut disk, 512).unwrap();
        assert_eq!(back[2], mbr[2]);
        assert_eq!(table_kind(&disk.get_ref()[..512]), Some(TableKind::Mbr));
        assert!(!mbr_remove(&mut back, 2, 20 * MIB, MIB), "not that range");
        assert!(mbr_remove(&mut back, 2, 20 * MIB, 30 * MIB));
        assert!(back[2].is_unused());
        // no free primary slot
        for i in 2..=4u64 {
            mbr_add(&mut back, (20 + 10 * i) * MIB, MIB, 0x83).unwrap();
        }
        assert_eq!(
            mbr_add(&mut back, 90 * MIB, MIB, 0x83).unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        assert_eq!(table_kind(&[0u8; 512]), None);
    }

    #[test]
    fn writes_outside_the_table_areas_are_refused() {
        let mut t = TableAreas {
            areas: vec![(0, vec![0; 1024]), (4096, vec![0; 512])],
            pos: 0,
        };
        t.seek(SeekFrom::Start(512)).unwrap();
        t.write_all(&[1; 512]).unwrap();
        t.seek(SeekFrom::Start(4096)).unwrap();
        t.write_all(&[2; 512]).unwrap();
        assert_eq!(t.areas[0].1[512], 1);
        assert_eq!(t.areas[1].1[511], 2);
        t.seek(SeekFrom::Start(1000)).unwrap();
        assert!(
            t.write_all(&[3; 100]).is_err(),
            "crosses the first area's end"
        );
        t.seek(SeekFrom::Start(2048)).unwrap();
        assert!(t.write_all(&[3; 1]).is_err());
    }
}
