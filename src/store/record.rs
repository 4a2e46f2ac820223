//! What liverestore remembers about one staged image: the [`StagingRecord`].
//!
//! The same record is kept in two places: as a checksummed JSON file in the
//! state directory ([`encode_state_file`]/[`decode_state_file`]) and as the
//! body of the on-disk header inside the container ([`crate::store::header`]), so
//! either copy is enough to find the image again.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::map::device_layout::{DeviceLayout, LayoutPiece};
use crate::map::extent_map::ExtentMap;

/// Current record format version. Version 3 added [`StagingRecord::segments`];
/// version 2 records (no segments) are still read.
pub const RECORD_VERSION: u32 = 3;
/// The oldest record version still read.
pub const OLDEST_RECORD_VERSION: u32 = 2;

/// Where a staging is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagingState {
    /// The record exists, the container may not (yet): discard cleans up.
    Allocating,
    /// The container is pinned and mapped; data is being written. A crash
    /// here is resumable with `stage --resume`.
    Staging,
    /// Every byte is written, synced, hashed and the map re-checked.
    Complete,
    /// Written, but the image did not match the SHA-256 it had to match:
    /// `verify` and activation refuse it; discard it.
    Failed,
}

impl StagingState {
    pub fn as_str(self) -> &'static str {
        match self {
            StagingState::Allocating => "allocating",
            StagingState::Staging => "staging",
            StagingState::Complete => "complete",
            StagingState::Failed => "failed",
        }
    }
}

/// The image that was (or is being) staged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The path or URL it was read from; None for stdin.
    pub source: Option<String>,
    /// Layout and compression as recognized (`raw`, `qcow2, zstd`, …).
    #[serde(default)]
    pub kind: String,
    /// The bmap file used, if any.
    #[serde(default)]
    pub bmap: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes per hashed chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// Image bytes written and synced to disk so far (a multiple of
    /// `chunk_size`, or `size` when done).
    pub written: u64,
    /// BLAKE3 (hex) of each chunk written so far.
    pub chunk_blake3: Vec<String>,
    /// SHA-256 (hex) the image must have (`--sha256` or a hash file), if
    /// one was given.
    #[serde(default)]
    pub expected_sha256: Option<String>,
    /// SHA-256 (hex) of the whole image, when it was computed (it is when
    /// one was expected).
    pub sha256: Option<String>,
    /// Why a `failed` staging failed.
    #[serde(default)]
    pub failure: Option<String>,
    /// Bytes the last staging run wrote to the disk, and bytes it zeroed
    /// with `BLKZEROOUT` instead of writing.
    #[serde(default)]
    pub disk_written: u64,
    #[serde(default)]
    pub disk_zeroed: u64,
    /// Set when the staged bytes are one partition of a whole-disk image.
    /// `expected_sha256` is then the whole image's, and `sha256` stays unset
    /// (the whole image's hash is in [`StagedPartition::image_sha256`]).
    #[serde(default)]
    pub partition: Option<StagedPartition>,
    /// Set (to the Unix time it started) while `customize` changes the
    /// staged bytes: the chunk hashes are then stale until it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customizing: Option<u64>,
    /// What `customize` changed since staging, oldest first. The chunk
    /// hashes (and `sha256`, then the staged image's own) describe the
    /// bytes after the last one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customized: Vec<Customization>,
    /// Boots of this image (counted by its [`crate::store::boot_note`])
    /// whose changes were accepted: the chunk hashes describe the bytes
    /// after them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boots_accepted: u32,
    /// The signature the image's file must match (`--signature`, or one
    /// found next to the image), checked over its bytes while staging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_signature: Option<crate::trust::ExpectedSignature>,
    /// What that check proved, once it held: set before the staging is
    /// marked complete, never after. It describes the image as staged;
    /// `customize` keeps it and lists what it changed in `customized`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::trust::VerifiedSignature>,
    /// Set when the staging is a warm standby: a copy of a running
    /// system made by `snapshot`, not an image made elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
}

