//! VHD (Virtual PC / Hyper-V gen 1, `qemu-img -O vpc`): fixed disks are raw
//! data followed by a 512-byte footer; dynamic disks have a copy of the
//! footer at the start, a dynamic header, and a block allocation table
//! (BAT) whose blocks begin with a sector bitmap. Differencing disks need
//! their parent and are refused.
//!
//! Written here: no maintained crate reads VHD. The footer, dynamic header
//! and BAT parsers work on bytes and are fuzzed.

use std::sync::Arc;

use super::bytes::{be32, be64};
use super::transport::ReadAt;
use super::{Fill, Format, ImageReader, Opened, bad, read_failed};
use crate::error::{Error, ErrorKind, Result};

const FOOTER_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdKind {
    Fixed,
    Dynamic,
}

/// VHD's checksum: one's complement of the byte sum, with the checksum
/// field (`at`..`at+4`) counted as zero.
fn checksum(b: &[u8], at: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    !sum
}

/// A parsed footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub disk_type: u32,
    pub data_offset: u64,
    pub current_size: u64,
}

impl Footer {
    pub fn parse(b: &[u8]) -> Result<Footer> {
        if b.len() < FOOTER_LEN || &b[..8] != b"conectix" {
            return Err(bad("no VHD footer"));
        }
        let b = &b[..FOOTER_LEN];
        if checksum(b, 64) != be32(b, 64) {
            return Err(bad("the VHD footer checksum does not match"));
        }
        Ok(Footer {
            disk_type: be32(b, 60),
            data_offset: be64(b, 16),
            current_size: be64(b, 48),
        })
    }
}

/// A parsed dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub table_offset: u64,
    pub max_entries: u32,
    pub block_size: u32,
}

impl DynamicHeader {
    pub fn parse(b: &[u8]) -> Result<DynamicHeader> {
        if b.len() < 1024 || &b[..8] != b"cxsparse" {
            return Err(bad("no VHD dynamic header where the footer points"));
        }
        let b = &b[..1024];
        if checksum(b, 36) != be32(b, 36) {
            return Err(bad("the VHD dynamic header checksum does not match"));
        }
        let h = DynamicHeader {
            table_offset: be64(b, 16),
            max_entries: be32(b, 28),
            block_size: be32(b, 32),
        };
        if !h.block_size.is_power_of_two() || !(512..=256 << 20).contains(&h.block_size) {
            return Err(bad(format!("VHD block size {} is absurd", h.block_size)));
        }
        Ok(h)
    }
}

/// Recognize a VHD: dynamic by the footer copy at the start, fixed by the
/// footer in the last 512 bytes.
pub fn detect(head: &[u8], src: &dyn ReadAt) -> Result<Option<VhdKind>> {
    if head.starts_with(b"conectix") {
        let f = Footer::parse(head)?;
        return match f.disk_type {
            3 => Ok(Some(VhdKind::Dynamic)),
            4 => Err(Error::new(
                ErrorKind::BadImage,
                "this is a differencing VHD: it needs its parent; merge it first (qemu-img convert)",
            )),
            t => Err(bad(format!(
                "VHD disk type {t} has its footer at the start, which only dynamic disks do"
            ))),
        };
    }
    if src.len() < FOOTER_LEN as u64 + 512 {
        return Ok(None);
    }
    let mut tail = [0u8; FOOTER_LEN];
    if src
        .read_exact_at(&mut tail, src.len() - FOOTER_LEN as u64)
        .is_err()
        || &tail[..8] != b"conectix"
    {
        return Ok(None);
    }
    let f = Footer::parse(&tail)?;
    match f.disk_type {
        2 => Ok(Some(VhdKind::Fixed)),
        // A dynamic disk's trailing footer; its head copy was not seen.
        _ => Err(bad(
            "a VHD footer at the end but no matching header at the start",
        )),
    }
}

