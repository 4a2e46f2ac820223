//! `verify`: re-derive the map and compare it, check the on-disk header,
//! then re-read every byte of the image from the raw disk through the map
//! and compare it with the hashes recorded while staging — or, where the
//! image's [`boot_note`] says it was booted since, accept its own changes
//! ([`verify_accepting_own_boots`]).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::{AlignedBuf, DiskReader};
use crate::progress::Progress;
use crate::stage::pipeline::{is_zero, zero_chunk_hash};
use crate::stage::staged;
use crate::store::record::{Change, Customization, StagingRecord, StagingState};
use crate::store::state_dir::{StateDir, StateLock};
use crate::store::{boot_note, header};

/// The outcome of a verification that could run to the end.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub ok: bool,
    pub map_valid: bool,
    pub header_valid: bool,
    pub bytes_checked: u64,
    pub chunks_checked: u64,
    /// Indices of chunks whose data differs (at most the first 64).
    pub bad_chunks: Vec<u64>,
    pub bad_chunk_count: u64,
    pub sha256: Option<String>,
    /// The differences are the image's own: its boot note counts boots
    /// the record has not accepted yet (a trial boot mounted it
    /// read-write). [`Verified::accept_own_boots`] then takes the bytes as
    /// they are as the new baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_by_boot: Option<OwnBoots>,
    /// Set when the differences were accepted and the image re-hashed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rehashed: bool,
}

/// Boots of a staged image that changed it, from its boot note.
#[derive(Debug, Clone, Serialize)]
pub struct OwnBoots {
    /// Boots noted in all, and how many of them were accepted before.
    pub boots: u32,
    pub accepted_before: u32,
    pub first_boot_unix: u64,
    pub last_boot_unix: u64,
    /// The kernel's boot id of the last one.
    pub last_boot_id: String,
}

/// Read the header of `rec` back from the disk and check it describes the
/// same staging.
pub fn check_header(rec: &StagingRecord, reader: &DiskReader, align: u64) -> Result<()> {
    let corrupt = |what: &str| {
        Error::new(
            ErrorKind::Corrupt,
            format!("on-disk header of '{}': {what}", rec.name),
        )
    };
    let mut b0 = AlignedBuf::new(header::BLOCK0_SIZE);
    reader.read_at(0, &mut b0)?;
    let block0 = header::decode_block0(&b0).map_err(|e| corrupt(e.message()))?;
    let len = block0.used_len().div_ceil(align) * align;
    if len > rec.container.data_offset {
        return Err(corrupt(&format!("it claims {len} bytes")));
    }
    let mut all = AlignedBuf::new(len as usize);
    reader.read_at(0, &mut all)?;
    let on_disk = header::decode_body(&block0, &all).map_err(|e| corrupt(e.message()))?;
    if on_disk.id != rec.id || on_disk.map != rec.map || on_disk.image != rec.image {
        return Err(corrupt(
            "it describes a different staging than the state file",
        ));
    }
    Ok(())
}

/// The hashes of the staged bytes as they are on the disk now.
pub struct ImageHashes {
    /// BLAKE3 (hex) of each chunk.
    pub chunks: Vec<String>,
    /// SHA-256 (hex) of the whole image, when it was asked for.
    pub sha256: Option<String>,
}

impl ImageHashes {
    /// The indices of the chunks, of those both sides have, whose hash
    /// differs from `recorded`'s.
    pub fn differing<'a>(&'a self, recorded: &'a [String]) -> impl Iterator<Item = u64> + 'a {
        self.chunks
            .iter()
            .zip(recorded)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u64)
    }
}

/// The staged bytes of `rec` as they are on the disk now, hashed through
/// its re-derived map: per chunk and the whole image's SHA-256 (for a new
/// baseline after they were changed on purpose). `what` names the
/// progress.
pub fn rehash(rec: &StagingRecord, what: &str, progress: &dyn Progress) -> Result<ImageHashes> {
    let checked = staged::revalidate(rec)?;
    let align = checked.target.io_align();
    let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
    hash_image(rec, &reader, align, what, progress, true)
}

