//! Where the image's (possibly compressed, possibly formatted) bytes come
//! from: a local file or block device, stdin, or an `http(s)://` URL.
//!
//! Files and URLs are also random-access ([`ReadAt`]), which the container
//! formats with tables (qcow2, VHD, VHDX) and bmap need. A URL streamed
//! sequentially survives dropped connections: [`HttpStream`] reopens the
//! request with `Range: bytes=N-` where it stopped, a few times, and checks
//! that the server still serves the same object (length, ETag).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Random access to a source's bytes.
pub trait ReadAt: Send + Sync {
    /// Fill `buf` from byte `offset`; an end of data before `buf` is full is
    /// an [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Total length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The next byte at or after `offset` that may hold data, when the
    /// source knows its holes (a sparse file); `None` when all is data.
    fn next_data(&self, offset: u64) -> Option<u64> {
        Some(offset)
    }
    /// The first hole at or after `offset` (or the end).
    fn next_hole(&self, _offset: u64) -> u64 {
        self.len()
    }
}

/// Bytes in memory as a source (tests and fuzzing).
#[derive(Debug, Clone)]
pub struct MemSource(pub Vec<u8>);

impl ReadAt for MemSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// A local regular file or block device.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    len: u64,
    sparse_aware: bool,
}

impl LocalFile {
    pub fn open(path: &Path) -> Result<LocalFile> {
        let file = File::open(path).map_err(|e| {
            let what = if e.kind() == io::ErrorKind::NotFound {
                "image not found"
            } else {
                "cannot open the image"
            };
            crate::input::read_failed(what, e).with_path(path)
        })?;
        let meta = file
            .metadata()
            .map_err(|e| crate::input::read_failed("cannot stat the image", e).with_path(path))?;
        let ft = meta.file_type();
        let len = if ft.is_file() {
            meta.len()
        } else if ft.is_block_device() {
            crate::sys::ioctl::block_device_size(&file).map_err(|e| {
                Error::from(e)
                    .with_kind(ErrorKind::BadImage)
                    .with_path(path)
            })?
        } else {
            return Err(Error::new(
                ErrorKind::BadImage,
                "the image is not a regular file, block device or URL",
            )
            .with_path(path));
        };
        Ok(LocalFile {
            file,
            len,
            sparse_aware: ft.is_file(),
        })
    }

    /// A second handle for sequential reading from the start.
    pub fn stream(&self) -> io::Result<File> {
        let f = self.file.try_clone()?;
        rustix::fs::seek(&f, rustix::fs::SeekFrom::Start(0))?;
        Ok(f)
    }
}

impl ReadAt for LocalFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn next_data(&self, offset: u64) -> Option<u64> {
        if !self.sparse_aware {
            return Some(offset);
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(o) => Some(o),
            Err(rustix::io::Errno::NXIO) => None,
            Err(_) => Some(offset),
        }
    }
    fn next_hole(&self, offset: u64) -> u64 {
        if !self.sparse_aware {
            return self.len;
        }
        rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(offset))
            .unwrap_or(self.len)
            .min(self.len)
    }
}

/// How many times a dropped HTTP transfer is picked up again.
const HTTP_RETRIES: u32 = 8;

/// An HTTP(S) object: its length and validator, fetched with ranges.
#[derive(Debug, Clone)]
pub struct HttpObject {
    agent: ureq::Agent,
    pub url: String,
    len: u64,
    etag: Option<String>,
    pub ranges: bool,
}

fn http_error(url: &str, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::BadImage, format!("{url}: {what}"))
}