/// How a warm standby was made (`snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standby {
    /// When the copy began and ended.
    pub started_unix: u64,
    pub copied_unix: u64,
    /// The tree copied (`/`: the running system) and its filesystem.
    pub source_root: String,
    pub source_fs_uuid: Option<String>,
    /// The filesystem made inside the staging, and its own UUID.
    pub fs_type: String,
    pub fs_uuid: String,
    /// What the copy guarantees: `per-file` (each file is copied
    /// consistently; the tree as a whole is not a point-in-time image).
    pub consistency: String,
    /// Separately mounted filesystems copied into the tree (`/boot`).
    #[serde(default)]
    pub merged: Vec<String>,
    /// `--exclude` patterns given.
    #[serde(default)]
    pub excluded: Vec<String>,
    /// Files that changed while they were copied (copied again), or that
    /// vanished: how many, and the first [`Standby::MAX_LISTED`] of each.
    pub changed_during_copy: u64,
    #[serde(default)]
    pub changed: Vec<String>,
    pub vanished_during_copy: u64,
    #[serde(default)]
    pub vanished: Vec<String>,
}

impl Standby {
    /// Paths kept in the record (which is also the on-disk header, whose
    /// room is fixed).
    pub const MAX_LISTED: usize = 20;
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One change `customize` made inside a staged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What kind of change: `preserved`, `machine-id`, `ssh-host-key`,
    /// `hostname`, `network`, `firmware`, `module`, …
    pub what: String,
    /// The path inside the image.
    pub path: String,
    pub detail: String,
}

impl Change {
    pub fn new(what: &str, path: &std::path::Path, detail: &str) -> Change {
        Change {
            what: what.to_string(),
            path: path.display().to_string(),
            detail: detail.to_string(),
        }
    }
}

/// One run of `customize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customization {
    pub at_unix: u64,
    /// The first [`Customization::MAX_KEPT`] changes (the record is also
    /// the on-disk header, whose room is fixed), and how many there were.
    pub changes: Vec<Change>,
    pub change_count: u64,
    /// SHA-256 of the image before and after.
    pub sha256_before: Option<String>,
    pub sha256: String,
}

impl Customization {
    pub const MAX_KEPT: usize = 100;
}

/// One partition of a whole-disk image, staged on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPartition {
    /// The name given to `stage` (the partitions are staged as
    /// `NAME-p1`, `NAME-p2`, …, or as `NAME` when `--partition` picked one).
    pub set: String,
    /// Shared by the stagings made from the same image by one `stage`.
    pub set_id: uuid::Uuid,
    /// The partition's number in `table`.
    pub number: u32,
    /// The whole image's size, and its SHA-256 once computed.
    pub image_size: u64,
    pub image_sha256: Option<String>,
    /// The image's partition table, for activation to rebuild entries.
    pub table: crate::input::partitions::PartitionTable,
}

impl StagedPartition {
    /// This partition's entry in the table.
    pub fn entry(&self) -> Option<&crate::input::partitions::ImagePartition> {
        self.table.partition(self.number)
    }
}

impl ImageInfo {
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }
}

/// A piece of a staging's space after its first container, in map order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Segment {
    /// Another container file: on another filesystem of the same disk, or
    /// the next piece of a container split because the filesystem's files
    /// cannot be that large.
    File {
        container: ContainerInfo,
        host: Box<HostInfo>,
    },
    /// Disk bytes `[disk, disk + length)` outside every partition.
    Unallocated { disk: u64, length: u64 },
    /// A logical volume liverestore created for the image
    /// (`--lvm-free`): `lv` in group `vg`, `length` bytes.
    Volume(Box<VolumeSegment>),
}

/// A logical volume that holds (the rest of) a staged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSegment {
    pub vg: String,
    pub lv: String,
    pub length: u64,
    /// Device-mapper's UUID of the volume, once created (empty before).
    #[serde(default)]
    pub dm_uuid: String,
    /// Its bytes on the disk, in volume order, once created: the kernel's
    /// tables composed down the stack (re-read before every use).
    #[serde(default)]
    pub pieces: Vec<LayoutPiece>,
}

