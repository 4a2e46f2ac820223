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
//! `--inject-drivers`, `--fix-fstab`, `--auto-commit`, then
//! `--preserve`, so that what a user names explicitly wins.
//!
//! Owns: changes inside a staged image. May not: follow a path out of the
//! image (every path goes through [`crate::attach::root_dir::RootDir`]), or write a staged
//! byte except through an attachment whose writes go through the map.

pub mod auto_commit;
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
    /// Put the auto-commit unit in ([`auto_commit`]).
    pub auto_commit: Option<AutoCommitOptions>,
}

/// `--auto-commit`: the check, its time limit, and the static liverestore
/// to put into the image (read and checked once, when made).
#[derive(Debug, Clone)]
pub struct AutoCommitOptions {
    pub settings: auto_commit::Settings,
    helper: Vec<u8>,
}

impl AutoCommitOptions {
    /// With the liverestore at `helper`, which must be static: it runs
    /// whatever C library the restored system has.
    pub fn new(settings: auto_commit::Settings, helper: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(helper).map_err(|e| {
            Error::io("read the liverestore to put into the image", e).with_path(helper)
        })?;
        if !crate::boot::initrd::is_static_elf(&bytes) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "--auto-commit puts a liverestore into the image, which must be statically linked: {} is not (give one with --helper)",
                    helper.display()
                ),
            )
            .with_path(helper));
        }
        Ok(AutoCommitOptions {
            settings,
            helper: bytes,
        })
    }
}

