//! Where image bytes come from: a file, a block device, or stdin, with a
//! size known before anything is allocated.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

/// An open image.
pub struct ImageSource {
    reader: Box<dyn Read + Send>,
    size: u64,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSource")
            .field("size", &self.size)
            .field("path", &self.path)
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadImage, msg)
}

impl ImageSource {
    /// Open `spec` (`-` is stdin). `announced` is the size given by the user
    /// (`--size`): required for stdin, and checked against a file's size.
    pub fn open(spec: &str, announced: Option<u64>) -> Result<ImageSource> {
        if spec == "-" {
            let size = announced.ok_or_else(|| {
                bad("reading the image from stdin needs its size: add --size BYTES")
                    .with_kind(ErrorKind::BadImage)
            })?;
            return Ok(ImageSource {
                reader: Box::new(io::stdin()),
                size,
                path: None,
            });
        }
        let path = PathBuf::from(spec);
        let file = File::open(&path).map_err(|e| {
            let what = if e.kind() == io::ErrorKind::NotFound {
                "image not found"
            } else {
                "cannot open the image"
            };
            Error::io(what, e)
                .with_kind(ErrorKind::BadImage)
                .with_path(&path)
        })?;
        let meta = file.metadata().map_err(|e| {
            Error::io("cannot stat the image", e)
                .with_kind(ErrorKind::BadImage)
                .with_path(&path)
        })?;
        let ft = meta.file_type();
        let size = if ft.is_file() {
            meta.len()
        } else if ft.is_block_device() {
            crate::sys::block_device_size(&file).map_err(|e| {
                Error::from(e)
                    .with_kind(ErrorKind::BadImage)
                    .with_path(&path)
            })?
        } else {
            return Err(bad("the image is not a regular file or block device").with_path(&path));
        };
        if let Some(a) = announced
            && a != size
        {
            return Err(bad(format!(
                "--size {a} does not match the image's {size} bytes"
            ))
            .with_path(&path));
        }
        if size == 0 {
            return Err(bad("the image is empty").with_path(&path));
        }
        Ok(ImageSource {
            reader: Box::new(file),
            size,
            path: Some(std::fs::canonicalize(&path).unwrap_or(path)),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The canonical path, or None for stdin.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "stdin".to_string(), |p| p.display().to_string())
    }

    /// Fill `buf` completely from the image, whose bytes `[offset, offset +
    /// buf.len())` are next. An early end is [`ErrorKind::BadImage`].
    pub fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(bad(format!(
                        "the image ended after {} bytes, but {} were announced (truncated image or stdin closed early)",
                        offset + filled as u64,
                        self.size
                    ))
                    .with_offset(offset + filled as u64));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(format!("cannot read {}", self.describe()), e)
                        .with_kind(ErrorKind::BadImage)
                        .with_offset(offset + filled as u64));
                }
            }
        }
        Ok(())
    }

    /// After `size` bytes: make sure nothing follows.
    pub fn expect_end(&mut self) -> Result<()> {
        let mut one = [0u8; 1];
        loop {
            match self.reader.read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(bad(format!(
                        "{} is longer than the announced {} bytes",
                        self.describe(),
                        self.size
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(
                        Error::io("cannot read the image", e).with_kind(ErrorKind::BadImage)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sizes_and_errors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("img");
        std::fs::write(&p, vec![1u8; 10000]).unwrap();
        let mut s = ImageSource::open(p.to_str().unwrap(), None).unwrap();
        assert_eq!(s.size(), 10000);
        let mut buf = vec![0u8; 6000];
        s.read_chunk(0, &mut buf).unwrap();
        let err = s.read_chunk(6000, &mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadImage);
        assert!(err.to_string().contains("ended after 10000"), "{err}");

        assert_eq!(
            ImageSource::open(p.to_str().unwrap(), Some(5))
                .unwrap_err()
                .kind(),
            ErrorKind::BadImage
        );
        let missing = t.path().join("nope");
        assert_eq!(
            ImageSource::open(missing.to_str().unwrap(), None)
                .unwrap_err()
                .kind(),
            ErrorKind::BadImage
        );
        assert_eq!(
            ImageSource::open(t.path().to_str().unwrap(), None)
                .unwrap_err()
                .kind(),
            ErrorKind::BadImage
        );
        let empty = t.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            ImageSource::open(empty.to_str().unwrap(), None)
                .unwrap_err()
                .kind(),
            ErrorKind::BadImage
        );
        assert_eq!(
            ImageSource::open("-", None).unwrap_err().kind(),
            ErrorKind::BadImage
        );
    }

    #[test]
    fn longer_than_announced() {
        let mut s = ImageSource {
            reader: Box::new(&b"abcdef"[..]),
            size: 4,
            path: None,
        };
        let mut buf = [0u8; 4];
        s.read_chunk(0, &mut buf).unwrap();
        assert_eq!(s.expect_end().unwrap_err().kind(), ErrorKind::BadImage);
    }
}