impl VolumeSegment {
    /// Its map as recorded (volume byte → disk byte): its pieces, in order.
    pub fn map(&self) -> Result<ExtentMap> {
        let whole = crate::map::fiemap::FileExtent {
            logical: 0,
            physical: 0,
            length: self.length,
        };
        ExtentMap::from_file_extents(&[whole], self.length, &self.layout()?)
    }

    /// Its bytes on the disk as recorded: pieces that cover it exactly.
    pub fn layout(&self) -> Result<DeviceLayout> {
        DeviceLayout::from_pieces(self.pieces.clone())?
            .into_sized(self.length)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "the recorded pieces of {}/{} do not cover its {} bytes",
                        self.vg, self.lv, self.length
                    ),
                )
            })
    }

    /// Its bytes on the disk as recorded (a corrupt record: none, so that
    /// every write is refused).
    pub fn disk_ranges(&self) -> Vec<(u64, u64)> {
        self.layout().map(|l| l.disk_ranges()).unwrap_or_default()
    }
}

/// The container file on the host filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub path: String,
    pub inode: u64,
    pub generation: u32,
    /// Allocated size: header + image, rounded up to the block size.
    pub size: u64,
    /// Container offset where the image starts (= header length).
    pub data_offset: u64,
    pub block_size: u64,
}

/// The filesystem and partition that hold the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub fs_type: String,
    pub fs_uuid: Option<String>,
    pub mount_point: String,
    /// The block device of the filesystem, e.g. /dev/sda2.
    pub device: String,
    /// Byte offset of that device on the whole disk (0 when the filesystem
    /// is on the whole disk).
    pub start: u64,
    pub size: u64,
    pub partition_number: Option<u32>,
    pub partition_uuid: Option<String>,
    /// A logical volume's pieces on the disk, in volume order (its
    /// segments, composed down the device-mapper stack); empty when the
    /// device is one run, `start`/`size`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_pieces: Vec<LayoutPiece>,
}

impl HostInfo {
    /// Where the filesystem's device is on the disk.
    pub fn layout(&self) -> Result<DeviceLayout> {
        if self.volume_pieces.is_empty() {
            Ok(DeviceLayout::contiguous(self.start, self.size))
        } else {
            DeviceLayout::from_pieces(self.volume_pieces.clone())
        }
    }

    /// The disk bytes `[lo, hi)` of the filesystem's device; none when
    /// the recorded pieces do not make a layout (every write is then
    /// refused).
    pub fn disk_ranges(&self) -> Vec<(u64, u64)> {
        self.layout().map(|l| l.disk_ranges()).unwrap_or_default()
    }

    /// Whether the filesystem is on a device-mapper device (a logical
    /// volume).
    pub fn on_device_mapper(&self) -> bool {
        self.device
            .strip_prefix("/dev/")
            .is_some_and(crate::space::hostfs::is_device_mapper_name)
    }
}

/// The whole disk that is written to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub path: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub gpt_guid: Option<String>,
    pub mbr_signature: Option<String>,
    pub serial: Option<String>,
}

impl DiskInfo {
    /// Whether `other` describes the same disk, by what does not change
    /// between boots — the GPT disk GUID, or else the MBR signature, with
    /// the size, and the serial where both know one — never by its
    /// `/dev` name, which can (sda and sdb swap, a USB disk is added, a
    /// loop device is attached again). A disk with neither a GPT nor an
    /// MBR signature is known by name and size only.
    pub fn same_disk(&self, other: &DiskInfo) -> bool {
        if self.size != other.size {
            return false;
        }
        if let (Some(a), Some(b)) = (&self.serial, &other.serial)
            && a != b
        {
            return false;
        }
        match (
            &self.gpt_guid,
            &other.gpt_guid,
            &self.mbr_signature,
            &other.mbr_signature,
        ) {
            (Some(a), Some(b), _, _) => a.eq_ignore_ascii_case(b),
            (None, None, Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None, None, None) => self.path == other.path,
            _ => false,
        }
    }
}

