//! Compressed images: gzip, xz and zstd, recognized by their magic bytes
//! (never by the file name), decoded as a stream, and — where the
//! container says so — their uncompressed size found without decoding.
//!
//! The size parsers (`xz` index, `zstd` frame headers, gzip `ISIZE`) work on
//! bytes handed to them, so they are unit-tested and fuzzed without I/O.
//! The decoders are the reference C libraries through well-kept crates:
//! `flate2` (zlib-rs), `liblzma` (its multithreaded decoder) and `zstd`.

use std::io::{self, Read};

use crate::error::{Error, ErrorKind, Result};
use crate::input::transport::ReadAt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// Recognize a compressed stream by its first bytes.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// Wrap `inner` in the decoder for this compression.
    pub fn decoder(self, inner: Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>> {
        let inner: Buffered = io::BufReader::with_capacity(1 << 20, inner);
        Ok(match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(inner)),
            Compression::Xz => Box::new(MultiXz::new(inner)?),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(inner)
                    .map_err(|e| Error::io("cannot start the zstd decoder", e))?,
            ),
        })
    }

    /// The uncompressed size the compressed file declares, when it does so
    /// unambiguously. Reads only the metadata (footer, index, headers).
    pub fn declared_size(self, src: &dyn ReadAt) -> Option<u64> {
        match self {
            Compression::None => Some(src.len()),
            Compression::Xz => xz_uncompressed_size(src).ok(),
            Compression::Zstd => zstd_content_size(src).ok(),
            Compression::Gzip => {
                let isize = gzip_isize(src)?;
                // ISIZE is the size modulo 2^32; deflate never expands
                // more than 1032:1, so it is exact when that bound is
                // below 4 GiB.
                (src.len().saturating_mul(1032) < 1 << 32).then_some(u64::from(isize))
            }
        }
    }
}

type Buffered = io::BufReader<Box<dyn Read + Send>>;

/// xz's multithreaded decoder stops after one stream; files made by
/// `cat a.xz b.xz` or pixz hold several (with zero padding between).
struct MultiXz {
    current: Option<liblzma::bufread::XzDecoder<Buffered>>,
}

impl MultiXz {
    fn decoder(inner: Buffered) -> Result<liblzma::bufread::XzDecoder<Buffered>> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(threads)
            .memlimit_threading(256 << 20)
            .memlimit_stop(1 << 30)
            .decoder()
            .map_err(|e| Error::new(ErrorKind::Io, "cannot start the xz decoder").with_source(e))?;
        Ok(liblzma::bufread::XzDecoder::new_stream(inner, stream))
    }

    fn new(inner: Buffered) -> Result<MultiXz> {
        Ok(MultiXz {
            current: Some(MultiXz::decoder(inner)?),
        })
    }
}

impl Read for MultiXz {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use io::BufRead;
        loop {
            let Some(dec) = self.current.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of one stream: skip padding, then start the next one.
            let mut inner = self.current.take().expect("decoder").into_inner();
            loop {
                let avail = inner.fill_buf()?;
                if avail.is_empty() {
                    return Ok(0);
                }
                let zeros = avail.iter().take_while(|&&b| b == 0).count();
                if zeros == 0 {
                    break;
                }
                inner.consume(zeros);
            }
            self.current = Some(MultiXz::decoder(inner).map_err(io::Error::other)?);
        }
    }
}

/// The gzip trailer's `ISIZE` (uncompressed size mod 2^32) of the last
/// member.
pub fn gzip_isize(src: &dyn ReadAt) -> Option<u32> {
    let len = src.len();
    if len < 18 {
        return None;
    }
    let mut b = [0u8; 4];
    src.read_exact_at(&mut b, len - 4).ok()?;
    Some(u32::from_le_bytes(b))
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadImage, msg)
}

fn read_at(src: &dyn ReadAt, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    src.read_exact_at(&mut v, off)
        .map_err(|e| super::read_failed("cannot read the compressed image", e))?;
    Ok(v)
}

/// A multibyte integer of the xz format at `b[*pos..]`.
fn xz_varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b
            .get(*pos)
            .ok_or_else(|| bad("xz index ends inside a number"))?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("xz index number is too long"))
}

