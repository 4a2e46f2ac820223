//! Where a block device's bytes lie on its disk: a [`DeviceLayout`] of
//! linear pieces. A partition (or a whole disk) is one piece; a logical
//! volume is its device-mapper table's `linear` targets composed down the
//! stack — LV → physical volume (itself a partition, or another linear
//! device) → disk — from the kernel's own tables
//! (`DM_TABLE_STATUS`, [`crate::sys::dm::status`]), never from LVM's text
//! output. Pure: the tables and the lower devices' layouts come in as
//! values (`crate::space::hostfs` reads them from the kernel), so this is
//! unit-tested and fuzzed on bytes.
//!
//! Anything but `linear` is refused, each kind with what it is in LVM's
//! words: a striped, thin, RAID, mirror, cache, snapshot or VDO volume
//! spreads, copies or remaps blocks, so a byte of the filesystem is not at
//! one place on the disk; a crypt target's disk bytes are ciphertext.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::sys::dm::Target;

/// `length` bytes at byte `start` of the device are at byte `disk` of the
/// disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutPiece {
    pub start: u64,
    pub length: u64,
    pub disk: u64,
}

/// A device's bytes on its disk: pieces in device order, covering
/// `[0, size)` without holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLayout {
    pieces: Vec<LayoutPiece>,
}

/// A disk, by device number.
pub type DiskId = (u32, u32);

/// How deep device-mapper devices may stack (an LV over a PV that is
/// itself a linear device is two).
pub const MAX_DEPTH: usize = 8;

fn unsupported(msg: String) -> Error {
    Error::new(ErrorKind::UnsupportedDevice, msg)
}

/// What a device-mapper target type is, for a refusal.
fn refused_kind(kind: &str) -> &'static str {
    match kind {
        "striped" => "a striped logical volume (its blocks alternate between devices)",
        "thin" | "thin-pool" => {
            "a thin logical volume (its blocks are allocated from a pool, anywhere)"
        }
        "raid" => "a RAID logical volume",
        "mirror" => "a mirrored logical volume",
        "cache" | "writecache" => "a cached logical volume",
        "snapshot" | "snapshot-origin" | "snapshot-merge" => {
            "a logical volume with a snapshot, or a snapshot (its blocks are copied on write)"
        }
        "vdo" => "a VDO volume (deduplicated and compressed)",
        "crypt" => {
            "an encrypted device (dm-crypt/LUKS: the disk holds ciphertext; not supported yet, see docs/luks.md)"
        }
        "integrity" | "verity" => "an integrity or verity device",
        _ => "a device-mapper device other than linear",
    }
}

/// A `linear` target's parameters as the kernel prints them:
/// `MAJOR:MINOR OFFSET_SECTORS`.
pub fn parse_linear(params: &str) -> Result<(DiskId, u64)> {
    let bad = || unsupported(format!("cannot read the linear target '{params}'"));
    let mut words = params.split_whitespace();
    let (dev, offset) = (words.next().ok_or_else(bad)?, words.next().ok_or_else(bad)?);
    if words.next().is_some() {
        return Err(bad());
    }
    let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
    Ok((
        (
            major.parse().map_err(|_| bad())?,
            minor.parse().map_err(|_| bad())?,
        ),
        offset.parse().map_err(|_| bad())?,
    ))
}

impl DeviceLayout {
    /// A partition or a whole disk: `size` bytes at byte `start`.
    pub fn contiguous(start: u64, size: u64) -> DeviceLayout {
        DeviceLayout {
            pieces: vec![LayoutPiece {
                start: 0,
                length: size,
                disk: start,
            }],
        }
        .dropping_empty()
    }

