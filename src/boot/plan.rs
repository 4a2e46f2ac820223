//! What the early-boot step needs to assemble a staged image as a block
//! device before the restored system's own `/init` runs: the disk (by size
//! and GPT GUID), where the on-disk header is (to check it is still the
//! same staging), the image's extents, and the driver modules to load.
//! Encoded as JSON into `/lr/boot.json` of the appended initramfs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::store::record::{StagingRecord, StagingState};
use crate::sys::dm::Target;

const FORMAT: &str = "liverestore-boot-v1";

/// Name of the device-mapper device the early-boot step creates; its node
/// is `/dev/dm-N` (the first dm device at boot is `/dev/dm-0`).
pub const DM_NAME: &str = "liverestore-root";
/// What the device-mapper UUID of every device the early-boot step
/// creates starts with (then the staging's id): udev's rule for them
/// ([`crate::boot::initrd::UDEV_RULE`]) matches it.
pub const DM_UUID_PREFIX: &str = "liverestore-boot-";

/// One run of image bytes on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootExtent {
    pub disk_offset: u64,
    pub length: u64,
}

/// Everything `/lr/init` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPlan {
    pub format: String,
    pub name: String,
    pub id: uuid::Uuid,
    pub disk_size: u64,
    pub disk_gpt_guid: Option<String>,
    /// Disk offset of the header's block 0 (checked at boot: same staging).
    pub header_offset: u64,
    pub image_size: u64,
    /// The image, in image order.
    pub extents: Vec<BootExtent>,
    /// Where the early-boot step notes the boot ([`crate::store::boot_note`]).
    #[serde(flatten)]
    pub note: NoteAt,
    /// Modules to load before the disk can be found and mapped, in order
    /// (their dependencies are resolved at boot from `modules.dep`).
    pub modules: Vec<String>,
    /// The other partitions of the same whole-disk image (its ESP, a
    /// separate /boot or /home), mapped alongside the root, each as its
    /// own device, so the restored system finds them as it expects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub companions: Vec<Companion>,
    /// A native boot ([`crate::boot::activate::NativeBoot`]): the image
    /// (and each companion) boots as its own partition, so nothing is
    /// mapped; the early-boot step only finds the disk, checks the
    /// headers, notes the boots and arms the trial's deadline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub native: bool,
}

/// A partition mapped alongside the root ([`BootPlan::companions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Companion {
    /// Its device-mapper name: `liverestore-pN`, N its number in the image.
    pub dm_name: String,
    pub id: uuid::Uuid,
    /// Disk offset of its header's block 0 (checked at boot).
    pub header_offset: u64,
    pub image_size: u64,
    pub extents: Vec<BootExtent>,
    #[serde(flatten)]
    pub note: NoteAt,
}

/// Where a staging's boot note goes, and the boots its record accepted
/// (a new note counts on from them when the old one is unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NoteAt {
    /// Disk offset of the note area; None: the image's boots go unnoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_offset: Option<u64>,
    #[serde(default)]
    pub boots_accepted: u32,
}

impl Companion {
    /// The device-mapper `linear` table over disk `dev_t`.
    pub fn table(&self, dev_t: &str) -> Vec<Target> {
        linear_table(&self.extents, dev_t)
    }
}

/// A `linear` table that maps `extents` of disk `dev_t` one after the
/// other.
fn linear_table(extents: &[BootExtent], dev_t: &str) -> Vec<Target> {
    let mut start = 0u64;
    extents
        .iter()
        .map(|e| {
            let t = Target {
                start,
                length: e.length / 512,
                kind: "linear".into(),
                params: format!("{dev_t} {}", e.disk_offset / 512),
            };
            start += e.length / 512;
            t
        })
        .collect()
}