/// Parse an xz stream footer (12 bytes): the index size it announces.
pub fn xz_footer_index_size(footer: &[u8]) -> Result<u64> {
    if footer.len() != 12 || &footer[10..12] != b"YZ" {
        return Err(bad("no xz stream footer"));
    }
    let crc = u32::from_le_bytes(footer[0..4].try_into().expect("4"));
    if crc32fast::hash(&footer[4..10]) != crc {
        return Err(bad("xz stream footer checksum mismatch"));
    }
    let backward = u32::from_le_bytes(footer[4..8].try_into().expect("4"));
    Ok((u64::from(backward) + 1) * 4)
}

/// Parse an xz index: (total uncompressed size, total of the blocks'
/// padded sizes).
pub fn parse_xz_index(index: &[u8]) -> Result<(u64, u64)> {
    if index.len() < 8 || index[0] != 0 || !index.len().is_multiple_of(4) {
        return Err(bad("not an xz index"));
    }
    let crc = u32::from_le_bytes(index[index.len() - 4..].try_into().expect("4"));
    if crc32fast::hash(&index[..index.len() - 4]) != crc {
        return Err(bad("xz index checksum mismatch"));
    }
    let body = &index[..index.len() - 4];
    let mut pos = 1;
    let records = xz_varint(body, &mut pos)?;
    if records > body.len() as u64 {
        return Err(bad("xz index claims more records than it holds"));
    }
    let (mut unc, mut blocks) = (0u64, 0u64);
    for _ in 0..records {
        let unpadded = xz_varint(body, &mut pos)?;
        let size = xz_varint(body, &mut pos)?;
        blocks = blocks
            .checked_add(unpadded.div_ceil(4) * 4)
            .ok_or_else(|| bad("xz index sizes overflow"))?;
        unc = unc
            .checked_add(size)
            .ok_or_else(|| bad("xz index sizes overflow"))?;
    }
    Ok((unc, blocks))
}

/// The uncompressed size of an xz file: the sum over its streams' indexes,
/// walking backwards from the end as `xz --list` does.
pub fn xz_uncompressed_size(src: &dyn ReadAt) -> Result<u64> {
    let mut end = src.len();
    let mut total = 0u64;
    let mut streams = 0;
    while end > 0 {
        // Stream padding: zero bytes in groups of four.
        while end >= 4 && read_at(src, end - 4, 4)? == [0; 4] {
            end -= 4;
        }
        if end < 24 {
            return Err(bad("xz file too short"));
        }
        let index_len = xz_footer_index_size(&read_at(src, end - 12, 12)?)?;
        let index_start = (end - 12)
            .checked_sub(index_len)
            .ok_or_else(|| bad("xz index larger than the file"))?;
        if index_len > 64 << 20 {
            return Err(bad("xz index is implausibly large"));
        }
        let (unc, blocks) = parse_xz_index(&read_at(src, index_start, index_len as usize)?)?;
        total = total
            .checked_add(unc)
            .ok_or_else(|| bad("xz sizes overflow"))?;
        end = index_start
            .checked_sub(blocks)
            .and_then(|s| s.checked_sub(12))
            .ok_or_else(|| bad("xz blocks larger than the file"))?;
        streams += 1;
        if streams > 1_000_000 {
            return Err(bad("too many xz streams"));
        }
    }
    Ok(total)
}