/// Reads of a verification in flight at once: each is a thread that reads
/// a chunk and hashes it (BLAKE3), so the device gets several requests and
/// the chunk hashes use every core, while the calling thread takes the
/// chunks in order for the whole-image SHA-256 (sequential by nature).
/// Measured with `bench/stage-vs-peers.sh` (verify/fio): see docs/guide.md.
pub const VERIFY_READERS: usize = 4;

/// Chunk buffers beyond one per reader: room for the in-order SHA-256 to
/// wait on a slow chunk while the others go on (4 MiB each).
const SPARE_BUFFERS: usize = 4;

/// Read every image byte of `rec` from the disk through `reader` and hash
/// it: per chunk (BLAKE3, on every core) and, with `whole`, the whole image
/// (SHA-256: one core, in order, so it sets the pace; without it, reading
/// does). `what` names the progress.
pub fn hash_image(
    rec: &StagingRecord,
    reader: &DiskReader,
    align: u64,
    what: &str,
    progress: &dyn Progress,
    whole_sha256: bool,
) -> Result<ImageHashes> {
    let mut whole = whole_sha256.then(Sha256::new);
    let mut chunks = Vec::with_capacity(rec.image.chunk_count() as usize);
    read_image_chunks(rec, reader, align, what, progress, |_, bytes, hash| {
        if let Some(w) = whole.as_mut() {
            w.update(bytes);
        }
        chunks.push(hash);
        Ok(())
    })?;
    Ok(ImageHashes {
        chunks,
        sha256: whole.map(|w| hex::encode(w.finalize())),
    })
}

