//! The preflight: everything `stage` would check before writing a byte,
//! collected as a list of refusals instead of stopping at the first one.
//! `liverestore plan` shows it; `stage` runs it and stops on the first
//! refusal.

use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::input::split::Piece;
use crate::space::allocate::{self, Capacity, Planned, Source, SpaceRequest};
use crate::space::hostfs::{self, HostTarget};
use crate::store::header;
use crate::store::record;
use crate::store::state_dir::StateDir;

/// Bytes per hashed (and resumable) chunk of the image.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// How the container of an image of a given size is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Header bytes at the start of the container (= image offset).
    pub header_len: u64,
    pub image_size: u64,
    /// header_len + image_size rounded up to the filesystem block size.
    pub container_size: u64,
    /// The most extents the reserved header can describe.
    pub max_extents: u64,
}

impl Layout {
    pub fn new(image_size: u64, fs_block_size: u64) -> Layout {
        let max_extents = (image_size >> 20).max(1024);
        let header_len = header::reserve_len(image_size, CHUNK_SIZE, max_extents);
        let data = image_size.div_ceil(fs_block_size) * fs_block_size;
        Layout {
            header_len,
            image_size,
            container_size: header_len + data,
            max_extents,
        }
    }
}

/// Refuse with [`ErrorKind::NotRoot`] unless running as root.
pub fn require_root() -> Result<(), Error> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(not_root())
    }
}

fn not_root() -> Error {
    Error::new(
        ErrorKind::NotRoot,
        "liverestore must run as root to pin files and write the disk (try sudo)",
    )
}

/// One reason staging would be refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub kind: &'static str,
    pub exit_code: i32,
    pub message: String,
}

/// What `plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub ok: bool,
    /// The first `--dir` (its filesystem holds the headers).
    pub dir: String,
    pub fs_type: Option<String>,
    pub mount_point: Option<String>,
    pub device: Option<String>,
    pub disk: Option<String>,
    pub partition_start: Option<u64>,
    pub logical_sector_size: Option<u32>,
    /// All stagings together.
    pub image_size: Option<u64>,
    pub container_size: Option<u64>,
    pub free_bytes: Option<u64>,
    /// Every source of space (the `--dir`s, then the unallocated space),
    /// in the order it is used.
    pub sources: Vec<PlannedSource>,
    /// The stagings the image becomes (one per partition of a whole-disk
    /// image, else one).
    pub stagings: Vec<PlannedStaging>,
    /// Files `--make-room` deletes so that the image fits, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub make_room: Vec<crate::space::make_room::Candidate>,
    /// With `--unallocated`: stagings found on the disk by their headers
    /// that the state directory does not know (it was lost or replaced).
    /// Their space is left alone like any other staging's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_stagings: Vec<UnknownStaging>,
    /// The restored system's `/etc/fstab` names devices it will not find
    /// at boot (what `stage` and `activate` warn about too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstab_warning: Option<String>,
    /// Why the image's fstab was not looked at (`stage` looks once the
    /// image is staged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fstab_not_checked: Option<String>,
    /// What must not run on the host filesystem while the staging is
    /// there, and how liverestore notices (btrfs: balance,
    /// defragmentation, snapshots; LVM: pvmove, lvconvert, snapshots).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cautions: Vec<String>,
    pub refusals: Vec<Refusal>,
}

/// A staging on the disk that no state file describes.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownStaging {
    pub name: String,
    pub id: String,
    /// The container file that holds its header.
    pub container: String,
}

impl UnknownStaging {
    /// What `stage` says about it.
    pub fn note(&self) -> String {
        format!(
            "staging '{}' ({}) is on this disk (its header is in {}) but the state directory does not know it: its space is left alone; `liverestore scan` lists it",
            self.name, self.id, self.container
        )
    }
}

/// A source of space.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedSource {
    /// `dir`, `unallocated` or `lvm_free`.
    pub kind: &'static str,
    /// The directory, the disk, or the volume group (with its physical
    /// volumes on the disk).
    pub location: String,
    pub fs_type: Option<String>,
    /// The largest file the filesystem allows (probed).
    pub max_file_size: Option<u64>,
    /// Bytes it can give (free space less `--keep-free`, or the free
    /// ranges' total).
    pub available: u64,
}

/// One container staging would create.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStaging {
    pub name: Option<String>,
    /// The partition number in the image, when the image is split.
    pub partition: Option<u32>,
    /// Where its bytes are in the image.
    pub image_offset: u64,
    pub image_size: u64,
    pub container_size: Option<u64>,
    /// Where its space comes from, in map order (`source` indexes
    /// `sources`).
    pub space: Vec<Planned>,
}

/// The preflight's findings, with the errors kept for `stage`.
pub struct Assessment {
    pub plan: Plan,
    /// The first directory's filesystem (holds the headers).
    pub target: Option<HostTarget>,
    /// Every source of space, in order.
    pub sources: Vec<Source>,
    /// One per piece, in order (empty when the target is unknown).
    pub layouts: Vec<Layout>,
    /// The space of each piece, in order (empty when it does not fit);
    /// with `plan.make_room`, the space once those files are deleted.
    pub space: Vec<Vec<Planned>>,
    errors: Vec<Error>,
}

