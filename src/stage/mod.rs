//! Staging: allocate and pin the container, map it, and stream the image
//! onto the disk through the map; resuming after a crash.
//!
//! Order of durable steps, so that a crash at any point leaves something
//! `discard` or `stage --resume` can finish:
//! 1. state record `allocating` (names the container path)
//! 2. container created, preallocated, synced, pinned
//! 3. record `staging` with the map
//! 4. on-disk header (state `staging`), then image chunks; every
//!    [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`], when a staging's last
//!    chunk is followed by the next staging's, and whenever the source
//!    stalls for [`IDLE_CHECKPOINT`], the disk is flushed and the record
//!    notes how far it got, with the chunk hashes
//! 5. end: flush, re-read FIEMAP and compare, header `complete`, flush,
//!    record `complete`.
//!
//! The folder also holds the checks made before and after: the preflight
//! ([`plan`]), re-reading the staged bytes ([`verify`]), a raw scan of a
//! disk for headers ([`scan`]), and list / info / discard / the map of
//! staged images ([`staged`]).

pub mod plan;
pub mod scan;
pub mod staged;
pub mod verify;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::input::{Fill, Image, OpenOptions};

use crate::error::{Error, ErrorKind, Result};
use crate::input::split::{self, Split};
use crate::map::disk_io::{AlignedBuf, DiskReader, DiskWriter};
use crate::progress::Progress;
use crate::space::allocate::{Planned, Source, SpaceRequest};
use crate::space::container::{self, ContainerFile};
use crate::space::hostfs::HostTarget;
use crate::space::identity;
use crate::store::record::{
    ContainerInfo, ImageInfo, RECORD_VERSION, Segment, StagingRecord, StagingState,
};
use crate::store::state_dir::StateDir;
use plan::CHUNK_SIZE;

/// Flush the disk and record progress at least this often (bytes)…
pub const CHECKPOINT_BYTES: u64 = 1 << 30;
/// …or this often (time), whichever comes first. A flush costs tens of
/// milliseconds on many devices, so checkpoints are few: a crash costs at
/// most this much rework, never correctness.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// A source that delivers nothing for this long (a stalled network or
/// pipe) gets what has been written so far checkpointed.
pub const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);
/// Chunks in flight between the reader/hasher thread and the writer.
const PIPELINE_DEPTH: usize = 3;

/// Granularity of zero detection: a run of zero grains is zeroed on the
/// disk (`BLKZEROOUT`) instead of written.
pub const ZERO_GRAIN: usize = 64 << 10;

/// What to stage.
#[derive(Debug, Clone)]
pub struct StageRequest<'a> {
    pub name: &'a str,
    /// Where the space comes from: the `--dir`s, `--unallocated`, limits.
    pub space: &'a SpaceRequest,
    /// A path, an http(s) URL, or `-` for stdin.
    pub image: &'a str,
    /// `--size`, `--bmap`, …
    pub open: OpenOptions,
    /// `--sha256`: the staging only completes when the image has it.
    pub sha256: Option<String>,
    /// What to do with a whole-disk image's partitions.
    pub split: Split,
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

