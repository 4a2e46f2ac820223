//! The map from container offsets to whole-disk byte offsets.
//!
//! An [`ExtentMap`] covers `[0, len)` of the container without holes or
//! overlaps, and no two extents share a disk byte. It is built from the
//! container's FIEMAP extents plus the partition's start offset, and it is
//! the only thing [`crate::map::disk_io::DiskWriter`] consults to decide where a
//! byte may go.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::map::device_layout::DeviceLayout;
use crate::map::fiemap::FileExtent;

/// `length` bytes at container offset `logical` live at whole-disk byte
/// offset `disk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapExtent {
    pub logical: u64,
    pub disk: u64,
    pub length: u64,
}

impl MapExtent {
    fn logical_end(&self) -> u64 {
        self.logical + self.length
    }
    fn disk_end(&self) -> u64 {
        self.disk + self.length
    }
}

/// One piece of a translated range: `length` bytes at disk offset `disk`,
/// taken from `buf_offset` of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRun {
    pub disk: u64,
    pub length: u64,
    pub buf_offset: u64,
}

/// A validated, normalized container → disk map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMap", into = "RawMap")]
pub struct ExtentMap {
    len: u64,
    extents: Vec<MapExtent>,
}

#[derive(Serialize, Deserialize)]
struct RawMap {
    len: u64,
    extents: Vec<MapExtent>,
}

impl TryFrom<RawMap> for ExtentMap {
    type Error = Error;
    fn try_from(raw: RawMap) -> Result<Self> {
        ExtentMap::new(raw.extents, raw.len)
    }
}

impl From<ExtentMap> for RawMap {
    fn from(map: ExtentMap) -> Self {
        RawMap {
            len: map.len,
            extents: map.extents,
        }
    }
}

fn corrupt(msg: String) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

impl ExtentMap {
    /// Validate `extents` as a map of `[0, len)`. Extents are clipped to `len`
    /// (a filesystem rounds the last one up to its block size), adjacent ones
    /// that continue each other on disk are merged.
    pub fn new(extents: Vec<MapExtent>, len: u64) -> Result<Self> {
        let mut out: Vec<MapExtent> = Vec::with_capacity(extents.len());
        let mut expected = 0u64;
        for (i, e) in extents.into_iter().enumerate() {
            if expected >= len {
                return Err(corrupt(format!(
                    "extent {i} lies past the end of the map ({len} bytes)"
                )));
            }
            if e.length == 0 {
                return Err(corrupt(format!("extent {i} has zero length")));
            }
            if e.logical != expected {
                return Err(corrupt(format!(
                    "extent {i} starts at {} where {expected} was expected",
                    e.logical
                )));
            }
            let mut e = e;
            e.length = e.length.min(len - e.logical);
            e.disk
                .checked_add(e.length)
                .ok_or_else(|| corrupt(format!("extent {i} disk range overflows")))?;
            expected = e.logical_end();
            match out.last_mut() {
                Some(prev) if prev.disk_end() == e.disk => prev.length += e.length,
                _ => out.push(e),
            }
        }
        if expected != len {
            return Err(corrupt(format!(
                "the extents cover {expected} bytes, not {len}"
            )));
        }
        let mut by_disk: Vec<&MapExtent> = out.iter().collect();
        by_disk.sort_by_key(|e| e.disk);
        if let Some(w) = by_disk.windows(2).find(|w| w[0].disk_end() > w[1].disk) {
            return Err(corrupt(format!(
                "extents at container offsets {} and {} overlap on disk",
                w[0].logical, w[1].logical
            )));
        }
        Ok(ExtentMap { len, extents: out })
    }

