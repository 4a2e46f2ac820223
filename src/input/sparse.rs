//! Android sparse images (`img2simg`, fastboot): a header, then chunks
//! that are raw data, a 4-byte fill pattern, "don't care" or a CRC32 of
//! everything before. Streamable, so it works from stdin, HTTP and inside
//! a compressed stream. "Don't care" chunks are staged as zeros.
//!
//! Written here because the crates for this format are unmaintained; the
//! header and chunk parsers work on bytes and are fuzzed.

use std::io::Read;

use super::{ByteStream, Fill, ImageReader, bad};
use crate::error::Result;

pub const MAGIC: u32 = 0xed26_ff3a;
const RAW: u16 = 0xcac1;
const FILL: u16 = 0xcac2;
const DONT_CARE: u16 = 0xcac3;
const CRC32: u16 = 0xcac4;

pub fn is_sparse(head: &[u8]) -> bool {
    head.len() >= 4 && u32::from_le_bytes(head[..4].try_into().expect("4")) == MAGIC
}

/// The sparse file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    pub header_len: u16,
    pub chunk_header_len: u16,
    pub block_size: u32,
    pub total_blocks: u32,
    pub total_chunks: u32,
}

impl SparseHeader {
    pub fn parse(b: &[u8]) -> Result<SparseHeader> {
        if b.len() < 28 || !is_sparse(b) {
            return Err(bad("not an Android sparse image"));
        }
        let u16at = |o: usize| super::bytes::le16(b, o);
        let u32at = |o: usize| super::bytes::le32(b, o);
        if u16at(4) != 1 {
            return Err(bad(format!(
                "Android sparse major version {} is not supported",
                u16at(4)
            )));
        }
        let h = SparseHeader {
            header_len: u16at(8),
            chunk_header_len: u16at(10),
            block_size: u32at(12),
            total_blocks: u32at(16),
            total_chunks: u32at(20),
        };
        if h.header_len < 28 || h.chunk_header_len < 12 {
            return Err(bad("Android sparse header sizes are too small"));
        }
        if h.block_size == 0 || !h.block_size.is_multiple_of(4) || h.block_size > 64 << 20 {
            return Err(bad(format!(
                "Android sparse block size {} is absurd",
                h.block_size
            )));
        }
        Ok(h)
    }

    pub fn image_size(&self) -> u64 {
        u64::from(self.total_blocks) * u64::from(self.block_size)
    }
}

/// One chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub kind: u16,
    pub blocks: u32,
    pub total_len: u32,
}

impl ChunkHeader {
    /// Parse and check a chunk header against the file header: the
    /// announced payload must be what the chunk type needs.
    pub fn parse(b: &[u8], h: &SparseHeader) -> Result<(ChunkHeader, u64)> {
        if b.len() < 12 {
            return Err(bad("Android sparse chunk header is cut short"));
        }
        let c = ChunkHeader {
            kind: u16::from_le_bytes([b[0], b[1]]),
            blocks: u32::from_le_bytes(b[4..8].try_into().expect("4")),
            total_len: u32::from_le_bytes(b[8..12].try_into().expect("4")),
        };
        let payload = u64::from(c.total_len)
            .checked_sub(u64::from(h.chunk_header_len))
            .ok_or_else(|| bad("Android sparse chunk is shorter than its header"))?;
        let expected = match c.kind {
            RAW => u64::from(c.blocks) * u64::from(h.block_size),
            FILL | CRC32 => 4,
            DONT_CARE => 0,
            k => return Err(bad(format!("unknown Android sparse chunk type {k:#x}"))),
        };
        if payload != expected {
            return Err(bad(format!(
                "Android sparse chunk of type {:#x} carries {payload} bytes where {expected} are needed",
                c.kind
            )));
        }
        Ok((c, payload))
    }
}

/// What the current chunk still has to give.
enum Pending {
    None,
    Raw(u64),
    Fill(u64, [u8; 4]),
    Zero(u64),
}

pub struct SparseReader {
    src: ByteStream,
    header: SparseHeader,
    chunks_read: u32,
    pending: Pending,
    /// Logical bytes produced so far.
    out_pos: u64,
    crc: crc32fast::Hasher,
}

impl SparseReader {
    pub fn new(stream: Box<dyn Read + Send>) -> Result<(SparseReader, u64)> {
        let mut src = ByteStream::Sequential {
            inner: stream,
            pos: 0,
        };
        let mut b = [0u8; 28];
        src.read_full(&mut b)?;
        let header = SparseHeader::parse(&b)?;
        let extra = u64::from(header.header_len) - 28;
        src.skip_to(28 + extra)?;
        let size = header.image_size();
        Ok((
            SparseReader {
                src,
                header,
                chunks_read: 0,
                pending: Pending::None,
                out_pos: 0,
                crc: crc32fast::Hasher::new(),
            },
            size,
        ))
    }

    /// Load the next chunk with data into `pending`; false when the
    /// chunks are used up (CRC chunks on the way are checked).
    fn next_chunk(&mut self) -> Result<bool> {
        loop {
            if self.chunks_read >= self.header.total_chunks {
                return Ok(false);
            }
            let mut b = vec![0u8; usize::from(self.header.chunk_header_len)];
            self.src.read_full(&mut b)?;
            self.chunks_read += 1;
            let (c, _) = ChunkHeader::parse(&b, &self.header)?;
            let len = u64::from(c.blocks) * u64::from(self.header.block_size);
            if self.out_pos + len > self.header.image_size() {
                return Err(bad("Android sparse chunks run past the image size"));
            }
            self.pending = match c.kind {
                RAW => Pending::Raw(len),
                FILL => {
                    let mut v = [0u8; 4];
                    self.src.read_full(&mut v)?;
                    Pending::Fill(len, v)
                }
                DONT_CARE => Pending::Zero(len),
                _ => {
                    let mut v = [0u8; 4];
                    self.src.read_full(&mut v)?;
                    let expected = u32::from_le_bytes(v);
                    if self.crc.clone().finalize() != expected {
                        return Err(bad("Android sparse CRC32 chunk does not match the data"));
                    }
                    continue;
                }
            };
            if len > 0 {
                return Ok(true);
            }
        }
    }
}

