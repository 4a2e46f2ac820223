//! Warm standbys: bootable copies of this very system, kept on its own
//! disk as stagings (`snapshot`).
//!
//! A snapshot is made in the same steps as any staging, so that `verify`,
//! `test-restore`, `customize`, `export` and `activate` take it like any
//! other: an empty filesystem of the root's type is made in a sparse file
//! (so it has its own UUID) and staged (its zeros cost `BLKZEROOUT`, not
//! writes); the staging is marked as being copied; it is attached
//! writable (device-mapper, or the FUSE fallback — every write goes
//! through the map), mounted, and the running tree copied into it
//! ([`tree_copy`]: rsync, one filesystem at a time, `/boot` too when it is
//! separate); the copy's `/etc/fstab` names its own root
//! ([`crate::customize::fstab::for_copy`]); then every chunk is hashed
//! anew and the record says it is a standby ([`Standby`]). Until then the
//! staging is marked as being copied, and `verify`, `activate` and
//! `export` refuse it: power lost halfway leaves a staging marked
//! incomplete, never a half-copied tree called complete. A failure (a
//! hook, the copy) discards it: nothing is kept.
//!
//! Owns: making standbys. May not: write a staged byte except through an
//! attachment whose writes go through the map; change how the machine
//! boots (that is [`crate::boot`]).

pub mod tree_copy;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::attach::root_dir::{Kind, Meta, RootDir};
use crate::attach::{self, AttachMode, test_restore};
use crate::customize::run_tool;
use crate::error::{Error, ErrorKind, Result};
use crate::input::split::Split;
use crate::progress::{Progress, unix_now};
use crate::space::allocate::SpaceRequest;
use crate::stage::{StageRequest, signature::SignatureRequest, staged, verify};
use crate::store::record::Standby;
use crate::store::state_dir::StateLock;

/// The smallest standby: room for a filesystem's own structures.
const MIN_SIZE: u64 = 32 << 20;

/// What to copy, and where to.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub name: String,
    pub space: SpaceRequest,
    /// The tree to copy (`/`: the running system).
    pub source_root: PathBuf,
    /// rsync `--exclude` patterns (anchored at the tree's root when they
    /// start with `/`).
    pub exclude: Vec<String>,
    /// The standby's size; by default the data to copy and a quarter more
    /// (at least 256 MiB more).
    pub size: Option<u64>,
    /// Shell commands run before the copy (a database flushed or paused)
    /// and after it; a failing one keeps nothing.
    pub pre: Option<String>,
    pub post: Option<String>,
    /// After a successful snapshot, keep only the N newest standbys of the
    /// same source tree (the others are discarded; an activated one never).
    pub keep: Option<usize>,
}

/// What a snapshot made.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub name: String,
    pub kind: &'static str,
    pub size: u64,
    pub standby: Standby,
    /// Bytes of file data rsync copied, over both passes.
    pub bytes_copied: u64,
    /// What changed in the copy's `/etc/fstab`.
    pub fstab_changes: Vec<String>,
    pub sha256: String,
    /// `--refresh`: the standby existed and was brought up to date in
    /// place; how many of its chunks changed.
    pub refreshed: bool,
    pub chunks_changed: u64,
    pub chunks: u64,
    /// Older standbys discarded by `--keep`.
    pub pruned: Vec<String>,
    pub seconds: f64,
}

/// The filesystem a tree lives on: its type, UUID, used bytes.
struct SourceFs {
    fs_type: String,
    uuid: Option<String>,
    used: u64,
}

/// The filesystem mounted at (or holding) `path`, as `findmnt` sees it.
fn source_fs(path: &Path) -> Result<SourceFs> {
    let out = run_tool(
        std::process::Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE,UUID", "--target"])
            .arg(path),
        "util-linux",
    )?;
    let mut f = out.split_whitespace();
    let fs_type = f.next().unwrap_or("").to_string();
    let uuid = f.next().map(str::to_string);
    let st = rustix::fs::statvfs(path).map_err(|e| Error::from(e).with_path(path))?;
    let used = (st.f_blocks - st.f_bfree) * st.f_frsize;
    Ok(SourceFs {
        fs_type,
        uuid,
        used,
    })
}

/// Whether `dir` is the root of a filesystem other than its parent's.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Ok(p)) = (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

/// The exclusions every snapshot has: staging containers, the state
/// directory's contents (a standby does not carry records of stagings,
/// itself among them), `lost+found` (the new filesystem has its own).
fn standard_excludes(source_root: &Path, state_root: &Path) -> Vec<String> {
    let mut v = vec!["*.liverestore".to_string(), "/lost+found".to_string()];
    if let Ok(rel) = state_root.strip_prefix(source_root) {
        v.push(format!("/{}/***", rel.display()));
    }
    v
}

