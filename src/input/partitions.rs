//! The partition table of a whole-disk image, read from the image's first
//! MiB: GPT (through `gptman`) or MBR (primary entries).
//!
//! Parsing only: it works on bytes in memory, so a piped or compressed
//! image is split on the fly. GPT headers are checked here before
//! `gptman` reads them, because `gptman` sizes its entry vector from the
//! header's entry count (a lying header would make it allocate gigabytes)
//! and reads the entries wherever the header says. The MBR is parsed by
//! hand: its four primary entries are 64 bytes, and `mbrman` would follow
//! extended-partition chains through the whole disk, which a stream cannot
//! give; an extended partition is refused instead.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::bad;
use super::bytes::{le32, le64};
use crate::error::Result;

/// How many bytes of the image the table must fit in.
pub const HEAD_LEN: usize = 1 << 20;

/// Most GPT entries accepted (the usual array holds 128).
const MAX_GPT_ENTRIES: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// One used entry of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePartition {
    /// 1-based, as Linux numbers it (`sda1`): the GPT entry index + 1, or
    /// the MBR slot + 1.
    pub number: u32,
    /// Byte range in the image.
    pub offset: u64,
    pub size: u64,
    pub first_lba: u64,
    pub last_lba: u64,
    /// GPT: type GUID and unique GUID (lowercase, standard form).
    pub type_guid: Option<String>,
    pub guid: Option<String>,
    /// GPT: the partition name.
    pub label: Option<String>,
    /// GPT: attribute bits (bit 0 required, bit 2 legacy BIOS bootable, …).
    pub attributes: u64,
    /// MBR: the type byte, and whether the boot flag (0x80) is set.
    pub mbr_type: Option<u8>,
    pub bootable: bool,
}

/// The image's partition table, as activation needs it to rebuild entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub sector_size: u32,
    /// GPT: the disk GUID; MBR: the 32-bit disk signature as 8 hex digits.
    pub disk_guid: Option<String>,
    pub mbr_signature: Option<String>,
    /// GPT: the usable LBA range.
    pub first_usable_lba: Option<u64>,
    pub last_usable_lba: Option<u64>,
    /// Used entries in disk order.
    pub partitions: Vec<ImagePartition>,
}

