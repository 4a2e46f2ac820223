//! bmap files (`bmaptool create`): an XML list of the image's mapped block
//! ranges, each with a SHA-256. Only mapped ranges are read from the image;
//! the rest is staged as zeros. Every range's checksum is verified as the
//! range goes by, and the bmap file's own checksum is checked on load.
//! Only bmap format 2.x (SHA-256) is accepted.
//!
//! XML parsing is `roxmltree`; the bmap semantics are parsed from a string
//! so they are unit-tested and fuzzed without I/O.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{ByteStream, Fill, ImageReader, bad};
use crate::error::Result;

/// One mapped range: bytes `[start, end)` and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

impl Bmap {
    pub fn load(path: &Path) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| super::read_failed("cannot read the bmap file", e).with_path(path))?;
        Bmap::parse(&text).map_err(|e| e.with_path(path))
    }

    pub fn parse(text: &str) -> Result<Bmap> {
        if text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
            return Err(bad(
                "this bmap file is clearsigned, which liverestore does not read: sign it detached instead (gpg --detach-sign BMAP, as bmaptool's --bmap-sig takes it); BMAP.asc or BMAP.sig next to it is checked",
            ));
        }
        let doc = roxmltree::Document::parse(text)
            .map_err(|e| bad(format!("the bmap file is not valid XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(bad("not a bmap file"));
        }
        let version = root.attribute("version").unwrap_or("");
        if !version.starts_with("2.") {
            return Err(bad(format!(
                "bmap format {version} is not supported (2.x with SHA-256 is)"
            )));
        }
        let field = |name: &str| -> Result<&str> {
            root.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or_else(|| bad(format!("the bmap file lacks <{name}>")))
        };
        let number = |name: &str| -> Result<u64> {
            field(name)?
                .parse()
                .map_err(|_| bad(format!("the bmap <{name}> is not a number")))
        };
        if !field("ChecksumType")?.eq_ignore_ascii_case("sha256") {
            return Err(bad("the bmap file's checksums are not SHA-256"));
        }
        // The file's own checksum: SHA-256 of the file with the checksum
        // value replaced by 64 zeros.
        let own = field("BmapFileChecksum")?;
        let zeroed = text.replacen(own, &"0".repeat(64), 1);
        if hex::encode(Sha256::digest(zeroed.as_bytes())) != own.to_ascii_lowercase() {
            return Err(bad(
                "the bmap file's own checksum does not match: it is corrupt or was edited",
            ));
        }
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        let blocks = number("BlocksCount")?;
        if block_size == 0 || !block_size.is_multiple_of(512) || block_size > 64 << 20 {
            return Err(bad(format!("bmap block size {block_size} is absurd")));
        }
        if blocks != image_size.div_ceil(block_size) {
            return Err(bad("bmap block count does not match the image size"));
        }
        let map = root
            .children()
            .find(|n| n.has_tag_name("BlockMap"))
            .ok_or_else(|| bad("the bmap file lacks <BlockMap>"))?;
        let mut ranges: Vec<Range> = Vec::new();
        for r in map.children().filter(|n| n.has_tag_name("Range")) {
            let text = r.text().unwrap_or("").trim();
            let (a, b) = text.split_once('-').unwrap_or((text, text));
            let parse = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("bad bmap range '{text}'")))
            };
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b || b >= blocks {
                return Err(bad(format!("bmap range {text} lies outside the image")));
            }
            let sum = r
                .attribute("chksum")
                .ok_or_else(|| bad("a bmap range has no checksum"))?;
            let sha256: [u8; 32] = hex::decode(sum.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad(format!("bad bmap checksum '{sum}'")))?;
            let start = a * block_size;
            let end = ((b + 1) * block_size).min(image_size);
            if ranges.last().is_some_and(|l| l.end > start) {
                return Err(bad("bmap ranges overlap or are out of order"));
            }
            ranges.push(Range { start, end, sha256 });
        }
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
        })
    }
}

/// Where the mapped bytes come from.
enum Data {
    Stream(ByteStream),
    /// A decoded image (a compressed raw image with a bmap).
    Reader(Box<dyn ImageReader>),
}

pub struct BmapReader {
    data: Data,
    bmap: Bmap,
    /// Index of the first range not yet fully verified.
    next: usize,
    hasher: Sha256,
}

impl BmapReader {
    pub fn new(src: ByteStream, bmap: Bmap) -> BmapReader {
        BmapReader {
            data: Data::Stream(src),
            bmap,
            next: 0,
            hasher: Sha256::new(),
        }
    }

    pub fn over_reader(reader: Box<dyn ImageReader>, bmap: Bmap) -> BmapReader {
        BmapReader {
            data: Data::Reader(reader),
            bmap,
            next: 0,
            hasher: Sha256::new(),
        }
    }

    fn read_data(&mut self, at: u64, out: &mut [u8]) -> Result<()> {
        match &mut self.data {
            Data::Stream(s) => {
                s.skip_to(at)?;
                s.read_full(out)
            }
            Data::Reader(r) => r.read_chunk(at, out).map(|_| ()),
        }
    }
}

