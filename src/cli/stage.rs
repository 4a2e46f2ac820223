//! The staging commands: `plan`, `stage`, `list`, `info`, `verify`, `map`,
//! `discard` and `scan`, with their reports.

use std::path::PathBuf;

use serde::Serialize;

use super::Context;
use super::args::{ImageArgs, SpaceArgs, describe_partition, human_bytes};
use super::output::Report;
use crate::error::{Error, ErrorKind, Result};
use crate::input::split;
use crate::space::allocate::Planned;
use crate::stage::plan::Plan;
use crate::stage::scan::FoundHeader;
use crate::stage::staged::{Discarded, Listing, MapExport};
use crate::stage::verify::VerifyReport;
use crate::store::record::{Segment, StagingRecord};

/// Preflight: what staging IMAGE would do, writing nothing.
///
/// Shows the filesystem, partition and disk found, sizes, free space and
/// every reason staging would be refused; exits with the first refusal's
/// code.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Image file, block device, http(s) URL, or `-` for stdin.
    image: String,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    input: ImageArgs,
    /// Also check that this name is free.
    #[arg(long)]
    name: Option<String>,
}

impl PlanArgs {
    pub fn run(self, cx: &Context) -> Result<Plan> {
        if self.space.dir.is_empty() {
            return Err(Error::new(ErrorKind::NoSpace, "give at least one --dir"));
        }
        let mut random = None;
        let pieces =
            crate::input::Image::open(&self.image, &self.input.options()).and_then(|mut i| {
                random = i.random_source();
                split::pieces(&mut i, self.name.as_deref(), self.input.split())
            });
        // the restored system's fstab, read in the image itself
        let fstab = match &pieces {
            Ok(p) => crate::customize::fstab_warning_before_staging(random, p),
            Err(_) => Ok(None),
        };
        let mut plan = crate::stage::plan::assess(&cx.state, &self.space.request(), pieces).plan;
        match fstab {
            Ok(w) => plan.fstab_warning = w,
            Err(why) => plan.fstab_not_checked = Some(why),
        }
        Ok(plan)
    }
}

impl Report for Plan {
    fn exit_code(&self) -> u8 {
        self.refusals.first().map_or(0, |r| r.exit_code as u8)
    }

    fn print_text(&self) {
        let p = self;
        let show =
            |k: &str, v: Option<String>| println!("{k:>20}: {}", v.unwrap_or_else(|| "-".into()));
        show("directory", Some(p.dir.clone()));
        show("filesystem", p.fs_type.clone());
        show("mounted at", p.mount_point.clone());
        show("device", p.device.clone());
        show("disk", p.disk.clone());
        show("partition start", p.partition_start.map(|v| v.to_string()));
        show("sector size", p.logical_sector_size.map(|v| v.to_string()));
        show("image size", p.image_size.map(human_bytes));
        show("container size", p.container_size.map(human_bytes));
        show("free space", p.free_bytes.map(human_bytes));
        if p.sources.len() > 1 || p.stagings.iter().any(|s| s.space.len() > 1) {
            for (i, src) in p.sources.iter().enumerate() {
                let limit = src
                    .max_file_size
                    .map(|m| format!(", files up to {}", human_bytes(m)))
                    .unwrap_or_default();
                show(
                    &format!("source {}", i + 1),
                    Some(format!(
                        "{} {} ({}{limit})",
                        src.kind,
                        src.location,
                        human_bytes(src.available)
                    )),
                );
            }
            for st in &p.stagings {
                let pieces: Vec<String> = st
                    .space
                    .iter()
                    .map(|piece| match piece {
                        Planned::File { source, size } => {
                            format!("{} in source {}", human_bytes(*size), source + 1)
                        }
                        Planned::Unallocated { disk, length } => {
                            format!("{} unallocated at {disk}", human_bytes(*length))
                        }
                        Planned::Volume { source, size } => format!(
                            "{} in a new logical volume (source {})",
                            human_bytes(*size),
                            source + 1
                        ),
                    })
                    .collect();
                show(
                    &format!("space of {}", st.name.as_deref().unwrap_or("the image")),
                    Some(pieces.join(" + ")),
                );
            }
        }
        if p.stagings.iter().any(|s| s.partition.is_some()) {
            for st in &p.stagings {
                show(
                    &format!("partition {}", st.partition.unwrap_or(0)),
                    Some(format!(
                        "{} at {} → {}",
                        human_bytes(st.image_size),
                        st.image_offset,
                        st.name.as_deref().unwrap_or("(no --name)")
                    )),
                );
            }
        }
        for u in &p.unknown_stagings {
            show("unknown staging", Some(u.note()));
        }
        if let Some(w) = &p.fstab_warning {
            show("restored fstab", Some(w.clone()));
        }
        for c in &p.cautions {
            show("caution", Some(c.clone()));
        }
        if !p.make_room.is_empty() {
            let total: u64 = p.make_room.iter().map(|c| c.bytes).sum();
            show(
                "make room",
                Some(format!(
                    "delete {} files ({})",
                    p.make_room.len(),
                    human_bytes(total)
                )),
            );
            for c in &p.make_room {
                println!(
                    "{:>20}  {} ({})",
                    "",
                    c.path.display(),
                    human_bytes(c.bytes)
                );
            }
        }
        if p.ok {
            println!("OK: staging would proceed");
        } else {
            for r in &p.refusals {
                println!("REFUSED ({}): {}", r.kind, r.message);
            }
        }
    }
}