/// An empty filesystem of `fs_type`, `size` bytes, in a new sparse file
/// at `path`; its UUID.
fn empty_filesystem(path: &Path, fs_type: &str, size: u64) -> Result<String> {
    let f = std::fs::File::create(path)
        .map_err(|e| Error::io("create the empty filesystem's file", e).with_path(path))?;
    f.set_len(size)
        .map_err(|e| Error::io("size the empty filesystem's file", e).with_path(path))?;
    drop(f);
    match fs_type {
        // The staged zeros are real zeros on the disk (BLKZEROOUT), so the
        // inode tables need no initialising.
        "ext4" => run_tool(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=1"])
                .arg(path),
            "e2fsprogs",
        )?,
        "xfs" => run_tool(
            std::process::Command::new("mkfs.xfs")
                .args(["-q", "-f", "-K"])
                .arg(path),
            "xfsprogs",
        )?,
        other => {
            return Err(Error::new(
                ErrorKind::UnsupportedFilesystem,
                format!("a snapshot cannot recreate a {other} root yet (ext4 and xfs only)"),
            ));
        }
    };
    let uuid = run_tool(
        std::process::Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(path),
        "util-linux",
    )?;
    Ok(uuid.trim().to_string())
}

/// Run a hook (`sh -c CMD`); a failure is an error naming it.
fn hook(which: &str, cmd: &str) -> Result<()> {
    let status = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .map_err(|e| Error::io(format!("run the {which} hook"), e))?;
    if !status.success() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!("the {which} hook `{cmd}` failed ({status})"),
        ));
    }
    Ok(())
}