/// Stage a new image: one staging, or one per partition of a whole-disk
/// image, all written in one pass over the image. On any error everything
/// created is removed again (a staging whose image failed its SHA-256 is
/// kept, marked failed).
pub fn stage(
    state: &StateDir,
    req: &StageRequest<'_>,
    progress: &dyn Progress,
) -> Result<Vec<StagingRecord>> {
    plan::require_root()?;
    crate::store::record::validate_name(req.name)?;
    let _lock = state.lock()?;
    let expected = req.sha256.as_deref().map(parse_sha256).transpose()?;
    // An image that cannot be opened or split is one of the refusals
    // `assess` lists.
    let opened = Image::open(req.image, &req.open).and_then(|mut image| {
        let pieces = split::pieces(&mut image, Some(req.name), req.split)?;
        Ok((image, pieces))
    });
    let (source, pieces) = match opened {
        Ok((s, p)) => (Some(s), Ok(p)),
        Err(e) => (None, Err(e)),
    };
    let kept = pieces.as_ref().ok().cloned();
    let mut assessment = plan::assess(state, req.space, pieces);
    if assessment.plan.ok && !assessment.plan.make_room.is_empty() {
        // --make-room: delete what the plan needs gone, then plan again
        // from what is really free now.
        for c in &assessment.plan.make_room {
            progress.note(&format!(
                "deleting {} ({} bytes) to make room",
                c.path.display(),
                c.bytes
            ));
        }
        crate::space::make_room::delete(&assessment.plan.make_room)?;
        let deleted = assessment.plan.make_room.len();
        let mut again = req.space.clone();
        again.make_room = None;
        assessment = plan::assess(
            state,
            &again,
            kept.clone()
                .ok_or_else(|| Error::new(ErrorKind::Io, "pieces")),
        );
        if !assessment.plan.ok {
            let e = assessment.first_error().expect("not ok: an error");
            return Err(Error::new(
                e.kind(),
                format!("after deleting {deleted} files to make room: {e}"),
            ));
        }
    }
    let (target, layouts) = (assessment.target.clone(), assessment.layouts.clone());
    let (sources, space) = (assessment.sources.clone(), assessment.space.clone());
    if let Some(err) = assessment.first_error() {
        return Err(err);
    }
    // No refusal means the image opened and split, and the target is known.
    let (mut source, pieces, target) = (
        source.expect("assessed"),
        kept.expect("assessed"),
        target.expect("assessed"),
    );
    let (_, disk) = identity::describe(&target)?;
    // The host description of every directory source (index = source).
    let hosts = sources
        .iter()
        .map(|s| match s {
            Source::Dir { target, .. } => identity::describe(target).map(|(h, _)| Some(h)),
            Source::Unallocated { .. } => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expected = expected.or_else(|| source.hash_file.as_ref().map(|(_, h)| h.clone()));
    let mut recs: Vec<StagingRecord> = pieces
        .iter()
        .zip(&layouts)
        .zip(&space)
        .map(|((piece, layout), planned)| {
            let name = piece.name.clone().expect("stage names every piece");
            let (container, host, segments) =
                record_space(&name, planned, &sources, &hosts, layout.header_len);
            StagingRecord {
                version: RECORD_VERSION,
                id: uuid::Uuid::new_v4(),
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
                    expected_sha256: expected.clone(),
                    sha256: None,
                    failure: None,
                    disk_written: 0,
                    disk_zeroed: 0,
                    partition: piece.partition.clone(),
                    customizing: None,
                    customized: Vec::new(),
                },
                container,
                host,
                disk: disk.clone(),
                segments,
                map: None,
                activation: None,
                name,
            }
        })
        .collect();
    let offsets: Vec<u64> = pieces.iter().map(|p| p.offset).collect();
    let mut result = Ok(());
    for (rec, layout) in recs.iter_mut().zip(&layouts) {
        result = state
            .save(rec)
            .and_then(|()| allocate(state, rec, layout.max_extents, progress));
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| {
        let mut sinks: Vec<(&mut StagingRecord, u64)> = recs.iter_mut().zip(offsets).collect();
        write_pass(state, &mut sinks, &mut source, &target, false, progress)
    });
    if let Err(e) = result {
        for rec in &recs {
            if rec.state == StagingState::Failed {
                // Kept on purpose so that the user sees why; discard removes it.
                continue;
            }
            // Nothing half-done is left: remove the container and the record.
            let cleanup = if state.exists(&rec.name) {
                rec.container_files()
                    .iter()
                    .try_for_each(|(c, _)| container::remove(Path::new(&c.path)))
                    .and_then(|()| state.remove(&rec.name))
            } else {
                Ok(())
            };
            if let Err(c) = cleanup {
                progress.note(&format!(
                    "cleanup after the failure also failed: {c}; run `liverestore discard {}`",
                    rec.name
                ));
            }
        }
        return Err(e);
    }
    Ok(recs)
}

/// Continue an interrupted staging. `image` defaults to the recorded path;
/// an image staged from stdin must be piped again (`-`). The bytes already
/// staged are checked against the recorded hashes (the source's and the
/// disk's), rewritten where the disk differs, and staging goes on from
/// there. On failure the staging stays resumable. `name` may be one
/// partition of a split image or the name the image was staged under: the
/// whole set is resumed in one pass.
pub fn resume(
    state: &StateDir,
    name: &str,
    image: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<StagingRecord>> {
    plan::require_root()?;
    let _lock = state.lock()?;
    let mut recs = staged::set_of(state, name)?;
    if recs.iter().all(|r| r.state == StagingState::Complete) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!("'{name}' is already complete; nothing to resume"),
        ));
    }
    for rec in &recs {
        let n = &rec.name;
        match rec.state {
            StagingState::Allocating => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "'{n}' stopped while its container was being allocated; run `liverestore discard {n}` and stage again"
                    ),
                ));
            }
            StagingState::Failed => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("'{n}' failed and cannot be resumed; run `liverestore discard {n}`"),
                ));
            }
            StagingState::Staging | StagingState::Complete => {}
        }
    }
    recs.retain(|r| r.state == StagingState::Staging);
    let first = recs[0].clone();
    let spec = match (image, &first.image.source) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(Error::new(
                ErrorKind::BadImage,
                format!("'{name}' was staged from stdin: pipe the same image again and pass `-`"),
            ));
        }
    };
    let image_size = first
        .image
        .partition
        .as_ref()
        .map_or(first.image.size, |p| p.image_size);
    let offset_of = |r: &StagingRecord| {
        r.image
            .partition
            .as_ref()
            .and_then(|p| p.entry())
            .map_or(0, |e| e.offset)
    };
    // A URL is not downloaded again up to what is staged (the staged chunks
    // are only checked on the disk), unless the whole image must be hashed.
    let remote = spec.starts_with("http://") || spec.starts_with("https://");
    let start_at = if remote && first.image.expected_sha256.is_none() {
        recs.iter()
            .map(|r| offset_of(r) + r.image.written)
            .min()
            .unwrap_or(0)
    } else {
        0
    };
    let opts = OpenOptions {
        size: (spec == "-").then_some(image_size),
        bmap: first.image.bmap.as_ref().map(std::path::PathBuf::from),
        no_bmap: !first.image.kind.starts_with("bmap"),
        start_at,
    };
    let mut source = Image::open(&spec, &opts)?;
    if source.size() != image_size {
        return Err(Error::new(
            ErrorKind::BadImage,
            format!(
                "the image has {} bytes but '{name}' is staging {image_size} bytes",
                source.size(),
            ),
        ));
    }
    let mut target = None;
    for rec in &recs {
        target = Some(staged::revalidate(rec)?.target);
        progress.note(&format!(
            "resuming '{}': {} of {} bytes were staged; checking them",
            rec.name, rec.image.written, rec.image.size
        ));
    }
    let target = target.expect("at least one staging to resume");
    let offsets: Vec<u64> = recs.iter().map(offset_of).collect();
    let mut sinks: Vec<(&mut StagingRecord, u64)> = recs.iter_mut().zip(offsets).collect();
    write_pass(state, &mut sinks, &mut source, &target, true, progress)?;
    Ok(recs)
}