pub fn open(src: Arc<dyn ReadAt>, kind: VhdKind) -> Result<Opened> {
    let io = |e| read_failed("cannot read the VHD image", e);
    match kind {
        VhdKind::Fixed => {
            let data = src.len() - FOOTER_LEN as u64;
            let mut tail = [0u8; FOOTER_LEN];
            src.read_exact_at(&mut tail, data).map_err(io)?;
            let f = Footer::parse(&tail)?;
            if f.current_size != data {
                return Err(bad(format!(
                    "the VHD footer says {} bytes but the file holds {data}",
                    f.current_size
                )));
            }
            let reader = super::RawReader::new(super::ByteStream::random(src), data);
            Ok((
                Box::new(FixedReader(reader)),
                data,
                Format::VhdFixed,
                super::Compression::None,
            ))
        }
        VhdKind::Dynamic => {
            let mut head = [0u8; FOOTER_LEN];
            src.read_exact_at(&mut head, 0).map_err(io)?;
            let f = Footer::parse(&head)?;
            let mut dh = vec![0u8; 1024];
            src.read_exact_at(&mut dh, f.data_offset).map_err(io)?;
            let h = DynamicHeader::parse(&dh)?;
            let blocks = f.current_size.div_ceil(u64::from(h.block_size));
            if u64::from(h.max_entries) < blocks {
                return Err(bad(
                    "the VHD BAT has fewer entries than the disk has blocks",
                ));
            }
            if blocks > 1 << 24 {
                return Err(bad("the VHD BAT is implausibly large"));
            }
            let mut bat = vec![0u8; blocks as usize * 4];
            src.read_exact_at(&mut bat, h.table_offset).map_err(io)?;
            let bat: Vec<u32> = bat.chunks_exact(4).map(|c| be32(c, 0)).collect();
            let size = f.current_size;
            Ok((
                Box::new(DynamicReader {
                    src,
                    bat,
                    block_size: u64::from(h.block_size),
                    size,
                }),
                size,
                Format::VhdDynamic,
                super::Compression::None,
            ))
        }
    }
}

/// A fixed VHD: raw, minus the footer (which `finish` does not count).
struct FixedReader(super::RawReader);

impl ImageReader for FixedReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        self.0.read_chunk(offset, buf)
    }
}

struct DynamicReader {
    src: Arc<dyn ReadAt>,
    bat: Vec<u32>,
    block_size: u64,
    size: u64,
}

impl DynamicReader {
    fn bitmap_len(&self) -> u64 {
        (self.block_size / 512).div_ceil(8).div_ceil(512) * 512
    }
}

impl ImageReader for DynamicReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        let io = |e| read_failed("cannot read the VHD image", e);
        if offset + buf.len() as u64 > self.size {
            return Err(bad("read past the end of the VHD"));
        }
        let mut any = false;
        let mut done = 0u64;
        while done < buf.len() as u64 {
            let pos = offset + done;
            let block = pos / self.block_size;
            let within = pos % self.block_size;
            let n = (self.block_size - within).min(buf.len() as u64 - done);
            let out = &mut buf[done as usize..(done + n) as usize];
            let entry = self.bat[block as usize];
            if entry == u32::MAX {
                out.fill(0);
            } else {
                let start = u64::from(entry) * 512;
                let mut bitmap = vec![0u8; self.bitmap_len() as usize];
                self.src.read_exact_at(&mut bitmap, start).map_err(io)?;
                self.src
                    .read_exact_at(out, start + self.bitmap_len() + within)
                    .map_err(io)?;
                // Sectors whose bitmap bit is clear read as zeros.
                for s in 0..n / 512 {
                    let sector = (within / 512 + s) as usize;
                    if bitmap[sector / 8] & (0x80 >> (sector % 8)) == 0 {
                        out[(s * 512) as usize..(s * 512 + 512) as usize].fill(0);
                    }
                }
                any = true;
            }
            done += n;
        }
        Ok(if any { Fill::Data } else { Fill::Zero })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(disk_type: u32, size: u64, data_offset: u64) -> Vec<u8> {
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(b"conectix");
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&f, 64);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn footer_checksum_and_types() {
        let f = footer(2, 1 << 20, u64::MAX);
        assert_eq!(Footer::parse(&f).unwrap().current_size, 1 << 20);
        let mut g = f.clone();
        g[100] ^= 1;
        assert!(Footer::parse(&g).is_err());
        let mut dh = vec![0u8; 1024];
        dh[..8].copy_from_slice(b"cxsparse");
        dh[32..36].copy_from_slice(&3u32.to_be_bytes());
        let c = checksum(&dh, 36);
        dh[36..40].copy_from_slice(&c.to_be_bytes());
        assert!(DynamicHeader::parse(&dh).is_err(), "block size 3 is absurd");
    }
}
