//! Image inputs: where the bytes come from ([`transport`]), how they are
//! compressed ([`compression`]) and how they are laid out (raw, Android
//! sparse, qcow2, VHD, VHDX, bmap, the raw image of an SWUpdate `.swu`
//! archive), turned into one thing the stager
//! consumes: an [`Image`] that fills chunks of the *logical* image (the
//! bytes that must end up on the disk), in increasing order, and says
//! when a whole chunk is known to be zero without reading it.
//!
//! Detection is by content (magic bytes), never by file name. Formats
//! with tables need random access (a local file or an HTTP server that
//! serves ranges); a compressed or piped stream can carry raw, Android
//! sparse or bmap-described data.
//!
//! Owns: turning bytes from anywhere into the logical image; every
//! format parser works on bytes in memory and is fuzzed. May not: touch a
//! disk, the state directory or the host filesystems.

pub mod bmap;
pub mod bytes;
pub mod compression;
pub mod ext4_files;
pub mod partitions;
pub mod probe;
pub mod qcow2;
pub mod source_tap;
pub mod sparse;
pub mod split;
pub mod swu;
pub mod transport;
pub mod vhd;
pub mod vhdx;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use compression::Compression;
use transport::{HttpObject, LocalFile, Location, ReadAt};

/// How a chunk was filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The buffer holds the bytes (which may still contain zero runs).
    Data,
    /// The whole chunk is zeros; the buffer was not touched.
    Zero,
}

/// A decoder of the logical image.
pub trait ImageReader: Send {
    /// Fill `buf` with logical bytes `[offset, offset + buf.len())`.
    /// Calls come in increasing `offset` order; gaps are skipped.
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill>;
    /// After the last chunk: check what only the end can tell (nothing
    /// left over, trailing checksums).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The layout of the image's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Raw,
    AndroidSparse,
    Qcow2,
    VhdFixed,
    VhdDynamic,
    Vhdx,
    Bmap,
    /// The raw image inside an SWUpdate archive ([`swu`]).
    Swu,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::AndroidSparse => "android-sparse",
            Format::Qcow2 => "qcow2",
            Format::VhdFixed => "vhd-fixed",
            Format::VhdDynamic => "vhd-dynamic",
            Format::Vhdx => "vhdx",
            Format::Bmap => "bmap",
            Format::Swu => "swu",
        }
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadImage, msg)
}

/// An I/O failure while reading the image: [`ErrorKind::BadImage`], with
/// the cause.
pub(crate) fn read_failed(what: impl Into<String>, e: io::Error) -> Error {
    Error::io(what, e).with_kind(ErrorKind::BadImage)
}

/// What the user said about the image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `--size`: required when nothing else tells the size.
    pub size: Option<u64>,
    /// `--bmap FILE`; by default `IMAGE.bmap` next to a local image is used.
    pub bmap: Option<PathBuf>,
    /// Ignore an `IMAGE.bmap` next to the image.
    pub no_bmap: bool,
    /// For a raw image over HTTP: start the transfer at this byte (a
    /// resumed staging does not fetch what it already has).
    pub start_at: u64,
    /// Offer every byte read of the source to this tap (a signature check
    /// over the file as published). Needs `start_at` 0.
    pub tap: Option<Arc<source_tap::SourceTap>>,
    /// The bmap file's bytes as its signature was checked over, with that
    /// verdict: used instead of reading the file again (what was verified
    /// is what is used).
    pub signed_bmap: Option<(Arc<Vec<u8>>, crate::trust::VerifiedSignature)>,
}

