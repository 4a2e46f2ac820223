//! SWUpdate archives (`.swu`), the artifacts goosebit and hawkBit
//! deployments carry: a cpio "newc" archive (magic `070701`) whose first
//! member is `sw-description`, a text in libconfig syntax that names the
//! archive's images with their SHA-256.
//!
//! liverestore stages the one raw image the description names: the
//! archive is streamed, never unpacked; the member's bytes go on into the
//! usual pipeline (a compressed member is decompressed there), and its
//! SHA-256 is checked against the description as its last byte is read,
//! so a staging whose member differs fails instead of completing.
//!
//! Written here rather than taken from a crate: the cpio "newc" header is
//! 110 ASCII bytes read from a stream (the `cpio` crate reads but needs
//! the whole member for each entry); and `libconfig-rs` (the one
//! libconfig parser on crates.io) rejects comments, which real
//! descriptions carry. The subset parsed is the whole grammar but `@include`.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::input::bad;

/// The first bytes of a cpio "newc" archive (no CRC; `070702` has one).
const MAGICS: [&[u8; 6]; 2] = [b"070701", b"070702"];
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// The description the archive starts with.
pub const DESCRIPTION: &str = "sw-description";
/// Its largest accepted size.
const MAX_DESCRIPTION: u64 = 1 << 20;

/// One member's header: its name and size, and the bytes the header and
/// the name took with their padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHeader {
    pub name: String,
    pub size: u64,
    pub header_len: usize,
}

fn hex_field(b: &[u8], at: usize) -> Option<u64> {
    let s = std::str::from_utf8(b.get(at..at + 8)?).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Parse the member header at the start of `b` (None: not a newc header,
/// or `b` too short to hold its name).
pub fn parse_header(b: &[u8]) -> Option<MemberHeader> {
    if !MAGICS.iter().any(|m| b.starts_with(*m)) {
        return None;
    }
    let size = hex_field(b, 54)?;
    let name_len = usize::try_from(hex_field(b, 94)?).ok()?;
    if name_len == 0 || name_len > 4096 {
        return None;
    }
    let name = b.get(HEADER_LEN..HEADER_LEN + name_len - 1)?;
    if b.get(HEADER_LEN + name_len - 1) != Some(&0) {
        return None;
    }
    Some(MemberHeader {
        name: String::from_utf8_lossy(name).into_owned(),
        size,
        header_len: (HEADER_LEN + name_len).next_multiple_of(4),
    })
}

/// Whether `head` (its first 6 bytes are enough) starts like a cpio newc
/// archive.
pub fn looks_like_cpio(head: &[u8]) -> bool {
    MAGICS.iter().any(|m| head.starts_with(*m))
}

/// Whether `head` starts an SWUpdate archive: a newc archive whose first
/// member is the description.
pub fn is_swu(head: &[u8]) -> bool {
    parse_header(head).is_some_and(|h| h.name == DESCRIPTION)
}

/// A libconfig value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `[ … ]` (scalars) and `( … )` (anything).
    List(Vec<Value>),
    /// `{ name = value; … }`.
    Group(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Group(g) => g.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> crate::error::Error {
        let line = self.s[..self.at.min(self.s.len())]
            .iter()
            .filter(|&&c| c == b'\n')
            .count()
            + 1;
        bad(format!("sw-description, line {line}: {what}"))
    }

    /// Skip blanks and comments (`#`, `//`, `/* */`).
    fn skip(&mut self) -> Result<()> {
        loop {
            while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
                self.at += 1;
            }
            let rest = &self.s[self.at..];
            if rest.starts_with(b"#") || rest.starts_with(b"//") {
                while self.at < self.s.len() && self.s[self.at] != b'\n' {
                    self.at += 1;
                }
            } else if rest.starts_with(b"/*") {
                let end = rest[2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .ok_or_else(|| self.err("a comment is not closed"))?;
                self.at += end + 4;
            } else {
                return Ok(());
            }
        }
    }

    fn peek(&mut self) -> Result<Option<u8>> {
        self.skip()?;
        Ok(self.s.get(self.at).copied())
    }

    fn name(&mut self) -> Result<String> {
        self.skip()?;
        let start = self.at;
        while self.at < self.s.len()
            && (self.s[self.at].is_ascii_alphanumeric() || b"-_*".contains(&self.s[self.at]))
        {
            self.at += 1;
        }
        if self.at == start || !self.s[start].is_ascii_alphabetic() && self.s[start] != b'*' {
            return Err(self.err("a setting's name was expected"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// `name = value;` settings until `end` (None: the end of the text).
    fn settings(&mut self, end: Option<u8>, depth: usize) -> Result<Vec<(String, Value)>> {
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                None if end.is_none() => return Ok(out),
                None => return Err(self.err("the text ends inside a group")),
                Some(c) if Some(c) == end => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(_) => {}
            }
            let name = self.name()?;
            match self.peek()? {
                Some(b'=' | b':') => self.at += 1,
                _ => return Err(self.err(&format!("'=' or ':' after '{name}'"))),
            }
            let value = self.value(depth)?;
            if let Some(b';' | b',') = self.peek()? {
                self.at += 1;
            }
            out.push((name, value));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > 32 {
            return Err(self.err("nested too deep"));
        }
        match self.peek()? {
            Some(b'{') => {
                self.at += 1;
                Ok(Value::Group(self.settings(Some(b'}'), depth + 1)?))
            }
            Some(open @ (b'[' | b'(')) => {
                self.at += 1;
                let close = if open == b'[' { b']' } else { b')' };
                let mut items = Vec::new();
                loop {
                    if self.peek()? == Some(close) {
                        self.at += 1;
                        return Ok(Value::List(items));
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek()? {
                        Some(b',') => self.at += 1,
                        Some(c) if c == close => {}
                        _ => return Err(self.err("',' or the list's end was expected")),
                    }
                }
            }
            Some(b'"') => {
                // adjacent strings join, as in C
                let mut s = String::new();
                while self.peek()? == Some(b'"') {
                    s.push_str(&self.string()?);
                }
                Ok(Value::Str(s))
            }
            Some(_) => self.scalar(),
            None => Err(self.err("a value was expected")),
        }
    }

    fn string(&mut self) -> Result<String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.at) else {
                return Err(self.err("a string is not closed"));
            };
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else {
                        return Err(self.err("a string is not closed"));
                    };
                    self.at += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'f' => out.push(0x0c),
                        b'x' => {
                            let hex = self
                                .s
                                .get(self.at..self.at + 2)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.err("a bad \\x escape"))?;
                            self.at += 2;
                            out.push(hex);
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("a string is not UTF-8"))
    }

    fn scalar(&mut self) -> Result<Value> {
        let start = self.at;
        while self.at < self.s.len()
            && (self.s[self.at].is_ascii_alphanumeric() || b"+-.".contains(&self.s[self.at]))
        {
            self.at += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            _ => {}
        }
        let digits = lower.trim_end_matches('l');
        let int = if let Some(h) = digits.strip_prefix("0x") {
            i64::from_str_radix(h, 16).ok()
        } else {
            digits.parse::<i64>().ok()
        };
        if let Some(i) = int {
            return Ok(Value::Int(i));
        }
        match lower.parse::<f64>() {
            Ok(f) if !word.is_empty() => Ok(Value::Float(f)),
            _ => Err(self.err(&format!("'{word}' is not a value"))),
        }
    }
}

/// Parse libconfig text: its top-level settings.
pub fn parse_config(text: &str) -> Result<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    Ok(Value::Group(p.settings(None, 0)?))
}

/// An image the description names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwImage {
    pub filename: String,
    pub sha256: Option<String>,
    /// Its handler (`type`): `raw` when not said.
    pub kind: String,
    /// How the member is compressed (`compressed`: `zlib`, `zstd`).
    pub compressed: Option<String>,
}

/// What liverestore reads of a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub version: Option<String>,
    /// Every image, wherever it is (the hardware and copy sections of a
    /// description each have their own `images`), once per file name.
    pub images: Vec<SwImage>,
}

