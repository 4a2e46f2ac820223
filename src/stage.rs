//! Staging: allocate and pin the container, map it, and stream the image
//! onto the disk through the map; resuming after a crash.
//!
//! Order of durable steps, so that a crash at any point leaves something
//! `discard` or `stage --resume` can finish:
//! 1. state record `allocating` (names the container path)
//! 2. container created, preallocated, synced, pinned
//! 3. record `staging` with the map
//! 4. on-disk header (state `staging`), then image chunks; every
//!    [`CHECKPOINT_BYTES`] the disk is flushed and the record notes how far
//!    it got, with the chunk hashes
//! 5. end: flush, re-read FIEMAP and compare, header `complete`, flush,
//!    record `complete`.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::input::{Fill, Image, OpenOptions};

use crate::container::{self, ContainerFile};
use crate::disk_io::{AlignedBuf, DiskReader, DiskWriter};
use crate::error::{Error, ErrorKind, Result};
use crate::header;
use crate::hostfs::HostTarget;
use crate::identity;
use crate::plan::{self, CHUNK_SIZE};
use crate::progress::Progress;
use crate::record::{ContainerInfo, ImageInfo, RECORD_VERSION, StagingRecord, StagingState};
use crate::staged;
use crate::state_dir::StateDir;

/// Flush the disk and record progress at least this often (bytes)…
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// …or this often (time), whichever comes first.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Chunks in flight between the reader/hasher thread and the writer.
const PIPELINE_DEPTH: usize = 3;

/// Granularity of zero detection: a run of zero grains is zeroed on the
/// disk (`BLKZEROOUT`) instead of written.
pub const ZERO_GRAIN: usize = 64 << 10;

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    /// A path, an http(s) URL, or `-` for stdin.
    pub image: &'a str,
    /// `--size`, `--bmap`, …
    pub open: OpenOptions,
    /// `--sha256`: the staging only completes when the image has it.
    pub sha256: Option<String>,
}

/// A SHA-256 as 64 lowercase hex digits, or [`ErrorKind::BadImage`].
pub fn parse_sha256(text: &str) -> Result<String> {
    crate::input::parse_hash_text(text).ok_or_else(|| {
        Error::new(
            ErrorKind::BadImage,
            format!("'{text}' is not a SHA-256 (64 hex digits)"),
        )
    })
}

/// Stage a new image. On any error everything created is removed again.
pub fn stage(
    state: &StateDir,
    req: &StageRequest<'_>,
    progress: &dyn Progress,
) -> Result<StagingRecord> {
    plan::require_root()?;
    crate::record::validate_name(req.name)?;
    let _lock = state.lock()?;
    let expected = req.sha256.as_deref().map(parse_sha256).transpose()?;
    // An image that cannot be opened is one of the refusals `assess` lists.
    let (source, size) = match Image::open(req.image, &req.open) {
        Ok(s) => {
            let size = s.size();
            (Some(s), Ok(size))
        }
        Err(e) => (None, Err(e)),
    };
    let assessment = plan::assess(state, req.dir, Some(req.name), size);
    let (target, layout) = (assessment.target.clone(), assessment.layout);
    if let Some(err) = assessment.first_error() {
        return Err(err);
    }
    // No refusal means the image opened and the target and layout are known.
    let (mut source, target, layout) = (
        source.expect("assessed"),
        target.expect("assessed"),
        layout.expect("assessed"),
    );
    let (host, disk) = identity::describe(&target)?;
    let container_path = container::path_for(&target.dir, req.name);
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rec = StagingRecord {
        version: RECORD_VERSION,
        id: uuid::Uuid::new_v4(),
        name: req.name.to_string(),
        state: StagingState::Allocating,
        created_unix,
        image: ImageInfo {
            source: source.location.recorded(),
            kind: source.kind(),
            bmap: (source.format == crate::input::Format::Bmap)
                .then(|| req.open.bmap.clone().map(|b| b.display().to_string()))
                .flatten(),
            size: layout.image_size,
            chunk_size: CHUNK_SIZE,
            written: 0,
            chunk_blake3: Vec::new(),
            expected_sha256: expected.or_else(|| source.hash_file.as_ref().map(|(_, h)| h.clone())),
            sha256: None,
            failure: None,
            disk_written: 0,
            disk_zeroed: 0,
        },
        container: ContainerInfo {
            path: container_path.display().to_string(),
            inode: 0,
            generation: 0,
            size: layout.container_size,
            data_offset: layout.header_len,
            block_size: target.fs_block_size,
        },
        host,
        disk,
        map: None,
    };
    state.save(&rec)?;
    let result = allocate(state, &mut rec, &target, layout.max_extents, progress)
        .and_then(|()| write_image(state, &mut rec, &mut source, &target, false, progress));
    if let Err(e) = result {
        if rec.state == StagingState::Failed {
            // Kept on purpose so that the user sees why; discard removes it.
            return Err(e);
        }
        // Nothing half-done is left: remove the container and the record.
        let cleanup = container::remove(&container_path).and_then(|()| state.remove(&rec.name));
        if let Err(c) = cleanup {
            progress.note(&format!(
                "cleanup after the failure also failed: {c}; run `liverestore discard {}`",
                rec.name
            ));
        }
        return Err(e);
    }
    Ok(rec)
}

