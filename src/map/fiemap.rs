//! Interpretation of FIEMAP answers, separate from the ioctl itself so that it
//! can be tested on records built in memory.
//!
//! Following Android's `fiemap_writer`, every flag that is not understood is a
//! refusal: the only flags an extent may carry are `LAST` and `UNWRITTEN`.
//! `UNWRITTEN` is what fallocate produces and what we want (the filesystem
//! keeps reading zeros while the raw disk holds the image). Anything else —
//! unknown location, delayed allocation, encoded, encrypted, inline, tail
//! packed, not block aligned, merged block maps, shared (reflinked) blocks —
//! means the physical address is not a place we may write to.

use crate::error::{Error, ErrorKind, Result};
pub use crate::sys::ioctl::RawFiemapExtent;

pub const FIEMAP_EXTENT_LAST: u32 = 0x0000_0001;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0000_0002;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x0000_0004;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x0000_0008;
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0000_0080;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0000_0100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0000_0200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0000_0400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0000_0800;
pub const FIEMAP_EXTENT_MERGED: u32 = 0x0000_1000;
pub const FIEMAP_EXTENT_SHARED: u32 = 0x0000_2000;

/// The flags an extent may carry.
const ACCEPTED: u32 = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_UNWRITTEN;

/// One extent of a file: `length` bytes at file offset `logical` live at
/// byte `physical` of the filesystem's block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
}