impl ImageReader for SparseReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        // Skip forward by producing and dropping logical bytes.
        let mut scratch = Vec::new();
        while self.out_pos < offset {
            let n = (offset - self.out_pos).min(4 << 20) as usize;
            scratch.resize(n, 0);
            self.produce(&mut scratch)?;
        }
        self.produce(buf)
    }

    fn finish(&mut self) -> Result<()> {
        // Only trailing CRC chunks (or empty ones) may remain.
        if !matches!(self.pending, Pending::None) || self.next_chunk()? {
            return Err(bad(
                "the Android sparse chunks describe more than the image size",
            ));
        }
        self.src.expect_end(self.src.pos())
    }
}

impl SparseReader {
    fn produce(&mut self, buf: &mut [u8]) -> Result<Fill> {
        let mut done = 0usize;
        let mut all_zero = true;
        while done < buf.len() {
            let left = match self.pending {
                Pending::None => {
                    if !self.next_chunk()? {
                        return Err(bad("the Android sparse chunks end before the image does"));
                    }
                    continue;
                }
                Pending::Raw(l) | Pending::Fill(l, _) | Pending::Zero(l) => l,
            };
            let n = (left.min((buf.len() - done) as u64)) as usize;
            let out = &mut buf[done..done + n];
            match self.pending {
                Pending::Raw(_) => {
                    self.src.read_full(out)?;
                    all_zero = false;
                }
                Pending::Fill(_, v) => {
                    // Fill chunks are whole blocks, and blocks are multiples
                    // of 4 bytes, so the pattern phase is the chunk offset.
                    for (i, b) in out.iter_mut().enumerate() {
                        *b = v[(self.out_pos as usize + i) % 4];
                    }
                    all_zero &= v == [0; 4];
                }
                _ => out.fill(0),
            }
            self.crc.update(out);
            done += n;
            self.out_pos += n as u64;
            let rest = left - n as u64;
            self.pending = match self.pending {
                _ if rest == 0 => Pending::None,
                Pending::Raw(_) => Pending::Raw(rest),
                Pending::Fill(_, v) => Pending::Fill(rest, v),
                _ => Pending::Zero(rest),
            };
        }
        Ok(if all_zero { Fill::Zero } else { Fill::Data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a sparse image by hand: raw, fill, don't care, crc.
    pub fn build(block: u32) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        let mut logical = Vec::new();
        let chunks: Vec<(u16, u32, Vec<u8>)> = vec![
            (
                RAW,
                2,
                (0..2 * block).map(|i| (i % 200) as u8 + 1).collect(),
            ),
            (FILL, 3, vec![1, 2, 3, 4]),
            (DONT_CARE, 1, vec![]),
            (CRC32, 0, vec![]),
        ];
        let total: u32 = chunks.iter().map(|c| c.1).sum();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&28u16.to_le_bytes());
        out.extend_from_slice(&12u16.to_le_bytes());
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for (kind, blocks, payload) in chunks {
            let payload = match kind {
                RAW => {
                    logical.extend_from_slice(&payload);
                    payload
                }
                FILL => {
                    for _ in 0..(blocks * block / 4) {
                        logical.extend_from_slice(&payload);
                    }
                    payload
                }
                DONT_CARE => {
                    logical.resize(logical.len() + (blocks * block) as usize, 0);
                    payload
                }
                _ => crc32fast::hash(&logical).to_le_bytes().to_vec(),
            };
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&blocks.to_le_bytes());
            out.extend_from_slice(&(12 + payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        (out, logical)
    }

    #[test]
    fn decodes_every_chunk_type() {
        let (file, logical) = build(4096);
        let (mut r, size) = SparseReader::new(Box::new(std::io::Cursor::new(file))).unwrap();
        assert_eq!(size, logical.len() as u64);
        let mut got = vec![0u8; logical.len()];
        let half = 3 * 4096 + 100;
        r.read_chunk(0, &mut got[..half]).unwrap();
        r.read_chunk(half as u64, &mut got[half..]).unwrap();
        r.finish().unwrap();
        assert_eq!(got, logical);
    }

    #[test]
    fn lies_are_refused() {
        let (mut file, logical) = build(4096);
        let n = file.len();
        file[n - 1] ^= 1; // crc
        let (mut r, _) = SparseReader::new(Box::new(std::io::Cursor::new(file.clone()))).unwrap();
        let mut got = vec![0u8; logical.len()];
        assert!(r.read_chunk(0, &mut got).and_then(|_| r.finish()).is_err());
        let mut big = file.clone();
        big[16..20].copy_from_slice(&1u32.to_le_bytes()); // total blocks too small
        let (mut r, _) = SparseReader::new(Box::new(std::io::Cursor::new(big))).unwrap();
        let mut one = vec![0u8; 4096];
        assert!(r.read_chunk(0, &mut one).and_then(|_| r.finish()).is_err());
        let mut absurd = file;
        absurd[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert!(SparseReader::new(Box::new(std::io::Cursor::new(absurd))).is_err());
    }
}