impl ImageReader for BmapReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        let end = offset + buf.len() as u64;
        if end > self.bmap.image_size {
            return Err(bad("read past the end of the bmap image"));
        }
        buf.fill(0);
        let mut any = false;
        while let Some(r) = self.bmap.ranges.get(self.next).cloned() {
            if r.start >= end {
                break;
            }
            if r.end <= offset {
                return Err(bad("bmap ranges were skipped (chunks out of order)"));
            }
            let (a, b) = (r.start.max(offset), r.end.min(end));
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            self.read_data(a, out)?;
            self.hasher.update(&*out);
            any = true;
            if b == r.end {
                let sum: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                if sum != r.sha256 {
                    return Err(bad(format!(
                        "the bmap checksum of bytes {}..{} does not match the image",
                        r.start, r.end
                    ))
                    .with_offset(r.start));
                }
                self.next += 1;
            } else {
                break;
            }
        }
        Ok(if any { Fill::Data } else { Fill::Zero })
    }

    fn finish(&mut self) -> Result<()> {
        if self.next != self.bmap.ranges.len() {
            return Err(bad("not every bmap range was read"));
        }
        match &mut self.data {
            Data::Stream(s) => {
                s.skip_to(self.bmap.image_size)?;
                s.expect_end(self.bmap.image_size)
            }
            Data::Reader(r) => r.finish(),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// A bmap for `data` with block size 4096 listing `ranges` (in blocks).
    pub fn make_bmap(data: &[u8], ranges: &[(u64, u64)]) -> String {
        let bs = 4096u64;
        let blocks = (data.len() as u64).div_ceil(bs);
        let mut body = String::new();
        for &(a, b) in ranges {
            let end = ((b + 1) * bs).min(data.len() as u64) as usize;
            let sum = hex::encode(Sha256::digest(&data[(a * bs) as usize..end]));
            body += &format!("        <Range chksum=\"{sum}\"> {a}-{b} </Range>\n");
        }
        let text = format!(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n    <ImageSize> {} </ImageSize>\n    <BlockSize> {bs} </BlockSize>\n    <BlocksCount> {blocks} </BlocksCount>\n    <MappedBlocksCount> 0 </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {} </BmapFileChecksum>\n    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n",
            data.len(),
            "0".repeat(64)
        );
        let own = hex::encode(Sha256::digest(text.as_bytes()));
        text.replacen(&"0".repeat(64), &own, 1)
    }

    fn image() -> Vec<u8> {
        (0..10 * 4096u32).map(|i| (i % 97) as u8 + 1).collect()
    }

    #[test]
    fn reads_mapped_ranges_and_zeroes_the_rest() {
        let data = image();
        let bmap = Bmap::parse(&make_bmap(&data, &[(1, 2), (5, 5)])).unwrap();
        let mapped: u64 = bmap.ranges.iter().map(|r| r.end - r.start).sum();
        assert_eq!(mapped, 3 * 4096);
        let src = ByteStream::Sequential {
            inner: Box::new(std::io::Cursor::new(data.clone())),
            pos: 0,
        };
        let mut r = BmapReader::new(src, bmap);
        let mut buf = vec![0u8; data.len()];
        let half = 2 * 4096 + 10;
        r.read_chunk(0, &mut buf[..half]).unwrap();
        r.read_chunk(half as u64, &mut buf[half..]).unwrap();
        r.finish().unwrap();
        for (i, (&got, &want)) in buf.iter().zip(&data).enumerate() {
            let block = i / 4096;
            let mapped = (1..=2).contains(&block) || block == 5;
            assert_eq!(got, if mapped { want } else { 0 }, "byte {i}");
        }
    }

    #[test]
    fn a_clearsigned_bmap_is_refused_with_what_to_do() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{}",
            make_bmap(&image(), &[(1, 2)])
        );
        let e = Bmap::parse(&text).unwrap_err();
        assert!(e.message().contains("gpg --detach-sign"), "{e}");
    }

    #[test]
    fn bad_checksums_are_refused() {
        let data = image();
        let text = make_bmap(&data, &[(1, 2)]);
        let mut other = data.clone();
        other[4096 + 5] ^= 1;
        let src = ByteStream::Sequential {
            inner: Box::new(std::io::Cursor::new(other)),
            pos: 0,
        };
        let mut r = BmapReader::new(src, Bmap::parse(&text).unwrap());
        let mut buf = vec![0u8; data.len()];
        let e = r.read_chunk(0, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadImage);
        // an edited bmap fails its own checksum
        let edited = text.replace(" 1-2 ", " 1-3 ");
        assert!(
            Bmap::parse(&edited)
                .unwrap_err()
                .to_string()
                .contains("own checksum")
        );
        assert!(Bmap::parse("<bmap version=\"1.4\"/>").is_err());
    }
}
