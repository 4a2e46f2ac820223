//! Operations on staged images that are not staging itself: re-deriving
//! and checking the map, listing, describing, exporting the map, and
//! discarding.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::{AlignedBuf, DiskWriter};
use crate::map::extent_map::ExtentMap;
use crate::space::container::{self, ContainerFile};
use crate::space::hostfs::{self, HostTarget};
use crate::space::identity;
use crate::space::unallocated;
use crate::store::header;
use crate::store::record::{ContainerInfo, HostInfo, Segment, StagingRecord};
use crate::store::state_dir::{StateDir, StateLock};

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

/// Re-derive the map of every container file, unallocated segment and
/// logical volume and compare it with the record: each file the same
/// (inode and generation, except on vfat), still pinned, same size, same
/// partition and filesystem; each unallocated range still outside every
/// partition; each volume the same, where it was; the joined map equal to
/// the recorded one. Anything else is [`ErrorKind::MapChanged`].
pub fn revalidate(rec: &StagingRecord) -> Result<Revalidated> {
    let recorded = rec.map.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidState,
            format!("'{}' has no map (allocation did not finish)", rec.name),
        )
    })?;
    let (target, first) = revalidate_file(rec, &rec.container, &rec.host)?;
    unallocated::check_still_free(&target, &rec.unallocated_ranges())
        .map_err(|e| changed(rec, e.message().to_string()))?;
    let mut parts = vec![first];
    for segment in &rec.segments {
        parts.push(match segment {
            Segment::File { container, host } => revalidate_file(rec, container, host)?.1,
            Segment::Unallocated { disk, length } => ExtentMap::contiguous(*disk, *length)?,
            Segment::Volume(v) => revalidate_volume(rec, &target, v)?,
        });
    }
    let map = ExtentMap::concat(&parts).map_err(|e| changed(rec, e.message().to_string()))?;
    if let Some(diff) = recorded.difference(&map) {
        return Err(changed(rec, diff));
    }
    Ok(Revalidated { target, map })
}

/// The map of the logical volume `v` as the kernel has it now, which must
/// be the same volume (its device-mapper UUID), on the same disk, with
/// its bytes where they were (a `pvmove` moves them).
fn revalidate_volume(
    rec: &StagingRecord,
    target: &HostTarget,
    v: &crate::store::record::VolumeSegment,
) -> Result<ExtentMap> {
    let name = format!("{}/{}", v.vg, v.lv);
    let now = crate::space::lvm::locate(&v.vg, &v.lv)?.ok_or_else(|| {
        changed(
            rec,
            format!(
                "the logical volume {name} is not active (removed, or its group not activated)"
            ),
        )
    })?;
    if now.dm_uuid != v.dm_uuid {
        return Err(changed(
            rec,
            format!("the logical volume {name} is another volume now (its UUID changed)"),
        ));
    }
    if (now.disk_major, now.disk_minor) != (target.block.disk_major, target.block.disk_minor) {
        return Err(changed(
            rec,
            format!("the logical volume {name} is on another disk now"),
        ));
    }
    // the same rule as for a --dir on a volume: every recorded byte
    // where it was (an `lvextend` moves nothing)
    let now_layout = crate::map::device_layout::DeviceLayout::from_pieces(now.pieces)?;
    if let Some(p) = now_layout.moved_piece(&v.pieces) {
        return Err(changed(
            rec,
            format!(
                "the logical volume {name} moved (pvmove?): its bytes {}+{} are no longer at disk byte {}",
                p.start, p.length, p.disk
            ),
        ));
    }
    v.map()
}

/// Write the header with the record as it is now, through `writer`.
pub(crate) fn write_header(writer: &mut DiskWriter, rec: &StagingRecord, align: u64) -> Result<()> {
    let bytes = header::encode(rec, align)?;
    let mut buf = AlignedBuf::new(bytes.len());
    buf.copy_from_slice(&bytes);
    writer.write_at(0, buf.whole())
}

/// Record `rec` as it is now, in both places: the on-disk header (the map
/// revalidated first; written through the map, synced) and the state file.
pub fn record_changed(state: &StateLock<'_>, rec: &StagingRecord) -> Result<()> {
    let checked = revalidate(rec)?;
    let mut writer = DiskWriter::for_staging(rec, &checked.target, checked.map)?;
    write_header(&mut writer, rec, checked.target.io_align())?;
    writer.sync()?;
    state.save(rec)
}