/// An opened image, ready to be read chunk by chunk.
pub struct Image {
    reader: Box<dyn ImageReader>,
    size: u64,
    pub format: Format,
    pub compression: Compression,
    pub location: Location,
    /// A `sha256sum`-style file found next to the image, and its hash.
    pub hash_file: Option<(PathBuf, String)>,
    /// The first logical byte this reader can deliver (non-zero only for
    /// a raw image over HTTP opened with [`OpenOptions::start_at`]).
    pub starts_at: u64,
    /// The first bytes, once [`Image::head`] read them: chunk reads are
    /// served from here until they pass its end.
    head: Option<Vec<u8>>,
    /// The source itself, when its bytes are the logical image's (raw,
    /// uncompressed, from a file or a server that serves ranges).
    random: Option<Arc<dyn ReadAt>>,
    /// The signature check on the source's bytes, if one was asked for.
    tap: Option<Arc<source_tap::SourceTap>>,
    /// A signed bmap's verdict: it holds for the staged bytes once every
    /// mapped range passed its checksum (which the bmap reader checks).
    signed_bmap: Option<crate::trust::VerifiedSignature>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("size", &self.size)
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("location", &self.location)
            .finish()
    }
}

/// Bytes looked at to recognize compression and formats.
const SNIFF_LEN: usize = 1 << 20;