    /// A layout as recorded: `pieces` must cover the device from byte 0
    /// in order, without holes.
    pub fn from_pieces(pieces: Vec<LayoutPiece>) -> Result<DeviceLayout> {
        let mut at = 0u64;
        for p in &pieces {
            if p.start != at || p.length == 0 {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("the recorded volume has a hole or overlap at byte {at}"),
                ));
            }
            at = p
                .start
                .checked_add(p.length)
                .filter(|_| p.disk.checked_add(p.length).is_some())
                .ok_or_else(|| {
                    Error::new(ErrorKind::Corrupt, "a recorded volume piece overflows")
                })?;
        }
        Ok(DeviceLayout { pieces })
    }

    fn dropping_empty(mut self) -> Self {
        self.pieces.retain(|p| p.length > 0);
        self
    }

    /// This layout, if it is `size` bytes.
    pub fn into_sized(self, size: u64) -> Option<DeviceLayout> {
        (self.size() == size).then_some(self)
    }

    pub fn pieces(&self) -> &[LayoutPiece] {
        &self.pieces
    }

    /// The device's size in bytes.
    pub fn size(&self) -> u64 {
        self.pieces.last().map_or(0, |p| p.start + p.length)
    }

    /// Whether the device is one run of the disk (a partition, a disk, or
    /// a logical volume of one segment).
    pub fn is_contiguous(&self) -> bool {
        self.pieces.len() <= 1
    }

    /// The disk byte of the device's first byte.
    pub fn disk_start(&self) -> Option<u64> {
        self.pieces.first().map(|p| p.disk)
    }

    /// The disk bytes `[start, end)` the device covers, in device order.
    pub fn disk_ranges(&self) -> Vec<(u64, u64)> {
        self.pieces
            .iter()
            .map(|p| (p.disk, p.disk + p.length))
            .collect()
    }

    /// The first of `recorded`'s pieces that is no longer where this
    /// layout has it (None: every recorded byte is still in place, though
    /// the device may have grown: an `lvextend` moves nothing).
    pub fn moved_piece<'a>(&self, recorded: &'a [LayoutPiece]) -> Option<&'a LayoutPiece> {
        recorded
            .iter()
            .find(|p| self.to_disk(p.start, p.length).ok() != Some(vec![(p.disk, p.length)]))
    }

    /// Device bytes `[offset, offset + len)` as disk runs `(disk, len)`,
    /// in order; a range not entirely on the device is refused whole.
    pub fn to_disk(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "bytes {offset}+{len} are not on the {}-byte device",
                        self.size()
                    ),
                )
            })?;
        let mut out = Vec::new();
        let mut at = offset;
        // pieces are in device order: find the first that ends past `at`
        let first = self.pieces.partition_point(|p| p.start + p.length <= at);
        for p in &self.pieces[first..] {
            if at >= end {
                break;
            }
            let take = (p.start + p.length).min(end) - at;
            out.push((p.disk + (at - p.start), take));
            at += take;
        }
        Ok(out)
    }

    /// The layout of a device-mapper device with `targets` (its live
    /// table), given each lower device's disk and layout from `lower`
    /// (called once per target). Every byte must end up on one disk.
    pub fn compose(
        targets: &[Target],
        lower: &mut dyn FnMut(DiskId) -> Result<(DiskId, DeviceLayout)>,
    ) -> Result<(DiskId, DeviceLayout)> {
        if targets.is_empty() {
            return Err(unsupported(
                "the device-mapper device has no table (suspended or being set up)".into(),
            ));
        }
        let mut disk: Option<DiskId> = None;
        let mut pieces: Vec<LayoutPiece> = Vec::new();
        let mut expected = 0u64;
        for t in targets {
            if t.kind != "linear" {
                return Err(unsupported(format!(
                    "{}: a filesystem there is not at one place on the disk",
                    refused_kind(&t.kind)
                )));
            }
            let (start, length) = (t.start.checked_mul(512), t.length.checked_mul(512));
            let (Some(start), Some(length)) = (start, length) else {
                return Err(unsupported(
                    "a device-mapper target beyond 2^64 bytes".into(),
                ));
            };
            if start != expected || length == 0 {
                return Err(unsupported(format!(
                    "the device-mapper table has a hole or an overlap at sector {}",
                    t.start
                )));
            }
            let (dev, offset) = parse_linear(&t.params)?;
            let offset = offset
                .checked_mul(512)
                .ok_or_else(|| unsupported("a linear target's offset overflows".into()))?;
            let (d, below) = lower(dev)?;
            match disk {
                Some(first) if first != d => {
                    return Err(unsupported(format!(
                        "the volume spans two disks ({}:{} and {}:{}): liverestore writes to one disk",
                        first.0, first.1, d.0, d.1
                    )));
                }
                _ => disk = Some(d),
            }
            for (disk_at, len) in below.to_disk(offset, length).map_err(|_| {
                unsupported(format!(
                    "the linear target at sector {} reaches past the end of device {}:{}",
                    t.start, dev.0, dev.1
                ))
            })? {
                let at = expected;
                expected += len;
                match pieces.last_mut() {
                    Some(p) if p.disk + p.length == disk_at => p.length += len,
                    _ => pieces.push(LayoutPiece {
                        start: at,
                        length: len,
                        disk: disk_at,
                    }),
                }
            }
        }
        let disk = disk.ok_or_else(|| unsupported("empty table".into()))?;
        let mut by_disk: Vec<&LayoutPiece> = pieces.iter().collect();
        by_disk.sort_by_key(|p| p.disk);
        if by_disk
            .windows(2)
            .any(|w| w[0].disk + w[0].length > w[1].disk)
        {
            return Err(unsupported(
                "two parts of the volume share disk bytes".into(),
            ));
        }
        Ok((disk, DeviceLayout { pieces }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_volume_keeps_its_pieces_a_moved_one_does_not() {
        let p = |start, length, disk| LayoutPiece {
            start,
            length,
            disk,
        };
        let recorded = [p(0, 10, 100), p(10, 5, 300)];
        let same = DeviceLayout::from_pieces(recorded.to_vec()).unwrap();
        assert_eq!(same.moved_piece(&recorded), None);
        // lvextend: a piece more at the end
        let grown =
            DeviceLayout::from_pieces(vec![p(0, 10, 100), p(10, 5, 300), p(15, 8, 500)]).unwrap();
        assert_eq!(grown.moved_piece(&recorded), None);
        // pvmove of the second segment
        let moved = DeviceLayout::from_pieces(vec![p(0, 10, 100), p(10, 5, 900)]).unwrap();
        assert_eq!(moved.moved_piece(&recorded), Some(&recorded[1]));
        // shrunk
        let shrunk = DeviceLayout::from_pieces(vec![p(0, 10, 100)]).unwrap();
        assert_eq!(shrunk.moved_piece(&recorded), Some(&recorded[1]));
        assert!(same.clone().into_sized(15).is_some());
        assert!(same.into_sized(14).is_none());
    }

    const DISK: DiskId = (252, 0);
    const MIB: u64 = 1 << 20;

    /// The lower devices of the tests: 252:2 a partition at 1 MiB of
    /// 100 MiB, 252:3 one at 200 MiB of 100 MiB, 8:0 another disk,
    /// 253:0 a linear device over 252:3 from 10 MiB.
    fn lower(dev: DiskId) -> Result<(DiskId, DeviceLayout)> {
        match dev {
            (252, 2) => Ok((DISK, DeviceLayout::contiguous(MIB, 100 * MIB))),
            (252, 3) => Ok((DISK, DeviceLayout::contiguous(200 * MIB, 100 * MIB))),
            (8, 0) => Ok(((8, 0), DeviceLayout::contiguous(0, 100 * MIB))),
            (253, 0) => {
                DeviceLayout::compose(&[Target::linear(0, 20 * 2048, "252:3 20480")], &mut |d| {
                    lower(d)
                })
            }
            _ => Err(unsupported("no such device".into())),
        }
    }

    #[test]
    fn a_partition_is_one_piece() {
        let l = DeviceLayout::contiguous(MIB, 10 * MIB);
        assert!(l.is_contiguous());
        assert_eq!(l.size(), 10 * MIB);
        assert_eq!(l.to_disk(4096, 8192).unwrap(), vec![(MIB + 4096, 8192)]);
        assert!(l.to_disk(10 * MIB - 4096, 8192).is_err());
        assert!(l.to_disk(u64::MAX, 2).is_err());
        assert_eq!(l.disk_ranges(), vec![(MIB, 11 * MIB)]);
    }

    #[test]
    fn a_logical_volume_of_two_segments_on_two_pvs() {
        // LVM: data from 1 MiB into each PV; 8 MiB on the first PV, 4 MiB
        // on the second, then 2 MiB more on the first, further on
        let table = [
            Target::linear(0, 8 * 2048, "252:2 2048"),
            Target::linear(8 * 2048, 4 * 2048, "252:3 2048"),
            Target::linear(12 * 2048, 2 * 2048, "252:2 18432"),
        ];
        let (disk, l) = DeviceLayout::compose(&table, &mut |d| lower(d)).unwrap();
        assert_eq!(disk, DISK);
        assert_eq!(l.size(), 14 * MIB);
        assert_eq!(
            l.pieces(),
            &[
                LayoutPiece {
                    start: 0,
                    length: 8 * MIB,
                    disk: 2 * MIB
                },
                LayoutPiece {
                    start: 8 * MIB,
                    length: 4 * MIB,
                    disk: 201 * MIB
                },
                LayoutPiece {
                    start: 12 * MIB,
                    length: 2 * MIB,
                    disk: 10 * MIB
                },
            ]
        );
        assert!(!l.is_contiguous());
        assert_eq!(l.disk_start(), Some(2 * MIB));
        // a range across all three pieces
        assert_eq!(
            l.to_disk(7 * MIB, 6 * MIB).unwrap(),
            vec![(9 * MIB, MIB), (201 * MIB, 4 * MIB), (10 * MIB, MIB)]
        );
        assert!(l.to_disk(13 * MIB, 2 * MIB).is_err());
    }

    #[test]
    fn adjacent_segments_merge_and_stacks_compose() {
        let (_, l) = DeviceLayout::compose(
            &[
                Target::linear(0, 2048, "252:2 0"),
                Target::linear(2048, 2048, "252:2 2048"),
            ],
            &mut |d| lower(d),
        )
        .unwrap();
        assert!(l.is_contiguous());
        assert_eq!(
            l.pieces()[0],
            LayoutPiece {
                start: 0,
                length: 2 * MIB,
                disk: MIB
            }
        );
        // an LV over a PV that is itself a linear device
        let (_, l) =
            DeviceLayout::compose(&[Target::linear(0, 2048, "253:0 4096")], &mut |d| lower(d))
                .unwrap();
        assert_eq!(l.to_disk(0, 1).unwrap(), vec![(212 * MIB, 1)]);
    }

    #[test]
    fn refusals() {
        let refused = |table: &[Target], needle: &str| {
            let e = DeviceLayout::compose(table, &mut |d| lower(d)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedDevice);
            assert!(e.to_string().contains(needle), "{e}");
        };
        for (kind, needle) in [
            ("striped", "striped"),
            ("thin", "thin"),
            ("raid", "RAID"),
            ("mirror", "mirror"),
            ("cache", "cache"),
            ("snapshot-origin", "snapshot"),
            ("vdo", "VDO"),
            ("crypt", "LUKS"),
            ("zero", "other than linear"),
        ] {
            let mut t = Target::linear(0, 2048, "252:2 0");
            t.kind = kind.into();
            refused(&[t], needle);
        }
        refused(
            &[
                Target::linear(0, 2048, "252:2 0"),
                Target::linear(2048, 2048, "8:0 0"),
            ],
            "two disks",
        );
        refused(
            &[
                Target::linear(0, 2048, "252:2 0"),
                Target::linear(4096, 2048, "252:2 0"),
            ],
            "hole",
        );
        refused(
            &[
                Target::linear(0, 2048, "252:2 0"),
                Target::linear(2048, 2048, "252:2 0"),
            ],
            "share",
        );
        refused(&[Target::linear(0, 2048, "252:2 204000")], "past the end");
        refused(&[Target::linear(0, 2048, "252:2")], "cannot read");
        refused(&[Target::linear(0, 2048, "252-2 0")], "cannot read");
        refused(&[], "no table");
        refused(&[Target::linear(0, 2048, "9:9 0")], "no such device");
    }

    #[test]
    fn recorded_pieces_are_checked() {
        let p = |start, length, disk| LayoutPiece {
            start,
            length,
            disk,
        };
        let l = DeviceLayout::from_pieces(vec![p(0, 10, 100), p(10, 5, 0)]).unwrap();
        assert_eq!(l.to_disk(8, 4).unwrap(), vec![(108, 2), (0, 2)]);
        assert!(DeviceLayout::from_pieces(vec![p(0, 10, 100), p(11, 5, 0)]).is_err());
        assert!(DeviceLayout::from_pieces(vec![p(0, 0, 100)]).is_err());
        assert!(DeviceLayout::from_pieces(vec![p(0, 10, u64::MAX)]).is_err());
    }

    #[test]
    fn linear_parameters() {
        assert_eq!(parse_linear("253:12 2048").unwrap(), ((253, 12), 2048));
        assert!(parse_linear("253:12 2048 x").is_err());
        assert!(parse_linear("/dev/sda 2048").is_err());
        assert!(parse_linear("").is_err());
    }
}
