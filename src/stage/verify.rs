//! `verify`: re-derive the map and compare it, check the on-disk header,
//! then re-read every byte of the image from the raw disk through the map
//! and compare it with the hashes recorded while staging.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::{AlignedBuf, DiskReader};
use crate::progress::Progress;
use crate::stage::staged;
use crate::store::header;
use crate::store::record::{StagingRecord, StagingState};
use crate::store::state_dir::StateDir;

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
    /// SHA-256 (hex) of the whole image.
    pub sha256: String,
}

/// Read every image byte of `rec` from the disk through `reader` and hash
/// it: per chunk (BLAKE3) and whole (SHA-256). `what` names the progress.
pub fn hash_image(
    rec: &StagingRecord,
    reader: &DiskReader,
    align: u64,
    what: &str,
    progress: &dyn Progress,
) -> Result<ImageHashes> {
    let chunk = rec.image.chunk_size;
    let size = rec.image.size;
    let mut buf = AlignedBuf::new(chunk as usize);
    let mut whole = Sha256::new();
    let mut chunks = Vec::with_capacity(rec.image.chunk_count() as usize);
    progress.begin(what, size);
    for index in 0..rec.image.chunk_count() {
        let offset = index * chunk;
        let len = (size - offset).min(chunk);
        let io_len = len.div_ceil(align) * align;
        reader.read_at(
            rec.container.data_offset + offset,
            &mut buf[..io_len as usize],
        )?;
        let data = &buf[..len as usize];
        whole.update(data);
        chunks.push(blake3::hash(data).to_hex().to_string());
        progress.update(offset + len);
    }
    progress.end();
    Ok(ImageHashes {
        chunks,
        sha256: hex::encode(whole.finalize()),
    })
}

/// Verify `name`. Map and header problems are errors ([`ErrorKind::MapChanged`],
/// [`ErrorKind::Corrupt`]); data mismatches are reported with `ok: false`.
pub fn verify(state: &StateDir, name: &str, progress: &dyn Progress) -> Result<VerifyReport> {
    let rec = state.load(name)?;
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
    rec.check_not_customizing()?;
    let checked = staged::revalidate(&rec)?;
    let align = checked.target.io_align();
    let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
    check_header(&rec, &reader, align)?;

    let hashes = hash_image(&rec, &reader, align, "verify", progress)?;
    let mut bad = Vec::new();
    let mut bad_count = 0u64;
    for (index, (expected, actual)) in rec
        .image
        .chunk_blake3
        .iter()
        .zip(&hashes.chunks)
        .enumerate()
    {
        if expected != actual {
            bad_count += 1;
            if bad.len() < 64 {
                bad.push(index as u64);
            }
        }
    }
    let sha256 = hashes.sha256;
    let complete = rec.image.chunk_blake3.len() as u64 == rec.image.chunk_count();
    // The whole-image hash is checked when one was recorded.
    let whole_ok = rec.image.sha256.as_deref().is_none_or(|s| s == sha256);
    Ok(VerifyReport {
        name: name.to_string(),
        ok: bad_count == 0 && complete && whole_ok,
        map_valid: true,
        header_valid: true,
        bytes_checked: rec.image.size,
        chunks_checked: rec.image.chunk_blake3.len() as u64,
        bad_chunks: bad,
        bad_chunk_count: bad_count,
        sha256: Some(sha256),
    })
}