fn collect_images(v: &Value, out: &mut Vec<SwImage>) -> Result<()> {
    let Value::Group(settings) = v else {
        return Ok(());
    };
    for (name, value) in settings {
        match (name.as_str(), value) {
            ("images", Value::List(items)) => {
                for item in items {
                    let file = item
                        .get("filename")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("sw-description: an image without a filename"))?;
                    let sha256 = match item.get("sha256") {
                        None => None,
                        Some(Value::Str(h))
                            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) =>
                        {
                            Some(h.to_ascii_lowercase())
                        }
                        Some(_) => {
                            return Err(bad(format!(
                                "sw-description: image '{file}' has a sha256 that is not 64 hex digits"
                            )));
                        }
                    };
                    let compressed = match item.get("compressed") {
                        Some(Value::Str(c)) => Some(c.clone()),
                        Some(Value::Bool(true)) => Some("zlib".into()),
                        _ => None,
                    };
                    let image = SwImage {
                        filename: file.to_string(),
                        sha256,
                        kind: item
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("raw")
                            .to_string(),
                        compressed,
                    };
                    match out.iter().find(|i| i.filename == image.filename) {
                        Some(same) if *same != image => {
                            return Err(bad(format!(
                                "sw-description names '{}' twice, differently",
                                image.filename
                            )));
                        }
                        Some(_) => {}
                        None => out.push(image),
                    }
                }
            }
            (_, Value::Group(_)) => collect_images(value, out)?,
            _ => {}
        }
    }
    Ok(())
}