impl HttpObject {
    /// Ask the server for the object's length (and whether it serves
    /// ranges). 404 and other failures are [`ErrorKind::BadImage`].
    pub fn open(url: &str) -> Result<HttpObject> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .head(url)
            .call()
            .map_err(|e| http_error(url, format!("cannot reach the server: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(http_error(
                url,
                format!("the server answered HTTP {status}"),
            ));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let len = header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| http_error(url, "the server does not say how long the image is"))?;
        let mut ranges = header("accept-ranges").is_some_and(|v| v.contains("bytes"));
        if !ranges && len > 0 {
            // Many servers (goosebit's downloads among them) serve ranges
            // without saying so in a HEAD answer: ask for one byte.
            ranges = agent
                .get(url)
                .header("Range", "bytes=0-0")
                .call()
                .is_ok_and(|r| r.status().as_u16() == 206);
        }
        Ok(HttpObject {
            agent,
            url: url.to_string(),
            len,
            etag: header("etag"),
            ranges,
        })
    }

    /// A body reader from byte `from` to the end, checked to be the same
    /// object with the expected length.
    fn get_from(&self, from: u64, to: Option<u64>) -> Result<Box<dyn Read + Send>> {
        let mut req = self.agent.get(&self.url);
        let end = to.unwrap_or(self.len);
        if from > 0 || end < self.len {
            if !self.ranges {
                return Err(http_error(
                    &self.url,
                    "the server does not serve byte ranges, so the transfer cannot be resumed",
                ));
            }
            req = req.header("Range", format!("bytes={from}-{}", end - 1));
        }
        let resp = req
            .call()
            .map_err(|e| http_error(&self.url, format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        let expected_status = if from > 0 || end < self.len { 206 } else { 200 };
        if status != expected_status {
            return Err(http_error(
                &self.url,
                format!("the server answered HTTP {status} (expected {expected_status})"),
            ));
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if self.etag.is_some() && etag.is_some() && etag != self.etag {
            return Err(http_error(&self.url, "the image changed on the server"));
        }
        let body_len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if body_len.is_some_and(|l| l != end - from) {
            return Err(http_error(
                &self.url,
                format!(
                    "the server sent {} bytes where {} were asked for",
                    body_len.unwrap_or(0),
                    end - from
                ),
            ));
        }
        Ok(Box::new(resp.into_body().into_reader()))
    }

    /// A sequential reader from byte `from` that resumes after drops.
    pub fn stream_from(self: &Arc<Self>, from: u64) -> Result<HttpStream> {
        let body = self.get_from(from, None)?;
        Ok(HttpStream {
            object: Arc::clone(self),
            body,
            pos: from,
            retries_left: HTTP_RETRIES,
        })
    }
}

impl ReadAt for HttpObject {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = 0;
        let mut tries = HTTP_RETRIES;
        while done < buf.len() {
            let mut body = self
                .get_from(offset + done as u64, Some(end))
                .map_err(io::Error::other)?;
            loop {
                match body.read(&mut buf[done..]) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if tries == 0 {
                            return Err(e);
                        }
                        break;
                    }
                }
            }
            if done < buf.len() {
                if tries == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                tries -= 1;
            }
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// A sequential HTTP body that reconnects with a range request where a
/// dropped connection left off.
pub struct HttpStream {
    object: Arc<HttpObject>,
    body: Box<dyn Read + Send>,
    pos: u64,
    retries_left: u32,
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let result = self.body.read(buf);
            match result {
                Ok(n) if n > 0 || self.pos >= self.object.len || buf.is_empty() => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A short body or a broken connection: pick up where it stopped.
                other => {
                    if self.retries_left == 0 {
                        return match other {
                            Err(e) => Err(e),
                            Ok(_) => Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "{}: the connection ended at byte {} of {}",
                                    self.object.url, self.pos, self.object.len
                                ),
                            )),
                        };
                    }
                    self.retries_left -= 1;
                    std::thread::sleep(Duration::from_millis(
                        200 * u64::from(HTTP_RETRIES - self.retries_left),
                    ));
                    match self.object.get_from(self.pos, None) {
                        Ok(body) => self.body = body,
                        Err(e) if self.retries_left == 0 => {
                            return Err(io::Error::other(e));
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// A small file next to the image (a signature, a hash): a path or an
/// http(s) URL. `None` when there is none (no such file, HTTP 404); at
/// most `limit + 1` bytes are read, so that a caller can tell a file that
/// is too large.
pub fn fetch_small(spec: &str, limit: usize) -> Result<Option<Vec<u8>>> {
    let take = limit as u64 + 1;
    if !(spec.starts_with("http://") || spec.starts_with("https://")) {
        let file = match File::open(spec) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", e).with_path(spec)),
        };
        let mut out = Vec::new();
        file.take(take)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("cannot read", e).with_path(spec))?;
        return Ok(Some(out));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .get(spec)
        .call()
        .map_err(|e| http_error(spec, format!("cannot reach the server: {e}")))?;
    match resp.status().as_u16() {
        200 => {}
        404 | 410 => return Ok(None),
        s => return Err(http_error(spec, format!("the server answered HTTP {s}"))),
    }
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .take(take)
        .read_to_end(&mut out)
        .map_err(|e| http_error(spec, format!("the transfer failed: {e}")))?;
    Ok(Some(out))
}

/// Where the image comes from, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Stdin,
    File(PathBuf),
    Url(String),
}

impl Location {
    pub fn parse(spec: &str) -> Location {
        if spec == "-" {
            Location::Stdin
        } else if spec.starts_with("http://") || spec.starts_with("https://") {
            Location::Url(spec.to_string())
        } else {
            Location::File(PathBuf::from(spec))
        }
    }

    /// What to record as the source (a canonical path, a URL, or nothing
    /// for stdin).
    pub fn recorded(&self) -> Option<String> {
        match self {
            Location::Stdin => None,
            Location::File(p) => Some(
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string(),
            ),
            Location::Url(u) => Some(u.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Stdin => "stdin".into(),
            Location::File(p) => p.display().to_string(),
            Location::Url(u) => u.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(Location::parse("-"), Location::Stdin);
        assert_eq!(
            Location::parse("https://x/y.img"),
            Location::Url("https://x/y.img".into())
        );
        assert_eq!(
            Location::parse("./a.img"),
            Location::File(PathBuf::from("./a.img"))
        );
    }

    #[test]
    fn sparse_file_holes_are_seen() {
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().set_len(8 << 20).unwrap();
        t.as_file().write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        let f = LocalFile::open(t.path()).unwrap();
        assert_eq!(f.len(), 8 << 20);
        let first = f.next_data(0).unwrap();
        assert!(first <= 4 << 20, "{first}");
        assert!(f.next_hole(4 << 20) > 4 << 20);
        assert_eq!(f.next_data((4 << 20) + 65536), None);
    }
}