/// A zstd frame header: (header length, declared content size if any,
/// whether a 4-byte checksum follows the blocks).
pub fn parse_zstd_frame_header(b: &[u8]) -> Result<(usize, Option<u64>, bool)> {
    if b.len() < 5 || b[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(bad("not a zstd frame"));
    }
    let fhd = b[4];
    if fhd & 0x08 != 0 {
        return Err(bad("zstd frame header has its reserved bit set"));
    }
    let single = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_len = [0usize, 1, 2, 4][(fhd & 3) as usize];
    let fcs_len = match fhd >> 6 {
        0 if single => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let mut pos = 5 + usize::from(!single) + dict_len;
    let end = pos + fcs_len;
    if b.len() < end {
        return Err(bad("zstd frame header is cut short"));
    }
    let size = match fcs_len {
        0 => None,
        1 => Some(u64::from(b[pos])),
        2 => Some(u64::from(u16::from_le_bytes([b[pos], b[pos + 1]])) + 256),
        4 => Some(u64::from(u32::from_le_bytes(
            b[pos..pos + 4].try_into().expect("4"),
        ))),
        _ => Some(u64::from_le_bytes(b[pos..pos + 8].try_into().expect("8"))),
    };
    pos = end;
    Ok((pos, size, checksum))
}

/// The content size of a zstd file: every frame must declare it; frames
/// are walked block by block (only the 3-byte block headers are read).
pub fn zstd_content_size(src: &dyn ReadAt) -> Result<u64> {
    let len = src.len();
    let mut pos = 0u64;
    let mut total = 0u64;
    while pos < len {
        let magic = read_at(src, pos, 4)?;
        let m = u32::from_le_bytes(magic[..4].try_into().expect("4"));
        if m & 0xffff_fff0 == 0x184d_2a50 {
            let size = u32::from_le_bytes(read_at(src, pos + 4, 4)?[..].try_into().expect("4"));
            pos += 8 + u64::from(size);
            continue;
        }
        let head_len = (len - pos).min(18) as usize;
        let (hlen, size, checksum) = parse_zstd_frame_header(&read_at(src, pos, head_len)?)?;
        let size = size.ok_or_else(|| bad("a zstd frame does not declare its size"))?;
        total = total
            .checked_add(size)
            .ok_or_else(|| bad("zstd sizes overflow"))?;
        pos += hlen as u64;
        loop {
            let h = read_at(src, pos, 3)?;
            let v = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            let (last, kind, bsize) = (v & 1 == 1, (v >> 1) & 3, u64::from(v >> 3));
            pos += 3 + match kind {
                0 | 2 => bsize,
                1 => 1,
                _ => return Err(bad("zstd block of reserved type")),
            };
            if last {
                break;
            }
        }
        if checksum {
            pos += 4;
        }
    }
    if pos != len {
        return Err(bad("zstd frames run past the end of the file"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let o = offset as usize;
            let src = self
                .0
                .get(o..o + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 % 13) as u8).collect()
    }

    fn roundtrip(c: Compression, compressed: Vec<u8>, data: &[u8]) {
        assert_eq!(Compression::detect(&compressed), c);
        assert_eq!(
            c.declared_size(&Mem(compressed.clone())),
            Some(data.len() as u64)
        );
        let mut out = Vec::new();
        c.decoder(Box::new(io::Cursor::new(compressed)))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data, "decoded bytes differ");
    }

    #[test]
    fn gzip_xz_zstd_roundtrip_with_sizes() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        roundtrip(Compression::Gzip, gz.finish().unwrap(), &data);

        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        let mut xz = xz.finish().unwrap();
        // two concatenated streams plus stream padding
        let second = xz.clone();
        xz.extend_from_slice(&[0; 8]);
        xz.extend_from_slice(&second);
        let mut twice = data.clone();
        twice.extend_from_slice(&data);
        roundtrip(Compression::Xz, xz, &twice);

        // `zstd FILE` declares the content size, as bulk compression does
        let zs = zstd::bulk::compress(&data, 3).unwrap();
        roundtrip(Compression::Zstd, zs, &data);
    }

    #[test]
    fn corrupt_metadata_is_refused_not_guessed() {
        let data = sample();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        let mut xz = xz.finish().unwrap();
        let n = xz.len();
        xz[n - 20] ^= 0xff; // inside the index
        assert!(xz_uncompressed_size(&Mem(xz)).is_err());
        // a zstd stream without a declared size (streaming encoder)
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&data).unwrap();
        let zs = enc.finish().unwrap();
        assert!(zstd_content_size(&Mem(zs)).is_err());
        assert_eq!(Compression::detect(b"hello"), Compression::None);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let data = sample();
        let zs = zstd::bulk::compress(&data, 3).unwrap();
        let cut = zs[..zs.len() / 2].to_vec();
        let mut out = Vec::new();
        let r = Compression::Zstd
            .decoder(Box::new(io::Cursor::new(cut)))
            .unwrap()
            .read_to_end(&mut out);
        assert!(r.is_err() || out.len() < data.len());
    }
}