/// The record's description of the planned space of staging `name`: its
/// first container file (which holds the `header_len`-byte header), the
/// filesystem under it, and the segments after it. Files are numbered
/// across the staging (`NAME.liverestore`, `NAME+2.liverestore`, …).
fn record_space(
    name: &str,
    planned: &[Planned],
    sources: &[Source],
    hosts: &[Option<crate::store::record::HostInfo>],
    header_len: u64,
) -> (ContainerInfo, crate::store::record::HostInfo, Vec<Segment>) {
    let mut files = 0;
    let mut out: Vec<Segment> = planned
        .iter()
        .map(|p| match *p {
            Planned::File { source, size } => {
                let Source::Dir { target, .. } = &sources[source] else {
                    unreachable!("files are planned in directories")
                };
                files += 1;
                Segment::File {
                    container: ContainerInfo {
                        path: container::piece_path_for(&target.dir, name, files)
                            .display()
                            .to_string(),
                        inode: 0,
                        generation: 0,
                        size,
                        data_offset: if files == 1 { header_len } else { 0 },
                        block_size: target.fs_block_size,
                    },
                    host: hosts[source].clone().expect("a directory has a host"),
                }
            }
            Planned::Unallocated { disk, length } => Segment::Unallocated { disk, length },
        })
        .collect();
    match out.remove(0) {
        Segment::File { container, host } => (container, host, out),
        Segment::Unallocated { .. } => unreachable!("space::assign starts every staging in a file"),
    }
}

/// Create, preallocate, pin and map one container file; returns its map.
fn allocate_file(
    container: &mut ContainerInfo,
    host: &crate::store::record::HostInfo,
    name: &str,
    progress: &dyn Progress,
) -> Result<crate::map::extent_map::ExtentMap> {
    let path = std::path::PathBuf::from(&container.path);
    let zero_fill = if host.fs_type == "vfat" {
        " (vfat cannot preallocate without writing zeros: this takes a while)"
    } else {
        ""
    };
    progress.note(&format!(
        "allocating {} bytes for '{name}' in {}{zero_fill}",
        container.size,
        path.display()
    ));
    let file = ContainerFile::create(&path, container.size)?;
    file.set_pinned(true)?;
    (container.inode, container.generation) = file.identity()?;
    file.map(host.start, container.block_size)
}