/// Refuse (as [`ErrorKind::MapChanged`]) when `rec`'s map shares a disk
/// byte with the map of another staging in `state`. Allocation makes this
/// impossible (files never share blocks; unallocated ranges are taken
/// outside every other staging); this checks it.
pub fn check_disjoint(state: &StateDir, rec: &StagingRecord) -> Result<()> {
    let Some(map) = &rec.map else {
        return Ok(());
    };
    let mine: Vec<(u64, u64)> = map
        .extents()
        .iter()
        .map(|e| (e.disk, e.disk + e.length))
        .collect();
    for other in state.load_all()? {
        let name = &other.name;
        if *name == rec.name {
            continue;
        }
        if !other.disk.same_disk(&rec.disk) {
            continue;
        }
        let Some(theirs) = &other.map else { continue };
        for e in theirs.extents() {
            if let Some((a, b)) = mine
                .iter()
                .find(|&&(a, b)| a < e.disk + e.length && e.disk < b)
            {
                return Err(changed(
                    rec,
                    format!(
                        "disk bytes {}..{} are also in the map of '{name}'",
                        (*a).max(e.disk),
                        (*b).min(e.disk + e.length)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Check one container file of `rec` against what was recorded for it and
/// return its filesystem and its current map.
fn revalidate_file(
    rec: &StagingRecord,
    container: &ContainerInfo,
    host: &HostInfo,
) -> Result<(HostTarget, ExtentMap)> {
    let path = Path::new(&container.path);
    let changed = |what: String| changed(rec, what).with_path(path);
    if !path.exists() {
        return Err(changed("the container file is gone".into()));
    }
    let file = ContainerFile::open(path)?;
    let (inode, generation) = file.identity()?;
    if (inode, generation) != (container.inode, container.generation) {
        return Err(changed(format!(
            "the container file was replaced (inode {inode} generation {generation}, recorded {} generation {})",
            container.inode, container.generation
        )));
    }
    if !file.is_pinned()? {
        return Err(changed(
            "the container is no longer pinned (its immutable flag, or on vfat its read-only and system attributes, was cleared)".into(),
        ));
    }
    let size = file.size()?;
    if size != container.size {
        return Err(changed(format!(
            "the container is {size} bytes, recorded {}",
            container.size
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let target = hostfs::discover(dir)?;
    if target.block.is_device_mapper() {
        // a logical volume may have grown (`lvextend` moves nothing); every
        // recorded piece must still be where it was
        let recorded = host.layout()?;
        if let Some(p) = target.block.layout.moved_piece(recorded.pieces()) {
            return Err(changed(format!(
                "the logical volume's bytes {}+{} are no longer at disk byte {} (pvmove, or the volume was made again)",
                p.start, p.length, p.disk
            )));
        }
    } else if (target.block.start, target.block.size) != (host.start, host.size) {
        return Err(changed(format!(
            "its filesystem is now at disk bytes {}+{}, recorded {}+{}",
            target.block.start, target.block.size, host.start, host.size
        )));
    }
    if target.block.disk_size != rec.disk.size {
        return Err(changed(format!(
            "the disk is now {} bytes, recorded {}",
            target.block.disk_size, rec.disk.size
        )));
    }
    let (now_host, now_disk) = identity::describe(&target)?;
    if now_host.fs_uuid != host.fs_uuid
        || now_host.partition_uuid != host.partition_uuid
        || !now_disk.same_disk(&rec.disk)
    {
        return Err(changed(
            "the filesystem, partition or disk identity differs from the recorded one".into(),
        ));
    }
    let map = file.map(&target.block.layout, container.block_size)?;
    Ok((target, map))
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub name: String,
    /// `image` (staged from an image) or `standby` (a copy of a running
    /// system, `snapshot`); None when the record cannot be read.
    pub kind: Option<&'static str>,
    /// For a standby: when its copy was made (Unix time).
    pub copied_unix: Option<u64>,
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
        |pred: &dyn Fn(&crate::store::record::StagedPartition) -> bool| -> Result<Vec<StagingRecord>> {
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
                // The disk by its current name, found by identity (None
                // when it cannot be: never a recorded name that may now be
                // another disk's).
                let checked = revalidate(&rec);
                let disk = checked
                    .as_ref()
                    .ok()
                    .map(|c| c.target.disk_path.display().to_string());
                let check = checked.and_then(|_| check_disjoint(state, &rec));
                Listing {
                    name,
                    kind: Some(if rec.image.standby.is_some() {
                        "standby"
                    } else {
                        "image"
                    }),
                    copied_unix: rec.image.standby.as_ref().map(|s| s.copied_unix),
                    state: Some(rec.state.as_str().to_string()),
                    image_size: Some(rec.image.size),
                    written: Some(rec.image.written),
                    container: Some(rec.container.path.clone()),
                    disk,
                    map_valid: check.is_ok(),
                    problem: check.err().map(|e| e.to_string()),
                    set: rec.image.partition.as_ref().map(|p| p.set.clone()),
                    partition: rec.image.partition.as_ref().map(|p| p.number),
                }
            }
            Err(e) => Listing {
                name,
                kind: None,
                copied_unix: None,
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

/// The image map of `rec`, in image order, on its disk by the name the
/// disk has now: the map is derived again first, which finds the disk by
/// its identity (another tool writing through a recorded name that now
/// belongs to another disk would write to the wrong one). A map that is
/// no longer valid is refused.
pub fn export_map(rec: &StagingRecord) -> Result<MapExport> {
    let disk = revalidate(rec)?.target.disk_path;
    let map = rec.image_map()?;
    Ok(MapExport {
        name: rec.name.clone(),
        disk: disk.display().to_string(),
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
pub fn discard_named(state: &StateLock<'_>, name: &str, force: bool) -> Result<Vec<Discarded>> {
    crate::stage::plan::require_root()?;
    let names: Vec<String> = if state.exists(name) {
        vec![name.to_string()]
    } else {
        set_of(state, name)?.into_iter().map(|r| r.name).collect()
    };
    let activated = state.activated_names()?;
    if let Some(n) = names.iter().find(|n| activated.contains(n)) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{n}' is activated: the next boot may start it. `liverestore rollback` first, then discard"
            ),
        ));
    }
    names.iter().map(|n| discard(state, n, force)).collect()
}

/// Remove the logical volumes liverestore created for `rec` (those still
/// there, with its tag and, once known, their recorded UUID); the ones
/// removed, as `VG/LV`.
pub(crate) fn remove_volumes(rec: &StagingRecord) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in rec.volumes() {
        let uuid = (!v.dm_uuid.is_empty()).then_some(v.dm_uuid.as_str());
        if crate::space::lvm::remove(&v.vg, &v.lv, uuid)? {
            out.push(format!("{}/{}", v.vg, v.lv));
        }
    }
    Ok(out)
}

/// What `discard` did.
#[derive(Debug, Clone, Serialize)]
pub struct Discarded {
    pub name: String,
    pub container: Option<String>,
    /// The further container files of a split container or segment set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_containers: Vec<String>,
    /// The logical volumes removed (`--lvm-free`), as `VG/LV`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes_removed: Vec<String>,
    pub header_wiped: bool,
    pub container_removed: bool,
}

/// Unpin and delete the container of `name` and forget it. The on-disk
/// header is wiped first (through the map, while the blocks are still
/// ours) so a raw scan no longer finds it. With `force`, a damaged state
/// file is accepted: the container it names is deleted without wiping.
pub fn discard(state: &StateLock<'_>, name: &str, force: bool) -> Result<Discarded> {
    crate::stage::plan::require_root()?;
    let rec = match state.load(name) {
        Ok(rec) => rec,
        Err(e) if e.kind() == ErrorKind::Corrupt && force => {
            let paths = salvage_container_paths(state, name);
            for p in &paths {
                container::remove(p)?;
            }
            state.remove(name)?;
            let mut paths = paths.into_iter().map(|p| p.display().to_string());
            return Ok(Discarded {
                name: name.to_string(),
                container: paths.next(),
                other_containers: paths.collect(),
                volumes_removed: Vec::new(),
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
    let files: Vec<(PathBuf, (u64, u32))> = rec
        .container_files()
        .iter()
        .map(|(c, _)| (PathBuf::from(&c.path), (c.inode, c.generation)))
        .collect();
    let mut header_wiped = false;
    let container_removed;
    if rec.map.is_none() {
        // Stopped while allocating: nothing was written to the disk yet, and
        // the files (created with O_EXCL under our names) can only be ours.
        for (path, _) in &files {
            container::remove(path)?;
        }
        container_removed = true;
    } else {
        match revalidate(&rec) {
            Ok(checked) => {
                let mut w = DiskWriter::for_staging(&rec, &checked.target, checked.map)?;
                w.write_at(0, AlignedBuf::new(header::BLOCK0_SIZE).whole())?;
                w.sync()?;
                header_wiped = true;
                for (path, _) in &files {
                    container::remove(path)?;
                }
                container_removed = true;
            }
            // Only delete files that are still the ones we created.
            Err(e) if e.kind() == ErrorKind::MapChanged => {
                let mut all = true;
                for (path, identity) in &files {
                    match ContainerFile::open(path) {
                        Ok(file) if file.identity().ok() == Some(*identity) => {
                            drop(file);
                            container::remove(path)?;
                        }
                        Err(_) if !path.exists() => {}
                        _ => all = false,
                    }
                }
                container_removed = all;
            }
            Err(e) => return Err(e),
        }
    }
    // (a volume whose map changed is still removed when it is the one we
    // made: tagged, its UUID the recorded one)
    let volumes_removed = remove_volumes(&rec)?;
    state.remove(name)?;
    let mut paths = files.into_iter().map(|(p, _)| p.display().to_string());
    Ok(Discarded {
        name: name.to_string(),
        container: paths.next(),
        other_containers: paths.collect(),
        volumes_removed,
        header_wiped,
        container_removed,
    })
}

/// From a state file that fails its checksum, the container paths it
/// names, where they look like ours.
fn salvage_container_paths(state: &StateDir, name: &str) -> Vec<PathBuf> {
    let Some(v) = std::fs::read(state.record_path(name))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return Vec::new();
    };
    let mut named: Vec<&serde_json::Value> = vec![&v["record"]["container"]["path"]];
    if let Some(segments) = v["record"]["segments"].as_array() {
        named.extend(segments.iter().map(|s| &s["container"]["path"]));
    }
    named
        .into_iter()
        .filter_map(|p| p.as_str().map(PathBuf::from))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| container::is_container_of(f, name))
        })
        .collect()
}