fn flag_names(flags: u32) -> String {
    const NAMES: [(u32, &str); 11] = [
        (FIEMAP_EXTENT_LAST, "last"),
        (FIEMAP_EXTENT_UNKNOWN, "unknown"),
        (FIEMAP_EXTENT_DELALLOC, "delalloc"),
        (FIEMAP_EXTENT_ENCODED, "encoded"),
        (FIEMAP_EXTENT_DATA_ENCRYPTED, "encrypted"),
        (FIEMAP_EXTENT_NOT_ALIGNED, "not_aligned"),
        (FIEMAP_EXTENT_DATA_INLINE, "inline"),
        (FIEMAP_EXTENT_DATA_TAIL, "tail"),
        (FIEMAP_EXTENT_UNWRITTEN, "unwritten"),
        (FIEMAP_EXTENT_MERGED, "merged"),
        (FIEMAP_EXTENT_SHARED, "shared"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = NAMES.iter().fold(0, |acc, (bit, _)| acc | bit);
    if flags & !known != 0 {
        out.push(format!("{:#x}", flags & !known));
    }
    out.join(",")
}

/// Validate the raw answer for a file of `file_size` bytes whose blocks are
/// `block_size` bytes, and return its extents in file order.
///
/// Refused (as [`ErrorKind::UnsupportedFilesystem`]): a flag outside `LAST`
/// and `UNWRITTEN`, extents out of order or overlapping, a hole before the end
/// of the file, an extent not aligned to `block_size`, a missing `LAST` flag
/// on the final extent, or no extents at all for a non-empty file.
pub fn validate(
    raw: &[RawFiemapExtent],
    file_size: u64,
    block_size: u64,
) -> Result<Vec<FileExtent>> {
    let refuse = |msg: String| Err(Error::new(ErrorKind::UnsupportedFilesystem, msg));
    if raw.is_empty() {
        if file_size == 0 {
            return Ok(Vec::new());
        }
        return refuse("the filesystem reported no extents for an allocated file".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut expected_logical = 0u64;
    for (i, e) in raw.iter().enumerate() {
        if e.fe_flags & !ACCEPTED != 0 {
            return refuse(format!(
                "extent {i} has flags [{}] whose physical location cannot be written safely",
                flag_names(e.fe_flags)
            ));
        }
        if e.fe_length == 0 {
            return refuse(format!("extent {i} has zero length"));
        }
        for (what, value) in [
            ("logical offset", e.fe_logical),
            ("physical offset", e.fe_physical),
            ("length", e.fe_length),
        ] {
            if value % block_size != 0 {
                return refuse(format!(
                    "extent {i} {what} {value} is not a multiple of the block size {block_size}"
                ));
            }
        }
        if e.fe_logical != expected_logical {
            return refuse(format!(
                "extent {i} starts at file offset {} but {} was expected (hole, overlap or disorder)",
                e.fe_logical, expected_logical
            ));
        }
        if e.fe_physical.checked_add(e.fe_length).is_none() {
            return refuse(format!("extent {i} physical range overflows"));
        }
        let is_last = i + 1 == raw.len();
        if (e.fe_flags & FIEMAP_EXTENT_LAST != 0) != is_last {
            return refuse(format!(
                "extent {i}: the LAST flag is not on the final extent"
            ));
        }
        expected_logical = e.fe_logical.checked_add(e.fe_length).ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedFilesystem,
                format!("extent {i} logical range overflows"),
            )
        })?;
        out.push(FileExtent {
            logical: e.fe_logical,
            physical: e.fe_physical,
            length: e.fe_length,
        });
    }
    if expected_logical < file_size {
        return refuse(format!(
            "the extents end at {expected_logical} but the file is {file_size} bytes (not fully allocated)"
        ));
    }
    Ok(out)
}

/// Extents from a block map (FIBMAP answers, for filesystems without
/// FIEMAP): `starts[i]` is the filesystem block (counted in `block`-byte
/// units) of the first of `per_run` contiguous blocks at file block
/// `i * per_run`; 0 is a hole, refused. Runs that continue each other on
/// disk merge; the last extent ends at `size` rounded up to `block`.
pub fn extents_from_block_map(
    starts: &[u64],
    per_run: u64,
    block: u64,
    size: u64,
) -> Result<Vec<FileExtent>> {
    let run_len = per_run * block;
    let end = size.div_ceil(block) * block;
    if (starts.len() as u64) < size.div_ceil(run_len) {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "the block map covers {} of {size} bytes",
                starts.len() as u64 * run_len
            ),
        ));
    }
    let mut out: Vec<FileExtent> = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let logical = i as u64 * run_len;
        if logical >= end {
            break;
        }
        if start == 0 {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                format!("the file has a hole at offset {logical} (not fully allocated)"),
            ));
        }
        let physical = start.checked_mul(block).ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedFilesystem, "block number overflows")
        })?;
        let length = run_len.min(end - logical);
        match out.last_mut() {
            Some(prev) if prev.physical + prev.length == physical => prev.length += length,
            _ => out.push(FileExtent {
                logical,
                physical,
                length,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn block_maps_merge_runs_and_refuse_holes() {
        // clusters of 8 blocks of 512 bytes; the file is 3.5 clusters long
        let ext = extents_from_block_map(&[100, 108, 300, 308], 8, 512, 4096 * 3 + 2048).unwrap();
        assert_eq!(
            ext,
            vec![
                FileExtent {
                    logical: 0,
                    physical: 100 * 512,
                    length: 8192
                },
                FileExtent {
                    logical: 8192,
                    physical: 300 * 512,
                    length: 4096 + 2048
                },
            ]
        );
        let hole = extents_from_block_map(&[100, 0], 8, 512, 8192).unwrap_err();
        assert_eq!(hole.kind(), ErrorKind::UnsupportedFilesystem);
        assert!(
            extents_from_block_map(&[100], 8, 512, 8192).is_err(),
            "too few"
        );
        assert_eq!(extents_from_block_map(&[], 8, 512, 0).unwrap(), vec![]);
    }

    use super::*;

    fn ext(logical: u64, physical: u64, length: u64, flags: u32) -> RawFiemapExtent {
        RawFiemapExtent {
            fe_logical: logical,
            fe_physical: physical,
            fe_length: length,
            fe_flags: flags,
            ..Default::default()
        }
    }

    const U: u32 = FIEMAP_EXTENT_UNWRITTEN;
    const L: u32 = FIEMAP_EXTENT_LAST;

    #[test]
    fn accepts_unwritten_extents_ending_in_last() {
        let raw = [ext(0, 8192, 4096, U), ext(4096, 65536, 8192, U | L)];
        let got = validate(&raw, 12288, 4096).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            FileExtent {
                logical: 4096,
                physical: 65536,
                length: 8192
            }
        );
    }

    #[test]
    fn last_extent_may_run_past_an_unaligned_size() {
        let raw = [ext(0, 8192, 8192, U | L)];
        assert!(validate(&raw, 5000, 4096).is_ok());
    }

    #[test]
    fn rejects_every_flag_it_does_not_understand() {
        for flag in [
            FIEMAP_EXTENT_UNKNOWN,
            FIEMAP_EXTENT_DELALLOC,
            FIEMAP_EXTENT_ENCODED,
            FIEMAP_EXTENT_DATA_ENCRYPTED,
            FIEMAP_EXTENT_NOT_ALIGNED,
            FIEMAP_EXTENT_DATA_INLINE,
            FIEMAP_EXTENT_DATA_TAIL,
            FIEMAP_EXTENT_MERGED,
            FIEMAP_EXTENT_SHARED,
            0x8000_0000,
        ] {
            let raw = [ext(0, 4096, 4096, U | L | flag)];
            let err = validate(&raw, 4096, 4096).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::UnsupportedFilesystem,
                "flag {flag:#x}"
            );
        }
    }

    #[test]
    fn rejects_holes_overlaps_and_missing_last() {
        let hole = [ext(0, 4096, 4096, U), ext(8192, 65536, 4096, U | L)];
        assert!(validate(&hole, 12288, 4096).is_err());
        let overlap = [ext(0, 4096, 8192, U), ext(4096, 65536, 4096, U | L)];
        assert!(validate(&overlap, 8192, 4096).is_err());
        let no_last = [ext(0, 4096, 4096, U)];
        assert!(validate(&no_last, 4096, 4096).is_err());
        let early_last = [ext(0, 4096, 4096, U | L), ext(4096, 8192, 4096, U | L)];
        assert!(validate(&early_last, 8192, 4096).is_err());
        let short = [ext(0, 4096, 4096, U | L)];
        assert!(validate(&short, 8192, 4096).is_err());
        assert!(validate(&[], 4096, 4096).is_err());
    }

    #[test]
    fn an_empty_file_does_not_excuse_bad_extents() {
        // found by the fiemap fuzz target
        assert!(validate(&[], 0, 4096).unwrap().is_empty());
        assert!(validate(&[ext(0, 4096, 0, FIEMAP_EXTENT_SHARED | L)], 0, 4096).is_err());
        assert!(validate(&[ext(0, 4096, 4096, FIEMAP_EXTENT_SHARED | L)], 0, 4096).is_err());
    }

    #[test]
    fn rejects_misaligned_extents() {
        let raw = [ext(0, 4096 + 512, 4096, U | L)];
        assert!(validate(&raw, 4096, 4096).is_err());
    }

    #[test]
    fn flag_names_are_readable() {
        assert_eq!(
            flag_names(FIEMAP_EXTENT_SHARED | L | 0x4000_0000),
            "last,shared,0x40000000"
        );
    }
}
