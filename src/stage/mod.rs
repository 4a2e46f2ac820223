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
//!
//! Owns: writing an image into planned space and proving it is there.
//! May not: change how the machine boots (that is [`crate::boot`], which
//! this folder never imports), or write a disk but through
//! [`crate::map::disk_io::DiskWriter`].

pub mod adopt;
pub mod plan;
pub mod scan;
pub mod signature;
pub mod staged;
pub mod verify;

mod allocation;
mod pipeline;
mod sink;

pub use pipeline::{ChunkRun, zero_runs};

use allocation::{allocate, record_space};
use pipeline::write_pass;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::input::{Fill, Image, OpenOptions};

use crate::error::{Error, ErrorKind, Result};
use crate::input::split::{self, Split};
use crate::map::disk_io::{AlignedBuf, DiskReader, DiskWriter};
use crate::progress::Progress;
use crate::space::allocate::{Planned, Source, SpaceRequest};
use crate::space::container::{self, ContainerFile};
use crate::space::identity;
use crate::store::record::{
    ContainerInfo, ImageInfo, RECORD_VERSION, Segment, StagingRecord, StagingState,
};
use crate::store::state_dir::StateLock;
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
/// Data writes the writer keeps in flight (each a chunk's run, done by a
/// thread of the staging's [`DiskWriter`] queue). A pool of threads doing
/// `pwrite` rather than io_uring: the same requests in flight without a
/// second I/O path (or a crate and kernel feature) beside the checked one.
/// Measured with `bench/stage-vs-peers.sh 2048 4` on the development VM:
/// 2 GiB of random data in 1.03 s a round with one write at a time, 0.75 s
/// with 3 (docs/guide.md#speed); fio on that device gains about as much
/// from queue depth 2-4 and nothing beyond.
const WRITES_IN_FLIGHT: usize = 3;

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
    /// `--signature`, `--trusted-keys`.
    pub signature: signature::SignatureRequest,
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
    state: &StateLock<'_>,
    req: &StageRequest<'_>,
    progress: &dyn Progress,
) -> Result<Vec<StagingRecord>> {
    plan::require_root()?;
    crate::store::record::validate_name(req.name)?;
    let expected = req.sha256.as_deref().map(parse_sha256).transpose()?;
    // The signature and its key are settled before anything is written.
    let bmap = signature::bmap_of(req.image, &req.open);
    let signed = signature::prepare(req.image, bmap.as_deref(), &req.signature, progress)?;
    let mut open = req.open.clone();
    let expected_signature = signed.map(|p| p.apply(&mut open));
    // An image that cannot be opened or split is one of the refusals
    // `assess` lists.
    let opened = Image::open(req.image, &open).and_then(|mut image| {
        let pieces = split::pieces(&mut image, Some(req.name), req.split)?;
        Ok((image, pieces))
    });
    let (source, pieces) = match opened {
        Ok((s, p)) => (Some(s), Ok(p)),
        Err(e) => (None, Err(e)),
    };
    let kept = pieces.as_ref().ok().cloned();
    let mut assessment = plan::assess(state, req.space, pieces);
    for u in &assessment.plan.unknown_stagings {
        progress.note(&u.note());
    }
    if assessment.plan.ok {
        for c in &assessment.plan.cautions {
            progress.note(c);
        }
    }
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
            Source::Unallocated { .. } | Source::Volume { .. } => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expected = expected.or_else(|| source.hash_file.as_ref().map(|(_, h)| h.clone()));
    let ids = pieces
        .iter()
        .map(|_| crate::sys::random::uuid_v4())
        .collect::<Result<Vec<_>>>()?;
    let mut recs: Vec<StagingRecord> = pieces
        .iter()
        .zip(&layouts)
        .zip(&space)
        .zip(ids)
        .map(|(((piece, layout), planned), id)| {
            let name = piece.name.clone().expect("stage names every piece");
            let (container, host, segments) =
                record_space(&name, planned, &sources, &hosts, layout.header_len);
            StagingRecord {
                version: RECORD_VERSION,
                id,
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
                    boots_accepted: 0,
                    expected_signature: expected_signature.clone(),
                    signature: None,
                    standby: None,
                },
                container,
                host,
                disk: disk.clone(),
                segments,
                map: None,
                activation: None,
                deployment: None,
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
                    .and_then(|()| staged::remove_volumes(rec).map(drop))
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
    state: &StateLock<'_>,
    name: &str,
    image: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<StagingRecord>> {
    plan::require_root()?;
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
    let start_at = if remote
        && first.image.expected_sha256.is_none()
        && first.image.expected_signature.is_none()
    {
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
        tap: None,
        signed_bmap: None,
    };
    let mut opts = opts;
    if let Some(e) = &first.image.expected_signature {
        signature::prepare_again(&spec, e, progress)?.apply(&mut opts);
    }
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