/// Steps 2 and 3: create, preallocate, pin and map every container file,
/// join their maps with the unallocated segments', and check the result
/// against every other staging.
fn allocate(
    state: &StateDir,
    rec: &mut StagingRecord,
    max_extents: u64,
    progress: &dyn Progress,
) -> Result<()> {
    let mut parts = vec![allocate_file(
        &mut rec.container,
        &rec.host,
        &rec.name,
        progress,
    )?];
    for segment in &mut rec.segments {
        parts.push(match segment {
            Segment::File { container, host } => {
                allocate_file(container, host, &rec.name, progress)?
            }
            Segment::Unallocated { disk, length } => {
                crate::map::extent_map::ExtentMap::contiguous(*disk, *length)?
            }
        });
    }
    let map = crate::map::extent_map::ExtentMap::concat(&parts)?;
    if map.extents().len() as u64 > max_extents {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "the free space is too fragmented: the container got {} extents (at most {max_extents} fit the header)",
                map.extents().len()
            ),
        ));
    }
    rec.map = Some(map);
    staged::check_disjoint(state, rec)?;
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
/// `fill` says it is all zeros), for chunk `index` of sink `sink`, or, with
/// no sink, bytes between the stagings that are only hashed.
struct ReadChunk {
    sink: Option<usize>,
    index: u64,
    buf: AlignedBuf,
    len: usize,
    fill: Fill,
}

/// A chunk of a staging with its hash and its data and zero runs.
struct HashedChunk {
    sink: usize,
    index: u64,
    buf: AlignedBuf,
    len: usize,
    fill: Fill,
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

/// A byte range of the image the reader delivers: the chunks of a staging
/// (`sink`) from chunk `first` on, or bytes between stagings that are read
/// only to be hashed (`sink` None).
struct Span {
    sink: Option<usize>,
    offset: u64,
    len: u64,
    first: u64,
}

/// The reader's work list, in image order: each sink's chunks, and when
/// the whole image must be hashed, the bytes between and after them.
fn spans(
    sinks: &[(u64, u64, u64)],
    image_size: u64,
    chunk: u64,
    starts_at: u64,
    hash_all: bool,
) -> Vec<Span> {
    let mut order: Vec<usize> = (0..sinks.len()).collect();
    order.sort_by_key(|&i| sinks[i].0);
    let mut out = Vec::new();
    let mut pos = 0;
    for i in order {
        let (offset, size, committed) = sinks[i];
        if hash_all && offset > pos {
            out.push(Span {
                sink: None,
                offset: pos,
                len: offset - pos,
                first: 0,
            });
        }
        // Chunks before the source's first byte are not read again.
        let skip = starts_at.saturating_sub(offset) / chunk;
        out.push(Span {
            sink: Some(i),
            offset,
            len: size,
            first: skip.min(committed),
        });
        pos = pos.max(offset + size);
    }
    if hash_all && image_size > pos {
        out.push(Span {
            sink: None,
            offset: pos,
            len: image_size - pos,
            first: 0,
        });
    }
    out
}

/// A staging being written by a pass.
struct Sink<'r> {
    rec: &'r mut StagingRecord,
    writer: DiskWriter,
    reader: DiskReader,
    /// Chunks staged before this pass (checked, not blindly rewritten).
    committed: u64,
    pending: PendingZero,
    /// Image bytes staged so far (contiguous from 0), and as of the last
    /// checkpoint (with its time).
    done: u64,
    last_checkpoint: (u64, Instant),
}

