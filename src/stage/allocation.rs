//! Steps 1 to 3 of staging: the record's description of the planned space,
//! then every container file created, preallocated, pinned and mapped, and
//! the joined map checked against every other staging.

use super::*;
use crate::error::IoContext;

/// The record's description of the planned space of staging `name`: its
/// first container file (which holds the `header_len`-byte header), the
/// filesystem under it, and the segments after it. Files are numbered
/// across the staging (`NAME.liverestore`, `NAME+2.liverestore`, …).
pub(super) fn record_space(
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
                    host: Box::new(hosts[source].clone().expect("a directory has a host")),
                }
            }
            Planned::Unallocated { disk, length } => Segment::Unallocated { disk, length },
            Planned::Volume { source, size } => {
                let Source::Volume { group } = &sources[source] else {
                    unreachable!("volumes are planned in volume groups")
                };
                Segment::Volume(Box::new(crate::store::record::VolumeSegment {
                    vg: group.vg.clone(),
                    lv: crate::space::lvm::volume_name(name),
                    length: size,
                    dm_uuid: String::new(),
                    pieces: Vec::new(),
                }))
            }
        })
        .collect();
    match out.remove(0) {
        Segment::File { container, host } => (container, *host, out),
        Segment::Unallocated { .. } | Segment::Volume(_) => {
            unreachable!("space::assign starts every staging in a file")
        }
    }
}

/// Create, preallocate, pin and map one container file; returns its map.
pub(super) fn allocate_file(
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
    file.map(&host.layout()?, container.block_size)
}

/// Create the logical volume `v` in the physical volumes of its group on
/// the staging's disk (LVM's tools), then read where the kernel put it;
/// returns its map.
pub(super) fn allocate_volume(
    v: &mut crate::store::record::VolumeSegment,
    disk_path: &str,
    progress: &dyn Progress,
) -> Result<crate::map::extent_map::ExtentMap> {
    use crate::space::lvm;
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(disk_path)
        .op(|| "stat the disk".into())
        .map_err(|e| e.with_path(disk_path))?
        .rdev();
    let disk = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    progress.note(&format!(
        "creating logical volume {}/{} of {} bytes",
        v.vg, v.lv, v.length
    ));
    let group = lvm::group_space(&v.vg, disk_path, disk)?;
    lvm::create(&group, &v.lv, v.length)?;
    let on_disk = lvm::locate(&v.vg, &v.lv)?.ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            format!("the new logical volume {}/{} is not active", v.vg, v.lv),
        )
    })?;
    if (on_disk.disk_major, on_disk.disk_minor) != disk {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!(
                "the new logical volume {}/{} is not on {disk_path}",
                v.vg, v.lv
            ),
        ));
    }
    v.dm_uuid = on_disk.dm_uuid;
    v.pieces = on_disk.pieces;
    v.map()
}

/// Steps 2 and 3: create, preallocate, pin and map every container file
/// (and create every logical volume), join their maps with the
/// unallocated segments', and check the result against every other
/// staging.
pub(super) fn allocate(
    state: &StateLock<'_>,
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
            Segment::Volume(v) => allocate_volume(v, &rec.disk.path, progress)?,
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