impl Image {
    /// Open `spec` (a path, `-` for stdin, or an http(s) URL) and recognize
    /// its compression and format.
    pub fn open(spec: &str, opts: &OpenOptions) -> Result<Image> {
        let location = Location::parse(spec);
        let mut starts_at = 0;
        let mut random: Option<Arc<dyn ReadAt>> = None;
        let tap = opts.tap.clone();
        if tap.is_some() && opts.start_at > 0 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "a signature is checked over the whole file: it cannot start past its first byte",
            ));
        }
        let tapped = |src: Arc<dyn ReadAt>| -> Arc<dyn ReadAt> {
            match &tap {
                Some(t) => {
                    t.set_random(src.clone());
                    Arc::new(source_tap::TappedReadAt {
                        inner: src,
                        tap: t.clone(),
                    })
                }
                None => src,
            }
        };
        let tap_stream = {
            let tap = tap.clone();
            move |inner: Box<dyn Read + Send>, pos: u64| -> Box<dyn Read + Send> {
                match &tap {
                    Some(t) => Box::new(source_tap::TappedRead {
                        inner,
                        pos,
                        tap: t.clone(),
                    }),
                    None => inner,
                }
            }
        };
        let img = match &location {
            Location::Stdin => {
                let stream = tap_stream(Box::new(io::stdin()), 0);
                open_stream(stream, None, opts, None)?
            }
            Location::File(path) => {
                let file = Arc::new(LocalFile::open(path)?);
                random = Some(file.clone());
                let bmap = match (&opts.bmap, opts.no_bmap) {
                    (Some(b), _) => Some(b.clone()),
                    (None, false) => {
                        let side = PathBuf::from(format!("{}.bmap", path.display()));
                        side.is_file().then_some(side)
                    }
                    (None, true) => None,
                };
                let src = tapped(file.clone());
                open_random(src, Some(path), opts, bmap, || {
                    file.stream().map(|f| tap_stream(Box::new(f), 0))
                })?
            }
            Location::Url(url) => {
                let object = Arc::new(HttpObject::open(url)?);
                random = Some(object.clone());
                let src = tapped(object.clone());
                let streamer = Arc::clone(&object);
                let stream = move |from: u64| {
                    streamer
                        .stream_from(from)
                        .map(|s| tap_stream(Box::new(s), from))
                        .map_err(io::Error::other)
                };
                let mut head = [0u8; 8];
                src.read_exact_at(&mut head, 0)
                    .map_err(|e| read_failed("cannot read the image", e))?;
                let plain = Compression::detect(&head) == Compression::None
                    && !sparse::is_sparse(&head)
                    && !swu::looks_like_cpio(&head)
                    && !needs_random_access(&head)
                    && opts.bmap.is_none();
                if plain {
                    // A raw image over HTTP: one streamed request, resumed
                    // with ranges if the connection drops.
                    let from = opts.start_at.min(object.len());
                    let inner =
                        stream(from).map_err(|e| read_failed("cannot fetch the image", e))?;
                    let size = object.len();
                    let reader = RawReader::new(ByteStream::Sequential { inner, pos: from }, size);
                    starts_at = from;
                    (
                        Box::new(reader) as Box<dyn ImageReader>,
                        size,
                        Format::Raw,
                        Compression::None,
                    )
                } else {
                    open_random(src, None, opts, opts.bmap.clone(), move || stream(0))?
                }
            }
        };
        let size = img.1;
        if size == 0 {
            return Err(bad("the image is empty").with_path(location.describe()));
        }
        if let Some(a) = opts.size
            && a != size
        {
            return Err(bad(format!(
                "--size {a} does not match the image's {size} bytes"
            )));
        }
        let hash_file = match &location {
            Location::File(p) => find_hash_file(p),
            _ => None,
        };
        Ok(Image {
            reader: img.0,
            size,
            format: img.2,
            compression: img.3,
            location,
            hash_file,
            starts_at,
            head: None,
            random: random.filter(|_| img.2 == Format::Raw && img.3 == Compression::None),
            tap,
            signed_bmap: opts
                .signed_bmap
                .as_ref()
                .filter(|_| img.2 == Format::Bmap)
                .map(|(_, v)| v.clone()),
        })
    }

    /// Random access to the logical image's bytes, when the source is
    /// them (a raw, uncompressed image from a file or a server that serves
    /// ranges): its files can then be looked at before staging
    /// ([`ext4_files`]).
    pub fn random_source(&self) -> Option<Arc<dyn ReadAt>> {
        self.random.clone()
    }

    /// The logical size: the bytes that end up on the disk.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A short description like `qcow2` or `raw, zstd`.
    pub fn kind(&self) -> String {
        match self.compression {
            Compression::None => self.format.name().to_string(),
            c => format!("{}, {}", self.format.name(), c.name()),
        }
    }

    /// The first `min(len, size)` logical bytes, read before any chunk
    /// (partition tables are looked up here). Later chunk reads get these
    /// bytes again without reading the source twice, so a stream is still
    /// read once.
    pub fn head(&mut self, len: usize) -> Result<&[u8]> {
        if self.head.is_none() {
            if self.starts_at > 0 {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "the image was opened past its start",
                ));
            }
            let mut buf = vec![0u8; (len as u64).min(self.size) as usize];
            // A `Zero` fill leaves the zeroed buffer as it is.
            self.reader.read_chunk(0, &mut buf)?;
            self.head = Some(buf);
        }
        Ok(self.head.as_deref().expect("just read"))
    }

    /// See [`ImageReader::read_chunk`].
    pub fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        let Some(head) = self.head.as_ref() else {
            return self.reader.read_chunk(offset, buf);
        };
        let head_len = head.len() as u64;
        if offset >= head_len {
            self.head = None;
            return self.reader.read_chunk(offset, buf);
        }
        let n = ((head_len - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&head[offset as usize..offset as usize + n]);
        if n < buf.len() {
            self.head = None;
            if self.reader.read_chunk(head_len, &mut buf[n..])? == Fill::Zero {
                buf[n..].fill(0);
            }
        }
        Ok(Fill::Data)
    }

    /// See [`ImageReader::finish`].
    pub fn finish(&mut self) -> Result<()> {
        self.reader.finish()
    }

    /// Whether the source's bytes are checked against a signature.
    pub fn checks_signature(&self) -> bool {
        self.tap.is_some() || self.signed_bmap.is_some()
    }

    /// After [`Image::finish`]: the verdict of the signature check on the
    /// source's bytes, when one was asked for ([`OpenOptions::tap`]).
    pub fn finish_signature(&mut self) -> Option<Result<crate::trust::VerifiedSignature>> {
        match self.tap.take() {
            Some(t) => Some(t.complete()),
            None => self.signed_bmap.take().map(Ok),
        }
    }
}

type Opened = (Box<dyn ImageReader>, u64, Format, Compression);

