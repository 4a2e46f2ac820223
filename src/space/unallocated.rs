//! A disk's unallocated space: the bytes outside every partition, as both
//! the kernel (sysfs) and the partition table on the disk see them — a
//! range counts as free only when both agree. The first and last MiB are
//! never free (they hold the partition tables, GPT's backup at the end).
//!
//! Nothing protects unallocated space from a partitioning tool: a staging
//! that uses it is checked again ([`check_still_free`]) before every use,
//! and `list` shows it invalid once a partition covers it.

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::space::hostfs::HostTarget;

/// Bytes kept clear at each end of the disk.
pub const GUARD: u64 = 1 << 20;
/// Free ranges are aligned to this (and so to every sector size).
pub const ALIGN: u64 = 1 << 20;

/// The free ranges `[start, end)` of a disk of `disk_size` bytes, given the
/// `used` ranges (in any order, overlapping or not): everything else except
/// the guards, shrunk to [`ALIGN`] boundaries, empty ones dropped.
pub fn free_ranges(disk_size: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> = used.iter().copied().filter(|(a, b)| b > a).collect();
    used.sort();
    let end = disk_size.saturating_sub(GUARD) / ALIGN * ALIGN;
    let mut out = Vec::new();
    let mut pos = GUARD;
    for (a, b) in used.into_iter().chain(std::iter::once((end, u64::MAX))) {
        let start = pos.div_ceil(ALIGN) * ALIGN;
        let stop = a.min(end) / ALIGN * ALIGN;
        if stop > start {
            out.push((start, stop));
        }
        pos = pos.max(b);
        if pos >= end {
            break;
        }
    }
    out
}

/// The partitions of the disk under `target` as `[start, end)` byte ranges:
/// the kernel's view and the on-disk table's, together. A disk without a
/// partition table (or with one liverestore cannot read) has no
/// unallocated space to offer.
pub fn partitions(target: &HostTarget) -> Result<Vec<(u64, u64)>> {
    let disk = &target.disk_path;
    let mut used = kernel_partitions(&target.block.disk_name)?;
    let size = target.block.disk_size;
    let head = crate::map::disk_io::read_raw(disk, 0, (1u64 << 20).min(size) as usize)?;
    let table = crate::input::partitions::parse(&head, size).map_err(|e| {
        Error::new(
            ErrorKind::NoSpace,
            format!("cannot read the partition table of {}: {e}", disk.display()),
        )
        .with_path(disk)
    })?;
    let Some(table) = table else {
        return Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "{} has no partition table, so no unallocated space",
                disk.display()
            ),
        )
        .with_path(disk));
    };
    used.extend(
        table
            .partitions
            .iter()
            .map(|p| (p.offset, p.offset + p.size)),
    );
    Ok(used)
}

/// Free ranges of the disk under `target`, outside its partitions and the
/// `also_used` ranges.
pub fn free_on_disk(target: &HostTarget, also_used: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
    let mut used = partitions(target)?;
    used.extend_from_slice(also_used);
    Ok(free_ranges(target.block.disk_size, &used))
}

/// Refuse (as [`ErrorKind::MapChanged`]) when any of the disk byte
/// `ranges` (`[start, end)`) is no longer outside every partition of the
/// disk. The partitions are read once for all of them.
pub fn check_still_free(target: &HostTarget, ranges: &[(u64, u64)]) -> Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    if let Some((disk, end)) = ranges
        .iter()
        .find(|&&(a, b)| a < GUARD || b > target.block.disk_size.saturating_sub(GUARD))
    {
        return Err(Error::new(
            ErrorKind::MapChanged,
            format!("unallocated disk bytes {disk}..{end} now lie off the disk's usable area"),
        ));
    }
    let parts = partitions(target).map_err(|e| {
        Error::new(
            ErrorKind::MapChanged,
            format!(
                "the disk's partitions cannot be checked any more: {}",
                e.message()
            ),
        )
    })?;
    for &(disk, end) in ranges {
        if let Some((a, b)) = parts.iter().find(|&&(a, b)| a < end && disk < b) {
            return Err(Error::new(
                ErrorKind::MapChanged,
                format!(
                    "a partition (disk bytes {a}..{b}) now covers unallocated disk bytes {disk}..{end}"
                ),
            ));
        }
    }
    Ok(())
}

/// The kernel's partitions of disk `disk_name`, from sysfs.
fn kernel_partitions(disk_name: &str) -> Result<Vec<(u64, u64)>> {
    let dir = Path::new("/sys/class/block").join(disk_name);
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| Error::io("list the disk's partitions", e).with_path(&dir))?;
    for entry in entries.flatten() {
        let p = entry.path();
        if !p.join("partition").exists() {
            continue;
        }
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(p.join(f)).ok()?.trim().parse().ok()
        };
        match (read("start"), read("size")) {
            (Some(start), Some(size)) => out.push((start * 512, (start + size) * 512)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "cannot read a partition's start and size from sysfs",
                )
                .with_path(&p));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn gaps_between_and_after_partitions() {
        // 100 MiB disk, partitions at 1..21 MiB and 41..61 MiB
        let used = [(41 * MIB, 61 * MIB), (MIB, 21 * MIB)];
        assert_eq!(
            free_ranges(100 * MIB, &used),
            vec![(21 * MIB, 41 * MIB), (61 * MIB, 99 * MIB)]
        );
    }

    #[test]
    fn guards_alignment_and_overlaps() {
        // nothing used: all but the guards
        assert_eq!(free_ranges(10 * MIB, &[]), vec![(MIB, 9 * MIB)]);
        // unaligned partition ends shrink the gaps to whole MiB
        let used = [
            (MIB, 5 * MIB + 1),
            (3 * MIB, 4 * MIB),
            (8 * MIB - 1, 9 * MIB),
        ];
        assert_eq!(free_ranges(10 * MIB, &used), vec![(6 * MIB, 7 * MIB)]);
        // a full disk, and a tiny one
        assert_eq!(free_ranges(10 * MIB, &[(0, 10 * MIB)]), vec![]);
        assert_eq!(free_ranges(MIB, &[]), vec![]);
        // an odd disk size: the end guard is rounded down
        assert_eq!(
            free_ranges(10 * MIB + 4096, &[(MIB, 8 * MIB)]),
            vec![(8 * MIB, 9 * MIB)]
        );
    }
}