/// Everything known about one staged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingRecord {
    pub version: u32,
    pub id: uuid::Uuid,
    pub name: String,
    pub state: StagingState,
    pub created_unix: u64,
    pub image: ImageInfo,
    pub container: ContainerInfo,
    pub host: HostInfo,
    pub disk: DiskInfo,
    /// Space after `container` (a segment set or a split container), in
    /// map order; empty when the container holds everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// Container offset → whole-disk offset. None while allocating. With
    /// segments, "container offset" runs on through each segment in turn.
    pub map: Option<ExtentMap>,
    /// Set while this staging is activated as the root: how it boots and
    /// what the old system was. Being in the on-disk header too, it is how
    /// the restored system learns both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivationNote>,
    /// The DDI deployment it came from (`liverestore ddi`); in the on-disk
    /// header too, so the restored system can report its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentRef>,
}

/// What the on-disk header of an activated staging says about the
/// activation, for the restored system (`status`, `commit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationNote {
    pub at_unix: u64,
    /// "uefi" or "grub".
    pub loader: String,
    /// The boot entry, as `status` names it.
    pub entry: String,
    /// UEFI: the `Boot####` number.
    pub uefi_boot_number: Option<u16>,
    /// GRUB: the disk offset of `grubenv`'s block.
    pub grub_env_offset: Option<u64>,
    pub old_system: OldSystem,
}

/// The DDI deployment a staging came from (`liverestore ddi`): where the
/// restored system reports that it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRef {
    /// The device's resource on the server:
    /// `{server}/{tenant}/controller/v1/{controller id}`.
    pub resource: String,
    /// The action id.
    pub action: String,
    /// The version of its software.
    pub version: Option<String>,
}

/// The system that activated a staging, as it described itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldSystem {
    pub hostname: String,
    pub kernel_release: String,
    /// The device mounted at `/`.
    pub root_device: String,
    /// The entry it was started from (`Boot0001 "debian"`), when known.
    pub boot_entry: Option<String>,
}

impl StagingRecord {
    /// Every container file with the filesystem holding it, the first
    /// (which holds the header) first.
    pub fn container_files(&self) -> Vec<(&ContainerInfo, &HostInfo)> {
        let mut out = vec![(&self.container, &self.host)];
        out.extend(self.segments.iter().filter_map(|s| match s {
            Segment::File { container, host } => Some((container, &**host)),
            Segment::Unallocated { .. } | Segment::Volume(_) => None,
        }));
        out
    }