/// A source with random access (file or URL): formats with tables are read
/// in place; compressed ones are streamed through `stream`.
fn open_random(
    src: Arc<dyn ReadAt>,
    path: Option<&Path>,
    opts: &OpenOptions,
    bmap: Option<PathBuf>,
    stream: impl Fn() -> io::Result<Box<dyn Read + Send>>,
) -> Result<Opened> {
    let head_len = (src.len() as usize).min(SNIFF_LEN);
    let mut head = vec![0u8; head_len];
    src.read_exact_at(&mut head, 0)
        .map_err(|e| read_failed("cannot read the image", e))?;
    let open_stream_err = |e: io::Error| read_failed("cannot read the image", e);
    let compression = Compression::detect(&head);
    if compression != Compression::None {
        let declared = compression.declared_size(src.as_ref());
        let gzip_isize = if compression == Compression::Gzip {
            compression::gzip_isize(src.as_ref())
        } else {
            None
        };
        let bmap = match bmap {
            Some(p) => Some(load_bmap(&p, opts)?),
            None => None,
        };
        return open_stream(
            stream().map_err(open_stream_err)?,
            declared.or(opts.size),
            opts,
            gzip_isize,
        )
        .and_then(|(reader, size, format, c)| match bmap {
            Some(b) => wrap_bmap(reader, size, format, b),
            None => Ok((reader, size, format, c)),
        })
        .map(|(r, s, f, _)| (r, s, f, compression));
    }
    if swu::is_swu(&head) {
        return open_stream(stream().map_err(open_stream_err)?, None, opts, None);
    }
    if qcow2::is_qcow2(&head) {
        let path =
            path.ok_or_else(|| bad("a qcow2 image must be a local file: download it first"))?;
        let (reader, size) = qcow2::Qcow2Reader::open(path, src.as_ref(), &head)?;
        return Ok((Box::new(reader), size, Format::Qcow2, Compression::None));
    }
    if vhdx::is_vhdx(&head) {
        return vhdx::VhdxReader::open(src).map(|(r, s)| {
            (
                Box::new(r) as Box<dyn ImageReader>,
                s,
                Format::Vhdx,
                Compression::None,
            )
        });
    }
    if let Some(kind) = vhd::detect(&head, src.as_ref())? {
        return vhd::open(src, kind);
    }
    if sparse::is_sparse(&head) {
        let (reader, size) = sparse::SparseReader::new(stream().map_err(open_stream_err)?)?;
        return Ok((
            Box::new(reader),
            size,
            Format::AndroidSparse,
            Compression::None,
        ));
    }
    if let Some(p) = bmap {
        let b = load_bmap(&p, opts)?;
        if b.image_size != src.len() {
            return Err(bad(format!(
                "{} describes a {}-byte image, but the image has {} bytes",
                p.display(),
                b.image_size,
                src.len()
            )));
        }
        let size = b.image_size;
        let reader = bmap::BmapReader::new(ByteStream::random(src), b);
        return Ok((Box::new(reader), size, Format::Bmap, Compression::None));
    }
    let size = src.len();
    Ok((
        Box::new(RawReader::new(ByteStream::random(src), size)),
        size,
        Format::Raw,
        Compression::None,
    ))
}

/// The bmap at `path`, or the signed bytes of it `opts` holds.
fn load_bmap(path: &Path, opts: &OpenOptions) -> Result<bmap::Bmap> {
    match &opts.signed_bmap {
        Some((bytes, _)) => std::str::from_utf8(bytes)
            .map_err(|_| bad("the bmap file is not text"))
            .and_then(bmap::Bmap::parse)
            .map_err(|e| e.with_path(path)),
        None => bmap::Bmap::load(path),
    }
}

fn wrap_bmap(
    reader: Box<dyn ImageReader>,
    size: u64,
    format: Format,
    b: bmap::Bmap,
) -> Result<Opened> {
    if format != Format::Raw {
        return Err(bad(
            "a bmap file describes a raw image, but this one is not raw",
        ));
    }
    if b.image_size != size {
        return Err(bad(format!(
            "the bmap file describes a {}-byte image, but the image has {size} bytes",
            b.image_size
        )));
    }
    Ok((
        Box::new(bmap::BmapReader::over_reader(reader, b)),
        size,
        Format::Bmap,
        Compression::None,
    ))
}