/// Read every image byte of `rec` from the disk through `reader`,
/// [`VERIFY_READERS`] chunks in flight, each hashed (BLAKE3) on the thread
/// that read it, and hand them to `each` in image order: (chunk index,
/// its bytes, its BLAKE3 in hex). The first error (a read's, or one
/// `each` returns) ends it. `what` names the progress.
pub fn read_image_chunks(
    rec: &StagingRecord,
    reader: &DiskReader,
    align: u64,
    what: &str,
    progress: &dyn Progress,
    mut each: impl FnMut(u64, &[u8], String) -> Result<()>,
) -> Result<()> {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;

    let chunk = rec.image.chunk_size;
    let size = rec.image.size;
    let count = rec.image.chunk_count();
    let data_offset = rec.container.data_offset;
    progress.begin(what, size);
    let next = AtomicU64::new(0);
    // A whole chunk of zeros (much of a filesystem image) is recognized,
    // far faster than it is hashed, and takes this hash.
    let zero_hash = zero_chunk_hash(chunk as usize);
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    let free_rx = std::sync::Mutex::new(free_rx);
    std::thread::scope(|s| -> Result<()> {
        // Moved in: dropped when this returns (early on an error too), so
        // readers waiting for a buffer end before the scope joins them.
        let free_tx = free_tx;
        let (done_tx, done_rx) = mpsc::channel::<Result<(u64, AlignedBuf, String)>>();
        for _ in 0..VERIFY_READERS + SPARE_BUFFERS {
            free_tx
                .send(AlignedBuf::new(chunk as usize))
                .expect("receiver alive");
        }
        for _ in 0..VERIFY_READERS {
            let (free_rx, done_tx, next) = (&free_rx, done_tx.clone(), &next);
            let zero_hash = &zero_hash;
            s.spawn(move || {
                loop {
                    // A buffer first, then an index: the chunk taken in
                    // order next always has a buffer (no deadlock).
                    let buf = free_rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok(mut buf) = buf else { return };
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return;
                    }
                    let offset = index * chunk;
                    let len = (size - offset).min(chunk);
                    let io_len = len.div_ceil(align) * align;
                    let read = reader.read_at(data_offset + offset, &mut buf[..io_len as usize]);
                    let msg = read.map(|()| {
                        let data = &buf[..len as usize];
                        let hash = if len == chunk && is_zero(data) {
                            zero_hash.clone()
                        } else {
                            blake3::hash(data).to_hex().to_string()
                        };
                        (index, buf, hash)
                    });
                    let failed = msg.is_err();
                    if done_tx.send(msg).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut expect = 0u64;
        while expect < count {
            let Ok(msg) = done_rx.recv() else {
                return Err(Error::new(
                    ErrorKind::Io,
                    "the disk readers stopped unexpectedly",
                ));
            };
            let (index, buf, hash) = msg?;
            waiting.insert(index, (buf, hash));
            while let Some((buf, hash)) = waiting.remove(&expect) {
                let offset = expect * chunk;
                let len = (size - offset).min(chunk);
                each(expect, &buf[..len as usize], hash)?;
                progress.update(offset + len);
                let _ = free_tx.send(buf);
                expect += 1;
            }
        }
        // The readers see no index left, or the pool closed, and end.
        drop(free_tx);
        Ok(())
    })?;
    progress.end();
    Ok(())
}

/// Verify `name`. Map and header problems are errors ([`ErrorKind::MapChanged`],
/// [`ErrorKind::Corrupt`]); data mismatches are reported with `ok: false`
/// (and `changed_by_boot` when the boot note explains them).
pub fn verify(state: &StateDir, name: &str, progress: &dyn Progress) -> Result<VerifyReport> {
    Ok(verify_hashing(state, name, progress, false)?.report)
}

/// [`verify`], and where the differences are the image's own boots',
/// accept them ([`Verified::accept_own_boots`]).
pub fn verify_accepting_own_boots(
    state: &StateLock<'_>,
    name: &str,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    verify_hashing(state, name, progress, true)?.accept_own_boots(state, progress)
}

/// Before changing or booting the staged bytes of `name` (`customize`, a
/// standby's refresh, `activate`): they must be the ones recorded (the
/// image's own boots accepted). `refused` says what is then not done and
/// what to do.
pub fn verify_before_change(
    state: &StateLock<'_>,
    name: &str,
    progress: &dyn Progress,
    refused: &str,
) -> Result<VerifyReport> {
    let report = verify_accepting_own_boots(state, name, progress)?;
    if !report.ok {
        return Err(Error::new(
            ErrorKind::VerifyFailed,
            format!(
                "the staged bytes of '{name}' do not match their hashes ({} bad chunks): {refused}",
                report.bad_chunk_count
            ),
        ));
    }
    Ok(report)
}

/// A verification with what it read: the record it checked and the
/// hashes of the bytes as they are.
pub struct Verified {
    pub report: VerifyReport,
    rec: StagingRecord,
    hashes: ImageHashes,
}

impl Verified {
    /// Where the differences are the image's own boots' (the report's
    /// `changed_by_boot`), accept them: the bytes as they are become the
    /// baseline (the chunk hashes and SHA-256 are replaced, a
    /// `trial-boot` entry joins the customizations, the boots are counted
    /// as accepted; header and state file rewritten), said in `progress`
    /// and the report. Anything else is returned as it was reported.
    /// Refused when the record changed since it was verified.
    pub fn accept_own_boots(
        self,
        state: &StateLock<'_>,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let Verified {
            mut report,
            rec: verified,
            hashes,
        } = self;
        let Some(boots) = report.changed_by_boot.clone() else {
            return Ok(report);
        };
        let name = &report.name;
        let mut rec = state.load(name)?;
        if rec != verified {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("'{name}' changed while it was verified: verify it again"),
            ));
        }
        // The new baseline needs the whole image's SHA-256 too.
        let hashes = match hashes.sha256 {
            Some(_) => hashes,
            None => rehash(&rec, "rehash", progress)?,
        };
        let sha256 = hashes.sha256.clone().expect("asked for");
        let since = boots.boots - boots.accepted_before;
        rec.image.customized.push(Customization {
            at_unix: boots.last_boot_unix,
            changes: vec![Change {
                what: "trial-boot".into(),
                path: "/".into(),
                detail: format!(
                    "{since} boot(s) of the image changed {} of its chunks; its bytes as they are were accepted",
                    report.bad_chunk_count
                ),
            }],
            change_count: 1,
            sha256_before: rec.image.sha256.take(),
            sha256: sha256.clone(),
        });
        rec.image.chunk_blake3 = hashes.chunks;
        rec.image.sha256 = Some(sha256);
        rec.image.boots_accepted = boots.boots;
        staged::record_changed(state, &rec)?;
        progress.note(&format!(
            "'{name}': {} of {} chunks changed by its own boot ({since} since it was staged or last re-hashed, the last at {}): re-hashed, its bytes as they are are the new baseline",
            report.bad_chunk_count,
            report.chunks_checked,
            crate::progress::utc_time(boots.last_boot_unix),
        ));
        report.ok = true;
        report.rehashed = true;
        Ok(report)
    }
}