    /// The unallocated segments as disk byte ranges `[start, end)`.
    pub fn unallocated_ranges(&self) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Unallocated { disk, length } => Some((*disk, disk + length)),
                Segment::File { .. } | Segment::Volume(_) => None,
            })
            .collect()
    }

    /// The logical volumes liverestore created for this staging.
    pub fn volumes(&self) -> Vec<&VolumeSegment> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Volume(v) => Some(&**v),
                _ => None,
            })
            .collect()
    }

    /// Disk bytes the map may reach: each container's partition, each
    /// unallocated segment and each volume's pieces, as `[start, end)`.
    pub fn disk_bounds(&self) -> Vec<(u64, u64)> {
        let mut out = self.host.disk_ranges();
        for s in &self.segments {
            match s {
                Segment::File { host, .. } => out.extend(host.disk_ranges()),
                Segment::Unallocated { disk, length } => out.push((*disk, disk + length)),
                Segment::Volume(v) => out.extend(v.disk_ranges()),
            }
        }
        out
    }

    /// Refuse ([`ErrorKind::InvalidState`]) while an interrupted
    /// `customize` left the staged bytes and their hashes disagreeing.
    pub fn check_not_customizing(&self) -> Result<()> {
        if self.image.customizing.is_some() && self.image.standby.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "the copy into the standby '{0}' did not finish (interrupted), so its bytes are not a complete copy: discard it and snapshot again",
                    self.name
                ),
            ));
        }
        if self.image.customizing.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "a `customize` of '{0}' was interrupted, so its bytes and hashes disagree: run `liverestore customize {0}` again (with the same options) to finish it, or discard it",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// The staging's name for machine-wide things (device-mapper devices,
    /// mount points under `/run/liverestore`): the name plus the start of
    /// its id, so that stagings of one name in two state directories never
    /// share them.
    pub fn instance(&self) -> String {
        format!("{}-{}", self.name, &self.id.simple().to_string()[..8])
    }

    /// Disk offset of the on-disk header's block 0 (container offset 0).
    /// The map, which a staging has once its space is allocated.
    fn allocated_map(&self) -> Result<&ExtentMap> {
        self.map.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!("'{}' has no map yet (still allocating)", self.name),
            )
        })
    }

    pub fn header_disk_offset(&self) -> Result<u64> {
        let map = self.allocated_map()?;
        Ok(map.translate(0, 512)?[0].disk)
    }

    /// The disk offset of the [`crate::store::boot_note`] area, when it
    /// lies in one extent (it always does but on a filesystem whose blocks
    /// are smaller than the area): None, and the image's boots go
    /// unnoted.
    pub fn boot_note_disk_offset(&self) -> Result<Option<u64>> {
        let map = self.allocated_map()?;
        let area = crate::store::boot_note::AREA;
        let runs = map.translate(self.container.data_offset - area, area)?;
        Ok(match runs.as_slice() {
            [one] => Some(one.disk),
            _ => None,
        })
    }

    /// The map of the image bytes alone (container map minus the header).
    pub fn image_map(&self) -> Result<ExtentMap> {
        let map = self.allocated_map()?;
        map.slice(self.container.data_offset, self.image.size)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    format: String,
    sha256: String,
    #[serde(borrow)]
    record: &'a RawValue,
}

const STATE_FORMAT: &str = "liverestore-state-v1";

/// Serialize a record as a state file: the record plus the SHA-256 of its
/// exact JSON bytes.
pub fn encode_state_file(record: &StagingRecord) -> Vec<u8> {
    let body = serde_json::to_string(record).expect("records always serialize");
    let raw = RawValue::from_string(body).expect("serde_json output is valid JSON");
    let env = Envelope {
        format: STATE_FORMAT.to_string(),
        sha256: hex::encode(Sha256::digest(raw.get().as_bytes())),
        record: &raw,
    };
    let mut out = serde_json::to_vec_pretty(&env).expect("envelope serializes");
    out.push(b'\n');
    out
}

/// Parse and check a state file. Any damage is [`ErrorKind::Corrupt`].
pub fn decode_state_file(bytes: &[u8]) -> Result<StagingRecord> {
    let corrupt = |m: String| Error::new(ErrorKind::Corrupt, m);
    let env: Envelope<'_> = serde_json::from_slice(bytes)
        .map_err(|e| corrupt("state file is not valid".into()).with_source(e))?;
    if env.format != STATE_FORMAT {
        return Err(corrupt(format!(
            "unknown state file format '{}'",
            env.format
        )));
    }
    let actual = hex::encode(Sha256::digest(env.record.get().as_bytes()));
    if actual != env.sha256 {
        return Err(corrupt("state file checksum mismatch".to_string()));
    }
    let record: StagingRecord = serde_json::from_str(env.record.get())
        .map_err(|e| corrupt(format!("state record is not valid: {e}")))?;
    if !(OLDEST_RECORD_VERSION..=RECORD_VERSION).contains(&record.version) {
        return Err(corrupt(format!(
            "unsupported record version {}",
            record.version
        )));
    }
    Ok(record)
}

