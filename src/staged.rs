//! Operations on staged images that are not staging itself: re-deriving
//! and checking the map, listing, describing, exporting the map, and
//! discarding.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::container::{self, ContainerFile};
use crate::disk_io::{AlignedBuf, DiskWriter};
use crate::error::{Error, ErrorKind, Result};
use crate::extent_map::ExtentMap;
use crate::header;
use crate::hostfs::{self, HostTarget};
use crate::identity;
use crate::record::StagingRecord;
use crate::state_dir::StateDir;

/// A record whose map was just re-derived from the filesystem and found
/// equal to the recorded one.
pub struct Revalidated {
    pub target: HostTarget,
    pub map: ExtentMap,
}

fn changed(rec: &StagingRecord, what: String) -> Error {
    Error::new(
        ErrorKind::MapChanged,
        format!(
            "the map of '{}' is no longer valid: {what}; discard it and stage again",
            rec.name
        ),
    )
    .with_path(&rec.container.path)
}

/// Re-derive the container's map and identity and compare them with the
/// record: same file (inode and generation), still pinned, same size, same
/// partition and filesystem, same extents. Anything else is
/// [`ErrorKind::MapChanged`].
pub fn revalidate(rec: &StagingRecord) -> Result<Revalidated> {
    let path = Path::new(&rec.container.path);
    let recorded = rec.map.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidState,
            format!("'{}' has no map (allocation did not finish)", rec.name),
        )
    })?;
    if !path.exists() {
        return Err(changed(rec, "the container file is gone".into()));
    }
    let file = ContainerFile::open(path)?;
    let (inode, generation) = file.identity()?;
    if (inode, generation) != (rec.container.inode, rec.container.generation) {
        return Err(changed(
            rec,
            format!(
                "the container file was replaced (inode {inode} generation {generation}, recorded {} generation {})",
                rec.container.inode, rec.container.generation
            ),
        ));
    }
    if !file.is_pinned()? {
        return Err(changed(
            rec,
            "the container is no longer pinned (its immutable flag was cleared)".into(),
        ));
    }
    let size = file.size()?;
    if size != rec.container.size {
        return Err(changed(
            rec,
            format!(
                "the container is {size} bytes, recorded {}",
                rec.container.size
            ),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let target = hostfs::discover(dir)?;
    if (target.block.start, target.block.size) != (rec.host.start, rec.host.size) {
        return Err(changed(
            rec,
            format!(
                "its filesystem is now at disk bytes {}+{}, recorded {}+{}",
                target.block.start, target.block.size, rec.host.start, rec.host.size
            ),
        ));
    }
    if target.block.disk_size != rec.disk.size {
        return Err(changed(
            rec,
            format!(
                "the disk is now {} bytes, recorded {}",
                target.block.disk_size, rec.disk.size
            ),
        ));
    }
    let (host, disk) = identity::describe(&target)?;
    if host.fs_uuid != rec.host.fs_uuid
        || host.partition_uuid != rec.host.partition_uuid
        || disk.gpt_guid != rec.disk.gpt_guid
    {
        return Err(changed(
            rec,
            "the filesystem, partition or disk identity differs from the recorded one".into(),
        ));
    }
    let map = file.map(target.block.start, rec.container.block_size)?;
    if let Some(diff) = recorded.difference(&map) {
        return Err(changed(rec, diff));
    }
    Ok(Revalidated { target, map })
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub name: String,
    pub state: Option<String>,
    pub image_size: Option<u64>,
    pub written: Option<u64>,
    pub container: Option<String>,
    pub disk: Option<String>,
    pub map_valid: bool,
    pub problem: Option<String>,
    /// For a partition of a whole-disk image: the name it was staged
    /// under, and its number.
    pub set: Option<String>,
    pub partition: Option<u32>,
}

/// The stagings made together with `name` from one image: every partition
/// of a split whole-disk image (by a member's name or the name it was
/// staged under), or just `name`. Sorted by partition number.
pub fn set_of(state: &StateDir, name: &str) -> Result<Vec<StagingRecord>> {
    let by_set =
        |pred: &dyn Fn(&crate::record::StagedPartition) -> bool| -> Result<Vec<StagingRecord>> {
            let mut out = Vec::new();
            for n in state.names()? {
                // Damaged records of other stagings are not this set's business.
                if let Ok(r) = state.load(&n)
                    && r.image.partition.as_ref().is_some_and(pred)
                {
                    out.push(r);
                }
            }
            out.sort_by_key(|r| r.image.partition.as_ref().map(|p| p.number));
            Ok(out)
        };
    if state.exists(name) {
        let rec = state.load(name)?;
        return match rec.image.partition.as_ref().map(|p| p.set_id) {
            Some(id) => by_set(&|p| p.set_id == id),
            None => Ok(vec![rec]),
        };
    }
    let found = by_set(&|p| p.set == name)?;
    if found.is_empty() {
        // The usual "no staged image" error.
        return state.load(name).map(|r| vec![r]);
    }
    Ok(found)
}

/// Every staged image, with a quick check of its map (no data is read).
pub fn list(state: &StateDir) -> Result<Vec<Listing>> {
    Ok(state
        .names()?
        .into_iter()
        .map(|name| match state.load(&name) {
            Ok(rec) => {
                let check = revalidate(&rec);
                Listing {
                    name,
                    state: Some(rec.state.as_str().to_string()),
                    image_size: Some(rec.image.size),
                    written: Some(rec.image.written),
                    container: Some(rec.container.path.clone()),
                    disk: Some(rec.disk.path.clone()),
                    map_valid: check.is_ok(),
                    problem: check.err().map(|e| e.to_string()),
                    set: rec.image.partition.as_ref().map(|p| p.set.clone()),
                    partition: rec.image.partition.as_ref().map(|p| p.number),
                }
            }
            Err(e) => Listing {
                name,
                state: None,
                image_size: None,
                written: None,
                container: None,
                disk: None,
                map_valid: false,
                problem: Some(e.to_string()),
                set: None,
                partition: None,
            },
        })
        .collect())
}

/// The image map in the shape other tools consume (`map --json`).
#[derive(Debug, Clone, Serialize)]
pub struct MapExport {
    pub name: String,
    pub disk: String,
    pub logical_sector_size: u32,
    pub image_size: u64,
    pub extents: Vec<MapExportExtent>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MapExportExtent {
    pub image_offset: u64,
    pub disk_offset: u64,
    pub length: u64,
}

/// The image map of `rec`, in image order.
pub fn export_map(rec: &StagingRecord) -> Result<MapExport> {
    let map = rec.image_map()?;
    Ok(MapExport {
        name: rec.name.clone(),
        disk: rec.disk.path.clone(),
        logical_sector_size: rec.disk.logical_sector_size,
        image_size: rec.image.size,
        extents: map
            .extents()
            .iter()
            .map(|e| MapExportExtent {
                image_offset: e.logical,
                disk_offset: e.disk,
                length: e.length,
            })
            .collect(),
    })
}

/// Discard `name`, or, when `name` is the name a whole-disk image was
/// staged under, every partition staged from it.
pub fn discard_named(state: &StateDir, name: &str, force: bool) -> Result<Vec<Discarded>> {
    crate::plan::require_root()?;
    let names: Vec<String> = if state.exists(name) {
        vec![name.to_string()]
    } else {
        set_of(state, name)?.into_iter().map(|r| r.name).collect()
    };
    names.iter().map(|n| discard(state, n, force)).collect()
}

/// What `discard` did.
#[derive(Debug, Clone, Serialize)]
pub struct Discarded {
    pub name: String,
    pub container: Option<String>,
    pub header_wiped: bool,
    pub container_removed: bool,
}

/// Unpin and delete the container of `name` and forget it. The on-disk
/// header is wiped first (through the map, while the blocks are still
/// ours) so a raw scan no longer finds it. With `force`, a damaged state
/// file is accepted: the container it names is deleted without wiping.
pub fn discard(state: &StateDir, name: &str, force: bool) -> Result<Discarded> {
    crate::plan::require_root()?;
    let _lock = state.lock()?;
    let rec = match state.load(name) {
        Ok(rec) => rec,
        Err(e) if e.kind() == ErrorKind::Corrupt && force => {
            let path = salvage_container_path(state, name);
            if let Some(p) = &path {
                container::remove(p)?;
            }
            state.remove(name)?;
            return Ok(Discarded {
                name: name.to_string(),
                container: path.map(|p| p.display().to_string()),
                header_wiped: false,
                container_removed: true,
            });
        }
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{e}; `liverestore discard {name} --force` removes it and the container it names"
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let path = PathBuf::from(&rec.container.path);
    let mut header_wiped = false;
    let mut container_removed = false;
    if rec.map.is_none() {
        // Stopped while allocating: nothing was written to the disk yet, and
        // the file (created with O_EXCL under our name) can only be ours.
        container::remove(&path)?;
        container_removed = true;
    } else {
        match revalidate(&rec) {
            Ok(checked) => {
                let mut w = DiskWriter::for_target(&checked.target, checked.map)?;
                w.write_at(0, &AlignedBuf::new(header::BLOCK0_SIZE))?;
                w.sync()?;
                header_wiped = true;
                container::remove(&path)?;
                container_removed = true;
            }
            // Only delete a file that is still the one we created.
            Err(e) if e.kind() == ErrorKind::MapChanged => {
                if let Ok(file) = ContainerFile::open(&path)
                    && file.identity().ok() == Some((rec.container.inode, rec.container.generation))
                {
                    drop(file);
                    container::remove(&path)?;
                    container_removed = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
    state.remove(name)?;
    Ok(Discarded {
        name: name.to_string(),
        container: Some(rec.container.path),
        header_wiped,
        container_removed,
    })
}

/// From a state file that fails its checksum, the container path it names,
/// if that path looks like one of ours.
fn salvage_container_path(state: &StateDir, name: &str) -> Option<PathBuf> {
    let bytes = std::fs::read(state.record_path(name)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let p = PathBuf::from(v.pointer("/record/container/path")?.as_str()?);
    let file_name = p.file_name()?.to_str()?;
    (file_name == format!("{name}{}", container::SUFFIX)).then_some(p)
}
