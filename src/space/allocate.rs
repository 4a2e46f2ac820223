//! Where a staging's space comes from: one directory (the usual case), or
//! a *segment set* — several directories on different filesystems of the
//! same disk, then the disk's unallocated space — joined into one map.
//!
//! Space is taken in the order given: each `--dir` (in order) up to its
//! free space less `--keep-free`, in files no larger than the filesystem
//! allows (probed, see [`crate::space::hostfs::max_file_size`]: on vfat that is
//! 4 GiB − 1, so a large image becomes several container files), then the
//! unallocated ranges from the start of the disk. The first piece of every
//! staging is a file: it holds the on-disk header.
//!
//! [`assign`] is the pure planner (unit-tested); [`discover`] gathers the
//! sources from the system.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::space::hostfs::{self, HostTarget};
use crate::space::unallocated;
use crate::store::record::StagingRecord;

/// What the user asked for: the `--dir`s, `--unallocated`, and the limits.
#[derive(Debug, Clone, Default)]
pub struct SpaceRequest {
    pub dirs: Vec<PathBuf>,
    pub unallocated: bool,
    /// Bytes every filesystem must keep free (`--keep-free`).
    pub keep_free: u64,
    /// Cap on each container file's size (`--max-file-size`), below the
    /// filesystem's own limit.
    pub max_file_size: Option<u64>,
    /// A list of files that may be deleted when space is short
    /// (`--make-room`, see [`crate::space::make_room`]).
    pub make_room: Option<PathBuf>,
    /// Each image whole in one unallocated range, the header alone in the
    /// first directory (`--contiguous`): what native activation needs.
    pub contiguous: bool,
    /// Each image whole in a new logical volume of this volume group
    /// (`--lvm-free VG`), the header alone in the first directory.
    pub lvm_free: Option<String>,
}

impl SpaceRequest {
    /// Whether each image goes whole into one piece after a header-only
    /// file ([`assign_contiguous`]).
    pub fn whole_images(&self) -> bool {
        self.contiguous || self.lvm_free.is_some()
    }
}

/// How much one source can give, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capacity {
    /// A directory: files of whole `block`s, each at most `max_file`
    /// bytes, `budget` bytes in all.
    Dir {
        block: u64,
        max_file: u64,
        budget: u64,
    },
    /// Free disk ranges `[start, end)`, in disk order.
    Unallocated { free: Vec<(u64, u64)> },
    /// A volume group's `free` bytes, given as whole volumes of whole
    /// `extent`s.
    Volume { free: u64, extent: u64 },
}

/// A piece of space planned for one staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Planned {
    /// A container file of `size` bytes in source `source` (a directory).
    File { source: usize, size: u64 },
    /// Disk bytes `[disk, disk + length)`.
    Unallocated { disk: u64, length: u64 },
    /// A new logical volume of `size` bytes in source `source` (a volume
    /// group).
    Volume { source: usize, size: u64 },
}