/// Stage IMAGE into a pinned container in DIR and write it to the disk.
///
/// IMAGE is a file, a block device, an http(s):// URL (streamed, never
/// stored; a dropped connection is resumed with a range request) or `-`
/// for stdin. Recognized by content, not by name:
///   compression: gzip, xz (multithreaded), zstd
///   layout:      raw, qcow2, VHD (fixed, dynamic), VHDX, Android sparse,
///                raw + bmap (IMAGE.bmap, or --bmap FILE)
/// Runs of zeros are zeroed on the disk (BLKZEROOUT) instead of written.
/// A SHA-256 from --sha256 or from IMAGE.sha256 / IMAGE.sha256sum must
/// match before the staging counts as complete; otherwise it is marked
/// failed.
///
/// A whole-disk image (GPT or MBR) becomes one staging per partition,
/// NAME-p1, NAME-p2, … numbered as in the image, written in one pass;
/// each records the image's partition table (types, GUIDs, labels,
/// attributes) for activation. --partition N stages only partition N;
/// --whole-disk stages the image as it is.
///
/// Space: the container is DIR/NAME.liverestore. Several --dir (other
/// filesystems of the same disk) and --unallocated (the disk's space
/// outside every partition) make a segment set, filled in that order;
/// files never exceed what the filesystem allows (probed; on vfat
/// 4 GiB less one byte), so a large image on vfat becomes
/// NAME.liverestore, NAME+2.liverestore, …
///   liverestore stage root.img --name web --dir / --dir /data --unallocated
///
/// With --resume NAME, continue a staging interrupted by a crash or
/// power loss: IMAGE defaults to the recorded path (`-` to pipe it again).
/// For a split image, NAME (or any NAME-pN) resumes all its partitions.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct StageArgs {
    /// Image file, block device, http(s) URL, or `-` for stdin.
    image: Option<String>,
    /// Name of the staged image (letters, digits, '.', '-', '_').
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub(crate) name: Option<String>,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    input: ImageArgs,
    /// The image's SHA-256 (64 hex digits): checked before completing.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Detached signature of the image file: OpenPGP (`.sig`, `.asc`, as
    /// `gpg --detach-sign` writes it) or minisign (`.minisig`); a path or
    /// an http(s) URL. Without it, IMAGE.sig, IMAGE.asc or IMAGE.minisig
    /// next to a local or HTTP image is used when there are trusted keys.
    /// It is checked over the exact bytes read (the file as published,
    /// compressed or not), in the same pass as staging; the staging is
    /// marked complete only if it holds, and failed if it does not. An
    /// unknown, expired or revoked key is refused before anything is
    /// written.
    #[arg(long, value_name = "FILE|URL")]
    signature: Option<String>,
    /// Directory of trusted public keys: OpenPGP certificates (*.asc,
    /// *.gpg, *.pgp, *.key, from `gpg --export`) and minisign public keys
    /// (*.pub) [default: /etc/liverestore/trusted.d].
    #[arg(long, value_name = "DIR")]
    trusted_keys: Option<PathBuf>,
    /// Continue the interrupted staging NAME.
    #[arg(long, value_name = "NAME")]
    resume: Option<String>,
}

