//! The raw image as one zstd frame (the `zstd` crate, libzstd's own
//! multithreaded compressor, one worker per core; with its content
//! checksum and the image's size in its header), to a file or a pipe.
//! Zero runs cost almost nothing in the frame; `stage` reads it back like
//! any `.zst`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::stage::ChunkRun;

use super::ArchiveWriter;

/// Bytes of image each zstd worker compresses at a time.
const JOB_SIZE: u32 = 2 << 20;

/// Where a zstd frame can go: it can be made durable at the end.
pub trait DurableWrite: Write + Send {
    fn make_durable(&mut self) -> std::io::Result<()>;
}

impl DurableWrite for std::fs::File {
    fn make_durable(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

impl DurableWrite for std::io::Stdout {
    fn make_durable(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// Counts the compressed bytes on their way out.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct ZstdWriter<W: DurableWrite> {
    encoder: zstd::stream::write::Encoder<'static, Counted<BufWriter<W>>>,
    /// The file written, for messages (None: standard output).
    path: Option<PathBuf>,
}

impl<W: DurableWrite> ZstdWriter<W> {
    /// A frame of `size` image bytes (declared in its header, so that
    /// `stage` knows the image's size before reading it).
    pub fn new(out: W, size: u64, level: i32, path: Option<&Path>) -> Result<ZstdWriter<W>> {
        let err = |e| Error::io("start the zstd compressor", e);
        let counted = Counted {
            inner: BufWriter::with_capacity(1 << 20, out),
            bytes: 0,
        };
        let mut encoder = zstd::stream::write::Encoder::new(counted, level).map_err(err)?;
        encoder.include_checksum(true).map_err(err)?;
        encoder.set_pledged_src_size(Some(size)).map_err(err)?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        encoder.multithread(workers).map_err(err)?;
        // libzstd's default job at level 3 is 8 MiB, and it keeps several
        // per worker: 2 MiB jobs keep the export's peak RSS near the
        // chunk readers' own (bench/export-vs-zstd.sh).
        encoder
            .set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))
            .map_err(err)?;
        Ok(ZstdWriter {
            encoder,
            path: path.map(Path::to_path_buf),
        })
    }
}

/// An I/O error of the export, naming its file (if it has one).
fn failed(path: &Option<PathBuf>, what: &str, e: std::io::Error) -> Error {
    let e = Error::io(what, e);
    match path {
        Some(p) => e.with_path(p),
        None => e,
    }
}

impl<W: DurableWrite> ArchiveWriter for ZstdWriter<W> {
    fn write(&mut self, offset: u64, bytes: &[u8], _runs: &[ChunkRun]) -> Result<()> {
        self.encoder
            .write_all(bytes)
            .map_err(|e| failed(&self.path, "write the export", e).with_offset(offset))
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        let path = self.path.clone();
        let failed = |what: &str, e| failed(&path, what, e);
        let counted = self
            .encoder
            .finish()
            .map_err(|e| failed("finish the zstd frame", e))?;
        let bytes = counted.bytes;
        let mut out = counted
            .inner
            .into_inner()
            .map_err(|e| failed("write the export", e.into_error()))?;
        out.make_durable()
            .map_err(|e| failed("sync the export", e))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::zero_runs;

    /// A Vec that can be "made durable".
    struct Memory(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Memory {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl DurableWrite for Memory {
        fn make_durable(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_frame_decompresses_to_the_image_and_zeros_cost_little() {
        let mem = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w: Box<dyn ArchiveWriter> =
            Box::new(ZstdWriter::new(Memory(mem.clone()), 9 << 20, 3, None).unwrap());
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let zeros = vec![0u8; 8 << 20];
        w.write(0, &data, &zero_runs(&data)).unwrap();
        w.write(1 << 20, &zeros, &zero_runs(&zeros)).unwrap();
        let n = w.finish().unwrap();
        let frame = mem.lock().unwrap().clone();
        assert_eq!(n, frame.len() as u64);
        assert!(frame.len() < 64 << 10, "{} bytes", frame.len());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).ok(),
            Some(Some(9 << 20))
        );
        let back = zstd::decode_all(&frame[..]).unwrap();
        assert_eq!(back.len(), 9 << 20);
        assert_eq!(&back[..1 << 20], &data[..]);
        assert!(back[1 << 20..].iter().all(|&b| b == 0));
    }
}
