//! Native activation: when the staged image is one contiguous run of the
//! disk outside every partition (`stage --contiguous --unallocated`), it
//! boots as an ordinary partition — a GPT entry over exactly its bytes
//! ([`crate::partition_entry`]) and `root=PARTUUID=…` — with the restored
//! system's own kernel and initrd as they are: no early-boot step, no
//! device-mapper.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::partition_entry::{self, PartitionEntry};
use crate::record::StagingRecord;

/// What a native activation added to the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeBoot {
    pub disk: String,
    pub sector_size: u64,
    pub partition: PartitionEntry,
}

impl NativeBoot {
    /// The root argument of the restored system's boot.
    pub fn root_arg(&self) -> String {
        format!("root=PARTUUID={}", self.partition.guid)
    }
}

/// The disk bytes a partition entry would cover: the image's one extent,
/// rounded up to whole sectors, inside one unallocated segment; None when
/// the image is not laid out so.
pub fn image_range(rec: &StagingRecord) -> Option<(u64, u64)> {
    let map = rec.image_map().ok()?;
    let [e] = map.extents() else {
        return None;
    };
    let ss = u64::from(rec.disk.logical_sector_size).max(512);
    let length = rec.image.size.div_ceil(ss) * ss;
    rec.unallocated_ranges()
        .iter()
        .any(|&(lo, hi)| e.disk >= lo && e.disk + length <= hi)
        .then_some((e.disk, length))
}

/// Plan the entry (in a copy of the disk's table: nothing is written):
/// its slot, a new GUID. Refused when the disk has no GPT or the entry
/// does not fit.
pub fn prepare(rec: &StagingRecord, (start, length): (u64, u64)) -> Result<NativeBoot> {
    let disk = Path::new(&rec.disk.path);
    let ss = u64::from(rec.disk.logical_sector_size).max(512);
    let guid = uuid::Uuid::new_v4();
    let mut f =
        std::fs::File::open(disk).map_err(|e| Error::io("open the disk", e).with_path(disk))?;
    let mut gpt = gptman::GPT::read_from(&mut f, ss).map_err(|e| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            format!("no usable GPT on {} ({e})", disk.display()),
        )
    })?;
    let number = partition_entry::add(&mut gpt, start, length, &entry_name(rec), guid)?;
    Ok(NativeBoot {
        disk: rec.disk.path.clone(),
        sector_size: ss,
        partition: PartitionEntry {
            number,
            guid,
            start,
            length,
        },
    })
}

fn entry_name(rec: &StagingRecord) -> String {
    format!("liverestore {}", rec.name)
}

/// Write the entry planned by [`prepare`] and tell the kernel.
pub fn arm(rec: &StagingRecord, n: &NativeBoot) -> Result<()> {
    let disk = Path::new(&n.disk);
    let p = &n.partition;
    let number = partition_entry::edit_table(disk, n.sector_size, |gpt| {
        partition_entry::add(gpt, p.start, p.length, &entry_name(rec), p.guid)
    })?;
    if number != p.number {
        return Err(Error::new(
            ErrorKind::MapChanged,
            format!(
                "the partition table changed since activation began (slot {number}, not {})",
                p.number
            ),
        ));
    }
    partition_entry::kernel_add(disk, p)
}

/// Take the entry out of the table (only while it is still ours) and out
/// of the kernel's view; whatever is already gone is fine.
pub fn disarm(n: &NativeBoot) -> Result<()> {
    let disk = Path::new(&n.disk);
    let p = &n.partition;
    partition_entry::kernel_remove(disk, p)?;
    partition_entry::edit_table(disk, n.sector_size, |gpt| {
        partition_entry::remove(gpt, p.number, p.guid)
    })?;
    Ok(())
}