/// Formats whose tables are read in place: they cannot be streamed.
fn needs_random_access(head: &[u8]) -> bool {
    qcow2::is_qcow2(head) || vhdx::is_vhdx(head) || head.starts_with(b"conectix")
}

/// A sequential (possibly decompressed) stream: raw or Android sparse.
fn open_stream(
    stream: Box<dyn Read + Send>,
    known_size: Option<u64>,
    opts: &OpenOptions,
    gzip_isize: Option<u32>,
) -> Result<Opened> {
    let mut stream = io::BufReader::with_capacity(SNIFF_LEN, stream);
    let mut head = Vec::with_capacity(SNIFF_LEN);
    fill_head(&mut stream, &mut head)?;
    let compression = Compression::detect(&head);
    if compression != Compression::None {
        let inner: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(stream));
        let decoded = compression.decoder(inner)?;
        return open_stream(decoded, known_size.or(opts.size), opts, gzip_isize)
            .map(|(r, s, f, _)| (r, s, f, compression));
    }
    if needs_random_access(&head) {
        return Err(bad(
            "this qcow2/VHD/VHDX image is compressed or piped: its tables need random access; decompress it to a file first (or serve it over HTTP with ranges)",
        ));
    }
    if swu::is_swu(&head) {
        let archive: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(stream));
        let (_, image, size, member) = swu::open_member(archive)?;
        // a compressed member's size is the decompressor's to tell
        let known = image.compressed.is_none().then_some(size);
        let (reader, size, format, compression) = open_stream(Box::new(member), known, opts, None)?;
        if format != Format::Raw {
            return Err(bad(format!(
                "'{}' in the .swu archive is {}, not a raw image",
                image.filename,
                format.name()
            )));
        }
        return Ok((reader, size, Format::Swu, compression));
    }
    let rest: Box<dyn Read + Send> = Box::new(io::Cursor::new(head.clone()).chain(stream));
    if sparse::is_sparse(&head) {
        let (reader, size) = sparse::SparseReader::new(rest)?;
        return Ok((
            Box::new(reader),
            size,
            Format::AndroidSparse,
            Compression::None,
        ));
    }
    let size = match known_size.or(opts.size) {
        Some(s) => s,
        None => probe::size_from_content(&head, gzip_isize).ok_or_else(|| {
            bad("cannot tell how large the image is (a stream that does not declare its size): add --size BYTES")
        })?,
    };
    Ok((
        Box::new(RawReader::new(
            ByteStream::Sequential {
                inner: rest,
                pos: 0,
            },
            size,
        )),
        size,
        Format::Raw,
        Compression::None,
    ))
}

/// Read up to [`SNIFF_LEN`] bytes (fewer only at the end of the stream).
fn fill_head(stream: &mut impl Read, head: &mut Vec<u8>) -> Result<()> {
    head.resize(SNIFF_LEN, 0);
    let mut n = 0;
    while n < SNIFF_LEN {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(read_failed("cannot read the image", e));
            }
        }
    }
    head.truncate(n);
    Ok(())
}

/// `IMAGE.sha256` or `IMAGE.sha256sum` (`sha256sum` output, first field).
fn find_hash_file(image: &Path) -> Option<(PathBuf, String)> {
    ["sha256", "sha256sum"].iter().find_map(|ext| {
        let p = PathBuf::from(format!("{}.{ext}", image.display()));
        let text = std::fs::read_to_string(&p).ok()?;
        let hash = parse_hash_text(&text)?;
        Some((p, hash))
    })
}

/// The first SHA-256 in `sha256sum` style text.
pub fn parse_hash_text(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    let word = word.to_ascii_lowercase();
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit())).then_some(word)
}

/// Sequential access to source bytes: a random-access source read in
/// order (which can skip and knows holes), or a plain stream (which skips
/// by reading).
pub enum ByteStream {
    Random {
        src: Arc<dyn ReadAt>,
        pos: u64,
    },
    Sequential {
        inner: Box<dyn Read + Send>,
        pos: u64,
    },
}