impl Planned {
    pub fn len(&self) -> u64 {
        match *self {
            Planned::File { size, .. } => size,
            Planned::Unallocated { length, .. } => length,
            Planned::Volume { size, .. } => size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Granularity of unallocated pieces (keeps every write sector-aligned on
/// 512- and 4096-byte-sector disks).
const UNALLOCATED_GRAIN: u64 = 4096;

/// Plan space for stagings that each need `need` bytes, of which the first
/// `header` must be in a file. Returns the pieces of each staging in map
/// order, or [`ErrorKind::NoSpace`] saying how much is missing.
pub fn assign(needs: &[(u64, u64)], sources: &[Capacity]) -> Result<Vec<Vec<Planned>>> {
    let mut left: Vec<Capacity> = sources.to_vec();
    let mut src = 0usize;
    let mut out = Vec::with_capacity(needs.len());
    for (i, &(need, header)) in needs.iter().enumerate() {
        let mut pieces: Vec<Planned> = Vec::new();
        let mut remaining = need;
        while remaining > 0 {
            let Some(cap) = left.get_mut(src) else {
                let total: u64 = needs.iter().map(|n| n.0).sum();
                let placed: u64 = out.iter().flatten().chain(&pieces).map(Planned::len).sum();
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "not enough space: {total} bytes are needed but only {placed} fit (short by {}); free space, add a --dir or --unallocated, or lower --keep-free",
                        total - placed.min(total)
                    ),
                ));
            };
            match cap {
                Capacity::Dir {
                    block,
                    max_file,
                    budget,
                } => {
                    let max = (*max_file).min(*budget) / *block * *block;
                    let want = remaining.div_ceil(*block) * *block;
                    let take = want.min(max);
                    // The header must fit whole in the staging's first file.
                    if take == 0 || (pieces.is_empty() && take < header.min(want)) {
                        src += 1;
                        continue;
                    }
                    *budget -= take;
                    pieces.push(Planned::File {
                        source: src,
                        size: take,
                    });
                    remaining = remaining.saturating_sub(take);
                }
                Capacity::Unallocated { free } => {
                    if pieces.is_empty() {
                        return Err(Error::new(
                            ErrorKind::NoSpace,
                            format!(
                                "staging {} would start in unallocated space, but its header needs a container file: give a --dir with at least {header} bytes free",
                                i + 1
                            ),
                        ));
                    }
                    let Some(range) = free.first_mut() else {
                        src += 1;
                        continue;
                    };
                    let want = remaining.div_ceil(UNALLOCATED_GRAIN) * UNALLOCATED_GRAIN;
                    let take = want.min(range.1 - range.0);
                    pieces.push(Planned::Unallocated {
                        disk: range.0,
                        length: take,
                    });
                    range.0 += take;
                    if range.0 == range.1 {
                        free.remove(0);
                    }
                    remaining = remaining.saturating_sub(take);
                }
                // the rest of the image whole, in one new volume
                Capacity::Volume { free, extent } => {
                    let take = remaining.div_ceil(*extent) * *extent;
                    if pieces.is_empty() || take > *free {
                        src += 1;
                        continue;
                    }
                    *free -= take;
                    pieces.push(Planned::Volume {
                        source: src,
                        size: take,
                    });
                    remaining = 0;
                }
            }
        }
        out.push(pieces);
    }
    Ok(out)
}

/// Where a contiguous image starts inside free space: partition alignment.
pub const CONTIGUOUS_ALIGN: u64 = 1 << 20;

/// Plan space for stagings whose images must each be whole in one piece:
/// the `header` bytes of each in a file of the first directory with room,
/// the rest (`need - header`) either in the first unallocated range that
/// holds it whole, starting on a 1 MiB boundary (contiguous on the disk,
/// outside every partition, so that a partition entry can cover exactly
/// one), or in a new logical volume of whole extents.
pub fn assign_contiguous(needs: &[(u64, u64)], sources: &[Capacity]) -> Result<Vec<Vec<Planned>>> {
    let mut left: Vec<Capacity> = sources.to_vec();
    let mut out = Vec::with_capacity(needs.len());
    for (i, &(need, header)) in needs.iter().enumerate() {
        let file = left
            .iter_mut()
            .enumerate()
            .find_map(|(src, cap)| match cap {
                Capacity::Dir {
                    block,
                    max_file,
                    budget,
                } => {
                    let size = header.div_ceil(*block) * *block;
                    (size == header && size <= (*max_file).min(*budget)).then(|| {
                        *budget -= size;
                        Planned::File { source: src, size }
                    })
                }
                Capacity::Unallocated { .. } | Capacity::Volume { .. } => None,
            });
        let file = file.ok_or_else(|| {
            Error::new(
                ErrorKind::NoSpace,
                format!(
                    "staging {}: no --dir has {header} bytes free for its header",
                    i + 1
                ),
            )
        })?;
        let image = (need - header).div_ceil(UNALLOCATED_GRAIN) * UNALLOCATED_GRAIN;
        let mut largest = 0;
        let range = left
            .iter_mut()
            .enumerate()
            .find_map(|(src, cap)| match cap {
                Capacity::Unallocated { free } => free.iter_mut().find_map(|r| {
                    let start = r.0.div_ceil(CONTIGUOUS_ALIGN) * CONTIGUOUS_ALIGN;
                    let room = r.1.saturating_sub(start);
                    largest = largest.max(room);
                    (room >= image).then(|| {
                        let piece = Planned::Unallocated {
                            disk: start,
                            length: image,
                        };
                        r.0 = start + image;
                        piece
                    })
                }),
                Capacity::Volume { free, extent } => {
                    let size = image.div_ceil(*extent) * *extent;
                    largest = largest.max(*free);
                    (size <= *free).then(|| {
                        *free -= size;
                        Planned::Volume { source: src, size }
                    })
                }
                Capacity::Dir { .. } => None,
            });
        let volumes = sources.iter().any(|c| matches!(c, Capacity::Volume { .. }));
        let range = range.ok_or_else(|| {
            Error::new(
                ErrorKind::NoSpace,
                if volumes {
                    format!(
                        "staging {}: --lvm-free needs {image} bytes (whole extents) free in the volume group on this disk; it has {largest}",
                        i + 1
                    )
                } else {
                    format!(
                        "staging {}: --contiguous needs {image} unallocated bytes in one range (with --unallocated); the largest free range holds {largest}",
                        i + 1
                    )
                },
            )
        })?;
        out.push(vec![file, range]);
    }
    Ok(out)
}

/// A source of space found on the system.
#[derive(Debug, Clone)]
pub enum Source {
    Dir {
        target: Box<HostTarget>,
        max_file: u64,
    },
    Unallocated {
        free: Vec<(u64, u64)>,
    },
    /// A volume group's free extents on the disk (`--lvm-free`).
    Volume {
        group: crate::space::lvm::GroupSpace,
    },
}

/// The sources of a request, checked: every directory on a supported
/// filesystem of one disk, each filesystem once, and (with
/// `--unallocated`) the disk's free ranges outside every partition, every
/// given filesystem, and every other staging's map (`others`).
pub fn discover(req: &SpaceRequest, others: &[StagingRecord]) -> Result<Vec<Source>> {
    let Some(first_dir) = req.dirs.first() else {
        return Err(Error::new(
            ErrorKind::NoSpace,
            "no --dir given: the header of a staging lives in a container file",
        ));
    };
    let first = hostfs::discover(first_dir)?;
    let mut sources: Vec<Source> = Vec::new();
    for dir in &req.dirs {
        let target = if sources.is_empty() {
            first.clone()
        } else {
            hostfs::discover(dir)?
        };
        if target.disk_path != first.disk_path {
            return Err(Error::new(
                ErrorKind::UnsupportedDevice,
                format!(
                    "{} is on disk {}, but {} is on {}: a segment set lives on one disk",
                    dir.display(),
                    target.disk_path.display(),
                    first_dir.display(),
                    first.disk_path.display()
                ),
            )
            .with_path(dir));
        }
        if let Some(Source::Dir { target: same, .. }) = sources.iter().find(
            |s| matches!(s, Source::Dir { target: t, .. } if t.block.start == target.block.start),
        ) {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                format!(
                    "{} and {} are on the same filesystem; give each filesystem once",
                    same.dir.display(),
                    target.dir.display()
                ),
            )
            .with_path(dir));
        }
        let mut max_file = hostfs::max_file_size(&target.dir)?;
        if let Some(cap) = req.max_file_size {
            max_file = max_file.min(cap);
        }
        sources.push(Source::Dir {
            target: Box::new(target),
            max_file,
        });
    }
    if req.unallocated {
        let mut used: Vec<(u64, u64)> = sources
            .iter()
            .flat_map(|s| match s {
                Source::Dir { target, .. } => target.disk_ranges(),
                Source::Unallocated { .. } | Source::Volume { .. } => Vec::new(),
            })
            .collect();
        // The other stagings on this disk, known by its identity: a
        // recorded /dev name may now be another disk's, and this disk may
        // have had another name when they were staged.
        let (_, this_disk) = crate::space::identity::describe(&first)?;
        for rec in others.iter().filter(|r| r.disk.same_disk(&this_disk)) {
            if let Some(map) = &rec.map {
                used.extend(map.extents().iter().map(|e| (e.disk, e.disk + e.length)));
            }
            // An interrupted allocation has no map yet, but has claimed these.
            used.extend(rec.unallocated_ranges());
        }
        let free = unallocated::free_on_disk(&first, &used)?;
        if free.is_empty() {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "--unallocated: {} has no free space outside its partitions (and other stagings)",
                    first.disk_path.display()
                ),
            )
            .with_path(&first.disk_path));
        }
        sources.push(Source::Unallocated { free });
    }
    if let Some(vg) = &req.lvm_free {
        let group = crate::space::lvm::group_space(
            vg,
            &first.disk_path.display().to_string(),
            (first.block.disk_major, first.block.disk_minor),
        )?;
        sources.push(Source::Volume { group });
    }
    Ok(sources)
}