/// One staging `stage` made (or finished).
#[derive(Debug, Serialize)]
pub struct StagedSummary {
    pub name: String,
    pub state: &'static str,
    pub image_size: u64,
    pub sha256: Option<String>,
    pub kind: String,
    pub disk_written: u64,
    pub disk_zeroed: u64,
    pub container: String,
    pub disk: String,
    pub extents: usize,
    /// The partition of a whole-disk image this staging holds.
    pub partition: Option<u32>,
    /// Where that partition starts in the image (0 for a whole image).
    pub image_offset: u64,
    /// The SHA-256 of the image it came from (of the whole-disk image for
    /// a partition).
    pub image_sha256: Option<String>,
    /// "partition 2 ("data") of the … disk image staged as 'sys'".
    #[serde(skip)]
    partition_description: Option<String>,
    /// The signature check that held, if the image was signed.
    pub signature: Option<crate::trust::VerifiedSignature>,
}

impl StagedSummary {
    fn of(rec: &StagingRecord) -> Result<StagedSummary> {
        let part = rec.image.partition.as_ref();
        let extents = rec.image_map()?.extents().len();
        let image_sha256 = part.map_or(&rec.image.sha256, |p| &p.image_sha256).clone();
        Ok(StagedSummary {
            name: rec.name.clone(),
            state: rec.state.as_str(),
            image_size: rec.image.size,
            sha256: rec.image.sha256.clone(),
            kind: rec.image.kind.to_string(),
            disk_written: rec.image.disk_written,
            disk_zeroed: rec.image.disk_zeroed,
            container: rec.container.path.clone(),
            disk: rec.disk.path.clone(),
            extents,
            partition: part.map(|p| p.number),
            image_offset: part.and_then(|p| p.entry()).map_or(0, |e| e.offset),
            image_sha256,
            partition_description: part.map(describe_partition),
            signature: rec.image.signature.clone(),
        })
    }
}

/// What `stage` made: one staging, or one per partition.
#[derive(Debug, Serialize)]
pub struct StageReport {
    pub stagings: Vec<StagedSummary>,
}

/// "good minisign signature by key X (comment), made 2026-…, from F".
pub(crate) fn describe_signature(v: &crate::trust::VerifiedSignature) -> String {
    let made = v
        .signed_unix
        .map(|t| format!(", made {}", crate::progress::utc_time(t)))
        .unwrap_or_default();
    let signer = v
        .signer
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let of = v
        .bmap
        .as_deref()
        .map(|b| format!(" of the bmap {b} (every mapped range checked against it)"))
        .unwrap_or_default();
    format!(
        "good {} signature{of} by key {}{signer}{made}, from {}; key file {}",
        v.format, v.key, v.signature, v.key_file
    )
}