impl Assessment {
    /// The first refusal, as the error `stage` reports.
    pub fn first_error(mut self) -> Option<Error> {
        (!self.errors.is_empty()).then(|| self.errors.remove(0))
    }
}

/// Check staging the `pieces` of an image (or an image that could not be
/// opened or split: the error) into the space `space` asks for.
pub fn assess(
    state: &StateDir,
    space: &SpaceRequest,
    pieces: std::result::Result<Vec<Piece>, Error>,
) -> Assessment {
    let mut errors = Vec::new();
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        errors.push(not_root());
    }
    let pieces = match pieces {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    for name in pieces.iter().filter_map(|p| p.name.as_deref()) {
        match record::validate_name(name) {
            Err(e) => errors.push(e),
            Ok(()) if state.exists(name) => errors.push(Error::new(
                ErrorKind::NameInUse,
                format!(
                    "a staged image named '{name}' already exists (see `liverestore info {name}`)"
                ),
            )),
            Ok(()) => {}
        }
    }
    let image_size = (!pieces.is_empty()).then(|| pieces.iter().map(|p| p.size).sum::<u64>());
    // Unknown means occupied: a record that cannot be read refuses the plan.
    let mut others = state.load_all().unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    // Nor does a lost state directory free unallocated space: the
    // stagings whose headers are on the disk count too.
    let mut unknown_stagings = Vec::new();
    if space.unallocated
        && let Some(Ok(first)) = space.dirs.first().map(|d| hostfs::discover(d))
    {
        match super::scan::unknown_stagings(&first, &others) {
            Ok(found) => {
                unknown_stagings.extend(found.iter().map(|r| UnknownStaging {
                    name: r.name.clone(),
                    id: r.id.to_string(),
                    container: r.container.path.clone(),
                }));
                others.extend(found);
            }
            Err(e) => errors.push(e),
        }
    }
    let sources = match allocate::discover(space, &others) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let target = sources.iter().find_map(|s| match s {
        Source::Dir { target, .. } => Some((**target).clone()),
        Source::Unallocated { .. } | Source::Volume { .. } => None,
    });
    let mut layouts = Vec::new();
    let mut planned = Vec::new();
    let mut deletions = Vec::new();
    if let Some(t) = &target {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if hostfs::cmdline_forbids_write_mounted(&cmdline) && t.block.name == t.block.disk_name {
            errors.push(Error::new(
                ErrorKind::UnsupportedDevice,
                format!(
                    "the kernel forbids writing mounted block devices (bdev_allow_write_mounted=0) and the filesystem is on the whole disk {}",
                    t.disk_path.display()
                ),
            ));
        }
        let lss = u64::from(t.block.logical_sector_size);
        let misaligned = |p: &crate::map::device_layout::LayoutPiece| {
            !p.disk.is_multiple_of(lss) || !p.length.is_multiple_of(lss)
        };
        if t.block.layout.pieces().iter().any(misaligned) || t.fs_block_size % lss != 0 {
            errors.push(Error::new(
                ErrorKind::UnsupportedDevice,
                format!(
                    "the filesystem (start {}, block {}) is not aligned to the disk's {lss}-byte sectors",
                    t.block.start, t.fs_block_size
                ),
            ));
        }
        for s in &sources {
            let Source::Dir { target, .. } = s else {
                continue;
            };
            let files: Vec<String> = std::fs::read_dir(&target.dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            for n in pieces.iter().filter_map(|p| p.name.as_deref()) {
                if let Some(f) = files
                    .iter()
                    .find(|f| crate::space::container::is_container_of(f, n))
                {
                    errors.push(
                        Error::new(
                            ErrorKind::NameInUse,
                            "a file with the container's name already exists",
                        )
                        .with_path(target.dir.join(f)),
                    );
                }
            }
        }
        layouts = pieces
            .iter()
            .map(|p| Layout::new(p.size, t.fs_block_size))
            .collect();
        if !layouts.is_empty() {
            let needs: Vec<(u64, u64)> = layouts
                .iter()
                .map(|l| (l.container_size, l.header_len))
                .collect();
            let caps: Vec<Capacity> = sources
                .iter()
                .map(|s| s.capacity(space.keep_free))
                .collect();
            // A bad list is refused even when it is not needed.
            let patterns = match space
                .make_room
                .as_deref()
                .map(crate::space::make_room::read_list)
            {
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                Some(Ok(p)) => Some(p),
                None => None,
            };
            if let Some(Source::Volume { group }) =
                sources.iter().find(|s| matches!(s, Source::Volume { .. }))
            {
                for n in pieces.iter().filter_map(|p| p.name.as_deref()) {
                    let lv = crate::space::lvm::volume_name(n);
                    match crate::space::lvm::volume_names(&group.vg) {
                        Ok(names) if names.contains(&lv) => errors.push(Error::new(
                            ErrorKind::NameInUse,
                            format!("a logical volume {}/{lv} already exists", group.vg),
                        )),
                        Ok(_) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            let assigned = if space.whole_images() {
                allocate::assign_contiguous(&needs, &caps)
            } else {
                allocate::assign(&needs, &caps)
            };
            match (assigned, &patterns) {
                (Ok(p), _) => planned = p,
                (Err(e), Some(patterns))
                    if e.kind() == ErrorKind::NoSpace && !space.whole_images() =>
                {
                    match make_room(state, patterns, &sources, &needs, &caps) {
                        Ok((d, p)) => {
                            deletions = d;
                            planned = p;
                        }
                        Err(e) => errors.push(e),
                    }
                }
                (Err(e), _) => errors.push(e),
            }
        }
        if is_root && let Err(e) = std::fs::OpenOptions::new().write(true).open(&t.disk_path) {
            errors.push(
                Error::io("the disk cannot be opened for writing", e)
                    .with_kind(ErrorKind::UnsupportedDevice)
                    .with_path(&t.disk_path),
            );
        }
    }
    let plan = Plan {
        ok: errors.is_empty(),
        dir: space
            .dirs
            .first()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        fs_type: target.as_ref().map(|t| t.fs.as_str().to_string()),
        mount_point: target
            .as_ref()
            .map(|t| t.mount.mount_point.display().to_string()),
        device: target.as_ref().map(|t| format!("/dev/{}", t.block.name)),
        disk: target.as_ref().map(|t| t.disk_path.display().to_string()),
        partition_start: target.as_ref().map(|t| t.block.start),
        logical_sector_size: target.as_ref().map(|t| t.block.logical_sector_size),
        image_size,
        container_size: (!layouts.is_empty())
            .then(|| layouts.iter().map(|l| l.container_size).sum()),
        free_bytes: target.as_ref().map(|t| t.free_bytes),
        sources: sources
            .iter()
            .map(|s| match s {
                Source::Dir { target, max_file } => PlannedSource {
                    kind: "dir",
                    location: target.dir.display().to_string(),
                    fs_type: Some(target.fs.as_str().to_string()),
                    max_file_size: Some(*max_file),
                    available: s.available(space.keep_free),
                },
                Source::Unallocated { .. } => PlannedSource {
                    kind: "unallocated",
                    location: target
                        .as_ref()
                        .map(|t| t.disk_path.display().to_string())
                        .unwrap_or_default(),
                    fs_type: None,
                    max_file_size: None,
                    available: s.available(space.keep_free),
                },
                Source::Volume { group } => PlannedSource {
                    kind: "lvm_free",
                    location: format!("{} ({})", group.vg, group.pvs.join(", ")),
                    fs_type: None,
                    max_file_size: None,
                    available: s.available(space.keep_free),
                },
            })
            .collect(),
        stagings: pieces
            .iter()
            .enumerate()
            .map(|(i, p)| PlannedStaging {
                name: p.name.clone(),
                partition: p.partition.as_ref().map(|sp| sp.number),
                image_offset: p.offset,
                image_size: p.size,
                container_size: layouts.get(i).map(|l| l.container_size),
                space: planned.get(i).cloned().unwrap_or_default(),
            })
            .collect(),
        make_room: deletions,
        unknown_stagings,
        fstab_warning: None,
        fstab_not_checked: None,
        cautions: target
            .as_ref()
            .map(|t| crate::space::hostfs::cautions(t.fs, t.block.is_device_mapper()))
            .unwrap_or_default()
            .into_iter()
            .chain(
                sources
                    .iter()
                    .any(|s| matches!(s, Source::Volume { .. }))
                    .then(|| crate::space::lvm::CAUTION.to_string()),
            )
            .collect(),
        refusals: errors
            .iter()
            .map(|e| Refusal {
                kind: e.kind().as_str(),
                exit_code: e.kind().exit_code(),
                message: e.to_string(),
            })
            .collect(),
    };
    Assessment {
        plan,
        target,
        sources,
        layouts,
        space: planned,
        errors,
    }
}

/// The files matching the `--make-room` `patterns` whose deletion lets the
/// stagings fit, and the plan then.
fn make_room(
    state: &StateDir,
    patterns: &[String],
    sources: &[Source],
    needs: &[(u64, u64)],
    caps: &[Capacity],
) -> crate::Result<(Vec<crate::space::make_room::Candidate>, Vec<Vec<Planned>>)> {
    use std::os::unix::fs::MetadataExt;
    let filesystems: Vec<(usize, u64)> = sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Source::Dir { target, .. } => std::fs::metadata(&target.dir).ok().map(|m| (i, m.dev())),
            Source::Unallocated { .. } | Source::Volume { .. } => None,
        })
        .collect();
    let candidates =
        crate::space::make_room::candidates(patterns, &filesystems, &[state.root().to_path_buf()])?;
    let (n, plan) = crate::space::make_room::plan_deletions(needs, caps, &candidates)?;
    Ok((candidates[..n].to_vec(), plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rounds_and_reserves() {
        let l = Layout::new((1 << 30) + 1000, 4096);
        assert_eq!(l.header_len, 1 << 20);
        assert_eq!(l.container_size, (1 << 20) + (1 << 30) + 4096);
        assert!(l.max_extents >= 1024);
    }
}