impl Source {
    /// What the planner may take from this source.
    pub fn capacity(&self, keep_free: u64) -> Capacity {
        match self {
            Source::Dir { target, max_file } => Capacity::Dir {
                block: target.fs_block_size,
                max_file: *max_file,
                budget: target.free_bytes.saturating_sub(keep_free),
            },
            Source::Unallocated { free } => Capacity::Unallocated { free: free.clone() },
            Source::Volume { group } => Capacity::Volume {
                free: group.free,
                extent: group.extent_size,
            },
        }
    }

    /// Bytes this source can give in all.
    pub fn available(&self, keep_free: u64) -> u64 {
        match self.capacity(keep_free) {
            Capacity::Dir { budget, .. } => budget,
            Capacity::Unallocated { free } => free.iter().map(|(a, b)| b - a).sum(),
            Capacity::Volume { free, .. } => free,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn dir(budget: u64, max_file: u64) -> Capacity {
        Capacity::Dir {
            block: 4096,
            max_file,
            budget,
        }
    }

    #[test]
    fn one_dir_one_file() {
        let plan = assign(&[(10 * MIB + 5, MIB)], &[dir(100 * MIB, u64::MAX)]).unwrap();
        assert_eq!(
            plan,
            vec![vec![Planned::File {
                source: 0,
                size: 10 * MIB + 4096
            }]]
        );
    }

    #[test]
    fn files_split_at_the_max_file_size() {
        // vfat: 4 GiB - 1, rounded down to the cluster
        let max = (4u64 << 30) - 1;
        let plan = assign(&[(9 << 30, MIB)], &[dir(20 << 30, max)]).unwrap();
        let sizes: Vec<u64> = plan[0].iter().map(Planned::len).collect();
        assert_eq!(
            sizes,
            vec![(4 << 30) - 4096, (4 << 30) - 4096, (1 << 30) + 8192]
        );
        assert_eq!(sizes.iter().sum::<u64>(), 9 << 30);
    }

    #[test]
    fn dirs_then_unallocated_in_order() {
        let sources = [
            dir(3 * MIB, u64::MAX),
            dir(2 * MIB, u64::MAX),
            Capacity::Unallocated {
                free: vec![(100 * MIB, 101 * MIB), (200 * MIB, 300 * MIB)],
            },
        ];
        let plan = assign(&[(10 * MIB, MIB)], &sources).unwrap();
        assert_eq!(
            plan[0],
            vec![
                Planned::File {
                    source: 0,
                    size: 3 * MIB
                },
                Planned::File {
                    source: 1,
                    size: 2 * MIB
                },
                Planned::Unallocated {
                    disk: 100 * MIB,
                    length: MIB
                },
                Planned::Unallocated {
                    disk: 200 * MIB,
                    length: 4 * MIB
                },
            ]
        );
    }

    #[test]
    fn several_stagings_share_the_sources() {
        let sources = [dir(5 * MIB, u64::MAX), dir(5 * MIB, u64::MAX)];
        let plan = assign(&[(4 * MIB, MIB), (4 * MIB, MIB)], &sources).unwrap();
        assert_eq!(
            plan[1],
            vec![
                Planned::File {
                    source: 0,
                    size: MIB
                },
                Planned::File {
                    source: 1,
                    size: 3 * MIB
                }
            ]
        );
        // A source too small for the header is skipped for the first piece.
        let sources = [dir(MIB / 2, u64::MAX), dir(5 * MIB, u64::MAX)];
        let plan = assign(&[(4 * MIB, MIB)], &sources).unwrap();
        assert_eq!(
            plan[0],
            vec![Planned::File {
                source: 1,
                size: 4 * MIB
            }]
        );
    }

    #[test]
    fn contiguous_images_in_one_free_range_each() {
        let mib = 1 << 20;
        let free = Capacity::Unallocated {
            free: vec![(100 * mib + 512, 120 * mib), (200 * mib, 400 * mib)],
        };
        // headers of 1 MiB; images of 30 and 50 MiB
        let p = assign_contiguous(
            &[(31 * mib, mib), (51 * mib, mib)],
            &[dir(100 * mib, u64::MAX), free.clone()],
        )
        .unwrap();
        assert_eq!(
            p[0],
            [
                Planned::File {
                    source: 0,
                    size: mib
                },
                Planned::Unallocated {
                    disk: 200 * mib,
                    length: 30 * mib
                }
            ],
            "the first range (19 MiB after alignment) is too small"
        );
        assert_eq!(
            p[1][1],
            Planned::Unallocated {
                disk: 230 * mib,
                length: 50 * mib
            }
        );
        let e =
            assign_contiguous(&[(300 * mib, mib)], &[dir(100 * mib, u64::MAX), free]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(
            e.to_string().contains("200 MiB") || e.to_string().contains("209715200"),
            "{e}"
        );
        let e = assign_contiguous(&[(3 * mib, mib)], &[dir(mib / 2, u64::MAX)]).unwrap_err();
        assert!(e.to_string().contains("header"), "{e}");
    }

    #[test]
    fn each_image_whole_in_a_new_volume() {
        let vg = Capacity::Volume {
            free: 100 * MIB,
            extent: 4 * MIB,
        };
        let p = assign_contiguous(
            &[(31 * MIB, MIB), (51 * MIB, MIB)],
            &[dir(100 * MIB, u64::MAX), vg.clone()],
        )
        .unwrap();
        assert_eq!(
            p[0][1],
            Planned::Volume {
                source: 1,
                size: 32 * MIB
            }
        );
        assert_eq!(
            p[1][1],
            Planned::Volume {
                source: 1,
                size: 52 * MIB
            }
        );
        let e = assign_contiguous(&[(103 * MIB, MIB)], &[dir(100 * MIB, u64::MAX), vg.clone()])
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.message().contains("--lvm-free needs"), "{}", e.message());
        assert!(e.message().contains("it has 104857600"), "{}", e.message());
        // the planner of pieces puts the rest whole in one volume too
        let p = assign(&[(31 * MIB, MIB)], &[dir(2 * MIB, u64::MAX), vg]).unwrap();
        assert_eq!(
            p[0][1],
            Planned::Volume {
                source: 1,
                size: 32 * MIB
            }
        );
    }

    #[test]
    fn refusals() {
        let e = assign(&[(10 * MIB, MIB)], &[dir(4 * MIB, u64::MAX)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.message().contains("short by 6291456"), "{}", e.message());
        let e = assign(
            &[(10 * MIB, MIB)],
            &[
                dir(0, u64::MAX),
                Capacity::Unallocated {
                    free: vec![(0, 100 * MIB)],
                },
            ],
        )
        .unwrap_err();
        assert!(e.message().contains("header"), "{}", e.message());
    }
}