impl ByteStream {
    pub fn random(src: Arc<dyn ReadAt>) -> ByteStream {
        ByteStream::Random { src, pos: 0 }
    }

    pub fn pos(&self) -> u64 {
        match self {
            ByteStream::Random { pos, .. } | ByteStream::Sequential { pos, .. } => *pos,
        }
    }

    /// Move forward to `to` (never backwards).
    pub fn skip_to(&mut self, to: u64) -> Result<()> {
        match self {
            ByteStream::Random { pos, .. } => {
                *pos = to.max(*pos);
                Ok(())
            }
            ByteStream::Sequential { inner, pos } => {
                if to > *pos {
                    let n = io::copy(&mut inner.by_ref().take(to - *pos), &mut io::sink())
                        .map_err(|e| read_failed("cannot read the image", e))?;
                    *pos += n;
                    if *pos < to {
                        return Err(
                            bad(format!("the image ended after {} bytes", *pos)).with_offset(*pos)
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Fill `buf` from the current position; an early end is
    /// [`ErrorKind::BadImage`].
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<()> {
        match self {
            ByteStream::Random { src, pos } => {
                src.read_exact_at(buf, *pos).map_err(|e| {
                    let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                        "the image ends early"
                    } else {
                        "cannot read the image"
                    };
                    read_failed(what, e).with_offset(*pos)
                })?;
                *pos += buf.len() as u64;
                Ok(())
            }
            ByteStream::Sequential { inner, pos } => {
                let mut filled = 0;
                while filled < buf.len() {
                    match inner.read(&mut buf[filled..]) {
                        Ok(0) => {
                            return Err(bad(format!(
                                "the image ended after {} bytes (truncated image, corrupt compressed stream, or stdin closed early)",
                                *pos + filled as u64
                            ))
                            .with_offset(*pos + filled as u64));
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(read_failed("cannot read the image", e)
                                .with_offset(*pos + filled as u64));
                        }
                    }
                }
                *pos += buf.len() as u64;
                Ok(())
            }
        }
    }

    /// Holes of a random-access source: `Some(n)` when the next `n` bytes
    /// from the current position are known zeros.
    pub fn known_zero_run(&self, max: u64) -> u64 {
        match self {
            ByteStream::Random { src, pos } => match src.next_data(*pos) {
                None => max,
                Some(d) => (d - *pos).min(max),
            },
            ByteStream::Sequential { .. } => 0,
        }
    }

    /// The end must come now: nothing may follow `expected` bytes.
    pub fn expect_end(&mut self, expected: u64) -> Result<()> {
        match self {
            ByteStream::Random { src, .. } => {
                if src.len() != expected {
                    return Err(bad(format!(
                        "the image has {} bytes where {expected} were expected",
                        src.len()
                    )));
                }
                Ok(())
            }
            ByteStream::Sequential { inner, pos } => {
                let mut one = [0u8; 1];
                loop {
                    match inner.read(&mut one) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {
                            return Err(bad(format!(
                                "the image is longer than the expected {expected} bytes (at byte {pos})"
                            )));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(read_failed("cannot read the image", e));
                        }
                    }
                }
            }
        }
    }
}

/// A raw image: the source bytes are the logical bytes.
pub struct RawReader {
    src: ByteStream,
    size: u64,
}

impl RawReader {
    pub fn new(src: ByteStream, size: u64) -> RawReader {
        RawReader { src, size }
    }
}

impl ImageReader for RawReader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        self.src.skip_to(offset)?;
        let len = buf.len() as u64;
        if offset + len > self.size {
            return Err(bad("read past the end of the image"));
        }
        let mut done = 0u64;
        let mut any_data = false;
        while done < len {
            let zeros = self.src.known_zero_run(len - done);
            if zeros > 0 {
                buf[done as usize..(done + zeros) as usize].fill(0);
                done += zeros;
                let to = self.src.pos() + zeros;
                self.src.skip_to(to)?;
                continue;
            }
            let data_len = match &self.src {
                ByteStream::Random { src, pos } => (src.next_hole(*pos) - *pos).min(len - done),
                ByteStream::Sequential { .. } => len - done,
            }
            .max(1);
            self.src
                .read_full(&mut buf[done as usize..(done + data_len) as usize])?;
            done += data_len;
            any_data = true;
        }
        Ok(if any_data { Fill::Data } else { Fill::Zero })
    }

    fn finish(&mut self) -> Result<()> {
        self.src.skip_to(self.size)?;
        self.src.expect_end(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_file_with_holes_reports_zero_chunks() {
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().set_len(16 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(t.as_file(), &[7u8; 8192], 5 << 20).unwrap();
        let mut img = Image::open(t.path().to_str().unwrap(), &OpenOptions::default()).unwrap();
        assert_eq!(img.format, Format::Raw);
        let mut buf = vec![1u8; 4 << 20];
        assert_eq!(img.read_chunk(0, &mut buf).unwrap(), Fill::Zero);
        assert_eq!(img.read_chunk(4 << 20, &mut buf).unwrap(), Fill::Data);
        assert!(buf[..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(&buf[1 << 20..(1 << 20) + 8192], &[7u8; 8192][..]);
        assert!(buf[(1 << 20) + 8192..].iter().all(|&b| b == 0));
        assert_eq!(img.read_chunk(12 << 20, &mut buf).unwrap(), Fill::Zero);
        img.finish().unwrap();
    }

    #[test]
    fn compressed_stream_size_and_bytes() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let p = t.path().join("img.zst");
        std::fs::write(&p, zstd::bulk::compress(&data, 1).unwrap()).unwrap();
        let mut img = Image::open(p.to_str().unwrap(), &OpenOptions::default()).unwrap();
        assert_eq!(img.size(), data.len() as u64);
        assert_eq!(img.kind(), "raw, zstd");
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..3u64 {
            img.read_chunk(i << 20, &mut buf).unwrap();
            assert!(buf[..] == data[(i as usize) << 20..((i as usize) + 1) << 20]);
        }
        img.finish().unwrap();
    }

    #[test]
    fn the_raw_image_of_a_swu_archive_plain_or_compressed() {
        use sha2::Digest;
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
        let zst = zstd::bulk::compress(&data, 1).unwrap();
        for (member, compressed, kind) in [
            (data.clone(), "", "swu"),
            (zst, "compressed = \"zstd\";", "swu, zstd"),
        ] {
            let desc = format!(
                "software = {{ version = \"1\"; images: ( {{ filename = \"root.img\"; type = \"raw\"; {compressed} sha256 = \"{}\"; }} ); }};",
                hex::encode(sha2::Sha256::digest(&member))
            );
            let p = t.path().join("update.swu");
            std::fs::write(
                &p,
                swu::build(&[(swu::DESCRIPTION, desc.as_bytes()), ("root.img", &member)]),
            )
            .unwrap();
            let opts = OpenOptions {
                size: (!compressed.is_empty()).then_some(data.len() as u64),
                ..OpenOptions::default()
            };
            let mut img = Image::open(p.to_str().unwrap(), &opts).unwrap();
            assert_eq!(img.size(), data.len() as u64);
            assert_eq!(img.kind(), kind);
            assert!(
                img.random_source().is_none(),
                "the archive is not the image"
            );
            let mut buf = vec![0u8; 1 << 20];
            for i in 0..3u64 {
                img.read_chunk(i << 20, &mut buf).unwrap();
                assert!(buf[..] == data[(i as usize) << 20..((i as usize) + 1) << 20]);
            }
            img.finish().unwrap();
        }
    }

    #[test]
    fn hash_text() {
        let h = "ab".repeat(32);
        assert_eq!(
            parse_hash_text(&format!("{h}  disk.img\n")),
            Some(h.clone())
        );
        assert_eq!(parse_hash_text(&h.to_uppercase()), Some(h));
        assert_eq!(parse_hash_text("nothex  x"), None);
    }
}
