//! btrfs: from the addresses FIEMAP gives (btrfs's *logical* address
//! space) to byte offsets on the filesystem's one device, through the
//! chunk tree — the same walk `btrfs inspect-internal map-swapfile` makes
//! and the kernel itself makes for a swap file: `BTRFS_IOC_TREE_SEARCH`
//! over tree 3 (the chunk tree), items `(256, CHUNK_ITEM, logical)`,
//! each a `struct btrfs_chunk` with its stripes `(devid, offset)`.
//!
//! Only what a write through the raw disk can keep right is accepted: a
//! chunk of the `single` profile (one stripe: one copy, at one place).
//! DUP and every RAID profile keep more than one copy or spread the data
//! over stripes, and a write to one place would leave the others stale:
//! refused, with the profile named. The encoding of the search key and
//! the decoding of the kernel's answer are here, on bytes in memory; the
//! ioctl is `crate::sys::ioctl::btrfs_tree_search`.
//!
//! No crate does this: the btrfs crates on crates.io either parse whole
//! images offline or wrap btrfs-progs' command line; the tree search's
//! wire format is four fixed structs.

use crate::error::{Error, ErrorKind, Result};
use crate::map::fiemap::FileExtent;

/// `BTRFS_CHUNK_TREE_OBJECTID`.
pub const CHUNK_TREE: u64 = 3;
/// `BTRFS_FIRST_CHUNK_TREE_OBJECTID`: the objectid of every chunk item.
pub const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
/// `BTRFS_CHUNK_ITEM_KEY`.
pub const CHUNK_ITEM_KEY: u32 = 228;
/// `struct btrfs_ioctl_search_key`'s size: the arguments start with it.
pub const SEARCH_KEY_SIZE: usize = 104;
/// `struct btrfs_ioctl_search_header`'s size.
const SEARCH_HEADER_SIZE: usize = 32;
/// `struct btrfs_chunk` without its stripes, and one `struct btrfs_stripe`.
const CHUNK_SIZE: usize = 48;
const STRIPE_SIZE: usize = 32;

/// `BTRFS_BLOCK_GROUP_*`: what a chunk holds, and its profile.
pub const BLOCK_GROUP_DATA: u64 = 1 << 0;
const PROFILES: [(u64, &str); 8] = [
    (1 << 3, "RAID0"),
    (1 << 4, "RAID1"),
    (1 << 5, "DUP"),
    (1 << 6, "RAID10"),
    (1 << 7, "RAID5"),
    (1 << 8, "RAID6"),
    (1 << 9, "RAID1C3"),
    (1 << 10, "RAID1C4"),
];

/// One stripe of a chunk: `devid`'s bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    pub devid: u64,
    pub offset: u64,
}

/// A chunk: `length` bytes of the logical address space from `logical`,
/// of type `flags` (`BLOCK_GROUP_*`), stored on `stripes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub logical: u64,
    pub length: u64,
    pub flags: u64,
    pub stripes: Vec<Stripe>,
}

impl Chunk {
    /// The chunk's profile: `single`, or `DUP`, `RAID1`, ….
    pub fn profile(&self) -> &'static str {
        PROFILES
            .iter()
            .find(|(bit, _)| self.flags & bit != 0)
            .map_or("single", |(_, name)| name)
    }
}

