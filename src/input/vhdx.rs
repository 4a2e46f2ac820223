//! VHDX (Hyper-V gen 2, `qemu-img -O vhdx`): two checksummed headers, two
//! region tables naming the BAT and the metadata region, metadata items
//! (block size, virtual size, sector size), and a BAT whose payload entries
//! are interleaved with sector-bitmap entries every "chunk ratio" blocks.
//! A non-empty log (an unclean shutdown) and differencing disks are
//! refused: replaying a log or reading a parent is not our job.
//!
//! Written here: no maintained crate reads VHDX. The header, region table,
//! metadata and BAT parsers work on bytes and are fuzzed.

use std::sync::Arc;

use super::bytes::{le16, le32, le64};
use super::transport::ReadAt;
use super::{Fill, ImageReader, bad, read_failed};
use crate::error::{Error, ErrorKind, Result};

const KIB64: u64 = 64 << 10;

pub fn is_vhdx(head: &[u8]) -> bool {
    head.starts_with(b"vhdxfile")
}

/// A GUID as VHDX stores it (mixed-endian, like Windows).
fn guid(s: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(s)
        .expect("constant GUID")
        .to_bytes_le()
}

/// CRC-32C of `b` with the 4 checksum bytes at `at` counted as zero.
fn crc_with_hole(b: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&b[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &b[at + 4..])
}

/// A header (4 KiB at 64 KiB or 128 KiB): its sequence number and whether
/// its log is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub sequence: u64,
    pub log_empty: bool,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < 4096 || &b[..4] != b"head" {
            return Err(bad("no VHDX header"));
        }
        let b = &b[..4096];
        if crc_with_hole(b, 4) != le32(b, 4) {
            return Err(bad("VHDX header checksum mismatch"));
        }
        if le16(b, 66) != 1 {
            return Err(bad(format!(
                "VHDX version {} is not supported",
                le16(b, 66)
            )));
        }
        Ok(Header {
            sequence: le64(b, 8),
            log_empty: b[48..64].iter().all(|&x| x == 0),
        })
    }
}

/// Where the BAT and the metadata region are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    pub bat: (u64, u32),
    pub metadata: (u64, u32),
}

impl Regions {
    pub fn parse(b: &[u8]) -> Result<Regions> {
        if b.len() < KIB64 as usize || &b[..4] != b"regi" {
            return Err(bad("no VHDX region table"));
        }
        let b = &b[..KIB64 as usize];
        if crc_with_hole(b, 4) != le32(b, 4) {
            return Err(bad("VHDX region table checksum mismatch"));
        }
        let count = le32(b, 8) as usize;
        if count > 2047 {
            return Err(bad("VHDX region table has too many entries"));
        }
        let (bat_id, meta_id) = (
            guid("2DC27766-F623-4200-9D64-115E9BFD4A08"),
            guid("8B7CA206-4790-4B9A-B8FE-575F050F886E"),
        );
        let (mut bat, mut metadata) = (None, None);
        for i in 0..count {
            let e = &b[16 + 32 * i..16 + 32 * (i + 1)];
            let entry = (le64(e, 16), le32(e, 24));
            if e[..16] == bat_id {
                bat = Some(entry);
            } else if e[..16] == meta_id {
                metadata = Some(entry);
            } else if le32(e, 28) & 1 != 0 {
                return Err(bad(
                    "the VHDX image needs a region this reader does not know",
                ));
            }
        }
        match (bat, metadata) {
            (Some(bat), Some(metadata)) => Ok(Regions { bat, metadata }),
            _ => Err(bad("the VHDX region table lacks the BAT or the metadata")),
        }
    }
}

/// The metadata items a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub block_size: u32,
    pub virtual_size: u64,
    pub logical_sector: u32,
}

impl Metadata {
    /// Parse the metadata region `b` (the whole region).
    pub fn parse(b: &[u8]) -> Result<Metadata> {
        if b.len() < 32 || &b[..8] != b"metadata" {
            return Err(bad("no VHDX metadata table"));
        }
        let count = usize::from(le16(b, 10));
        if 32 + 32 * count > b.len() || count > 2047 {
            return Err(bad("the VHDX metadata table is larger than its region"));
        }
        let item = |id: &str, len: usize| -> Result<Option<&[u8]>> {
            let id = guid(id);
            for i in 0..count {
                let e = &b[32 + 32 * i..64 + 32 * i];
                if e[..16] == id {
                    let (off, l) = (le32(e, 16) as usize, le32(e, 20) as usize);
                    if l < len || off.checked_add(l).is_none_or(|end| end > b.len()) {
                        return Err(bad("a VHDX metadata item lies outside its region"));
                    }
                    return Ok(Some(&b[off..off + len]));
                }
            }
            Ok(None)
        };
        let missing = || bad("the VHDX metadata lacks a required item");
        let params = item("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", 8)?.ok_or_else(missing)?;
        if le32(params, 4) & 2 != 0 {
            return Err(Error::new(
                ErrorKind::BadImage,
                "this is a differencing VHDX: it needs its parent; merge it first (qemu-img convert)",
            ));
        }
        let m = Metadata {
            block_size: le32(params, 0),
            virtual_size: le64(
                item("2FA54224-CD1B-4876-B211-5DBED83BF4B8", 8)?.ok_or_else(missing)?,
                0,
            ),
            logical_sector: le32(
                item("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", 4)?.ok_or_else(missing)?,
                0,
            ),
        };
        if !m.block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&m.block_size) {
            return Err(bad(format!("VHDX block size {} is absurd", m.block_size)));
        }
        if m.logical_sector != 512 && m.logical_sector != 4096 {
            return Err(bad(format!(
                "VHDX sector size {} is absurd",
                m.logical_sector
            )));
        }
        if m.virtual_size == 0 || m.virtual_size > 64 << 40 {
            return Err(bad("VHDX virtual size is absurd"));
        }
        Ok(m)
    }

    /// Payload blocks per sector-bitmap block.
    pub fn chunk_ratio(&self) -> u64 {
        ((1u64 << 23) * u64::from(self.logical_sector)) / u64::from(self.block_size)
    }

    pub fn blocks(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.block_size))
    }

    /// BAT entries, payload and bitmap interleaved.
    pub fn bat_entries(&self) -> u64 {
        let blocks = self.blocks();
        blocks + (blocks.saturating_sub(1)) / self.chunk_ratio()
    }
}