    /// The map of a file with FIEMAP `extents` (offsets on the
    /// filesystem's device) whose device lies on the disk as `layout` says:
    /// an extent that crosses from one piece of a logical volume to the
    /// next becomes two.
    pub fn from_file_extents(
        extents: &[FileExtent],
        len: u64,
        layout: &DeviceLayout,
    ) -> Result<Self> {
        let mut mapped = Vec::with_capacity(extents.len());
        for e in extents {
            let mut logical = e.logical;
            for (disk, length) in layout.to_disk(e.physical, e.length)? {
                mapped.push(MapExtent {
                    logical,
                    disk,
                    length,
                });
                logical += length;
            }
        }
        ExtentMap::new(mapped, len)
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn extents(&self) -> &[MapExtent] {
        &self.extents
    }

    /// The lowest and highest (exclusive) disk byte the map touches.
    pub fn disk_bounds(&self) -> Option<(u64, u64)> {
        let lo = self.extents.iter().map(|e| e.disk).min()?;
        let hi = self.extents.iter().map(|e| e.disk_end()).max()?;
        Some((lo, hi))
    }

    /// Translate `[offset, offset + len)` of the container into disk runs.
    /// A range not entirely inside the map is refused as a whole (callers
    /// never get a partial translation).
    pub fn translate(&self, offset: u64, len: u64) -> Result<Vec<DiskRun>> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "refused: range {offset}+{len} lies outside the {}-byte map",
                        self.len
                    ),
                )
                .with_offset(offset)
            })?;
        let mut runs = Vec::new();
        if len == 0 {
            return Ok(runs);
        }
        let first = self.extents.partition_point(|e| e.logical_end() <= offset);
        let mut pos = offset;
        for e in &self.extents[first..] {
            if pos >= end {
                break;
            }
            let within = pos - e.logical;
            let take = (e.length - within).min(end - pos);
            runs.push(DiskRun {
                disk: e.disk + within,
                length: take,
                buf_offset: pos - offset,
            });
            pos += take;
        }
        debug_assert_eq!(pos, end);
        Ok(runs)
    }

    /// The sub-map of `[offset, offset + len)`, re-based to start at 0.
    pub fn slice(&self, offset: u64, len: u64) -> Result<ExtentMap> {
        let extents = self
            .translate(offset, len)?
            .into_iter()
            .map(|r| MapExtent {
                logical: r.buf_offset,
                disk: r.disk,
                length: r.length,
            })
            .collect();
        ExtentMap::new(extents, len)
    }

    /// The maps of `parts` one after the other: part `i` starts where part
    /// `i - 1` ended. No two parts may share a disk byte.
    pub fn concat(parts: &[ExtentMap]) -> Result<ExtentMap> {
        let mut extents = Vec::new();
        let mut offset = 0u64;
        for part in parts {
            extents.extend(part.extents.iter().map(|e| MapExtent {
                logical: e.logical + offset,
                ..*e
            }));
            offset += part.len;
        }
        ExtentMap::new(extents, offset)
    }

    /// The map of `length` contiguous disk bytes at `disk`.
    pub fn contiguous(disk: u64, length: u64) -> Result<ExtentMap> {
        ExtentMap::new(
            vec![MapExtent {
                logical: 0,
                disk,
                length,
            }],
            length,
        )
    }

    /// A one-line description of the first difference from `other`, or None
    /// when both maps send every byte to the same place.
    pub fn difference(&self, other: &ExtentMap) -> Option<String> {
        if self.len != other.len {
            return Some(format!(
                "the map covers {} bytes, the other {}",
                self.len, other.len
            ));
        }
        for (i, (a, b)) in self.extents.iter().zip(&other.extents).enumerate() {
            if a != b {
                return Some(format!(
                    "extent {i}: container offset {} was at disk byte {} ({} bytes), now at disk byte {} ({} bytes)",
                    a.logical, a.disk, a.length, b.disk, b.length
                ));
            }
        }
        if self.extents.len() != other.extents.len() {
            return Some(format!(
                "{} extents, now {}",
                self.extents.len(),
                other.extents.len()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(logical: u64, disk: u64, length: u64) -> MapExtent {
        MapExtent {
            logical,
            disk,
            length,
        }
    }

    fn sample() -> ExtentMap {
        ExtentMap::new(
            vec![m(0, 1000, 100), m(100, 5000, 50), m(150, 2000, 50)],
            200,
        )
        .unwrap()
    }

    #[test]
    fn concat_shifts_parts_and_refuses_shared_bytes() {
        let joined =
            ExtentMap::concat(&[sample(), ExtentMap::contiguous(9000, 300).unwrap()]).unwrap();
        assert_eq!(joined.len(), 500);
        assert_eq!(joined.extents().last().unwrap(), &m(200, 9000, 300));
        assert_eq!(joined.translate(150, 100).unwrap()[1].disk, 9000);
        let clash = ExtentMap::concat(&[sample(), ExtentMap::contiguous(5020, 10).unwrap()]);
        assert_eq!(clash.unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn translate_splits_at_extent_boundaries() {
        let map = sample();
        assert_eq!(
            map.translate(90, 70).unwrap(),
            vec![
                DiskRun {
                    disk: 1090,
                    length: 10,
                    buf_offset: 0
                },
                DiskRun {
                    disk: 5000,
                    length: 50,
                    buf_offset: 10
                },
                DiskRun {
                    disk: 2000,
                    length: 10,
                    buf_offset: 60
                },
            ]
        );
        assert_eq!(
            map.translate(0, 200)
                .unwrap()
                .iter()
                .map(|r| r.length)
                .sum::<u64>(),
            200
        );
    }

    #[test]
    fn translate_refuses_anything_outside() {
        let map = sample();
        assert!(map.translate(150, 51).is_err());
        assert!(map.translate(200, 1).is_err());
        assert!(map.translate(u64::MAX, 2).is_err());
        assert!(map.translate(200, 0).unwrap().is_empty());
    }

    #[test]
    fn adjacent_extents_merge_and_last_is_clipped() {
        let map = ExtentMap::new(vec![m(0, 1000, 100), m(100, 1100, 4096)], 150).unwrap();
        assert_eq!(map.extents(), &[m(0, 1000, 150)]);
    }

    #[test]
    fn rejects_holes_overlaps_and_disk_aliasing() {
        assert!(ExtentMap::new(vec![m(0, 0, 10), m(20, 100, 10)], 30).is_err());
        assert!(ExtentMap::new(vec![m(0, 0, 10), m(5, 100, 10)], 15).is_err());
        assert!(ExtentMap::new(vec![m(0, 0, 10)], 20).is_err());
        // two container ranges on the same disk bytes
        assert!(ExtentMap::new(vec![m(0, 100, 10), m(10, 105, 10)], 20).is_err());
        assert!(ExtentMap::new(vec![m(0, u64::MAX - 1, 10)], 10).is_err());
        assert!(ExtentMap::new(vec![m(0, 0, 0)], 0).is_err());
        assert!(ExtentMap::new(vec![], 0).is_ok());
    }

    #[test]
    fn slice_rebases() {
        let map = sample();
        let s = map.slice(50, 120).unwrap();
        assert_eq!(
            s.extents(),
            &[m(0, 1050, 50), m(50, 5000, 50), m(100, 2000, 20)]
        );
        assert_eq!(s.len(), 120);
    }

    #[test]
    fn from_file_extents_adds_the_partition_start() {
        let fe = [FileExtent {
            logical: 0,
            physical: 4096,
            length: 8192,
        }];
        let partition = DeviceLayout::contiguous(1 << 20, 1 << 30);
        let map = ExtentMap::from_file_extents(&fe, 8192, &partition).unwrap();
        assert_eq!(map.extents(), &[m(0, (1 << 20) + 4096, 8192)]);
        assert_eq!(
            map.disk_bounds(),
            Some(((1 << 20) + 4096, (1 << 20) + 4096 + 8192))
        );
        // past the partition's end
        assert!(
            ExtentMap::from_file_extents(&fe, 8192, &DeviceLayout::contiguous(0, 8192)).is_err()
        );
    }

    #[test]
    fn an_extent_across_two_segments_of_a_volume_splits() {
        use crate::sys::dm::Target;
        let lin = Target::linear;
        // 1 MiB at disk 10 MiB, then 1 MiB at disk 50 MiB
        let (_, lv) = DeviceLayout::compose(
            &[lin(0, 2048, "8:1 20480"), lin(2048, 2048, "8:1 102400")],
            &mut |_| Ok(((8, 0), DeviceLayout::contiguous(0, 100 << 20))),
        )
        .unwrap();
        let fe = [FileExtent {
            logical: 0,
            physical: (1 << 20) - 4096,
            length: 12288,
        }];
        let map = ExtentMap::from_file_extents(&fe, 12288, &lv).unwrap();
        assert_eq!(
            map.extents(),
            &[m(0, (11 << 20) - 4096, 4096), m(4096, 50 << 20, 8192)]
        );
    }

    #[test]
    fn difference_names_the_moved_extent() {
        let a = sample();
        let b = ExtentMap::new(
            vec![m(0, 1000, 100), m(100, 9000, 50), m(150, 2000, 50)],
            200,
        )
        .unwrap();
        assert!(a.difference(&a.clone()).is_none());
        let d = a.difference(&b).unwrap();
        assert!(d.contains("extent 1") && d.contains("9000"), "{d}");
    }

    #[test]
    fn serde_roundtrip_revalidates() {
        let map = sample();
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(serde_json::from_str::<ExtentMap>(&json).unwrap(), map);
        let bad = r#"{"len":30,"extents":[{"logical":0,"disk":0,"length":10}]}"#;
        assert!(serde_json::from_str::<ExtentMap>(bad).is_err());
    }
}