fn corrupt(msg: String) -> Error {
    Error::new(ErrorKind::UnsupportedFilesystem, msg)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The arguments of one tree search of the chunk items from logical
/// address `from` on: the key, then an empty result buffer, `size` bytes
/// in all.
pub fn chunk_search_args(from: u64, size: usize) -> Vec<u8> {
    let mut a = vec![0u8; size];
    let mut put = |at: usize, v: &[u8]| a[at..at + v.len()].copy_from_slice(v);
    put(0, &CHUNK_TREE.to_ne_bytes()); // tree_id
    put(8, &FIRST_CHUNK_TREE_OBJECTID.to_ne_bytes()); // min_objectid
    put(16, &FIRST_CHUNK_TREE_OBJECTID.to_ne_bytes()); // max_objectid
    put(24, &from.to_ne_bytes()); // min_offset
    put(32, &u64::MAX.to_ne_bytes()); // max_offset
    put(40, &0u64.to_ne_bytes()); // min_transid
    put(48, &u64::MAX.to_ne_bytes()); // max_transid
    put(56, &CHUNK_ITEM_KEY.to_ne_bytes()); // min_type
    put(60, &CHUNK_ITEM_KEY.to_ne_bytes()); // max_type
    put(64, &u32::MAX.to_ne_bytes()); // nr_items: as many as fit
    a
}

/// Decode one `struct btrfs_chunk` (little-endian, as on disk) at
/// logical address `logical`.
pub fn parse_chunk(logical: u64, item: &[u8]) -> Result<Chunk> {
    let short = || corrupt(format!("the chunk item at logical {logical} is cut short"));
    let length = u64_at(item, 0).ok_or_else(short)?;
    let flags = u64_at(item, 24).ok_or_else(short)?;
    let num_stripes = usize::from(u16_at(item, 44).ok_or_else(short)?);
    if num_stripes == 0 || item.len() < CHUNK_SIZE + num_stripes * STRIPE_SIZE {
        return Err(short());
    }
    if length == 0 || logical.checked_add(length).is_none() {
        return Err(corrupt(format!(
            "the chunk at logical {logical} has a length of {length}"
        )));
    }
    let stripes = (0..num_stripes)
        .map(|i| {
            let at = CHUNK_SIZE + i * STRIPE_SIZE;
            Ok(Stripe {
                devid: u64_at(item, at).ok_or_else(short)?,
                offset: u64_at(item, at + 8).ok_or_else(short)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Chunk {
        logical,
        length,
        flags,
        stripes,
    })
}

/// Decode the answer of one tree search (`args`: the key, whose
/// `nr_items` the kernel set, then the results): the chunks found, in
/// the order given. Items of another key are skipped.
pub fn parse_search_answer(args: &[u8]) -> Result<Vec<Chunk>> {
    let nr_items = args
        .get(64..68)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupt("the tree search's answer is cut short".into()))?;
    let buf = args.get(SEARCH_KEY_SIZE..).unwrap_or_default();
    let mut at = 0usize;
    let mut out = Vec::new();
    for i in 0..nr_items {
        let head = buf
            .get(at..at + SEARCH_HEADER_SIZE)
            .ok_or_else(|| corrupt(format!("the tree search's item {i} is cut short")))?;
        let objectid = u64::from_ne_bytes(head[8..16].try_into().expect("8 bytes"));
        let offset = u64::from_ne_bytes(head[16..24].try_into().expect("8 bytes"));
        let kind = u32::from_ne_bytes(head[24..28].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(head[28..32].try_into().expect("4 bytes")) as usize;
        at += SEARCH_HEADER_SIZE;
        let item = buf
            .get(at..at + len)
            .ok_or_else(|| corrupt(format!("the tree search's item {i} is cut short")))?;
        at += len;
        if objectid == FIRST_CHUNK_TREE_OBJECTID && kind == CHUNK_ITEM_KEY {
            out.push(parse_chunk(offset, item)?);
        }
    }
    Ok(out)
}

/// Where the next search starts after `chunks` (the last one's logical
/// address + 1); None: the answer was empty, the walk is over.
pub fn next_search_from(chunks: &[Chunk]) -> Option<u64> {
    chunks.last().and_then(|c| c.logical.checked_add(1))
}

/// From `struct btrfs_ioctl_fs_info_args`: the number of devices and the
/// filesystem's UUID (its `/sys/fs/btrfs/UUID`).
pub fn parse_fs_info(bytes: &[u8]) -> Option<(u64, uuid::Uuid)> {
    let devices = u64::from_ne_bytes(bytes.get(8..16)?.try_into().ok()?);
    let fsid = uuid::Uuid::from_bytes(bytes.get(16..32)?.try_into().ok()?);
    Some((devices, fsid))
}

/// Translate the file's extents (`physical` in btrfs's logical address
/// space, as FIEMAP gives them) into byte offsets on device `devid`,
/// split where they cross chunks. Refused: an address in no chunk, a
/// chunk that is not data, a profile other than `single`, a stripe on
/// another device.
pub fn to_device(extents: &[FileExtent], chunks: &[Chunk], devid: u64) -> Result<Vec<FileExtent>> {
    let mut out = Vec::with_capacity(extents.len());
    for e in extents {
        let (mut logical, mut file_at, mut left) = (e.physical, e.logical, e.length);
        while left > 0 {
            let c = chunks
                .iter()
                .find(|c| c.logical <= logical && logical - c.logical < c.length)
                .ok_or_else(|| {
                    corrupt(format!(
                        "btrfs logical address {logical} (file offset {file_at}) is in no chunk of the chunk tree"
                    ))
                })?;
            if c.flags & BLOCK_GROUP_DATA == 0 {
                return Err(corrupt(format!(
                    "btrfs logical address {logical} is in a chunk that holds no data (type {:#x})",
                    c.flags
                )));
            }
            if c.profile() != "single" || c.stripes.len() != 1 {
                return Err(corrupt(format!(
                    "the container's data is in a {} chunk ({} stripes): only the single data profile is supported — DUP and RAID keep more than one copy, and a write through the raw disk would update one of them (convert with `btrfs balance start -dconvert=single`, or pick a directory on another filesystem)",
                    c.profile(),
                    c.stripes.len()
                )));
            }
            let stripe = c.stripes[0];
            if stripe.devid != devid {
                return Err(corrupt(format!(
                    "btrfs logical address {logical} is stored on device {}, not on the filesystem's device {devid}",
                    stripe.devid
                )));
            }
            let into = logical - c.logical;
            let run = left.min(c.length - into);
            let physical = stripe
                .offset
                .checked_add(into)
                .ok_or_else(|| corrupt(format!("the chunk at logical {} overflows", c.logical)))?;
            out.push(FileExtent {
                logical: file_at,
                physical,
                length: run,
            });
            logical += run;
            file_at += run;
            left -= run;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn chunk_bytes(length: u64, flags: u64, stripes: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; CHUNK_SIZE];
        b[0..8].copy_from_slice(&length.to_le_bytes());
        b[8..16].copy_from_slice(&2u64.to_le_bytes()); // owner: the extent tree
        b[16..24].copy_from_slice(&(64 * 1024u64).to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[44..46].copy_from_slice(&(stripes.len() as u16).to_le_bytes());
        for &(devid, offset) in stripes {
            let mut s = vec![0u8; STRIPE_SIZE];
            s[0..8].copy_from_slice(&devid.to_le_bytes());
            s[8..16].copy_from_slice(&offset.to_le_bytes());
            b.extend(s);
        }
        b
    }

    fn answer(items: &[(u64, u64, u32, Vec<u8>)]) -> Vec<u8> {
        let mut a = chunk_search_args(0, 4096);
        a[64..68].copy_from_slice(&(items.len() as u32).to_ne_bytes());
        let mut at = SEARCH_KEY_SIZE;
        for (objectid, offset, kind, item) in items {
            let mut h = vec![0u8; SEARCH_HEADER_SIZE];
            h[8..16].copy_from_slice(&objectid.to_ne_bytes());
            h[16..24].copy_from_slice(&offset.to_ne_bytes());
            h[24..28].copy_from_slice(&kind.to_ne_bytes());
            h[28..32].copy_from_slice(&(item.len() as u32).to_ne_bytes());
            a[at..at + 32].copy_from_slice(&h);
            a[at + 32..at + 32 + item.len()].copy_from_slice(item);
            at += 32 + item.len();
        }
        a
    }

    #[test]
    fn the_search_key_asks_for_chunk_items() {
        let a = chunk_search_args(42, 4096);
        assert_eq!(a.len(), 4096);
        assert_eq!(u64::from_ne_bytes(a[0..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_ne_bytes(a[24..32].try_into().unwrap()), 42);
        assert_eq!(u32::from_ne_bytes(a[56..60].try_into().unwrap()), 228);
    }

    #[test]
    fn chunks_are_read_from_the_answer() {
        let a = answer(&[
            // the system chunk, DUP on a single disk
            (
                256,
                MIB,
                CHUNK_ITEM_KEY,
                chunk_bytes(8 * MIB, 2 | 32, &[(1, MIB), (1, 9 * MIB)]),
            ),
            // a dev item is skipped
            (1, 1, 216, vec![0u8; 98]),
            (
                256,
                30 * MIB,
                CHUNK_ITEM_KEY,
                chunk_bytes(100 * MIB, 1, &[(1, 50 * MIB)]),
            ),
        ]);
        let chunks = parse_search_answer(&a).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].profile(), "DUP");
        assert_eq!(
            chunks[1],
            Chunk {
                logical: 30 * MIB,
                length: 100 * MIB,
                flags: 1,
                stripes: vec![Stripe {
                    devid: 1,
                    offset: 50 * MIB
                }]
            }
        );
        assert_eq!(chunks[1].profile(), "single");
        // cut short anywhere: refused, never read past the end
        for cut in [SEARCH_KEY_SIZE + 10, SEARCH_KEY_SIZE + 32 + 20] {
            let mut short = a[..cut].to_vec();
            short.resize(cut, 0);
            assert!(parse_search_answer(&short).is_err(), "{cut}");
        }
        assert!(
            parse_chunk(0, &chunk_bytes(MIB, 1, &[])).is_err(),
            "no stripe"
        );
    }

    #[test]
    fn extents_are_translated_and_split_at_chunks() {
        let chunks = vec![
            Chunk {
                logical: 100 * MIB,
                length: 10 * MIB,
                flags: 1,
                stripes: vec![Stripe {
                    devid: 1,
                    offset: 20 * MIB,
                }],
            },
            Chunk {
                logical: 110 * MIB,
                length: 10 * MIB,
                flags: 1,
                stripes: vec![Stripe {
                    devid: 1,
                    offset: 70 * MIB,
                }],
            },
        ];
        let e = [FileExtent {
            logical: 0,
            physical: 105 * MIB,
            length: 8 * MIB,
        }];
        assert_eq!(
            to_device(&e, &chunks, 1).unwrap(),
            [
                FileExtent {
                    logical: 0,
                    physical: 25 * MIB,
                    length: 5 * MIB
                },
                FileExtent {
                    logical: 5 * MIB,
                    physical: 70 * MIB,
                    length: 3 * MIB
                }
            ]
        );
        // past the last chunk
        let far = [FileExtent {
            logical: 0,
            physical: 118 * MIB,
            length: 4 * MIB,
        }];
        let err = to_device(&far, &chunks, 1).unwrap_err();
        assert!(err.message().contains("in no chunk"), "{err}");
        assert_eq!(err.kind(), ErrorKind::UnsupportedFilesystem);
        // another device
        assert!(
            to_device(&e, &chunks, 2)
                .unwrap_err()
                .message()
                .contains("device 1")
        );
    }

    #[test]
    fn profiles_other_than_single_are_refused() {
        for (flags, stripes, name) in [
            (1 | 32, vec![(1, 0), (1, 50 * MIB)], "DUP"),
            (1 | 16, vec![(1, 0), (2, 0)], "RAID1"),
            (1 | 8, vec![(1, 0), (2, 0)], "RAID0"),
        ] {
            let chunks = vec![Chunk {
                logical: 0,
                length: 100 * MIB,
                flags,
                stripes: stripes
                    .into_iter()
                    .map(|(devid, offset)| Stripe { devid, offset })
                    .collect(),
            }];
            let e = [FileExtent {
                logical: 0,
                physical: 0,
                length: MIB,
            }];
            let err = to_device(&e, &chunks, 1).unwrap_err();
            assert!(
                err.message().contains(&format!("in a {name} chunk")),
                "{err}"
            );
        }
        let metadata = vec![Chunk {
            logical: 0,
            length: 100 * MIB,
            flags: 4,
            stripes: vec![Stripe {
                devid: 1,
                offset: 0,
            }],
        }];
        let e = [FileExtent {
            logical: 0,
            physical: 0,
            length: MIB,
        }];
        assert!(
            to_device(&e, &metadata, 1)
                .unwrap_err()
                .message()
                .contains("no data")
        );
    }
}