/// Continue an interrupted staging. `image` defaults to the recorded path;
/// an image staged from stdin must be piped again (`-`). The bytes already
/// staged are checked against the recorded hashes (the source's and the
/// disk's), rewritten where the disk differs, and staging goes on from
/// there. On failure the staging stays resumable.
pub fn resume(
    state: &StateDir,
    name: &str,
    image: Option<&str>,
    progress: &dyn Progress,
) -> Result<StagingRecord> {
    plan::require_root()?;
    let _lock = state.lock()?;
    let mut rec = state.load(name)?;
    match rec.state {
        StagingState::Complete => {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("'{name}' is already complete; nothing to resume"),
            ));
        }
        StagingState::Allocating => {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "'{name}' stopped while its container was being allocated; run `liverestore discard {name}` and stage again"
                ),
            ));
        }
        StagingState::Failed => {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("'{name}' failed and cannot be resumed; run `liverestore discard {name}`"),
            ));
        }
        StagingState::Staging => {}
    }
    let spec = match (image, &rec.image.source) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(Error::new(
                ErrorKind::BadImage,
                format!("'{name}' was staged from stdin: pipe the same image again and pass `-`"),
            ));
        }
    };
    let remote = spec.starts_with("http://") || spec.starts_with("https://");
    let opts = OpenOptions {
        size: (spec == "-").then_some(rec.image.size),
        bmap: rec.image.bmap.as_ref().map(std::path::PathBuf::from),
        no_bmap: !rec.image.kind.starts_with("bmap"),
        // A URL is not downloaded again: the staged chunks are only
        // checked on the disk.
        start_at: if remote { rec.image.written } else { 0 },
    };
    let mut source = Image::open(&spec, &opts)?;
    if source.size() != rec.image.size {
        return Err(Error::new(
            ErrorKind::BadImage,
            format!(
                "the image has {} bytes but '{name}' is staging {} bytes",
                source.size(),
                rec.image.size
            ),
        ));
    }
    let checked = staged::revalidate(&rec)?;
    progress.note(&format!(
        "resuming '{name}': {} of {} bytes were staged; checking them",
        rec.image.written, rec.image.size
    ));
    write_image(
        state,
        &mut rec,
        &mut source,
        &checked.target,
        true,
        progress,
    )?;
    Ok(rec)
}

