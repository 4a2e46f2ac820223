//! The self-describing header kept on disk at the start of every container.
//!
//! A raw scan of the disk finds it without any help from the host
//! filesystem or the state directory (a lost root filesystem, a copied
//! container, a boot into the restored system), so it carries everything
//! needed to find the image: the whole [`StagingRecord`], map included.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! block 0 (4096 bytes, at container offset 0)
//!   0   magic "LIVERESTORE-HDR1"     16
//!   16  format version (1)           u32
//!   20  reserved                     u32
//!   24  header_len (= data offset)   u64
//!   32  body_len                     u64
//!   40  disk offset of block 0       u64
//!   48  staging id                   16 bytes (UUID)
//!   64  SHA-256 of the body          32
//!   96  boot extent count            u32
//!   100 reserved                     u32
//!   104 boot extents: (container offset, disk offset, length) u64 x3 each,
//!       covering block 0 and the body, so a scanner can read the body
//!       even when the header spans several extents
//!   4064 SHA-256 of bytes 0..4064    32
//! body (body_len bytes of JSON: the StagingRecord), from offset 4096
//! ```
//!
//! Block 0 and the body are checked separately: a scanner first trusts a
//! block only if its own checksum holds, then reads and checks the body.

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::map::extent_map::{ExtentMap, MapExtent};
use crate::store::record::StagingRecord;

pub const MAGIC: &[u8; 16] = b"LIVERESTORE-HDR1";
pub const BLOCK0_SIZE: usize = 4096;
const FORMAT_VERSION: u32 = 1;
const EXTENTS_AT: usize = 104;
const CHECKSUM_AT: usize = BLOCK0_SIZE - 32;
/// How many extents block 0 can describe.
pub const MAX_BOOT_EXTENTS: usize = (CHECKSUM_AT - EXTENTS_AT) / 24;

/// The decoded first block of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block0 {
    pub header_len: u64,
    pub body_len: u64,
    pub self_disk_offset: u64,
    pub id: uuid::Uuid,
    pub body_sha256: [u8; 32],
    /// Where block 0 and the body live on disk (container offsets from 0).
    pub boot_map: ExtentMap,
}

impl Block0 {
    /// Bytes of the header that hold data: block 0 plus the body.
    pub fn used_len(&self) -> u64 {
        BLOCK0_SIZE as u64 + self.body_len
    }
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An upper bound for the header length of a staging, chosen before the
/// container is allocated (the map is not known yet): room for the record
/// with every chunk hash and for `max_extents` extents, rounded up to 1 MiB.
pub fn reserve_len(image_size: u64, chunk_size: u64, max_extents: u64) -> u64 {
    const PER_EXTENT: u64 = 96; // {"logical":N,"disk":N,"length":N}, 20-digit numbers
    const PER_CHUNK: u64 = 70; // "64 hex",
    const FIXED: u64 = 256 << 10; // names, paths, identity, a partition table
    let body = FIXED + PER_CHUNK * image_size.div_ceil(chunk_size) + PER_EXTENT * max_extents;
    (BLOCK0_SIZE as u64 + body).div_ceil(1 << 20) * (1 << 20)
}

/// Encode the header of `record` (whose map must be set). The result is
/// `used_len` rounded up to `align` bytes; it fails when it would not fit in
/// `record.container.data_offset` bytes less the boot note's area or the header is too fragmented for
/// block 0 to describe.
pub fn encode(record: &StagingRecord, align: u64) -> Result<Vec<u8>> {
    let map = record.map.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidState,
            "cannot write a header before the map exists",
        )
    })?;
    let body = serde_json::to_vec(record).expect("records always serialize");
    let header_len = record.container.data_offset;
    let used = BLOCK0_SIZE as u64 + body.len() as u64;
    let padded = used.div_ceil(align) * align;
    // The header area's last bytes are the boot note's.
    if padded > header_len.saturating_sub(crate::store::boot_note::AREA) {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "the header needs {padded} bytes but {header_len} were reserved: the container is too fragmented ({} extents)",
                map.extents().len()
            ),
        ));
    }
    let boot = map.slice(0, padded)?;
    if boot.extents().len() > MAX_BOOT_EXTENTS {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            "the container's first megabytes are too fragmented to hold a header",
        ));
    }
    let mut out = vec![0u8; padded as usize];
    let b0 = &mut out[..BLOCK0_SIZE];
    b0[0..16].copy_from_slice(MAGIC);
    b0[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b0[24..32].copy_from_slice(&header_len.to_le_bytes());
    b0[32..40].copy_from_slice(&(body.len() as u64).to_le_bytes());
    b0[40..48].copy_from_slice(&boot.extents()[0].disk.to_le_bytes());
    b0[48..64].copy_from_slice(record.id.as_bytes());
    b0[64..96].copy_from_slice(&Sha256::digest(&body));
    b0[96..100].copy_from_slice(&(boot.extents().len() as u32).to_le_bytes());
    for (i, e) in boot.extents().iter().enumerate() {
        let at = EXTENTS_AT + 24 * i;
        b0[at..at + 8].copy_from_slice(&e.logical.to_le_bytes());
        b0[at + 8..at + 16].copy_from_slice(&e.disk.to_le_bytes());
        b0[at + 16..at + 24].copy_from_slice(&e.length.to_le_bytes());
    }
    let sum = Sha256::digest(&b0[..CHECKSUM_AT]);
    b0[CHECKSUM_AT..].copy_from_slice(&sum);
    out[BLOCK0_SIZE..BLOCK0_SIZE + body.len()].copy_from_slice(&body);
    Ok(out)
}

