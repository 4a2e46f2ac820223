//! What the early-boot step needs to assemble a staged image as a block
//! device before the restored system's own `/init` runs: the disk (by size
//! and GPT GUID), where the on-disk header is (to check it is still the
//! same staging), the image's extents, and the driver modules to load.
//! Encoded as JSON into `/lr/boot.json` of the appended initramfs.

use serde::{Deserialize, Serialize};

use crate::dm::Target;
use crate::error::{Error, ErrorKind, Result};
use crate::record::{StagingRecord, StagingState};

const FORMAT: &str = "liverestore-boot-v1";

/// Name of the device-mapper device the early-boot step creates; its node
/// is `/dev/dm-N` (the first dm device at boot is `/dev/dm-0`).
pub const DM_NAME: &str = "liverestore-root";

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
    /// Modules to load before the disk can be found and mapped, in order
    /// (their dependencies are resolved at boot from `modules.dep`).
    pub modules: Vec<String>,
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
        let map = rec.map.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!("'{}' has no map", rec.name),
            )
        })?;
        let header_offset = map.translate(0, 512)?[0].disk;
        let extents = rec
            .image_map()?
            .extents()
            .iter()
            .map(|e| BootExtent {
                disk_offset: e.disk,
                length: e.length,
            })
            .collect();
        Ok(BootPlan {
            format: FORMAT.into(),
            name: rec.name.clone(),
            id: rec.id,
            disk_size: rec.disk.size,
            disk_gpt_guid: rec.disk.gpt_guid.clone(),
            header_offset,
            image_size: rec.image.size,
            extents,
            modules,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a boot plan serializes")
    }

    /// Parse and check a plan: format, extents sector-aligned and adding
    /// up to the image size.
    pub fn decode(bytes: &[u8]) -> Result<BootPlan> {
        let bad = |m: String| Error::new(ErrorKind::Corrupt, m);
        let plan: BootPlan = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("boot plan is not valid: {e}")))?;
        if plan.format != FORMAT {
            return Err(bad(format!("unknown boot plan format '{}'", plan.format)));
        }
        let mut total = 0u64;
        for e in &plan.extents {
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
        if total != plan.image_size.div_ceil(512) * 512 {
            return Err(bad(format!(
                "the extents cover {total} bytes, the image has {}",
                plan.image_size
            )));
        }
        Ok(plan)
    }

    /// The device-mapper `linear` table over disk `dev_t` ("major:minor").
    pub fn table(&self, dev_t: &str) -> Vec<Target> {
        let mut start = 0u64;
        self.extents
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_make_tables() {
        let mut rec = crate::record::tests::sample_record();
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
    }

    #[test]
    fn damaged_plans_are_refused() {
        let mut rec = crate::record::tests::sample_record();
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