/// Steps 2 and 3: create, preallocate, pin, map.
fn allocate(
    state: &StateDir,
    rec: &mut StagingRecord,
    target: &HostTarget,
    max_extents: u64,
    progress: &dyn Progress,
) -> Result<()> {
    let path = std::path::PathBuf::from(&rec.container.path);
    progress.note(&format!(
        "allocating {} bytes for '{}' in {}",
        rec.container.size,
        rec.name,
        path.display()
    ));
    let file = ContainerFile::create(&path, rec.container.size)?;
    file.set_pinned(true)?;
    let (inode, generation) = file.identity()?;
    let map = file.map(target.block.start, target.fs_block_size)?;
    if map.extents().len() as u64 > max_extents {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "the free space is too fragmented: the container got {} extents (at most {max_extents} fit the header)",
                map.extents().len()
            ),
        ));
    }
    rec.container.inode = inode;
    rec.container.generation = generation;
    rec.map = Some(map);
    rec.state = StagingState::Staging;
    state.save(rec)
}

/// A run of a chunk, in bytes from the chunk's start: data to write, or
/// zeros to make with `BLKZEROOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkRun {
    start: usize,
    len: usize,
    zero: bool,
}

/// A chunk as read from the image: `len` image bytes in `buf` (unless
/// `fill` says it is all zeros).
struct ReadChunk {
    index: u64,
    buf: AlignedBuf,
    len: usize,
    fill: Fill,
}

/// A chunk with its hash and its data and zero runs.
struct HashedChunk {
    chunk: ReadChunk,
    blake3: String,
    runs: Vec<ChunkRun>,
}

/// What flows down the pipeline: read (`ReadChunk`) → hash and find zeros
/// (`HashedChunk`) → write. `Done` carries the whole-image SHA-256 once
/// computed.
enum Message<C> {
    Chunk(C),
    Done(Option<[u8; 32]>),
    Failed(Error),
}