impl Sink<'_> {
    /// Flush, sync and record how far this staging got (`done`).
    fn checkpoint(&mut self, state: &StateDir) -> Result<()> {
        let done = self.done;
        self.pending.flush(&mut self.writer)?;
        self.writer.sync()?;
        self.rec.image.written = done.min(self.rec.image.size);
        self.rec.image.disk_written = self.writer.bytes_written();
        self.rec.image.disk_zeroed = self.writer.bytes_zeroed();
        state.save(self.rec)?;
        self.last_checkpoint = (done, Instant::now());
        Ok(())
    }

    /// Checkpoint if anything was staged since the last checkpoint.
    fn checkpoint_if_behind(&mut self, state: &StateDir) -> Result<()> {
        if self.done > self.last_checkpoint.0 {
            self.checkpoint(state)?;
        }
        Ok(())
    }

    /// Write (or, below `committed`, check) one hashed chunk.
    fn put(
        &mut self,
        state: &StateDir,
        c: &mut HashedChunk,
        align: u64,
        progress: &dyn Progress,
    ) -> Result<()> {
        let rec = &mut *self.rec;
        let chunk = rec.image.chunk_size;
        let (index, len) = (c.index, c.len);
        let offset = index * chunk;
        let at = rec.container.data_offset + offset;
        let io_len = align_up(len as u64, align) as usize;
        if index < self.committed {
            if rec.image.chunk_blake3[index as usize] != c.blake3 {
                return Err(Error::new(
                    ErrorKind::BadImage,
                    format!(
                        "this is not the image being staged as '{}': chunk {index} differs",
                        rec.name
                    ),
                )
                .with_offset(offset));
            }
            let mut check = AlignedBuf::new(io_len);
            self.reader.read_at(at, &mut check)?;
            if blake3::hash(&check[..len]).to_hex().as_str() != c.blake3 {
                progress.note(&format!(
                    "chunk {index} of '{}' on disk differs from the record; rewriting it",
                    rec.name
                ));
                if c.fill == Fill::Zero {
                    c.buf[..io_len].fill(0);
                }
                self.writer.write_at(at, &c.buf[..io_len])?;
            }
            return Ok(());
        }
        for run in &c.runs {
            let run_at = at + run.start as u64;
            if run.zero {
                self.pending.add(&mut self.writer, run_at, run.len as u64)?;
            } else {
                self.pending.flush(&mut self.writer)?;
                self.writer
                    .write_at(run_at, &c.buf[run.start..run.start + run.len])?;
            }
        }
        rec.image.chunk_blake3.push(std::mem::take(&mut c.blake3));
        let done = offset + len as u64;
        self.done = done;
        // The end of the last staging is recorded by `finish`; the end of
        // another by the writer loop when the next staging's data arrives.
        if done - self.last_checkpoint.0 >= CHECKPOINT_BYTES
            || self.last_checkpoint.1.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint(state)?;
        }
        Ok(())
    }
}