/// Does this block start with the header magic? (Cheap test for scanning.)
pub fn has_magic(block: &[u8]) -> bool {
    block.len() >= MAGIC.len() && &block[..MAGIC.len()] == MAGIC
}

/// Decode and check block 0.
pub fn decode_block0(b: &[u8]) -> Result<Block0> {
    if b.len() < BLOCK0_SIZE {
        return Err(corrupt("header block is truncated"));
    }
    let b = &b[..BLOCK0_SIZE];
    if !has_magic(b) {
        return Err(corrupt("no liverestore header magic"));
    }
    if Sha256::digest(&b[..CHECKSUM_AT]).as_slice() != &b[CHECKSUM_AT..] {
        return Err(corrupt("header block checksum mismatch"));
    }
    let version = u32_at(b, 16);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!("unsupported header version {version}")));
    }
    let header_len = u64_at(b, 24);
    let body_len = u64_at(b, 32);
    let count = u32_at(b, 96) as usize;
    if count == 0 || count > MAX_BOOT_EXTENTS {
        return Err(corrupt(format!("header lists {count} boot extents")));
    }
    if body_len > header_len.saturating_sub(BLOCK0_SIZE as u64) {
        return Err(corrupt("header body is longer than the header"));
    }
    let extents: Vec<MapExtent> = (0..count)
        .map(|i| {
            let at = EXTENTS_AT + 24 * i;
            MapExtent {
                logical: u64_at(b, at),
                disk: u64_at(b, at + 8),
                length: u64_at(b, at + 16),
            }
        })
        .collect();
    let covered = extents.iter().map(|e| e.length).sum::<u64>();
    let boot_map = ExtentMap::new(extents, covered)?;
    if covered < BLOCK0_SIZE as u64 + body_len {
        return Err(corrupt("header boot extents do not cover the body"));
    }
    Ok(Block0 {
        header_len,
        body_len,
        self_disk_offset: u64_at(b, 40),
        id: uuid::Uuid::from_bytes(b[48..64].try_into().expect("16 bytes")),
        body_sha256: b[64..96].try_into().expect("32 bytes"),
        boot_map,
    })
}