/// Make the standby `opts.name`: a copy of the tree at `opts.source_root`.
pub fn snapshot(
    state: &StateLock<'_>,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    crate::stage::plan::require_root()?;
    crate::store::record::validate_name(&opts.name)?;
    if state.exists(&opts.name) {
        return Err(Error::new(
            ErrorKind::NameInUse,
            format!(
                "'{}' exists: discard it first, or give another --name",
                opts.name
            ),
        ));
    }
    let started = Instant::now();
    let root = &opts.source_root;
    let src = source_fs(root)?;
    if !matches!(src.fs_type.as_str(), "ext4" | "xfs") {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "{} is on {}: a snapshot recreates ext4 and xfs roots only (a btrfs root's subvolume layout is not recreated yet)",
                root.display(),
                if src.fs_type.is_empty() {
                    "an unknown filesystem"
                } else {
                    &src.fs_type
                }
            ),
        )
        .with_path(root));
    }
    // A separate /boot is copied into the tree (the copy boots from its
    // own /boot). The ESP is shared: the copy's fstab keeps mounting the
    // machine's ESP, which a mapped boot does not need.
    let boot = root.join("boot");
    let merged: Vec<String> = if is_mount_point(&boot) {
        vec!["/boot".to_string()]
    } else {
        Vec::new()
    };
    let boot_used = if merged.is_empty() {
        0
    } else {
        source_fs(&boot)?.used
    };
    let data = src.used + boot_used;
    let size = match opts.size {
        Some(s) => {
            if s < data + data / 20 || s < MIN_SIZE {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "--size {s} is too small for the {data} bytes to copy (and the new filesystem's own): give at least {}",
                        (data + data / 4).max(MIN_SIZE).next_multiple_of(1 << 20)
                    ),
                ));
            }
            s
        }
        None => (data + (data / 4).max(256 << 20)).next_multiple_of(1 << 20),
    };
    if let Some(cmd) = &opts.pre {
        hook("--pre", cmd).map_err(|e| Error::new(e.kind(), format!("{e}: nothing made")))?;
    }
    // --post runs whatever happens from here (it resumes what --pre
    // paused); a failing one discards the standby.
    let made = stage_and_copy(state, opts, &src, size, &merged, progress);
    let post = after_copy(opts.post.as_deref(), made.is_ok(), progress);
    let (standby, bytes_copied, fstab_changes) = made?;
    if let Err(e) = post {
        let _ = staged::discard(state, &opts.name, true);
        return Err(Error::new(
            e.kind(),
            format!("{e}: the standby '{}' was discarded", opts.name),
        ));
    }
    let (sha256, chunks_changed, chunks) =
        record_standby(state, &opts.name, standby.clone(), progress)?;
    let pruned = match opts.keep {
        Some(n) => prune(state, &standby.source_root, n, progress)?,
        None => Vec::new(),
    };
    Ok(SnapshotReport {
        name: opts.name.clone(),
        kind: "standby",
        size,
        standby,
        bytes_copied,
        fstab_changes,
        sha256,
        refreshed: false,
        chunks_changed,
        chunks,
        pruned,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Bring the standby `name` up to date in place: the same copy again
/// (rsync writes only the files that changed), then every chunk hashed
/// anew. Its tree, exclusions and filesystem are the recorded ones.
pub fn refresh(
    state: &StateLock<'_>,
    name: &str,
    hooks: (Option<&str>, Option<&str>),
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    crate::stage::plan::require_root()?;
    let started = Instant::now();
    let rec = state.load(name)?;
    let Some(old) = rec.image.standby.clone() else {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is not a standby (it was staged from an image): only `snapshot` makes what --refresh updates"
            ),
        ));
    };
    if state.activated_names()?.iter().any(|n| n == name) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{name}' is activated (as a trial, or armed as this system's standby): `liverestore rollback` first, refresh it, then `liverestore activate {name} --standby` again"
            ),
        ));
    }
    if rec.image.customizing.is_none() {
        // An interrupted refresh is finished by refreshing again.
        verify::verify_before_change(
            state,
            name,
            progress,
            "not refreshed; discard it and snapshot again",
        )?;
    }
    let source_root = PathBuf::from(&old.source_root);
    let src = source_fs(&source_root)?;
    if src.uuid.is_some() && src.uuid != old.source_fs_uuid {
        progress.note(&format!(
            "{} is now the filesystem {} (the standby was copied from {}): the primary was re-made since; refreshing from what is there now",
            old.source_root,
            src.uuid.as_deref().unwrap_or("-"),
            old.source_fs_uuid.as_deref().unwrap_or("-")
        ));
    }
    if let Some(cmd) = hooks.0 {
        hook("--pre", cmd)?;
    }
    let src = SourceFs {
        fs_type: old.fs_type.clone(),
        ..src
    };
    let tree = (source_root.as_path(), old.excluded.as_slice());
    let copied =
        copy_into(state, name, tree, &src, &old.fs_uuid, &old.merged, progress).map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "refresh of '{name}' stopped: {e}; it is marked incomplete: run `liverestore snapshot --refresh {name}` again, or discard it"
                ),
            )
        });
    let post = after_copy(hooks.1, copied.is_ok(), progress);
    let (standby, bytes_copied, fstab_changes) = copied?;
    post.map_err(|e| {
        Error::new(
            e.kind(),
            format!("{e}: '{name}' was copied but stays marked incomplete; refresh it again"),
        )
    })?;
    let (sha256, chunks_changed, chunks) = record_standby(state, name, standby.clone(), progress)?;
    Ok(SnapshotReport {
        name: name.to_string(),
        kind: "standby",
        size: rec.image.size,
        standby,
        bytes_copied,
        fstab_changes,
        sha256,
        refreshed: true,
        chunks_changed,
        chunks,
        pruned: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Discard the standbys of `source_root` beyond the `keep` newest (never
/// an activated one); their names.
fn prune(
    state: &StateLock<'_>,
    source_root: &str,
    keep: usize,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let activated = state.activated_names()?;
    let mut standbys: Vec<(u64, String)> = state
        .load_all()?
        .into_iter()
        .filter_map(|r| {
            let sb = r.image.standby.as_ref()?;
            (sb.source_root == source_root && sb.copied_unix > 0)
                .then(|| (sb.copied_unix, r.name.clone()))
        })
        .collect();
    standbys.sort_by(|a, b| b.cmp(a));
    let mut pruned = Vec::new();
    for (_, name) in standbys.into_iter().skip(keep) {
        if activated.contains(&name) {
            progress.note(&format!("--keep: '{name}' is activated, kept"));
            continue;
        }
        staged::discard(state, &name, false)?;
        progress.note(&format!("--keep: discarded the older standby '{name}'"));
        pruned.push(name);
    }
    Ok(pruned)
}

/// Run the `--post` hook, if any, after the copy: always, since it
/// resumes what `--pre` paused. After a failed copy its own failure is
/// only said (the copy's error is the one reported).
fn after_copy(cmd: Option<&str>, copied: bool, progress: &dyn Progress) -> Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    match hook("--post", cmd) {
        Err(e) if !copied => {
            progress.note(&e.to_string());
            Ok(())
        }
        other => other,
    }
}

/// The empty filesystem, staged like any image (refused before anything
/// is written when there is no room), then the copy into it; a failed copy
/// discards the staging.
fn stage_and_copy(
    state: &StateLock<'_>,
    opts: &SnapshotOptions,
    src: &SourceFs,
    size: u64,
    merged: &[String],
    progress: &dyn Progress,
) -> Result<(Standby, u64, Vec<String>)> {
    let work = PathBuf::from("/run/liverestore");
    std::fs::create_dir_all(&work)
        .map_err(|e| Error::io("create /run/liverestore", e).with_path(&work))?;
    let empty = work.join(format!("snapshot-{}.img", opts.name));
    let staged_result = empty_filesystem(&empty, &src.fs_type, size).and_then(|fs_uuid| {
        let image = empty.display().to_string();
        crate::stage::stage(
            state,
            &StageRequest {
                name: &opts.name,
                space: &opts.space,
                image: &image,
                open: Default::default(),
                sha256: None,
                split: Split::WholeDisk,
                signature: SignatureRequest::default(),
            },
            progress,
        )
        .map(|_| fs_uuid)
    });
    let _ = std::fs::remove_file(&empty);
    let fs_uuid = staged_result?;
    let tree = (opts.source_root.as_path(), opts.exclude.as_slice());
    copy_into(state, &opts.name, tree, src, &fs_uuid, merged, progress).map_err(|e| {
        let _ = staged::discard(state, &opts.name, true);
        Error::new(
            e.kind(),
            format!("snapshot '{}' failed, nothing kept: {e}", opts.name),
        )
    })
}

/// Mark the staging as being copied, attach it writable, mount it, copy
/// the tree (and a separate /boot), fix its fstab, take it all down.
fn copy_into(
    state: &StateLock<'_>,
    name: &str,
    (source_root, excluded): (&Path, &[String]),
    src: &SourceFs,
    fs_uuid: &str,
    merged: &[String],
    progress: &dyn Progress,
) -> Result<(Standby, u64, Vec<String>)> {
    let mut rec = state.load(name)?;
    let started_unix = unix_now();
    rec.image.customizing = Some(started_unix);
    rec.image.standby = Some(Standby {
        started_unix,
        copied_unix: 0,
        source_root: source_root.display().to_string(),
        source_fs_uuid: src.uuid.clone(),
        fs_type: src.fs_type.clone(),
        fs_uuid: fs_uuid.to_string(),
        consistency: "per-file".into(),
        merged: merged.to_vec(),
        excluded: excluded.to_vec(),
        changed_during_copy: 0,
        changed: Vec::new(),
        vanished_during_copy: 0,
        vanished: Vec::new(),
    });
    staged::record_changed(state, &rec)?;

    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut exclude = standard_excludes(&canonical(source_root), &canonical(state.root()));
    exclude.extend(excluded.iter().cloned());
    let a = attach::attach(state, name, AttachMode::Direct)?;
    let mnt = PathBuf::from(format!("/run/liverestore/snapshot-{}", rec.instance()));
    let copied = test_restore::with_mounted_rw(&a.device, &src.fs_type, &mnt, |mnt| {
        copy_tree(
            source_root,
            &exclude,
            mnt,
            (fs_uuid, &src.fs_type, Path::new(&rec.disk.path)),
            merged,
            progress,
        )
    });
    let down = attach::detach(state, name);
    let (outcome, fstab_changes) = copied?;
    down?;
    let mut standby = rec.image.standby.take().expect("set above");
    standby.copied_unix = unix_now();
    let listed = |v: &[String]| v.iter().take(Standby::MAX_LISTED).cloned().collect();
    standby.changed_during_copy = outcome.transferred.len() as u64;
    standby.changed = listed(&outcome.transferred);
    standby.vanished_during_copy = outcome.vanished.len() as u64;
    standby.vanished = listed(&outcome.vanished);
    Ok((standby, outcome.bytes, fstab_changes))
}

/// The copy itself, into the mounted standby at `mnt`: both passes over
/// the tree at `root` (and a separate /boot), then the fstab. Returns what
/// pass two found changed or vanished (over both trees) with the bytes
/// both passes copied, and the fstab's changes.
fn copy_tree(
    root: &Path,
    exclude: &[String],
    mnt: &Path,
    (fs_uuid, fs_type, disk): (&str, &str, &Path),
    merged: &[String],
    progress: &dyn Progress,
) -> Result<(tree_copy::PassOutcome, Vec<String>)> {
    let mut trees = vec![(root.to_path_buf(), mnt.to_path_buf(), exclude.to_vec())];
    for m in merged {
        let rel = m.trim_start_matches('/');
        trees.push((root.join(rel), mnt.join(rel), Vec::new()));
    }
    let mut total = tree_copy::PassOutcome::default();
    let mut bytes = 0;
    for (from, to, excl) in &trees {
        progress.note(&format!("copying {} (rsync)…", from.display()));
        std::fs::create_dir_all(to)
            .map_err(|e| Error::io("create a directory in the standby", e).with_path(to))?;
        let first = tree_copy::run_pass(from, to, excl, false)?;
        // Again: what it transfers changed while the first pass ran.
        let second = tree_copy::run_pass(from, to, excl, true)?;
        bytes += first.bytes + second.bytes;
        let prefix = to
            .strip_prefix(mnt)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        for t in second.transferred {
            total.transferred.push(if prefix.is_empty() {
                t
            } else {
                format!("{prefix}/{t}")
            });
        }
        let mut vanished: Vec<String> = first.vanished;
        vanished.extend(second.vanished);
        vanished.sort();
        vanished.dedup();
        total.vanished.extend(vanished);
    }
    // Inside the copy, paths resolve inside it (an absolute symlink such
    // as /etc/fstab -> /etc/fstab.d/… must not reach this system's file).
    let root_dir = RootDir::open(mnt)?;
    let rel = Path::new("/etc/fstab");
    let fstab = root_dir
        .read(rel)?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let held = on_the_disk(&fstab, disk, merged);
    let (fstab, changes) =
        crate::customize::fstab::for_copy(&fstab, fs_uuid, fs_type, merged, &held);
    if root_dir.kind(Path::new("/etc"))? == Some(Kind::Dir) {
        let meta = root_dir.meta(rel)?.unwrap_or(Meta::root(0o644));
        root_dir.write(rel, fstab.as_bytes(), meta)?;
    }
    total.bytes = bytes;
    Ok((total, changes))
}

/// The mount points of `fstab` (other than `/` and `merged`) whose device
/// is on `disk`, the standby's: its mapped boot holds that disk, so they
/// could not be mounted there (a shared ESP, a swap partition).
fn on_the_disk(fstab: &str, disk: &Path, merged: &[String]) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(d) = std::fs::metadata(disk) else {
        return Vec::new();
    };
    let (major, minor) = (rustix::fs::major(d.rdev()), rustix::fs::minor(d.rdev()));
    crate::customize::fstab::entries(fstab)
        .into_iter()
        .filter(|(_, m)| m != "/" && !merged.contains(m))
        .filter_map(|(device, mount_point)| {
            let node =
                std::fs::canonicalize(crate::customize::fstab::device_link(&device)?).ok()?;
            let m = std::fs::metadata(node).ok()?;
            if !m.file_type().is_block_device() {
                return None;
            }
            let b = crate::space::hostfs::SysBlock::resolve(
                Path::new("/sys"),
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev()),
            )
            .ok()?;
            (b.disk_major == major && b.disk_minor == minor).then_some(mount_point)
        })
        .collect()
}

