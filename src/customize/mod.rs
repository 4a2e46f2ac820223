//! `customize`: change a staged system before its first boot, so that it
//! comes up as this machine — reachable, with the files it must keep, or
//! as a new machine of its own.
//!
//! The staged bytes are first verified against their hashes (a customize
//! never builds on bytes it cannot vouch for), then the image is attached
//! writable (`attach --rw=direct`: device-mapper, or the FUSE fallback
//! whose writes go through `DiskWriter`), its filesystem mounted, the
//! changes made inside it ([`crate::attach::root_dir::RootDir`] keeps every path inside the
//! image), unmounted and detached. Then every chunk is hashed anew from
//! the disk and the record (state file and on-disk header) says what was
//! changed. While the bytes and the hashes disagree the record is marked
//! `customizing`: `verify` and `activate` refuse it, and running
//! `customize` again finishes the job.
//!
//! Order inside the image: `--new-identity`, `--carry-network`,
//! `--inject-drivers`, then `--preserve`, so that what a user names
//! explicitly wins.
//!
//! Owns: changes inside a staged image. May not: follow a path out of the
//! image (every path goes through [`crate::attach::root_dir::RootDir`]), or write a staged
//! byte except through an attachment whose writes go through the map.

pub(crate) mod copy;
pub(crate) mod drivers;
pub mod fstab;
pub(crate) mod network;
pub(crate) mod new_identity;

use std::path::PathBuf;

use serde::Serialize;

use crate::attach::{self, AttachMode};
use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::DiskReader;
use crate::progress::Progress;
pub use crate::store::record::Change;
use crate::store::record::Customization;
use crate::store::state_dir::{StateDir, StateLock};
use crate::{attach::test_restore, stage::staged, stage::verify};

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct CustomizeOptions {
    /// Files or trees to copy from the source system, same path inside.
    pub preserve: Vec<PathBuf>,
    /// Where the source system's files are (`/`: the running system).
    pub source_root: PathBuf,
    pub carry_network: bool,
    pub new_identity: bool,
    pub hostname: Option<String>,
    pub inject_drivers: bool,
    /// Make `nofail` the fstab entries whose devices will not exist at
    /// boot ([`fstab`]).
    pub fix_fstab: bool,
}

impl CustomizeOptions {
    /// Refuse options that cannot work, before anything is touched.
    pub fn check(&self) -> Result<()> {
        let nothing = self.preserve.is_empty()
            && !self.carry_network
            && !self.new_identity
            && self.hostname.is_none()
            && !self.inject_drivers
            && !self.fix_fstab;
        if nothing {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "nothing to do: give --preserve PATH, --carry-network, --new-identity, --hostname NAME, --inject-drivers or --fix-fstab",
            ));
        }
        if let Some(h) = &self.hostname {
            new_identity::check_hostname(h)?;
        }
        for p in &self.preserve {
            copy::check_preserve_path(p)?;
            let src = self.source_root.join(p.strip_prefix("/").unwrap_or(p));
            if std::fs::symlink_metadata(&src).is_err() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "--preserve {}: there is no such file on this system",
                        p.display()
                    ),
                )
                .with_path(src));
            }
        }
        Ok(())
    }
}

/// What a customize did.
#[derive(Debug, Clone, Serialize)]
pub struct CustomizeReport {
    pub name: String,
    /// The attached device and how it was attached.
    pub device: String,
    pub backend: String,
    pub filesystem: String,
    /// An interrupted customize was finished.
    pub resumed: bool,
    pub changes: Vec<Change>,
    /// SHA-256 of the staged image before (when known) and after.
    pub sha256_before: Option<String>,
    pub sha256: String,
}

/// Run a host tool for a change; its stdout. A missing tool is
/// [`ErrorKind::KernelLacks`] naming the Debian package that has it.
pub(crate) fn run_tool(cmd: &mut std::process::Command, package: &str) -> Result<String> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        Error::new(
            ErrorKind::KernelLacks,
            format!("cannot run {what} ({e}): install {package}"),
        )
    })?;
    if !out.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{what} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The record of `name`, with a clearer refusal for a whole-disk image's