/// Decode and check the body, given block 0 and the header's first
/// `block0.used_len()` bytes (block 0 included).
pub fn decode_body(block0: &Block0, bytes: &[u8]) -> Result<StagingRecord> {
    let end = block0.used_len() as usize;
    if bytes.len() < end {
        return Err(corrupt("header body is truncated"));
    }
    let body = &bytes[BLOCK0_SIZE..end];
    if Sha256::digest(body).as_slice() != block0.body_sha256 {
        return Err(corrupt("header body checksum mismatch"));
    }
    let record: StagingRecord = serde_json::from_slice(body)
        .map_err(|e| corrupt(format!("header body is not a valid record: {e}")))?;
    if record.id != block0.id {
        return Err(corrupt("header body belongs to another staging"));
    }
    if record.container.data_offset != block0.header_len {
        return Err(corrupt("header length disagrees with the record"));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::tests::sample_record;

    /// Simulate a disk: place `header` at the disk offsets of `map` and
    /// read it back the way a scanner would.
    fn place_and_read(header: &[u8], map: &ExtentMap, disk_size: usize) -> Result<StagingRecord> {
        let mut disk = vec![0u8; disk_size];
        for run in map.translate(0, header.len() as u64).unwrap() {
            let src = &header[run.buf_offset as usize..(run.buf_offset + run.length) as usize];
            disk[run.disk as usize..(run.disk + run.length) as usize].copy_from_slice(src);
        }
        let at = map.extents()[0].disk as usize;
        let b0 = decode_block0(&disk[at..at + BLOCK0_SIZE])?;
        assert_eq!(b0.self_disk_offset as usize, at);
        let mut bytes = vec![0u8; b0.used_len() as usize];
        for run in b0.boot_map.translate(0, b0.used_len())? {
            bytes[run.buf_offset as usize..(run.buf_offset + run.length) as usize]
                .copy_from_slice(&disk[run.disk as usize..(run.disk + run.length) as usize]);
        }
        decode_body(&b0, &bytes)
    }

    #[test]
    fn roundtrip_through_a_fragmented_header() {
        let mut rec = sample_record();
        // header spread over three small extents, out of disk order
        rec.map = Some(
            ExtentMap::new(
                vec![
                    MapExtent {
                        logical: 0,
                        disk: 40960,
                        length: 4096,
                    },
                    MapExtent {
                        logical: 4096,
                        disk: 8192,
                        length: 4096,
                    },
                    MapExtent {
                        logical: 8192,
                        disk: 65536,
                        length: (11 << 20) - 8192,
                    },
                ],
                11 << 20,
            )
            .unwrap(),
        );
        let header = encode(&rec, 4096).unwrap();
        assert_eq!(header.len() % 4096, 0);
        let back = place_and_read(&header, rec.map.as_ref().unwrap(), 12 << 20).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn damage_anywhere_is_detected() {
        let rec = sample_record();
        let header = encode(&rec, 4096).unwrap();
        let used = BLOCK0_SIZE + u64_at(&header, 32) as usize;
        for i in (0..used).step_by(97) {
            let mut bad = header.clone();
            bad[i] ^= 0x80;
            let map = rec.map.as_ref().unwrap();
            let res = place_and_read(&bad, map, 12 << 20);
            assert_eq!(res.unwrap_err().kind(), ErrorKind::Corrupt, "flip at {i}");
        }
    }

    #[test]
    fn refuses_a_header_larger_than_reserved() {
        let mut rec = sample_record();
        rec.image.chunk_blake3 = vec!["00".repeat(32); 20_000];
        assert_eq!(
            encode(&rec, 4096).unwrap_err().kind(),
            ErrorKind::UnsupportedFilesystem
        );
    }

    #[test]
    fn reserve_is_enough_for_the_bound() {
        let len = reserve_len(1 << 30, 4 << 20, 1024);
        assert_eq!(len % (1 << 20), 0);
        assert!(len >= 4096 + 70 * 256 + 96 * 1024);
        assert!(len <= 1 << 20);
    }

    #[test]
    fn random_bytes_are_not_a_header() {
        let mut block = vec![0x5au8; BLOCK0_SIZE];
        assert!(decode_block0(&block).is_err());
        block[..16].copy_from_slice(MAGIC);
        assert_eq!(
            decode_block0(&block).unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert!(decode_block0(&block[..100]).is_err());
    }
}