/// Read a description's version and images.
pub fn describe(text: &str) -> Result<Description> {
    let top = parse_config(text)?;
    let software = top
        .get("software")
        .ok_or_else(|| bad("sw-description has no 'software' group"))?;
    let mut images = Vec::new();
    collect_images(software, &mut images)?;
    Ok(Description {
        version: software
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_string),
        images,
    })
}

impl Description {
    /// The one raw image to stage; refused when there is none or several.
    pub fn raw_image(&self) -> Result<&SwImage> {
        let raw: Vec<&SwImage> = self.images.iter().filter(|i| i.kind == "raw").collect();
        match raw.as_slice() {
            [one] => Ok(one),
            [] => Err(bad(format!(
                "the .swu archive names no raw image (its images: {}); liverestore stages one disk or partition image",
                self.images
                    .iter()
                    .map(|i| format!("{} ({})", i.filename, i.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            several => Err(bad(format!(
                "the .swu archive names {} raw images ({}); liverestore stages one: make a whole-disk image of them",
                several.len(),
                several
                    .iter()
                    .map(|i| i.filename.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

fn read_header(r: &mut impl Read) -> io::Result<MemberHeader> {
    let mut b = vec![0u8; HEADER_LEN];
    r.read_exact(&mut b)?;
    let name_len = hex_field(&b, 94)
        .filter(|&n| (1..=4096).contains(&n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a cpio newc member"))?
        as usize;
    let padded = (HEADER_LEN + name_len).next_multiple_of(4);
    b.resize(padded, 0);
    r.read_exact(&mut b[HEADER_LEN..])?;
    parse_header(&b)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a cpio newc member"))
}

fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The member's bytes, read from the archive: its SHA-256 is checked
/// against the description when its last byte is read.
pub struct SwuMember<R> {
    inner: R,
    remaining: u64,
    hasher: Sha256,
    /// Checked against the description (once, when the last byte is read;
    /// for an empty member, at the first read).
    expected: Option<String>,
    name: String,
}

impl<R> SwuMember<R> {
    fn check(&mut self) -> io::Result<()> {
        let Some(expected) = self.expected.take() else {
            return Ok(());
        };
        let got = hex::encode(self.hasher.clone().finalize());
        if got != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "'{}' in the .swu archive has SHA-256 {got}, but sw-description says {expected}",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for SwuMember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            self.check()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the .swu archive ends inside '{}'", self.name),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            self.check()?;
        }
        Ok(n)
    }
}

/// Read an archive from its start up to its raw image: the description,
/// the image it names, and a reader of that member's bytes.
pub fn open_member<R: Read>(mut r: R) -> Result<(Description, SwImage, u64, SwuMember<R>)> {
    let failed = |e: io::Error| crate::input::read_failed("cannot read the .swu archive", e);
    let first = read_header(&mut r).map_err(failed)?;
    if first.name != DESCRIPTION {
        return Err(bad("the archive's first member is not sw-description"));
    }
    if first.size > MAX_DESCRIPTION {
        return Err(bad(format!(
            "sw-description has {} bytes (at most {MAX_DESCRIPTION})",
            first.size
        )));
    }
    let mut text = vec![0u8; first.size as usize];
    r.read_exact(&mut text).map_err(failed)?;
    skip(&mut r, first.size.next_multiple_of(4) - first.size).map_err(failed)?;
    let text = String::from_utf8(text).map_err(|_| bad("sw-description is not UTF-8 text"))?;
    let desc = describe(&text)?;
    let image = desc.raw_image()?.clone();
    loop {
        let h = read_header(&mut r).map_err(failed)?;
        if h.name == TRAILER {
            return Err(bad(format!(
                "the .swu archive has no member '{}', which sw-description names",
                image.filename
            )));
        }
        if h.name == image.filename {
            let member = SwuMember {
                inner: r,
                remaining: h.size,
                hasher: Sha256::new(),
                expected: image.sha256.clone(),
                name: h.name,
            };
            return Ok((desc, image, h.size, member));
        }
        skip(&mut r, h.size.next_multiple_of(4)).map_err(failed)?;
    }
}

/// Build a `.swu` archive in memory (tests, fuzz seeds): `members` in
/// order, the first normally `sw-description`.
pub fn build(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut add = |name: &str, data: &[u8]| {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1,
            0o100644,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (name, data) in members {
        add(name, data);
    }
    add(TRAILER, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: &str = r#"
software =
{
	version = "2.1.0";   # the release
	description = "lab image"
	              " (built nightly)";
	hardware-compatibility: [ "1.0", "1.2" ];
	/* the images, for every board */
	images: (
		{
			filename = "root.ext4";
			type = "raw";
			sha256 = "@SHA@";
			device = "/dev/sda2";
			installed-directly = true;
			size = 0x10L;
			ratio = 1.5;
		},
		{
			filename = "post.sh";
			type = "shellscript";
		}
	);
	kiosk-v2 = {
		stable = { copy1 = { images: ( { filename = "root.ext4"; type = "raw"; sha256 = "@SHA@"; device = "/dev/sda2"; } ); }; };
	};
};
"#;

    fn desc_for(data: &[u8]) -> String {
        DESC.replace("@SHA@", &hex::encode(Sha256::digest(data)))
    }

    #[test]
    fn a_description_with_comments_boards_and_copies() {
        let d = describe(&desc_for(b"x")).unwrap();
        assert_eq!(d.version.as_deref(), Some("2.1.0"));
        assert_eq!(d.images.len(), 2, "{d:?}");
        let raw = d.raw_image().unwrap();
        assert_eq!(raw.filename, "root.ext4");
        assert_eq!(raw.sha256.as_deref().map(str::len), Some(64));
        let v = parse_config(&desc_for(b"x")).unwrap();
        let s = v.get("software").unwrap();
        assert_eq!(
            s.get("description").unwrap().as_str(),
            Some("lab image (built nightly)")
        );
        let img = match s.get("images").unwrap() {
            Value::List(l) => l[0].clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(img.get("size"), Some(&Value::Int(16)));
        assert_eq!(img.get("ratio"), Some(&Value::Float(1.5)));
        assert_eq!(img.get("installed-directly"), Some(&Value::Bool(true)));
    }

    #[test]
    fn the_raw_member_is_streamed_and_checked() {
        let image: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let desc = desc_for(&image);
        let swu = build(&[
            (DESCRIPTION, desc.as_bytes()),
            ("sw-description.sig", b"sig"),
            ("post.sh", b"#!/bin/sh\n"),
            ("root.ext4", &image),
        ]);
        assert!(is_swu(&swu));
        let (d, img, size, mut member) = open_member(&swu[..]).unwrap();
        assert_eq!(d.version.as_deref(), Some("2.1.0"));
        assert_eq!(img.filename, "root.ext4");
        assert_eq!(size, image.len() as u64);
        let mut got = Vec::new();
        member.read_to_end(&mut got).unwrap();
        assert_eq!(got, image);

        // one byte changed: the last read fails
        let mut bad_image = image.clone();
        bad_image[5000] ^= 1;
        let swu = build(&[(DESCRIPTION, desc.as_bytes()), ("root.ext4", &bad_image)]);
        let (_, _, _, mut member) = open_member(&swu[..]).unwrap();
        let e = member.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("but sw-description says"), "{e}");
        // an empty member whose description says otherwise (a fuzz finding)
        let swu = build(&[(DESCRIPTION, desc.as_bytes()), ("root.ext4", b"")]);
        let (_, _, _, mut member) = open_member(&swu[..]).unwrap();
        assert!(member.read_to_end(&mut Vec::new()).is_err());
        // cut short
        let swu = build(&[(DESCRIPTION, desc.as_bytes()), ("root.ext4", &image)]);
        let (_, _, _, mut member) = open_member(&swu[..swu.len() - 200]).unwrap();
        assert!(member.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn refusals() {
        let desc = desc_for(b"x");
        // the named member is missing
        let swu = build(&[(DESCRIPTION, desc.as_bytes()), ("other", b"x")]);
        let e = open_member(&swu[..]).err().unwrap();
        assert!(e.to_string().contains("no member 'root.ext4'"), "{e}");
        // not first
        let swu = build(&[("root.ext4", b"x"), (DESCRIPTION, desc.as_bytes())]);
        assert!(!is_swu(&swu));
        assert!(open_member(&swu[..]).is_err());
        // no raw image, two raw images
        let none =
            r#"software = { version = "1"; images: ( { filename = "a"; type = "ubivol"; } ); };"#;
        let e = describe(none).unwrap().raw_image().unwrap_err();
        assert!(e.to_string().contains("a (ubivol)"), "{e}");
        let two = r#"software = { images: ( { filename = "a"; }, { filename = "b"; } ); };"#;
        let e = describe(two).unwrap().raw_image().unwrap_err();
        assert!(e.to_string().contains("2 raw images (a, b)"), "{e}");
        // bad texts
        for text in [
            "software = { images: ( { filename = \"a\" ",
            "software = { /* open",
            "software = { x = \"open }",
            "software = { x = ; }",
            "= 1;",
            "software = { images: ( { type = \"raw\"; } ); };",
            "software = { images: ( { filename = \"a\"; sha256 = \"12\"; } ); };",
            "nothing = 1;",
        ] {
            assert!(describe(text).is_err(), "{text}");
        }
        assert!(parse_header(b"070701").is_none());
        assert!(parse_header(b"not a cpio archive at all").is_none());
    }
}