/// set name.
fn load(state: &StateDir, name: &str) -> Result<crate::store::record::StagingRecord> {
    match state.load(name) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let members = staged::set_of(state, name).unwrap_or_default();
            if members.is_empty() {
                return Err(e);
            }
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "'{name}' is a whole-disk image staged as {}: customize the member that holds the root filesystem",
                    names.join(", ")
                ),
            ))
        }
        other => other,
    }
}

/// Customize the staged image `name`.
pub fn customize(
    state: &StateLock<'_>,
    name: &str,
    opts: &CustomizeOptions,
    progress: &dyn Progress,
) -> Result<CustomizeReport> {
    crate::stage::plan::require_root()?;
    opts.check()?;
    // verify (first run) and attach (resumed run) refuse an incomplete
    // staging.
    let rec = load(state, name)?;
    if state.activated_names()?.iter().any(|n| n == name) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is activated: `liverestore rollback` first, then customize and activate again"
            ),
        ));
    }
    let resumed = rec.image.customizing.is_some();
    let sha256_before = if resumed {
        None
    } else {
        let report = verify::verify(state, name, progress)?;
        if !report.ok {
            return Err(Error::new(
                ErrorKind::VerifyFailed,
                format!(
                    "the staged bytes of '{name}' do not match their hashes ({} bad chunks): not customized; stage it again",
                    report.bad_chunk_count
                ),
            ));
        }
        let mut rec = state.load(name)?;
        rec.image.customizing = Some(now());
        staged::record_changed(state, &rec)?;
        report.sha256
    };

    // What the image's fstab may name (its own filesystems and partitions).
    let ids = if opts.fix_fstab {
        image_ids(&staged::set_of(state, name)?)?
    } else {
        fstab::ImageIds::default()
    };
    let a = attach::attach(state, name, AttachMode::Direct)?;
    let edited = edit(name, &rec.instance(), &a.device, opts, &ids);
    let down = attach::detach(state, name);
    let (filesystem, changes) = edited.map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "customize of '{name}' stopped: {e}; the image is marked as being customized: fix the cause and run `liverestore customize {name}` again, or discard it"
            ),
        )
    })?;
    down?;

    let mut rec = state.load(name)?;
    let checked = staged::revalidate(&rec)?;
    let align = checked.target.io_align();
    let reader = DiskReader::open(&checked.target.disk_path, checked.map)?;
    let hashes = verify::hash_image(&rec, &reader, align, "rehash", progress)?;
    rec.image.chunk_blake3 = hashes.chunks;
    rec.image.sha256 = Some(hashes.sha256.clone());
    rec.image.customizing = None;
    rec.image.customized.push(Customization {
        at_unix: now(),
        changes: changes
            .iter()
            .take(Customization::MAX_KEPT)
            .cloned()
            .collect(),
        change_count: changes.len() as u64,
        sha256_before: sha256_before.clone(),
        sha256: hashes.sha256.clone(),
    });
    staged::record_changed(state, &rec)?;
    Ok(CustomizeReport {
        name: name.to_string(),
        device: a.device,
        backend: a.backend,
        filesystem: filesystem.to_string(),
        resumed,
        changes,
        sha256_before,
        sha256: hashes.sha256,
    })
}

/// Mount the attached `device` read-write, make the changes, unmount
/// (also on error).
fn edit(
    name: &str,
    instance: &str,
    device: &str,
    opts: &CustomizeOptions,
    ids: &fstab::ImageIds,
) -> Result<(&'static str, Vec<Change>)> {
    let fs =
        test_restore::detect_filesystem(&test_restore::read_head(device)?).ok_or_else(|| {
            Error::new(
                ErrorKind::BadImage,
                format!("'{name}' holds no filesystem liverestore recognizes"),
            )
        })?;
    if !matches!(fs, "ext4" | "xfs" | "btrfs") {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "'{name}' holds {fs}: customize changes a Linux system's root filesystem (ext4, xfs, btrfs)"
            ),
        ));
    }
    let mnt = PathBuf::from(format!("/run/liverestore/customize-{instance}"));
    test_restore::mount(device, fs, &mnt, false)?;
    let changed =
        crate::attach::root_dir::RootDir::open(&mnt).and_then(|root| apply(&root, opts, ids));
    // Written back before the unmount returns; syncfs reports errors.
    let synced = std::fs::File::open(&mnt)
        .and_then(|f| rustix::fs::syncfs(&f).map_err(Into::into))
        .map_err(|e| Error::io("sync the image's filesystem", e).with_path(&mnt));
    let unmounted = attach::unmount(&mnt);
    let _ = std::fs::remove_dir(&mnt);
    let changes = changed?;
    synced?;
    unmounted?;
    Ok((fs, changes))
}