impl StageArgs {
    pub fn run(self, cx: &Context) -> Result<StageReport> {
        let progress = cx.progress.as_ref();
        let state = cx.lock_after_ended_trial()?;
        let recs = match (self.resume, self.name) {
            (Some(_), _) if !self.space.dir.is_empty() || self.space.unallocated => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    "--resume continues in the space recorded for the staging; drop --dir and --unallocated",
                ));
            }
            (Some(resume), _) => {
                crate::stage::resume(&state, &resume, self.image.as_deref(), progress)?
            }
            (None, Some(name)) => {
                if self.space.dir.is_empty() {
                    return Err(Error::new(
                        ErrorKind::NoSpace,
                        "give at least one --dir (the first holds the staging's header)",
                    ));
                }
                let image = self.image.ok_or_else(|| {
                    Error::new(ErrorKind::BadImage, "no IMAGE given (use `-` for stdin)")
                })?;
                let space = self.space.request();
                let req = crate::stage::StageRequest {
                    name: &name,
                    space: &space,
                    image: &image,
                    open: self.input.options(),
                    sha256: self.sha256,
                    split: self.input.split(),
                    signature: crate::stage::signature::SignatureRequest {
                        signature: self.signature,
                        trusted_keys: self.trusted_keys,
                    },
                };
                crate::stage::stage(&state, &req, progress)?
            }
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::InvalidName,
                    "give --name NAME (or --resume NAME)",
                ));
            }
        };
        if recs
            .iter()
            .all(|r| r.state == crate::store::record::StagingState::Complete)
        {
            crate::customize::warn_about_fstab(&state, &recs, progress);
            let policy = crate::trust::policy::Policy::of_this_machine()?;
            if policy.require_signature && recs.iter().any(|r| r.image.signature.is_none()) {
                progress.note(&format!(
                    "this image was not verified against a trusted key, and {} requires it: `activate` will refuse it (test-restore and attach work)",
                    policy.file.as_deref().map_or("the policy".into(), |p| p.display().to_string())
                ));
            }
        }
        let stagings = recs.iter().map(StagedSummary::of).collect::<Result<_>>()?;
        Ok(StageReport { stagings })
    }
}

impl Report for StageReport {
    fn print_text(&self) {
        for s in &self.stagings {
            println!(
                "staged '{}' ({}{}): {} onto {} in {} extents ({} written, {} zeroed); image sha256 {}",
                s.name,
                s.kind,
                s.partition_description
                    .as_ref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default(),
                human_bytes(s.image_size),
                s.disk,
                s.extents,
                human_bytes(s.disk_written),
                human_bytes(s.disk_zeroed),
                s.image_sha256
                    .as_deref()
                    .unwrap_or("not computed (no --sha256)")
            );
            if let Some(v) = &s.signature {
                println!("  signature: {}", describe_signature(v));
            }
        }
    }
}

/// List staged images, their state, and whether their map is still valid.
#[derive(clap::Args, Debug)]
pub struct ListArgs {}

#[derive(Debug, Serialize)]
pub struct ListReport {
    pub images: Vec<Listing>,
    #[serde(skip)]
    state_dir: PathBuf,
}

impl ListArgs {
    pub fn run(self, cx: &Context) -> Result<ListReport> {
        Ok(ListReport {
            images: crate::stage::staged::list(&cx.state)?,
            state_dir: cx.state.root().to_path_buf(),
        })
    }
}

impl Report for ListReport {
    fn print_text(&self) {
        if self.images.is_empty() {
            println!(
                "no staged images (state directory {})",
                self.state_dir.display()
            );
            return;
        }
        println!(
            "{:<20} {:<8} {:<10} {:>10} {:>6} {:<6} CONTAINER",
            "NAME", "KIND", "STATE", "SIZE", "DONE", "MAP"
        );
        for i in &self.images {
            let pct = match (i.written, i.image_size) {
                (Some(w), Some(s)) if s > 0 => format!("{}%", w * 100 / s),
                _ => "-".into(),
            };
            println!(
                "{:<20} {:<8} {:<10} {:>10} {:>6} {:<6} {}",
                i.name,
                i.kind.unwrap_or("-"),
                i.state.as_deref().unwrap_or("corrupt"),
                i.image_size.map(human_bytes).unwrap_or_else(|| "-".into()),
                pct,
                if i.map_valid { "valid" } else { "BAD" },
                i.container.as_deref().unwrap_or("-")
            );
            if let Some(p) = &i.problem {
                println!("    {p}");
            }
        }
    }
}

/// Show everything recorded about a staged image.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    name: String,
}

#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub record: StagingRecord,
    /// The disk's name now, found by its identity (`record.disk.path` is
    /// the name it had at staging); None when the map is not valid.
    pub disk: Option<String>,
    pub map_valid: bool,
    pub problem: Option<String>,
}

impl InfoArgs {
    pub fn run(self, cx: &Context) -> Result<InfoReport> {
        let record = cx.state.load(&self.name)?;
        let checked = crate::stage::staged::revalidate(&record);
        let disk = checked
            .as_ref()
            .ok()
            .map(|c| c.target.disk_path.display().to_string());
        let problem = checked.err().map(|e| e.to_string());
        Ok(InfoReport {
            record,
            disk,
            map_valid: problem.is_none(),
            problem,
        })
    }
}