/// Is `name` usable as a staging name (and so as a file name)?
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!(
                "invalid name '{}': {why}; use letters, digits, '.', '-', '_'",
                name.escape_default()
            ),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 100 {
        return bad("it is longer than 100 bytes");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("it contains '..'");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return bad(&format!("it contains '{}'", c.escape_default()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::map::extent_map::MapExtent;

    pub(crate) fn sample_record() -> StagingRecord {
        StagingRecord {
            version: RECORD_VERSION,
            id: uuid::Uuid::from_u128(0x1234),
            name: "web-01".into(),
            state: StagingState::Staging,
            created_unix: 1_700_000_000,
            image: ImageInfo {
                source: Some("/srv/root.img".into()),
                size: 10 << 20,
                chunk_size: 4 << 20,
                written: 4 << 20,
                kind: "raw".into(),
                bmap: None,
                chunk_blake3: vec!["ab".repeat(32)],
                expected_sha256: None,
                sha256: None,
                failure: None,
                disk_written: 0,
                disk_zeroed: 0,
                partition: None,
                customizing: None,
                customized: Vec::new(),
                boots_accepted: 0,
                expected_signature: None,
                signature: None,
                standby: None,
            },
            container: ContainerInfo {
                path: "/var/tmp/web-01.lrc".into(),
                inode: 12,
                generation: 99,
                size: 11 << 20,
                data_offset: 1 << 20,
                block_size: 4096,
            },
            host: HostInfo {
                fs_type: "ext4".into(),
                fs_uuid: Some("0c5e4e4e-0000-4000-8000-000000000001".into()),
                mount_point: "/".into(),
                device: "/dev/vda2".into(),
                start: 1 << 20,
                size: 1 << 30,
                partition_number: Some(2),
                partition_uuid: Some("aa".into()),
                volume_pieces: Vec::new(),
            },
            disk: DiskInfo {
                path: "/dev/vda".into(),
                size: 2 << 30,
                logical_sector_size: 512,
                physical_sector_size: 4096,
                gpt_guid: None,
                mbr_signature: None,
                serial: None,
            },
            map: Some(
                ExtentMap::new(
                    vec![
                        MapExtent {
                            logical: 0,
                            disk: 2 << 20,
                            length: 3 << 20,
                        },
                        MapExtent {
                            logical: 3 << 20,
                            disk: 9 << 20,
                            length: 8 << 20,
                        },
                    ],
                    11 << 20,
                )
                .unwrap(),
            ),
            segments: Vec::new(),
            activation: None,
            deployment: None,
        }
    }

    #[test]
    fn state_file_roundtrip() {
        let rec = sample_record();
        let bytes = encode_state_file(&rec);
        assert_eq!(decode_state_file(&bytes).unwrap(), rec);
        // segments are written only when there are some…
        assert!(!String::from_utf8_lossy(&bytes).contains("segments"));
        // …and survive the round trip when there are
        let mut set = sample_record();
        set.segments = vec![
            Segment::File {
                container: set.container.clone(),
                host: Box::new(set.host.clone()),
            },
            Segment::Unallocated {
                disk: 100 << 20,
                length: 1 << 20,
            },
        ];
        let text = String::from_utf8(encode_state_file(&set)).unwrap();
        assert!(text.contains(r#""kind":"unallocated""#), "{text}");
        assert_eq!(decode_state_file(text.as_bytes()).unwrap(), set);
        assert_eq!(set.disk_bounds().len(), 3);
        // a logical volume's pieces are its bounds; pieces with a hole
        // make none (every write refused)
        let mut lv = set.host.clone();
        assert!(!lv.on_device_mapper());
        lv.device = "/dev/dm-0".into();
        assert!(lv.on_device_mapper());
        let piece = |start, length, disk| LayoutPiece {
            start,
            length,
            disk,
        };
        lv.volume_pieces = vec![
            piece(0, 10 << 20, 5 << 20),
            piece(10 << 20, 4 << 20, 1 << 20),
        ];
        assert_eq!(
            lv.disk_ranges(),
            vec![(5 << 20, 15 << 20), (1 << 20, 5 << 20)]
        );
        lv.volume_pieces[1].start += 1;
        assert!(lv.disk_ranges().is_empty());
        assert_eq!(set.container_files().len(), 2);
        // a volume --lvm-free made: its pieces are its bounds, once they
        // cover it exactly
        let mut vol = VolumeSegment {
            vg: "vg".into(),
            lv: "lr-x".into(),
            length: 14 << 20,
            dm_uuid: "LVM-abc".into(),
            pieces: vec![
                piece(0, 10 << 20, 50 << 20),
                piece(10 << 20, 4 << 20, 70 << 20),
            ],
        };
        set.segments.push(Segment::Volume(Box::new(vol.clone())));
        let text = String::from_utf8(encode_state_file(&set)).unwrap();
        assert!(text.contains(r#""kind":"volume","vg":"vg""#), "{text}");
        assert_eq!(decode_state_file(text.as_bytes()).unwrap(), set);
        assert_eq!(set.disk_bounds().len(), 5);
        assert_eq!(set.volumes().len(), 1);
        assert_eq!(set.container_files().len(), 2);
        vol.length += 1;
        assert!(vol.disk_ranges().is_empty(), "pieces that do not cover it");
    }

    #[test]
    fn version_2_records_are_still_read() {
        let mut old = sample_record();
        old.version = 2;
        assert_eq!(decode_state_file(&encode_state_file(&old)).unwrap(), old);
        old.version = RECORD_VERSION + 1;
        assert!(decode_state_file(&encode_state_file(&old)).is_err());
    }

    #[test]
    fn any_flipped_byte_in_the_record_is_detected() {
        let rec = sample_record();
        let bytes = encode_state_file(&rec);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let start = text.find("\"record\"").unwrap();
        for i in (start + 10..bytes.len() - 3).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let res = decode_state_file(&damaged);
            assert!(res.is_err(), "flip at {i} not detected");
            assert_eq!(res.unwrap_err().kind(), ErrorKind::Corrupt);
        }
        assert_eq!(
            decode_state_file(b"").unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            decode_state_file(&bytes[..bytes.len() / 2])
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn image_map_skips_the_header() {
        let rec = sample_record();
        let map = rec.image_map().unwrap();
        assert_eq!(map.len(), 10 << 20);
        assert_eq!(
            map.extents()[0],
            MapExtent {
                logical: 0,
                disk: 3 << 20,
                length: 2 << 20
            }
        );
    }

    #[test]
    fn disks_are_known_by_identity_not_by_name() {
        let a = DiskInfo {
            gpt_guid: Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into()),
            ..sample_record().disk
        };
        let renamed = DiskInfo {
            path: "/dev/sdb".into(),
            ..a.clone()
        };
        assert!(a.same_disk(&renamed), "another name, the same disk");
        let other_guid = DiskInfo {
            gpt_guid: Some("11111111-2222-3333-4444-555555555555".into()),
            ..a.clone()
        };
        assert!(!a.same_disk(&other_guid), "the same name, another disk");
        let other_size = DiskInfo {
            size: a.size + 512,
            ..a.clone()
        };
        assert!(!a.same_disk(&other_size));
        let serial = |s: Option<&str>| DiskInfo {
            serial: s.map(str::to_string),
            ..a.clone()
        };
        assert!(serial(Some("X1")).same_disk(&serial(None)));
        assert!(!serial(Some("X1")).same_disk(&serial(Some("X2"))));
        let mbr = |sig: &str, path: &str| DiskInfo {
            path: path.into(),
            gpt_guid: None,
            mbr_signature: Some(sig.into()),
            ..a.clone()
        };
        assert!(mbr("1234abcd", "/dev/sda").same_disk(&mbr("1234ABCD", "/dev/sdc")));
        assert!(!mbr("1234abcd", "/dev/sda").same_disk(&mbr("deadbeef", "/dev/sda")));
        assert!(!mbr("1234abcd", "/dev/sda").same_disk(&a), "MBR is not GPT");
        let bare = |path: &str| DiskInfo {
            path: path.into(),
            gpt_guid: None,
            mbr_signature: None,
            ..a.clone()
        };
        assert!(bare("/dev/sda").same_disk(&bare("/dev/sda")));
        assert!(!bare("/dev/sda").same_disk(&bare("/dev/sdb")));
    }

    #[test]
    fn names() {
        for ok in ["a", "web-01", "root_fs.v2", "A9"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "sp ace",
            "tab\t",
            "é",
            &"x".repeat(101),
        ] {
            assert_eq!(
                validate_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidName,
                "{bad:?}"
            );
        }
    }
}