/// Make the changes `opts` asks for inside `root`.
pub fn apply(
    root: &crate::attach::root_dir::RootDir,
    opts: &CustomizeOptions,
    ids: &fstab::ImageIds,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    if opts.new_identity {
        changes.extend(new_identity::apply(root, opts.hostname.as_deref())?);
    } else if let Some(h) = &opts.hostname {
        changes.extend(new_identity::set_hostname(root, h)?);
    }
    if opts.carry_network {
        changes.extend(network::carry(&opts.source_root, root)?);
    }
    if opts.inject_drivers {
        changes.extend(drivers::inject(&opts.source_root, root)?);
    }
    if opts.fix_fstab {
        changes.extend(fix_fstab(root, ids)?);
    }
    for p in &opts.preserve {
        let c = copy::preserve(&opts.source_root, p, root)?;
        let mut detail = format!(
            "{} files, {} directories, {} links, {} bytes",
            c.files, c.dirs, c.symlinks, c.bytes
        );
        if !c.skipped.is_empty() {
            detail.push_str(&format!("; skipped (not files): {}", c.skipped.join(", ")));
        }
        changes.push(Change::new("preserved", p, &detail));
    }
    Ok(changes)
}

/// `--fix-fstab`: the entries of the image's `/etc/fstab` whose devices
/// will not exist at its boot get `nofail`; the file keeps its owner and
/// mode, and every other byte.
fn fix_fstab(
    root: &crate::attach::root_dir::RootDir,
    ids: &fstab::ImageIds,
) -> Result<Vec<Change>> {
    let path = std::path::Path::new("/etc/fstab");
    let Some(bytes) = root.read(path)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&bytes);
    let risky = fstab::at_risk(&text, ids);
    if risky.is_empty() {
        return Ok(Vec::new());
    }
    let lines: Vec<usize> = risky.iter().map(|r| r.line).collect();
    let meta = root
        .meta(path)?
        .unwrap_or(crate::attach::root_dir::Meta::root(0o644));
    root.write(path, fstab::with_nofail(&text, &lines).as_bytes(), meta)?;
    let what: Vec<String> = risky.iter().map(ToString::to_string).collect();
    Ok(vec![Change::new(
        "fstab",
        path,
        &format!("nofail: {}", what.join(", ")),
    )])
}

/// What identifies the filesystems and partitions of the staged images
/// `set` (a whole-disk image's partitions, or one image): read from each
/// one's first 4 KiB through its map, and from its partition entry.
pub fn image_ids(set: &[crate::store::record::StagingRecord]) -> Result<fstab::ImageIds> {
    let mut ids = fstab::ImageIds::default();
    for rec in set {
        if let Some(e) = rec.image.partition.as_ref().and_then(|p| p.entry()) {
            ids.partuuids.extend(e.guid.clone());
            ids.partlabels.extend(e.label.clone());
        }
        let checked = staged::revalidate(rec)?;
        let reader = DiskReader::open(&checked.target.disk_path, rec.image_map()?)?;
        let mut head =
            crate::map::disk_io::AlignedBuf::new(4096.min(rec.image.size as usize).max(512));
        let len = head.len() - head.len() % 512;
        reader.read_at(0, &mut head[..len])?;
        let (uuid, label) = fstab::ids_of_head(&head);
        ids.uuids.extend(uuid);
        ids.labels.extend(label);
    }
    Ok(ids)
}