impl Report for InfoReport {
    fn print_text(&self) {
        let rec = &self.record;
        println!("name:        {}", rec.name);
        println!("id:          {}", rec.id);
        println!("state:       {}", rec.state.as_str());
        println!(
            "image:       {} ({}, {})",
            rec.image.source.as_deref().unwrap_or("stdin"),
            rec.image.kind,
            human_bytes(rec.image.size)
        );
        if let Some(f) = &rec.image.failure {
            println!("failure:     {f}");
        }
        if let Some(sb) = &rec.image.standby {
            println!(
                "standby:     a copy of {} (fs uuid {}) made {}{}: {} filesystem uuid {}",
                sb.source_root,
                sb.source_fs_uuid.as_deref().unwrap_or("-"),
                if sb.copied_unix == 0 {
                    "— interrupted, incomplete".to_string()
                } else {
                    crate::progress::utc_time(sb.copied_unix)
                },
                if sb.merged.is_empty() {
                    String::new()
                } else {
                    format!(" with {} merged in", sb.merged.join(", "))
                },
                sb.fs_type,
                sb.fs_uuid
            );
            println!(
                "             consistency {}: each file copied consistently, not the tree as of one instant; {} changed while copied (copied again), {} vanished",
                sb.consistency, sb.changed_during_copy, sb.vanished_during_copy
            );
        }
        if let Some(p) = &rec.image.partition {
            println!("partition:   {}", describe_partition(p));
            if let Some(e) = p.entry() {
                println!(
                    "             LBA {}..{} ({}-byte sectors){}{}",
                    e.first_lba,
                    e.last_lba,
                    p.table.sector_size,
                    e.type_guid
                        .as_ref()
                        .map(|t| format!(", type {t}"))
                        .or(e.mbr_type.map(|t| format!(", type 0x{t:02x}")))
                        .unwrap_or_default(),
                    if e.bootable { ", bootable" } else { "" }
                );
            }
            println!("image sha256: {}", p.image_sha256.as_deref().unwrap_or("-"));
        }
        println!(
            "written:     {} of {} bytes",
            rec.image.written, rec.image.size
        );
        println!(
            "sha256:      {}",
            rec.image.sha256.as_deref().unwrap_or("-")
        );
        match (&rec.image.signature, &rec.image.expected_signature) {
            (Some(v), _) => {
                println!("signature:   {}", describe_signature(v));
                if !rec.image.customized.is_empty() {
                    println!(
                        "             (of the image as staged; changed since by customize, listed below)"
                    );
                }
            }
            (None, Some(e)) => println!("signature:   {} (not verified)", e.signature),
            (None, None) => println!("signature:   none"),
        }
        for c in &rec.image.customized {
            println!(
                "customized:  {}: {} changes, sha256 {} -> {}",
                crate::progress::utc_time(c.at_unix),
                c.change_count,
                c.sha256_before.as_deref().unwrap_or("-"),
                c.sha256
            );
            for ch in &c.changes {
                println!("             {} {}: {}", ch.what, ch.path, ch.detail);
            }
        }
        println!(
            "container:   {} (inode {}, {} bytes, image at +{})",
            rec.container.path, rec.container.inode, rec.container.size, rec.container.data_offset
        );
        println!(
            "filesystem:  {} {} on {} (uuid {})",
            rec.host.fs_type,
            rec.host.mount_point,
            rec.host.device,
            rec.host.fs_uuid.as_deref().unwrap_or("-")
        );
        for (i, segment) in rec.segments.iter().enumerate() {
            let what = match segment {
                Segment::File { container, host } => format!(
                    "{} ({}, {} {})",
                    container.path,
                    human_bytes(container.size),
                    host.fs_type,
                    host.mount_point
                ),
                Segment::Unallocated { disk, length } => format!(
                    "unallocated disk bytes {disk}..{} ({})",
                    disk + length,
                    human_bytes(*length)
                ),
                Segment::Volume(v) => format!(
                    "logical volume /dev/{}/{} ({}, {} piece{} on the disk)",
                    v.vg,
                    v.lv,
                    human_bytes(v.length),
                    v.pieces.len(),
                    if v.pieces.len() == 1 { "" } else { "s" }
                ),
            };
            println!("segment {:<4} {what}", i + 2);
        }
        let now = match &self.disk {
            Some(d) if *d == rec.disk.path => d.clone(),
            Some(d) => format!("{d} (staged as {})", rec.disk.path),
            None => format!("not found (staged as {})", rec.disk.path),
        };
        println!(
            "disk:        {now} ({}, {}-byte sectors)",
            human_bytes(rec.disk.size),
            rec.disk.logical_sector_size
        );
        println!(
            "extents:     {}",
            rec.map.as_ref().map_or(0, |m| m.extents().len())
        );
        match &self.problem {
            None => println!("map:         valid"),
            Some(e) => println!("map:         NOT VALID: {e}"),
        }
    }
}