/// Steps 4 and 5 for every staging in `targets` (a record and the image
/// offset of its first byte), in one pass over `source`. With `resuming`,
/// chunks below each record's `written` are checked instead of blindly
/// written.
fn write_pass(
    state: &StateDir,
    targets: &mut [(&mut StagingRecord, u64)],
    source: &mut Image,
    target: &HostTarget,
    resuming: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let align = target.io_align();
    let chunk = CHUNK_SIZE;
    let mut sinks = Vec::with_capacity(targets.len());
    let mut layout = Vec::with_capacity(targets.len());
    for (rec, offset) in targets.iter_mut() {
        let map = rec
            .map
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::InvalidState, "no map"))?;
        if rec.image.chunk_size != chunk {
            return Err(Error::new(ErrorKind::InvalidState, "unexpected chunk size"));
        }
        let mut writer = DiskWriter::for_staging(rec, target, map.clone())?;
        let reader = DiskReader::open(&target.disk_path, map.clone())?;
        staged::write_header(&mut writer, rec, align)?;
        let committed = if resuming {
            rec.image.written / chunk
        } else {
            0
        };
        rec.image.chunk_blake3.truncate(committed as usize);
        layout.push((*offset, rec.image.size, committed));
        sinks.push(Sink {
            rec,
            writer,
            reader,
            committed,
            pending: PendingZero::default(),
            done: committed * chunk,
            last_checkpoint: (committed * chunk, Instant::now()),
        });
    }
    let want_sha256 = sinks.iter().any(|s| s.rec.image.expected_sha256.is_some());
    let image_size = source.size();
    let spans = spans(&layout, image_size, chunk, source.starts_at, want_sha256);
    let total: u64 = sinks.iter().map(|s| s.rec.image.size).sum();
    progress.begin("stage", total);
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
            for span in &spans {
                for index in span.first..span.len.div_ceil(chunk) {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let rel = index * chunk;
                    let len = (span.len - rel).min(chunk) as usize;
                    let fill = match source.read_chunk(span.offset + rel, &mut buf[..len]) {
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
                        sink: span.sink,
                        index,
                        buf,
                        len,
                        fill,
                    });
                    if read_tx.send(msg).is_err() {
                        return;
                    }
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
        let spare_tx = free_tx.clone();
        s.spawn(move || {
            let mut whole = want_sha256.then(Sha256::new);
            let zeros = AlignedBuf::new(chunk as usize);
            let zero_hash = blake3::hash(&zeros).to_hex().to_string();
            for msg in read_rx {
                let msg = match msg {
                    Message::Chunk(c) => {
                        let (len, buf) = (c.len, &c.buf);
                        let data: &[u8] = match c.fill {
                            Fill::Zero => &zeros[..len],
                            Fill::Data => &buf[..len],
                        };
                        if let Some(w) = whole.as_mut() {
                            w.update(data);
                        }
                        let Some(sink) = c.sink else {
                            // Only hashed: the buffer goes back at once.
                            let _ = spare_tx.send(c.buf);
                            continue;
                        };
                        let io_len = align_up(len as u64, align) as usize;
                        let (blake3, runs) = match c.fill {
                            Fill::Zero => {
                                let hash = if len == zeros.len() {
                                    zero_hash.clone()
                                } else {
                                    blake3::hash(data).to_hex().to_string()
                                };
                                let all = ChunkRun {
                                    start: 0,
                                    len: io_len,
                                    zero: true,
                                };
                                (hash, vec![all])
                            }
                            Fill::Data => (
                                blake3::hash(data).to_hex().to_string(),
                                zero_runs(&buf[..io_len]),
                            ),
                        };
                        Message::Chunk(HashedChunk {
                            sink,
                            index: c.index,
                            buf: c.buf,
                            len,
                            fill: c.fill,
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
        let mut done = 0u64;
        let mut current = None;
        loop {
            let msg = match rx.recv_timeout(IDLE_CHECKPOINT) {
                Ok(msg) => msg,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    for sink in &mut sinks {
                        sink.checkpoint_if_behind(state)?;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        "the image reader stopped unexpectedly",
                    ));
                }
            };
            match msg {
                Message::Failed(e) => return Err(e),
                Message::Done(sha256) => {
                    for sink in &mut sinks {
                        sink.pending.flush(&mut sink.writer)?;
                    }
                    return Ok(sha256);
                }
                Message::Chunk(mut c) => {
                    // The previous staging got its last chunk: record it,
                    // so a resume skips it.
                    if let Some(prev) = current.replace(c.sink)
                        && prev != c.sink
                    {
                        sinks[prev].checkpoint_if_behind(state)?;
                    }
                    sinks[c.sink].put(state, &mut c, align, progress)?;
                    done += c.len as u64;
                    progress.update(done);
                    let _ = free_tx.send(c.buf);
                }
            }
        }
    })?;
    progress.end();
    finish(state, &mut sinks, full_sha256.map(hex::encode), align)
}

/// Step 5 for every sink: sync, check the map did not move, check the
/// whole image's SHA-256, then mark complete (or failed) on disk and in
/// the state directory.
fn finish(
    state: &StateDir,
    sinks: &mut [Sink<'_>],
    sha256: Option<String>,
    align: u64,
) -> Result<()> {
    for sink in sinks.iter_mut() {
        sink.writer.sync()?;
        let rec = &mut *sink.rec;
        rec.image.written = rec.image.size;
        rec.image.disk_written = sink.writer.bytes_written();
        rec.image.disk_zeroed = sink.writer.bytes_zeroed();
        match rec.image.partition.as_mut() {
            Some(p) => p.image_sha256 = sha256.clone(),
            None => rec.image.sha256 = sha256.clone(),
        }
        // The filesystems must still see the containers where we wrote.
        staged::revalidate(rec).map_err(|e| {
            Error::new(
                e.kind(),
                format!("while staging '{}': {}", rec.name, e.message()),
            )
        })?;
    }
    let expected = sinks[0].rec.image.expected_sha256.clone();
    let failure = match (&expected, &sha256) {
        (Some(e), Some(a)) if e != a => {
            Some(format!("the image's SHA-256 is {a}, but {e} was expected"))
        }
        _ => None,
    };
    for sink in sinks.iter_mut() {
        let rec = &mut *sink.rec;
        match &failure {
            Some(why) => {
                rec.state = StagingState::Failed;
                rec.image.failure = Some(why.clone());
            }
            None => rec.state = StagingState::Complete,
        }
        staged::write_header(&mut sink.writer, rec, align)?;
        sink.writer.sync()?;
        state.save(rec)?;
    }
    match failure {
        Some(why) => {
            let names: Vec<&str> = sinks.iter().map(|s| s.rec.name.as_str()).collect();
            Err(Error::new(
                ErrorKind::VerifyFailed,
                format!("{why}; marked failed: {} (discard them)", names.join(", ")),
            ))
        }
        None => Ok(()),
    }
}