/// Hash the standby anew and record it complete, as a standby.
/// Returns the SHA-256 and how many of how many chunks changed.
fn record_standby(
    state: &StateLock<'_>,
    name: &str,
    standby: Standby,
    progress: &dyn Progress,
) -> Result<(String, u64, u64)> {
    let mut rec = state.load(name)?;
    let hashes = verify::rehash(&rec, "rehash", progress)?;
    let sha256 = hashes.sha256.clone().expect("asked for");
    let changed = hashes.differing(&rec.image.chunk_blake3).count() as u64;
    let chunks = hashes.chunks.len() as u64;
    rec.image.chunk_blake3 = hashes.chunks;
    rec.image.sha256 = Some(sha256.clone());
    rec.image.expected_sha256 = None;
    rec.image.source = Some(format!("snapshot of {}", standby.source_root));
    rec.image.kind = "standby".into();
    rec.image.customizing = None;
    rec.image.standby = Some(standby);
    staged::record_changed(state, &rec)?;
    Ok((sha256, changed, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_state_and_lost_found_are_never_copied() {
        assert_eq!(
            standard_excludes(Path::new("/"), Path::new("/var/lib/liverestore")),
            ["*.liverestore", "/lost+found", "/var/lib/liverestore/***"]
        );
        // a state directory outside the tree needs no exclusion
        assert_eq!(
            standard_excludes(Path::new("/srv/tree"), Path::new("/var/lib/liverestore")),
            ["*.liverestore", "/lost+found"]
        );
    }
}