impl PartitionTable {
    pub fn partition(&self, number: u32) -> Option<&ImagePartition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

fn guid(bytes: [u8; 16]) -> String {
    uuid::Uuid::from_bytes_le(bytes).to_string()
}

/// The table of an image of `image_size` bytes whose first bytes are
/// `head` (at least [`HEAD_LEN`] unless the image is shorter). `None`: the
/// image has no partition table (a filesystem image, say). A table that is
/// there but broken, or does not fit the image, is [`ErrorKind::BadImage`].
///
/// [`ErrorKind::BadImage`]: crate::error::ErrorKind::BadImage
pub fn parse(head: &[u8], image_size: u64) -> Result<Option<PartitionTable>> {
    let mbr = mbr_entries(head);
    let protective = mbr
        .as_ref()
        .is_some_and(|e| e.iter().any(|e| e.kind == 0xee));
    for sector_size in [512u32, 4096] {
        if head.len() >= 2 * sector_size as usize
            && &head[sector_size as usize..sector_size as usize + 8] == b"EFI PART"
        {
            return parse_gpt(head, sector_size, image_size).map(Some);
        }
    }
    if protective {
        return Err(bad(
            "the image has a protective MBR but no readable GPT header",
        ));
    }
    match mbr {
        Some(entries) => parse_mbr(head, &entries, image_size).map(Some),
        None => Ok(None),
    }
}

fn parse_gpt(head: &[u8], sector_size: u32, image_size: u64) -> Result<PartitionTable> {
    let ss = u64::from(sector_size);
    let h = &head[sector_size as usize..];
    let entry_lba = le64(h, 72);
    let count = le32(h, 80);
    let entry_size = le32(h, 84);
    if count > MAX_GPT_ENTRIES
        || entry_size < 128
        || !entry_size.is_multiple_of(8)
        || entry_size > 4096
    {
        return Err(bad(format!(
            "the image's GPT header is not plausible ({count} entries of {entry_size} bytes)"
        )));
    }
    let array_end = entry_lba
        .checked_mul(ss)
        .and_then(|s| s.checked_add(u64::from(count) * u64::from(entry_size)));
    match array_end {
        Some(end) if entry_lba >= 2 && end <= head.len() as u64 => {}
        _ => {
            return Err(bad(format!(
                "the image's GPT entries (at LBA {entry_lba}) are not within its first MiB"
            )));
        }
    }
    // The primary header only, whose counts are checked above: gptman's
    // `GPT::read_from` falls back to a "backup" header at the end of what
    // it is given and allocates for whatever entry count that one claims
    // (a fuzzed image asked for 400 GB).
    let mut cursor = Cursor::new(head);
    cursor.set_position(ss);
    let header = gptman::GPTHeader::read_from(&mut cursor)
        .map_err(|e| bad(format!("the image's GPT header is not valid: {e}")))?;
    let entries = header
        .read_partitions(&mut cursor, ss)
        .map_err(|e| bad(format!("the image's GPT is not valid: {e}")))?;
    if header.primary_lba != 1 {
        return Err(bad("the image's GPT header is not the primary one"));
    }
    let mut partitions = Vec::new();
    for (i, p) in (1u32..).zip(entries.iter()) {
        if p.is_unused() {
            continue;
        }
        if p.ending_lba < p.starting_lba {
            return Err(bad(format!(
                "GPT partition {i} ends (LBA {}) before it starts (LBA {})",
                p.ending_lba, p.starting_lba
            )));
        }
        partitions.push(ImagePartition {
            number: i,
            offset: p.starting_lba.saturating_mul(ss),
            size: (p.ending_lba - p.starting_lba + 1).saturating_mul(ss),
            first_lba: p.starting_lba,
            last_lba: p.ending_lba,
            type_guid: Some(guid(p.partition_type_guid)),
            guid: Some(guid(p.unique_partition_guid)),
            label: Some(p.partition_name.as_str().to_string()),
            attributes: p.attribute_bits,
            mbr_type: None,
            bootable: p.attribute_bits & 4 != 0,
        });
    }
    let table = PartitionTable {
        kind: TableKind::Gpt,
        sector_size,
        disk_guid: Some(guid(header.disk_guid)),
        mbr_signature: None,
        first_usable_lba: Some(header.first_usable_lba),
        last_usable_lba: Some(header.last_usable_lba),
        partitions,
    };
    check_fits(table, image_size)
}

/// A primary MBR entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    slot: u32,
    status: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

/// The four entries, if sector 0 is an MBR rather than a filesystem's boot
/// sector (FAT and NTFS boot sectors also end in 55 AA).
fn mbr_entries(head: &[u8]) -> Option<Vec<MbrEntry>> {
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return None;
    }
    let vbr = &head[3..11] == b"NTFS    "
        || &head[3..11] == b"EXFAT   "
        || &head[54..59] == b"FAT12"
        || &head[54..59] == b"FAT16"
        || &head[82..87] == b"FAT32";
    if vbr {
        return None;
    }
    let mut entries = Vec::new();
    for slot in 0..4u32 {
        let e = &head[446 + 16 * slot as usize..][..16];
        if e[0] != 0 && e[0] != 0x80 {
            return None; // boot code, not a table
        }
        let entry = MbrEntry {
            slot,
            status: e[0],
            kind: e[4],
            start: le32(e, 8),
            sectors: le32(e, 12),
        };
        if entry.kind != 0 {
            if entry.start == 0 || entry.sectors == 0 {
                return None;
            }
            entries.push(entry);
        }
    }
    (!entries.is_empty()).then_some(entries)
}

fn parse_mbr(head: &[u8], entries: &[MbrEntry], image_size: u64) -> Result<PartitionTable> {
    let mut partitions = Vec::new();
    for e in entries {
        if matches!(e.kind, 0x05 | 0x0f | 0x85) {
            return Err(bad(format!(
                "MBR partition {} is an extended partition: logical partitions are not supported; stage the image whole with --whole-disk",
                e.slot + 1
            )));
        }
        let first = u64::from(e.start);
        let last = first + u64::from(e.sectors) - 1;
        partitions.push(ImagePartition {
            number: e.slot + 1,
            offset: first * 512,
            size: u64::from(e.sectors) * 512,
            first_lba: first,
            last_lba: last,
            type_guid: None,
            guid: None,
            label: None,
            attributes: 0,
            mbr_type: Some(e.kind),
            bootable: e.status == 0x80,
        });
    }
    partitions.sort_by_key(|p| p.offset);
    let table = PartitionTable {
        kind: TableKind::Mbr,
        sector_size: 512,
        disk_guid: None,
        mbr_signature: Some(format!("{:08x}", le32(head, 440))),
        first_usable_lba: None,
        last_usable_lba: None,
        partitions,
    };
    check_fits(table, image_size)
}