impl CustomizeOptions {
    /// Refuse options that cannot work, before anything is touched.
    pub fn check(&self) -> Result<()> {
        let nothing = self.preserve.is_empty()
            && !self.carry_network
            && !self.new_identity
            && self.hostname.is_none()
            && !self.inject_drivers
            && !self.fix_fstab
            && self.auto_commit.is_none();
        if nothing {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "nothing to do: give --preserve PATH, --carry-network, --new-identity, --hostname NAME, --inject-drivers, --fix-fstab or --auto-commit",
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
        if opts.auto_commit.is_some() || opts.carry_network {
            // before anything changes (a read-write mount alone would)
            test_restore::with_mounted(state, name, |mnt| {
                let root = crate::attach::root_dir::RootDir::open(mnt)?;
                if let Some(a) = &opts.auto_commit {
                    auto_commit::check(&root)?;
                    auto_commit::check_room(&root, a.helper.len() as u64)?;
                }
                if opts.carry_network {
                    network::check(&opts.source_root, &root)?;
                }
                Ok(())
            })?;
        }
        let report =
            verify::verify_before_change(state, name, progress, "not customized; stage it again")?;
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
    let hashes = verify::rehash(&rec, "rehash", progress)?;
    let sha256 = hashes.sha256.clone().expect("asked for");
    rec.image.chunk_blake3 = hashes.chunks;
    rec.image.sha256 = Some(sha256.clone());
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
        sha256: sha256.clone(),
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
        sha256,
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
    let changes = test_restore::with_mounted_rw(device, fs, &mnt, |mnt| {
        crate::attach::root_dir::RootDir::open(mnt).and_then(|root| apply(&root, opts, ids))
    })?;
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
    if let Some(a) = &opts.auto_commit {
        changes.extend(auto_commit::install(root, &a.settings, &a.helper)?);
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
        let head = image_head(rec, 4096)?;
        let (uuid, label) = fstab::ids_of_head(&head);
        ids.uuids.extend(uuid);
        ids.labels.extend(label);
    }
    Ok(ids)
}

/// The first `len` bytes of staging `rec`'s image (fewer when it is
/// smaller), read from the disk through its revalidated map.
fn image_head(rec: &crate::store::record::StagingRecord, len: usize) -> Result<Vec<u8>> {
    let checked = staged::revalidate(rec)?;
    let reader = DiskReader::open(&checked.target.disk_path, rec.image_map()?)?;
    let mut head = crate::map::disk_io::AlignedBuf::new(len.min(rec.image.size as usize).max(512));
    let whole = head.len() - head.len() % 512;
    reader.read_at(0, &mut head[..whole])?;
    Ok(head[..whole].to_vec())
}

/// The warning about the restored system's `fstab` (its text), whose
/// devices named by identity none of the `set`'s filesystems or
/// partitions has; `member` is the staging that holds it.
pub fn fstab_warning(
    set: &[crate::store::record::StagingRecord],
    fstab_text: &str,
    member: &str,
) -> Option<String> {
    at_risk_warning(&image_ids(set).ok()?, fstab_text, member)
}

/// The warning about `fstab_text`'s devices that none of `ids` is.
fn at_risk_warning(ids: &fstab::ImageIds, fstab_text: &str, member: &str) -> Option<String> {
    let risky = fstab::at_risk(fstab_text, ids);
    if risky.is_empty() {
        return None;
    }
    let what: Vec<String> = risky.iter().map(ToString::to_string).collect();
    Some(format!(
        "warning: the restored system's /etc/fstab names devices it will not find at boot: {}; systemd would wait for them and stop in emergency mode. `liverestore customize {member} --fix-fstab` makes them nofail",
        what.join(", ")
    ))
}

/// Before staging (`plan`): the warning [`fstab_warning`] gives, from the
/// image itself — its `pieces` as `plan` splits it, read through `src`
/// (see [`crate::input::Image::random_source`]); the first piece whose
/// ext4 filesystem holds `/etc/fstab` is the root. `Err`: why it could not
/// be looked at (`stage` looks again once it is staged).
pub fn fstab_warning_before_staging(
    src: Option<std::sync::Arc<dyn crate::input::transport::ReadAt>>,
    pieces: &[crate::input::split::Piece],
) -> std::result::Result<Option<String>, String> {
    let src = src.ok_or("the image is compressed or in a format with tables: its files are looked at once it is staged")?;
    let mut ids = fstab::ImageIds::default();
    let mut root = None;
    for p in pieces {
        if let Some(e) = p.partition.as_ref().and_then(|p| p.entry()) {
            ids.partuuids.extend(e.guid.clone());
            ids.partlabels.extend(e.label.clone());
        }
        let mut head = vec![0u8; 0x10048.min(p.size as usize)];
        src.read_exact_at(&mut head, p.offset)
            .map_err(|e| format!("the image cannot be read at byte {}: {e}", p.offset))?;
        let (uuid, label) = fstab::ids_of_head(&head);
        ids.uuids.extend(uuid);
        ids.labels.extend(label);
        if root.is_none() && test_restore::detect_filesystem(&head) == Some("ext4") {
            let text = crate::input::ext4_files::read_file(
                src.clone(),
                (p.offset, p.size),
                "/etc/fstab",
                1 << 20,
            )
            .map_err(|e| e.to_string())?;
            if let Some(text) = text {
                root = Some((p.name.clone().unwrap_or_else(|| "NAME".into()), text));
            }
        }
    }
    let Some((member, text)) = root else {
        return Err("no ext4 filesystem of the image holds /etc/fstab (xfs and btrfs are looked at once staged)".into());
    };
    Ok(at_risk_warning(
        &ids,
        &String::from_utf8_lossy(&text),
        &member,
    ))
}

/// After staging: warn, as `activate` does, about the fstab of the
/// `set`'s Linux root filesystem (the first member whose ext4, xfs or
/// btrfs holds `/etc/fstab`, looked at read-only). A staging that holds no
/// such filesystem is not attached at all; nothing here fails a staging.
pub fn warn_about_fstab(
    state: &StateLock<'_>,
    set: &[crate::store::record::StagingRecord],
    progress: &dyn Progress,
) {
    for rec in set {
        let linux = image_head(rec, 0x10048)
            .ok()
            .and_then(|h| test_restore::detect_filesystem(&h))
            .is_some_and(|fs| matches!(fs, "ext4" | "xfs" | "btrfs"));
        if !linux {
            continue;
        }
        let fstab = test_restore::with_mounted(state, &rec.name, |mnt| {
            crate::attach::root_dir::RootDir::open(mnt)?
                .read_limited(std::path::Path::new("/etc/fstab"), 1 << 20)
        });
        match fstab {
            Ok(Some(text)) => {
                if let Some(w) = fstab_warning(set, &String::from_utf8_lossy(&text), &rec.name) {
                    progress.note(&w);
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                progress.note(&format!(
                    "the restored system's /etc/fstab in '{}' could not be looked at ({e}); `activate` checks it again",
                    rec.name
                ));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::split::Piece;
    use crate::input::transport::{MemSource, ReadAt};

    #[test]
    fn plan_reads_the_fstab_in_the_image_itself() {
        let fstab = b"LABEL=root / ext4 defaults 0 1\nLABEL=root /srv ext4 defaults 0 2\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\nUUID=ABCD-1234 /mnt vfat nofail 0 0\n";
        let Some(fs) =
            crate::input::ext4_files::ext4_with(&[("/etc/fstab", fstab)], None, &["-L", "root"])
        else {
            eprintln!("no mkfs.ext4: skipped");
            return;
        };
        // a whole-disk image: 1 MiB of something else, then the root
        let mut image = vec![0u8; 1 << 20];
        image.extend_from_slice(&fs);
        let src: std::sync::Arc<dyn ReadAt> = std::sync::Arc::new(MemSource(image));
        let piece = |name: &str, offset: u64, size: u64| Piece {
            name: Some(name.into()),
            offset,
            size,
            partition: None,
        };
        let pieces = [
            piece("web-p1", 0, 1 << 20),
            piece("web-p2", 1 << 20, fs.len() as u64),
        ];
        let w = fstab_warning_before_staging(Some(src.clone()), &pieces)
            .unwrap()
            .unwrap();
        assert!(
            w.contains("/boot/efi (UUID=ABCD-1234, line 3)")
                && !w.contains("/srv")
                && !w.contains("/mnt")
                && w.contains("customize web-p2 --fix-fstab"),
            "{w}"
        );
        // nothing it can read: said why
        assert!(fstab_warning_before_staging(None, &pieces).is_err());
        assert!(fstab_warning_before_staging(Some(src), &pieces[..1]).is_err());
    }
}