/// Refuse a staging whose bytes cannot be vouched for: failed
/// ([`ErrorKind::VerifyFailed`]), not complete, or left mid-change by an
/// interrupted `customize` or snapshot ([`ErrorKind::InvalidState`]).
pub fn check_verifiable(rec: &StagingRecord) -> Result<()> {
    let name = &rec.name;
    if rec.state == StagingState::Failed {
        return Err(Error::new(
            ErrorKind::VerifyFailed,
            format!(
                "'{name}' failed: {}; discard it",
                rec.image.failure.as_deref().unwrap_or("unknown reason")
            ),
        ));
    }
    if rec.state != StagingState::Complete {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is not complete ({}); run `liverestore stage --resume {name}` or discard it",
                rec.state.as_str()
            ),
        ));
    }
    rec.check_not_customizing()
}

/// [`verify`], keeping what it read. The whole image's SHA-256 is
/// computed (and checked) when the staging has one on record, or with
/// `whole_sha256`; the chunk hashes prove every byte either way.
pub fn verify_hashing(
    state: &StateDir,
    name: &str,
    progress: &dyn Progress,
    whole_sha256: bool,
) -> Result<Verified> {
    let rec = state.load(name)?;
    check_verifiable(&rec)?;
    let checked = staged::revalidate(&rec)?;
    let align = checked.target.io_align();
    let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
    check_header(&rec, &reader, align)?;

    let whole = whole_sha256 || rec.image.sha256.is_some();
    let hashes = hash_image(&rec, &reader, align, "verify", progress, whole)?;
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    for index in hashes.differing(&rec.image.chunk_blake3) {
        bad_count += 1;
        if bad.len() < 64 {
            bad.push(index);
        }
    }
    let sha256 = hashes.sha256.clone();
    let complete = rec.image.chunk_blake3.len() as u64 == rec.image.chunk_count();
    // The whole-image hash is checked when one was recorded.
    let whole_ok = rec.image.sha256.is_none() || rec.image.sha256 == sha256;
    let ok = bad_count == 0 && complete && whole_ok;
    let changed_by_boot = if ok || !complete {
        None
    } else {
        own_boots(&rec, &reader)?
    };
    let report = VerifyReport {
        name: name.to_string(),
        ok,
        map_valid: true,
        header_valid: true,
        bytes_checked: rec.image.size,
        chunks_checked: rec.image.chunk_blake3.len() as u64,
        bad_chunks: bad,
        bad_chunk_count: bad_count,
        sha256,
        changed_by_boot,
        rehashed: false,
    };
    Ok(Verified {
        report,
        rec,
        hashes,
    })
}

/// The boots of `rec` its boot note counts beyond those accepted.
fn own_boots(rec: &StagingRecord, reader: &DiskReader) -> Result<Option<OwnBoots>> {
    let mut area = AlignedBuf::new(boot_note::AREA as usize);
    reader.read_at(rec.container.data_offset - boot_note::AREA, &mut area)?;
    let accepted = rec.image.boots_accepted;
    Ok(
        boot_note::unaccepted_boots(boot_note::decode(&area), rec.id, accepted).map(|n| OwnBoots {
            boots: n.boots,
            accepted_before: accepted,
            first_boot_unix: n.first_unix,
            last_boot_unix: n.last_unix,
            last_boot_id: n.last_boot_id.to_string(),
        }),
    )
}
