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

use crate::container::{self, ContainerFile};
use crate::disk_io::{AlignedBuf, DiskReader, DiskWriter};
use crate::error::{Error, ErrorKind, Result};
use crate::header;
use crate::hostfs::HostTarget;
use crate::identity;
use crate::plan::{self, CHUNK_SIZE};
use crate::progress::Progress;
use crate::record::{ContainerInfo, ImageInfo, RECORD_VERSION, StagingRecord, StagingState};
use crate::source::ImageSource;
use crate::staged;
use crate::state_dir::StateDir;

/// Flush the disk and record progress at least this often (bytes)…
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// …or this often (time), whichever comes first.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Chunks in flight between the reader/hasher thread and the writer.
const PIPELINE_DEPTH: usize = 3;

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest<'a> {
    pub name: &'a str,
    pub dir: &'a Path,
    /// A path, or `-` for stdin.
    pub image: &'a str,
    /// The announced size (required for stdin).
    pub size: Option<u64>,
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
    // An image that cannot be opened is one of the refusals `assess` lists.
    let (source, size) = match ImageSource::open(req.image, req.size) {
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
            source: source.path().map(|p| p.display().to_string()),
            size: layout.image_size,
            chunk_size: CHUNK_SIZE,
            written: 0,
            chunk_sha256: Vec::new(),
            sha256: None,
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
    let announced = (spec == "-").then_some(rec.image.size);
    let mut source = ImageSource::open(&spec, announced)?;
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

/// What flows down the pipeline: read → chunk hash → whole-image hash → write.
enum Message {
    Chunk {
        index: u64,
        buf: AlignedBuf,
        len: usize,
        sha256: [u8; 32],
    },
    Done {
        sha256: [u8; 32],
    },
    Failed(Error),
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
    source: &mut ImageSource,
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
    rec.image.chunk_sha256.truncate(committed as usize);
    let data_offset = rec.container.data_offset;

    progress.begin("stage", size);
    let full_sha256 = std::thread::scope(|s| -> Result<[u8; 32]> {
        let (tx, rx) = mpsc::sync_channel::<Message>(PIPELINE_DEPTH);
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..2 * PIPELINE_DEPTH + 3 {
            free_tx
                .send(AlignedBuf::new(chunk as usize))
                .expect("receiver alive");
        }
        // Stage 1: read each chunk and hash it (the per-chunk hashes).
        let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Message>(PIPELINE_DEPTH);
        s.spawn(move || {
            for index in 0..chunks {
                let Ok(mut buf) = free_rx.recv() else { return };
                let offset = index * chunk;
                let len = (size - offset).min(chunk) as usize;
                if let Err(e) = source.read_chunk(offset, &mut buf[..len]) {
                    let _ = hashed_tx.send(Message::Failed(e));
                    return;
                }
                buf[len..].fill(0);
                let sha256: [u8; 32] = Sha256::digest(&buf[..len]).into();
                if hashed_tx
                    .send(Message::Chunk {
                        index,
                        buf,
                        len,
                        sha256,
                    })
                    .is_err()
                {
                    return;
                }
            }
            let msg = match source.expect_end() {
                // The whole-image hash is filled in by stage 2.
                Ok(()) => Message::Done { sha256: [0; 32] },
                Err(e) => Message::Failed(e),
            };
            let _ = hashed_tx.send(msg);
        });
        // Stage 2: the whole-image hash, in parallel with stage 1's next
        // chunk and the writer's previous one.
        s.spawn(move || {
            let mut whole = Sha256::new();
            for msg in hashed_rx {
                let msg = match msg {
                    Message::Chunk { ref buf, len, .. } => {
                        whole.update(&buf[..len]);
                        msg
                    }
                    Message::Done { .. } => Message::Done {
                        sha256: std::mem::take(&mut whole).finalize().into(),
                    },
                    failed => failed,
                };
                let last = !matches!(msg, Message::Chunk { .. });
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        });

        // Writer: this thread.
        let mut last_checkpoint = (0u64, Instant::now());
        let mut check_buf = AlignedBuf::new(chunk as usize);
        for msg in rx {
            match msg {
                Message::Failed(e) => return Err(e),
                Message::Done { sha256 } => return Ok(sha256),
                Message::Chunk {
                    index,
                    buf,
                    len,
                    sha256,
                } => {
                    let offset = index * chunk;
                    let io_len = align_up(len as u64, align) as usize;
                    let hex = hex::encode(sha256);
                    if index < committed {
                        if rec.image.chunk_sha256[index as usize] != hex {
                            return Err(Error::new(
                                ErrorKind::BadImage,
                                format!("this is not the image being staged as '{}': chunk {index} differs", rec.name),
                            )
                            .with_offset(offset));
                        }
                        reader.read_at(data_offset + offset, &mut check_buf[..io_len])?;
                        if Sha256::digest(&check_buf[..len]).as_slice() != sha256 {
                            progress.note(&format!(
                                "chunk {index} on disk differs from the record; rewriting it"
                            ));
                            writer.write_at(data_offset + offset, &buf[..io_len])?;
                        }
                    } else {
                        writer.write_at(data_offset + offset, &buf[..io_len])?;
                        rec.image.chunk_sha256.push(hex);
                        let done = offset + len as u64;
                        if done - last_checkpoint.0 >= CHECKPOINT_BYTES
                            || last_checkpoint.1.elapsed() >= CHECKPOINT_INTERVAL
                        {
                            writer.sync()?;
                            rec.image.written = done.min(size);
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
    rec.image.sha256 = Some(hex::encode(full_sha256));
    // The filesystem must still see the container where we wrote it.
    let now = ContainerFile::open(Path::new(&rec.container.path))?
        .map(target.block.start, target.fs_block_size)?;
    if let Some(diff) = map.difference(&now) {
        return Err(Error::new(
            ErrorKind::MapChanged,
            format!("the container moved while staging: {diff}"),
        ));
    }
    rec.state = StagingState::Complete;
    write_header(&mut writer, rec, align)?;
    writer.sync()?;
    state.save(rec)
}