/// Every partition lies inside the image, and none overlaps another.
fn check_fits(mut table: PartitionTable, image_size: u64) -> Result<PartitionTable> {
    table.partitions.sort_by_key(|p| p.offset);
    let mut end = 0u64;
    for p in &table.partitions {
        let p_end = p.offset.saturating_add(p.size);
        if p.offset == 0 || p_end > image_size {
            return Err(bad(format!(
                "partition {} ({} bytes at {}) does not lie inside the {image_size}-byte image (truncated?)",
                p.number, p.size, p.offset
            )));
        }
        if p.offset < end {
            return Err(bad(format!("partition {} overlaps another", p.number)));
        }
        end = p_end;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `partition_table` fuzz target (2026-12-03): a primary
    /// GPT header that gptman rejects, and at the end of the head a
    /// "backup" header claiming billions of entries. gptman's fallback to
    /// it allocated for all of them (out of memory, abort); only the
    /// checked primary header is read now, and the image is refused.
    #[test]
    fn a_bogus_backup_gpt_header_is_never_read() {
        let input =
            include_bytes!("../../fuzz/corpus/partition_table/regression-gpt-backup-header-count");
        let size = u64::from_le_bytes(input[..8].try_into().unwrap()) % (1 << 40);
        let e = parse(&input[8..], size).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::BadImage);
    }

    fn mbr(entries: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; HEAD_LEN];
        b[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        for (i, &(status, kind, start, n)) in entries.iter().enumerate() {
            let e = &mut b[446 + 16 * i..][..16];
            e[0] = status;
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    /// A GPT made by gptman itself, with two partitions.
    fn gpt(ss: u64) -> Vec<u8> {
        let mut cur = Cursor::new(vec![0u8; 8 << 20]);
        let mut g = gptman::GPT::new_from(&mut cur, ss, [7; 16]).unwrap();
        g[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: (1 << 20) / ss,
            ending_lba: (3 << 20) / ss - 1,
            attribute_bits: 4,
            partition_name: "boot".into(),
        };
        g[3] = gptman::GPTPartitionEntry {
            partition_type_guid: [3; 16],
            unique_partition_guid: [4; 16],
            starting_lba: (4 << 20) / ss,
            ending_lba: (7 << 20) / ss - 1,
            attribute_bits: 0,
            partition_name: "root".into(),
        };
        g.write_into(&mut cur).unwrap();
        let mut v = cur.into_inner();
        v.truncate(HEAD_LEN);
        v
    }

    #[test]
    fn reads_a_gpt_at_both_sector_sizes() {
        for ss in [512u64, 4096] {
            let t = parse(&gpt(ss), 8 << 20).unwrap().unwrap();
            assert_eq!(t.kind, TableKind::Gpt);
            assert_eq!(u64::from(t.sector_size), ss);
            assert_eq!(t.partitions.len(), 2);
            let (a, b) = (&t.partitions[0], &t.partitions[1]);
            assert_eq!((a.number, a.offset, a.size), (1, 1 << 20, 2 << 20));
            assert_eq!((b.number, b.offset, b.size), (3, 4 << 20, 3 << 20));
            assert_eq!(a.label.as_deref(), Some("boot"));
            assert_eq!(a.attributes, 4);
            assert!(a.bootable);
            assert_eq!(
                a.type_guid.as_deref(),
                Some("01010101-0101-0101-0101-010101010101")
            );
            assert_eq!(
                t.disk_guid.as_deref(),
                Some("07070707-0707-0707-0707-070707070707")
            );
        }
    }

    #[test]
    fn refuses_broken_gpts() {
        let good = gpt(512);
        // A partition past the image's end: a truncated image.
        assert!(parse(&good, 6 << 20).is_err());
        // A flipped byte in the entries.
        let mut b = good.clone();
        b[1024 + 56] ^= 1;
        assert!(parse(&b, 8 << 20).is_err());
        // A huge entry count is refused before anything is allocated.
        let mut b = good.clone();
        b[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&b, 8 << 20).is_err());
        // Entries said to be far away.
        let mut b = good;
        b[512 + 72..512 + 80].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(parse(&b, 8 << 20).is_err());
        // A protective MBR without a GPT.
        let b = mbr(&[(0, 0xee, 1, 100)]);
        assert!(parse(&b, 8 << 20).is_err());
    }

    #[test]
    fn reads_an_mbr() {
        let b = mbr(&[(0, 0x83, 8192, 4096), (0x80, 0x0c, 2048, 2048)]);
        let t = parse(&b, 8 << 20).unwrap().unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        assert_eq!(t.mbr_signature.as_deref(), Some("12345678"));
        let n: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.offset, p.size, p.mbr_type, p.bootable))
            .collect();
        assert_eq!(
            n,
            vec![
                (2, 1 << 20, 1 << 20, Some(0x0c), true),
                (1, 4 << 20, 2 << 20, Some(0x83), false)
            ]
        );
    }

    #[test]
    fn tells_tables_from_filesystems() {
        // No signature, or a FAT boot sector: no table.
        assert_eq!(parse(&vec![0u8; HEAD_LEN], 8 << 20).unwrap(), None);
        let mut fat = mbr(&[(0, 0x83, 8192, 4096)]);
        fat[82..87].copy_from_slice(b"FAT32");
        assert_eq!(parse(&fat, 8 << 20).unwrap(), None);
        // Boot code where the entries would be.
        let mut code = mbr(&[]);
        code[446] = 0x31;
        assert_eq!(parse(&code, 8 << 20).unwrap(), None);
        // Extended partitions and overlaps are refused.
        assert!(parse(&mbr(&[(0, 0x05, 2048, 2048)]), 8 << 20).is_err());
        assert!(
            parse(
                &mbr(&[(0, 0x83, 2048, 4096), (0, 0x83, 4096, 100)]),
                8 << 20
            )
            .is_err()
        );
    }
}