/// Check that `extents` are sector-aligned and add up to `image_size`.
fn check_extents(extents: &[BootExtent], image_size: u64) -> Result<()> {
    let bad = |m: String| Error::new(ErrorKind::Corrupt, m);
    let mut total = 0u64;
    for e in extents {
        if e.length == 0 || e.disk_offset % 512 != 0 || e.length % 512 != 0 {
            return Err(bad(format!(
                "extent {}+{} is empty or not sector-aligned",
                e.disk_offset, e.length
            )));
        }
        total = total
            .checked_add(e.length)
            .ok_or_else(|| bad("extents overflow".into()))?;
    }
    if total != image_size.div_ceil(512) * 512 {
        return Err(bad(format!(
            "the extents cover {total} bytes, the image has {image_size}"
        )));
    }
    Ok(())
}

impl BootPlan {
    /// The plan for a complete staging whose map was just revalidated.
    pub fn for_staging(rec: &StagingRecord, modules: Vec<String>) -> Result<BootPlan> {
        if rec.state != StagingState::Complete {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "'{}' is {}, not complete: only a complete staging can be booted",
                    rec.name,
                    rec.state.as_str()
                ),
            ));
        }
        rec.check_not_customizing()?;
        let header_offset = rec.header_disk_offset()?;
        let extents = rec
            .image_map()?
            .extents()
            .iter()
            .map(|e| BootExtent {
                disk_offset: e.disk,
                length: e.length,
            })
            .collect();
        let note = NoteAt {
            note_offset: rec.boot_note_disk_offset()?,
            boots_accepted: rec.image.boots_accepted,
        };
        Ok(BootPlan {
            format: FORMAT.into(),
            name: rec.name.clone(),
            id: rec.id,
            disk_size: rec.disk.size,
            disk_gpt_guid: rec.disk.gpt_guid.clone(),
            header_offset,
            image_size: rec.image.size,
            extents,
            note,
            modules,
            companions: Vec::new(),
            native: false,
        })
    }

    /// The plan for `root` with `others` — partitions of the same
    /// whole-disk image, staged on the same disk — mapped alongside.
    pub fn for_set(
        root: &StagingRecord,
        others: &[StagingRecord],
        modules: Vec<String>,
    ) -> Result<BootPlan> {
        let mut plan = BootPlan::for_staging(root, modules)?;
        for o in others {
            let p = BootPlan::for_staging(o, Vec::new())?;
            if (p.disk_size, &p.disk_gpt_guid) != (plan.disk_size, &plan.disk_gpt_guid) {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "'{}' is staged on another disk than '{}': they cannot boot together",
                        o.name, root.name
                    ),
                ));
            }
            let number = o.image.partition.as_ref().map_or(0, |p| p.number);
            plan.companions.push(Companion {
                dm_name: format!("liverestore-p{number}"),
                id: p.id,
                header_offset: p.header_offset,
                image_size: p.image_size,
                extents: p.extents,
                note: p.note,
            });
        }
        Ok(plan)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a boot plan serializes")
    }

    /// Parse and check a plan: format, extents and note areas
    /// sector-aligned, extents adding up to the image size.
    pub fn decode(bytes: &[u8]) -> Result<BootPlan> {
        let bad = |m: String| Error::new(ErrorKind::Corrupt, m);
        let plan: BootPlan = serde_json::from_slice(bytes)
            .map_err(|e| bad("boot plan is not valid".into()).with_source(e))?;
        if plan.format != FORMAT {
            return Err(bad(format!("unknown boot plan format '{}'", plan.format)));
        }
        let check_note = |n: &NoteAt| match n.note_offset {
            Some(at) if at % 512 != 0 => {
                Err(bad(format!("boot note at {at} is not sector-aligned")))
            }
            _ => Ok(()),
        };
        check_extents(&plan.extents, plan.image_size)?;
        check_note(&plan.note)?;
        for c in &plan.companions {
            check_extents(&c.extents, c.image_size)?;
            check_note(&c.note)?;
            if !c.dm_name.starts_with("liverestore-p") || c.dm_name.len() > 64 {
                return Err(bad(format!("companion device name '{}'", c.dm_name)));
            }
        }
        Ok(plan)
    }

    /// The device-mapper `linear` table over disk `dev_t` ("major:minor").
    pub fn table(&self, dev_t: &str) -> Vec<Target> {
        linear_table(&self.extents, dev_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_make_tables() {
        let mut rec = crate::store::record::tests::sample_record();
        assert_eq!(
            BootPlan::for_staging(&rec, vec![]).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        rec.state = StagingState::Complete;
        let plan = BootPlan::for_staging(&rec, vec!["virtio_blk".into()]).unwrap();
        assert_eq!(BootPlan::decode(&plan.encode()).unwrap(), plan);
        assert_eq!(
            plan.header_offset,
            rec.map.as_ref().unwrap().extents()[0].disk
        );
        let table = plan.table("253:0");
        assert_eq!(table.iter().map(|t| t.length).sum::<u64>() * 512, {
            plan.extents.iter().map(|e| e.length).sum::<u64>()
        });
        assert!(table[0].params.starts_with("253:0 "));
        assert_eq!(table[1].start, table[0].length);
        // the boot note: the header area's last 4 KiB, on the disk
        let area = rec.container.data_offset - crate::store::boot_note::AREA;
        let at = rec.map.as_ref().unwrap().translate(area, 512).unwrap()[0].disk;
        assert_eq!(plan.note.note_offset, Some(at));
        let mut odd = plan.clone();
        odd.note.note_offset = Some(at + 1);
        assert!(BootPlan::decode(&odd.encode()).is_err());
        // a native boot's plan says so; older plans read as mapped
        assert!(!String::from_utf8(plan.encode()).unwrap().contains("native"));
        let native = BootPlan {
            native: true,
            ..plan.clone()
        };
        assert!(BootPlan::decode(&native.encode()).unwrap().native);
    }

    #[test]
    fn partitions_of_one_image_boot_together() {
        let mut root = crate::store::record::tests::sample_record();
        root.state = StagingState::Complete;
        let mut esp = root.clone();
        esp.name = "web-p1".into();
        esp.id = uuid::Uuid::from_u128(7);
        esp.image.partition = Some(crate::store::record::StagedPartition {
            set: "web".into(),
            set_id: uuid::Uuid::from_u128(8),
            number: 1,
            image_size: 1 << 30,
            image_sha256: None,
            table: crate::input::partitions::PartitionTable {
                kind: crate::input::partitions::TableKind::Gpt,
                sector_size: 512,
                disk_guid: None,
                mbr_signature: None,
                first_usable_lba: None,
                last_usable_lba: None,
                partitions: vec![],
            },
        });
        let plan = BootPlan::for_set(&root, std::slice::from_ref(&esp), vec![]).unwrap();
        assert_eq!(plan.companions.len(), 1);
        let c = &plan.companions[0];
        assert_eq!((c.dm_name.as_str(), c.id), ("liverestore-p1", esp.id));
        assert_eq!(BootPlan::decode(&plan.encode()).unwrap(), plan);
        assert_eq!(c.table("8:0").len(), c.extents.len());
        // on another disk: refused
        esp.disk.size += 512;
        assert_eq!(
            BootPlan::for_set(&root, &[esp], vec![]).unwrap_err().kind(),
            ErrorKind::InvalidState
        );
        // a damaged companion is refused like the root
        let mut bad = plan;
        bad.companions[0].image_size += 4096;
        assert!(BootPlan::decode(&bad.encode()).is_err());
    }

    #[test]
    fn damaged_plans_are_refused() {
        let mut rec = crate::store::record::tests::sample_record();
        rec.state = StagingState::Complete;
        let plan = BootPlan::for_staging(&rec, vec![]).unwrap();
        let mut bad = plan.clone();
        bad.extents[0].disk_offset += 1;
        assert!(BootPlan::decode(&bad.encode()).is_err());
        let mut bad = plan.clone();
        bad.image_size += 4096;
        assert!(BootPlan::decode(&bad.encode()).is_err());
        let mut bad = plan;
        bad.format = "x".into();
        assert!(BootPlan::decode(&bad.encode()).is_err());
        assert!(BootPlan::decode(b"{").is_err());
    }
}