/// Re-read a staged image from the raw disk and compare its hashes.
///
/// Re-derives the map, checks the on-disk header, and re-reads every
/// image byte through the map, comparing it with the hashes recorded
/// while staging. Exits 20 on any difference.
///
/// An image booted (as a trial) since it was staged was changed by its
/// own boot: the early-boot step noted each boot on the disk before the
/// image was mapped. Such differences are accepted — the bytes as they are
/// are re-hashed as the new baseline, and said so — and `activate` does
/// the same; any other difference is refused.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    pub(crate) name: String,
    /// Also compute the whole image's SHA-256 (one core, in order, so it
    /// sets the pace). It is always computed, and checked, when the
    /// staging has one on record (`stage --sha256`, a hash file, after
    /// `customize`); every byte is checked against the chunk hashes
    /// recorded while staging either way.
    #[arg(long)]
    pub(crate) sha256: bool,
}

impl VerifyArgs {
    pub fn run(self, cx: &Context) -> Result<VerifyReport> {
        let verified = crate::stage::verify::verify_hashing(
            &cx.state,
            &self.name,
            cx.progress.as_ref(),
            self.sha256,
        )?;
        if verified.report.changed_by_boot.is_none() {
            return Ok(verified.report);
        }
        // Only accepting the image's own boots changes state.
        verified.accept_own_boots(&cx.lock()?, cx.progress.as_ref())
    }
}

impl Report for VerifyReport {
    fn exit_code(&self) -> u8 {
        if self.ok {
            0
        } else {
            ErrorKind::VerifyFailed.exit_code() as u8
        }
    }

    fn print_text(&self) {
        if self.rehashed {
            println!(
                "'{}' verified: {} of {} chunks were changed by its own boot; re-hashed, sha256 {}",
                self.name,
                self.bad_chunk_count,
                self.chunks_checked,
                self.sha256.as_deref().unwrap_or("-")
            );
        } else if self.ok {
            println!(
                "'{}' verified: {} in {} chunks match; sha256 {}",
                self.name,
                human_bytes(self.bytes_checked),
                self.chunks_checked,
                self.sha256
                    .as_deref()
                    .unwrap_or("not computed (verify --sha256)")
            );
        } else {
            println!(
                "'{}' FAILED verification: {} of {} chunks differ (first: {:?})",
                self.name, self.bad_chunk_count, self.chunks_checked, self.bad_chunks
            );
        }
    }
}

/// Print where the image lies on the disk (byte units).
#[derive(clap::Args, Debug)]
pub struct MapArgs {
    name: String,
}

impl MapArgs {
    pub fn run(self, cx: &Context) -> Result<MapExport> {
        crate::stage::staged::export_map(&cx.state.load(&self.name)?)
    }
}

impl Report for MapExport {
    fn print_text(&self) {
        println!(
            "{} on {} ({} bytes, {}-byte sectors)",
            self.name, self.disk, self.image_size, self.logical_sector_size
        );
        println!(
            "{:>16} {:>16} {:>16}",
            "IMAGE_OFFSET", "DISK_OFFSET", "LENGTH"
        );
        for e in &self.extents {
            println!(
                "{:>16} {:>16} {:>16}",
                e.image_offset, e.disk_offset, e.length
            );
        }
    }
}

