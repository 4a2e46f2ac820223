//! `adopt`: re-create the records of the stagings on a disk from their
//! on-disk headers, for when the state directory is lost (a re-imaged or
//! broken primary, a restored backup of `/var/lib`): a standby outlives
//! the filesystem that held its record.
//!
//! The header holds the whole record (it is written with every change of
//! it). Each valid header found by [`crate::stage::scan`] is adopted only
//! when its staging is complete, its map re-derives to the recorded one
//! (the container file is still there, pinned, in the same place) and
//! every chunk read back from the disk has the BLAKE3 it records. Anything
//! else is skipped, with the reason; a record already known is left alone.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::map::disk_io::DiskReader;
use crate::progress::Progress;
use crate::stage::{scan, staged, verify};
use crate::store::record::StagingState;
use crate::store::state_dir::StateLock;

/// What became of one header.
#[derive(Debug, Clone, Serialize)]
pub struct Adoption {
    pub disk_offset: u64,
    pub name: Option<String>,
    pub id: Option<String>,
    /// `adopted`, `known` (a record of that staging exists),
    /// `skipped` (see `reason`).
    pub outcome: &'static str,
    pub reason: Option<String>,
    /// The data checked did not match: the staging's bytes are not what
    /// its header says.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub data_mismatch: bool,
    pub kind: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdoptReport {
    pub disk: String,
    pub headers: Vec<Adoption>,
    pub adopted: u64,
}

fn skipped(h: &scan::FoundHeader, reason: String) -> Adoption {
    Adoption {
        disk_offset: h.disk_offset,
        name: h.name.clone(),
        id: h.id.clone(),
        outcome: "skipped",
        reason: Some(reason),
        data_mismatch: false,
        kind: None,
    }
}

/// Adopt the stagings whose headers are on `disk`.
pub fn adopt(state: &StateLock<'_>, disk: &Path, progress: &dyn Progress) -> Result<AdoptReport> {
    crate::stage::plan::require_root()?;
    let found = scan::scan(disk, progress)?;
    let file = std::fs::File::open(disk)
        .map_err(|e| crate::Error::io("open the disk", e).with_path(disk))?;
    let mut out = Vec::new();
    for h in &found {
        if !h.valid {
            out.push(skipped(
                h,
                format!(
                    "damaged header: {}",
                    h.error.as_deref().unwrap_or("unknown")
                ),
            ));
            continue;
        }
        let rec = match scan::read_header_at(&file, h.disk_offset) {
            Ok(r) => r,
            Err(e) => {
                out.push(skipped(h, e.to_string()));
                continue;
            }
        };
        if state.exists(&rec.name) {
            let same = state.load(&rec.name).is_ok_and(|r| r.id == rec.id);
            let mut a = skipped(
                h,
                if same {
                    "its record exists".into()
                } else {
                    format!(
                        "another staging is recorded as '{}': discard or rename it first",
                        rec.name
                    )
                },
            );
            if same {
                a.outcome = "known";
            }
            out.push(a);
            continue;
        }
        if rec.state != StagingState::Complete || rec.image.customizing.is_some() {
            out.push(skipped(
                h,
                format!(
                    "it is not complete ({}{}): nothing to adopt",
                    rec.state.as_str(),
                    if rec.image.customizing.is_some() {
                        ", interrupted while being changed"
                    } else {
                        ""
                    }
                ),
            ));
            continue;
        }
        let checked = match staged::revalidate(&rec) {
            Ok(c) => c,
            Err(e) => {
                out.push(skipped(h, e.to_string()));
                continue;
            }
        };
        let align = checked.target.io_align();
        let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
        let hashes = verify::hash_image(&rec, &reader, align, "adopt", progress, false)?;
        let bad = hashes.differing(&rec.image.chunk_blake3).count();
        if bad > 0 || hashes.chunks.len() != rec.image.chunk_blake3.len() {
            let mut a = skipped(
                h,
                format!(
                    "{bad} of {} chunks on the disk differ from its header's hashes",
                    rec.image.chunk_blake3.len()
                ),
            );
            a.data_mismatch = true;
            out.push(a);
            continue;
        }
        state.save(&rec)?;
        progress.note(&format!(
            "adopted '{}' ({}), every chunk checked",
            rec.name, rec.id
        ));
        out.push(Adoption {
            disk_offset: h.disk_offset,
            name: Some(rec.name.clone()),
            id: Some(rec.id.to_string()),
            outcome: "adopted",
            reason: None,
            data_mismatch: false,
            kind: Some(if rec.image.standby.is_some() {
                "standby"
            } else {
                "image"
            }),
        });
    }
    let adopted = out.iter().filter(|a| a.outcome == "adopted").count() as u64;
    Ok(AdoptReport {
        disk: disk.display().to_string(),
        headers: out,
        adopted,
    })
}