/// Where payload block `i` is: `None` reads as zeros.
pub fn payload_offset(entry: u64) -> Result<Option<u64>> {
    match entry & 7 {
        0..=3 => Ok(None),
        6 => Ok(Some((entry >> 20) << 20)),
        7 => Err(bad(
            "a partially present VHDX block belongs to a differencing disk",
        )),
        s => Err(bad(format!("VHDX BAT entry state {s} is invalid"))),
    }
}

pub struct VhdxReader {
    src: Arc<dyn ReadAt>,
    meta: Metadata,
    bat: Vec<u64>,
}

impl VhdxReader {
    pub fn open(src: Arc<dyn ReadAt>) -> Result<(VhdxReader, u64)> {
        let io = |e| read_failed("cannot read the VHDX image", e);
        let read = |off: u64, len: usize| -> Result<Vec<u8>> {
            let mut v = vec![0u8; len];
            src.read_exact_at(&mut v, off).map_err(io)?;
            Ok(v)
        };
        let headers: Vec<Header> = [KIB64, 2 * KIB64]
            .iter()
            .filter_map(|&o| read(o, 4096).ok().and_then(|b| Header::parse(&b).ok()))
            .collect();
        let header = headers
            .iter()
            .max_by_key(|h| h.sequence)
            .ok_or_else(|| bad("neither VHDX header is valid"))?;
        if !header.log_empty {
            return Err(bad(
                "the VHDX log is not empty (the image was not closed cleanly); open it once in Hyper-V or run `qemu-img check -r all` to replay it",
            ));
        }
        let regions = [3 * KIB64, 4 * KIB64]
            .iter()
            .find_map(|&o| {
                read(o, KIB64 as usize)
                    .ok()
                    .and_then(|b| Regions::parse(&b).ok())
            })
            .ok_or_else(|| bad("neither VHDX region table is valid"))?;
        if regions.metadata.1 > 16 << 20 {
            return Err(bad("the VHDX metadata region is implausibly large"));
        }
        let meta = Metadata::parse(&read(regions.metadata.0, regions.metadata.1 as usize)?)?;
        let entries = meta.bat_entries();
        if entries * 8 > u64::from(regions.bat.1) {
            return Err(bad("the VHDX BAT region is smaller than the disk needs"));
        }
        let bat: Vec<u64> = read(regions.bat.0, (entries * 8) as usize)?
            .chunks_exact(8)
            .map(|c| le64(c, 0))
            .collect();
        let size = meta.virtual_size;
        Ok((VhdxReader { src, meta, bat }, size))
    }
}

impl ImageReader for VhdxReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        let bs = u64::from(self.meta.block_size);
        if offset + buf.len() as u64 > self.meta.virtual_size {
            return Err(bad("read past the end of the VHDX"));
        }
        let ratio = self.meta.chunk_ratio();
        let mut any = false;
        let mut done = 0u64;
        while done < buf.len() as u64 {
            let pos = offset + done;
            let (block, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(buf.len() as u64 - done);
            let out = &mut buf[done as usize..(done + n) as usize];
            let entry = self.bat[(block + block / ratio) as usize];
            match payload_offset(entry)? {
                None => out.fill(0),
                Some(at) => {
                    self.src
                        .read_exact_at(out, at + within)
                        .map_err(|e| read_failed("cannot read the VHDX image", e))?;
                    any = true;
                }
            }
            done += n;
        }
        Ok(if any { Fill::Data } else { Fill::Zero })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bat_states() {
        assert_eq!(payload_offset(0).unwrap(), None);
        assert_eq!(payload_offset(2).unwrap(), None);
        assert_eq!(payload_offset((5 << 20) | 6).unwrap(), Some(5 << 20));
        assert!(payload_offset(7).is_err());
        assert!(payload_offset(4).is_err());
        let m = Metadata {
            block_size: 32 << 20,
            virtual_size: 1 << 30,
            logical_sector: 512,
        };
        assert_eq!(m.chunk_ratio(), 128);
        assert_eq!(m.blocks(), 32);
        assert_eq!(m.bat_entries(), 32);
    }

    #[test]
    fn header_checksum() {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"head");
        h[8..16].copy_from_slice(&3u64.to_le_bytes());
        h[66..68].copy_from_slice(&1u16.to_le_bytes());
        let c = crc_with_hole(&h, 4);
        h[4..8].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            Header::parse(&h).unwrap(),
            Header {
                sequence: 3,
                log_empty: true
            }
        );
        h[200] = 1;
        assert!(Header::parse(&h).is_err());
    }
}