/// Remove a staged image: header wiped, container unpinned and deleted.
///
/// The name a whole-disk image was staged under discards all of its
/// partitions (NAME-p1, NAME-p2, …).
#[derive(clap::Args, Debug)]
pub struct DiscardArgs {
    pub(crate) name: String,
    /// Also discard when the state file is damaged.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Serialize)]
pub struct DiscardReport {
    pub discarded: Vec<Discarded>,
}

impl DiscardArgs {
    pub fn run(self, cx: &Context) -> Result<DiscardReport> {
        Ok(DiscardReport {
            discarded: crate::stage::staged::discard_named(
                &cx.lock_after_ended_trial()?,
                &self.name,
                self.force,
            )?,
        })
    }
}

impl Report for DiscardReport {
    fn print_text(&self) {
        for d in &self.discarded {
            println!(
                "discarded '{}'{}",
                d.name,
                d.container
                    .as_ref()
                    .map(|c| format!(" ({c} removed)"))
                    .unwrap_or_default()
            );
            for v in &d.volumes_removed {
                println!("removed logical volume {v}");
            }
        }
    }
}

/// Find staged images on a disk from their headers alone.
///
/// Scans a disk (or disk image file) for liverestore headers, without
/// the state directory.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    disk: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct ScanReport {
    pub disk: PathBuf,
    pub headers: Vec<FoundHeader>,
}

impl ScanArgs {
    pub fn run(self, cx: &Context) -> Result<ScanReport> {
        let headers = crate::stage::scan::scan(&self.disk, cx.progress.as_ref())?;
        Ok(ScanReport {
            disk: self.disk,
            headers,
        })
    }
}

impl Report for ScanReport {
    fn print_text(&self) {
        if self.headers.is_empty() {
            println!("no liverestore headers on {}", self.disk.display());
        }
        for h in &self.headers {
            match &h.error {
                None => println!(
                    "{:>14}  {} '{}' {} ({} bytes) container {}",
                    h.disk_offset,
                    h.id.as_deref().unwrap_or_default(),
                    h.name.as_deref().unwrap_or_default(),
                    h.state.as_deref().unwrap_or_default(),
                    h.image_size.unwrap_or(0),
                    h.container.as_deref().unwrap_or_default()
                ),
                Some(e) => println!("{:>14}  damaged header: {e}", h.disk_offset),
            }
        }
    }
}

/// Re-create lost records from the headers on a disk.
///
/// When the state directory is lost (a broken or re-imaged primary, a
/// restored backup of /var/lib), the stagings themselves are still on the
/// disk, each with its record in its on-disk header. `adopt` reads the
/// whole DISK as `scan` does and re-creates the record of each complete
/// staging whose map still re-derives to the recorded one and whose every
/// chunk, read back, has the hash its header records. Others are listed
/// with the reason (exit 20 when a staging's data differs from its
/// header); existing records are left alone.
///   liverestore scan /dev/sda
///   liverestore adopt /dev/sda
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AdoptArgs {
    /// The whole disk the stagings are on (a block device).
    disk: PathBuf,
}

impl AdoptArgs {
    pub fn run(self, cx: &Context) -> Result<crate::stage::adopt::AdoptReport> {
        crate::stage::adopt::adopt(&cx.lock()?, &self.disk, cx.progress.as_ref())
    }
}

impl Report for crate::stage::adopt::AdoptReport {
    fn exit_code(&self) -> u8 {
        if self.headers.iter().any(|h| h.data_mismatch) {
            ErrorKind::VerifyFailed.exit_code() as u8
        } else {
            0
        }
    }

    fn print_text(&self) {
        if self.headers.is_empty() {
            println!("no liverestore headers on {}", self.disk);
        }
        for h in &self.headers {
            println!(
                "{:>14}  '{}' {}{}{}",
                h.disk_offset,
                h.name.as_deref().unwrap_or("?"),
                h.outcome,
                h.kind.map(|k| format!(" ({k})")).unwrap_or_default(),
                h.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        println!("{} adopted", self.adopted);
    }
}