/// Whether `b` is all zeros (in 64-byte blocks the compiler vectorizes).
fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks.all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Split `buf` into data and zero runs of whole [`ZERO_GRAIN`]s (the last
/// grain may be shorter), merging neighbours of the same kind.
fn zero_runs(buf: &[u8]) -> Vec<ChunkRun> {
    let mut runs: Vec<ChunkRun> = Vec::new();
    for (i, grain) in buf.chunks(ZERO_GRAIN).enumerate() {
        let zero = is_zero(grain);
        match runs.last_mut() {
            Some(r) if r.zero == zero => r.len += grain.len(),
            _ => runs.push(ChunkRun {
                start: i * ZERO_GRAIN,
                len: grain.len(),
                zero,
            }),
        }
    }
    runs
}

/// Zeroing requests are merged across chunks and sent when data follows,
/// at a checkpoint, or at the end: a long run of zeros is one ioctl.
#[derive(Default)]
struct PendingZero(Option<(u64, u64)>);

impl PendingZero {
    fn add(&mut self, writer: &mut DiskWriter, offset: u64, len: u64) -> Result<()> {
        match &mut self.0 {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => {
                self.flush(writer)?;
                self.0 = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush(&mut self, writer: &mut DiskWriter) -> Result<()> {
        if let Some((o, l)) = self.0.take() {
            writer.zero_at(o, l)?;
        }
        Ok(())
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Write the header with the record as it is now, through `writer`.
fn write_header(writer: &mut DiskWriter, rec: &StagingRecord, align: u64) -> Result<()> {
    let bytes = header::encode(rec, align)?;
    let mut buf = AlignedBuf::new(bytes.len());
    buf.copy_from_slice(&bytes);
    writer.write_at(0, &buf)
}

/// Steps 4 and 5. With `resuming`, chunks below `rec.image.written` are
/// checked instead of blindly written.
fn write_image(
    state: &StateDir,
    rec: &mut StagingRecord,
    source: &mut Image,
    target: &HostTarget,
    resuming: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let map = rec
        .map
        .clone()
        .ok_or_else(|| Error::new(ErrorKind::InvalidState, "no map"))?;
    let align = target.io_align();
    let mut writer = DiskWriter::for_target(target, map.clone())?;
    let reader = DiskReader::open(&target.disk_path, map.clone())?;
    write_header(&mut writer, rec, align)?;

    let size = rec.image.size;
    let chunk = rec.image.chunk_size;
    let chunks = size.div_ceil(chunk);
    let committed = if resuming {
        rec.image.written / chunk
    } else {
        0
    };
    rec.image.chunk_blake3.truncate(committed as usize);
    let data_offset = rec.container.data_offset;

    let want_sha256 = rec.image.expected_sha256.is_some();
    // Chunks before `first` are not read again (a URL resumes with a range).
    let first = (source.starts_at / chunk).min(committed);
    progress.begin("stage", size);
    let full_sha256 = std::thread::scope(|s| -> Result<Option<[u8; 32]>> {
        let (tx, rx) = mpsc::sync_channel::<Message<HashedChunk>>(PIPELINE_DEPTH);
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..2 * PIPELINE_DEPTH + 3 {
            free_tx
                .send(AlignedBuf::new(chunk as usize))
                .expect("receiver alive");
        }
        // Stage 1: read (and decompress, decode) each chunk.
        let (read_tx, read_rx) = mpsc::sync_channel::<Message<ReadChunk>>(PIPELINE_DEPTH);
        s.spawn(move || {
            for index in first..chunks {
                let Ok(mut buf) = free_rx.recv() else { return };
                let offset = index * chunk;
                let len = (size - offset).min(chunk) as usize;
                let fill = match source.read_chunk(offset, &mut buf[..len]) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = read_tx.send(Message::Failed(e));
                        return;
                    }
                };
                if fill == Fill::Data && len < buf.len() {
                    buf[len..].fill(0); // sector padding of the last chunk
                }
                let msg = Message::Chunk(ReadChunk {
                    index,
                    buf,
                    len,
                    fill,
                });
                if read_tx.send(msg).is_err() {
                    return;
                }
            }
            let msg = match source.finish() {
                Ok(()) => Message::Done(None),
                Err(e) => Message::Failed(e),
            };
            let _ = read_tx.send(msg);
        });
        // Stage 2: chunk hashes, zero runs and (when one is expected) the
        // whole-image SHA-256, in parallel with reading and writing.
        s.spawn(move || {
            let mut whole = want_sha256.then(Sha256::new);
            let zeros = AlignedBuf::new(chunk as usize);
            let zero_hash = blake3::hash(&zeros).to_hex().to_string();
            for msg in read_rx {
                let msg = match msg {
                    Message::Chunk(chunk) => {
                        let (len, buf) = (chunk.len, &chunk.buf);
                        let io_len = align_up(len as u64, align) as usize;
                        let (blake3, runs, data): (String, Vec<ChunkRun>, &[u8]) = match chunk.fill
                        {
                            Fill::Zero => {
                                let hash = if len == zeros.len() {
                                    zero_hash.clone()
                                } else {
                                    blake3::hash(&zeros[..len]).to_hex().to_string()
                                };
                                let all = ChunkRun {
                                    start: 0,
                                    len: io_len,
                                    zero: true,
                                };
                                (hash, vec![all], &zeros[..len])
                            }
                            Fill::Data => (
                                blake3::hash(&buf[..len]).to_hex().to_string(),
                                zero_runs(&buf[..io_len]),
                                &buf[..len],
                            ),
                        };
                        if let Some(w) = whole.as_mut() {
                            w.update(data);
                        }
                        Message::Chunk(HashedChunk {
                            chunk,
                            blake3,
                            runs,
                        })
                    }
                    Message::Done(_) => Message::Done(whole.take().map(|w| w.finalize().into())),
                    Message::Failed(e) => Message::Failed(e),
                };
                let last = !matches!(msg, Message::Chunk(_));
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        });

        // Writer: this thread.
        let mut last_checkpoint = (0u64, Instant::now());
        let mut check_buf = AlignedBuf::new(chunk as usize);
        let mut pending = PendingZero::default();
        for msg in rx {
            match msg {
                Message::Failed(e) => return Err(e),
                Message::Done(sha256) => {
                    pending.flush(&mut writer)?;
                    return Ok(sha256);
                }
                Message::Chunk(HashedChunk {
                    chunk:
                        ReadChunk {
                            index,
                            mut buf,
                            len,
                            fill,
                        },
                    blake3,
                    runs,
                }) => {
                    let offset = index * chunk;
                    let at = data_offset + offset;
                    let io_len = align_up(len as u64, align) as usize;
                    if index < committed {
                        if rec.image.chunk_blake3[index as usize] != blake3 {
                            return Err(Error::new(
                                ErrorKind::BadImage,
                                format!("this is not the image being staged as '{}': chunk {index} differs", rec.name),
                            )
                            .with_offset(offset));
                        }
                        reader.read_at(at, &mut check_buf[..io_len])?;
                        if blake3::hash(&check_buf[..len]).to_hex().as_str() != blake3 {
                            progress.note(&format!(
                                "chunk {index} on disk differs from the record; rewriting it"
                            ));
                            if fill == Fill::Zero {
                                buf[..io_len].fill(0);
                            }
                            writer.write_at(at, &buf[..io_len])?;
                        }
                    } else {
                        for run in &runs {
                            let run_at = at + run.start as u64;
                            if run.zero {
                                pending.add(&mut writer, run_at, run.len as u64)?;
                            } else {
                                pending.flush(&mut writer)?;
                                writer.write_at(run_at, &buf[run.start..run.start + run.len])?;
                            }
                        }
                        rec.image.chunk_blake3.push(blake3);
                        let done = offset + len as u64;
                        if done - last_checkpoint.0 >= CHECKPOINT_BYTES
                            || last_checkpoint.1.elapsed() >= CHECKPOINT_INTERVAL
                        {
                            pending.flush(&mut writer)?;
                            writer.sync()?;
                            rec.image.written = done.min(size);
                            rec.image.disk_written = writer.bytes_written();
                            rec.image.disk_zeroed = writer.bytes_zeroed();
                            state.save(rec)?;
                            last_checkpoint = (done, Instant::now());
                        }
                    }
                    progress.update(offset + len as u64);
                    let _ = free_tx.send(buf);
                }
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            "the image reader stopped unexpectedly",
        ))
    })?;
    progress.end();

    writer.sync()?;
    rec.image.written = size;
    rec.image.disk_written = writer.bytes_written();
    rec.image.disk_zeroed = writer.bytes_zeroed();
    rec.image.sha256 = full_sha256.map(hex::encode);
    // The filesystem must still see the container where we wrote it.
    let now = ContainerFile::open(Path::new(&rec.container.path))?
        .map(target.block.start, target.fs_block_size)?;
    if let Some(diff) = map.difference(&now) {
        return Err(Error::new(
            ErrorKind::MapChanged,
            format!("the container moved while staging: {diff}"),
        ));
    }
    if let (Some(expected), Some(actual)) = (&rec.image.expected_sha256, &rec.image.sha256)
        && expected != actual
    {
        let why = format!("the image's SHA-256 is {actual}, but {expected} was expected");
        rec.state = StagingState::Failed;
        rec.image.failure = Some(why.clone());
        write_header(&mut writer, rec, align)?;
        writer.sync()?;
        state.save(rec)?;
        return Err(Error::new(
            ErrorKind::VerifyFailed,
            format!("{why}; '{}' is marked failed: discard it", rec.name),
        ));
    }
    rec.state = StagingState::Complete;
    write_header(&mut writer, rec, align)?;
    writer.sync()?;
    state.save(rec)
}
