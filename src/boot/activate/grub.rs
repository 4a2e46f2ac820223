//! Activation through GRUB (BIOS or UEFI): the kernel and initrd in
//! `/boot/liverestore/NAME/`, a menu entry in `custom.cfg` (which the
//! `grub.cfg` that Debian's and Ubuntu's `update-grub` generate sources),
//! and GRUB's one-shot `next_entry` in `grubenv` for the trial — GRUB
//! clears it as it boots the entry, so the boot after that is the old
//! system's default again. `commit` sets `liverestore_default`, which the
//! entry's block in `custom.cfg` turns into GRUB's default.
//!
//! The restored system cannot mount the old system's `/boot` (in a mapped
//! boot, device-mapper holds the disk), so it reads and writes `grubenv`
//! as GRUB itself does: in place, at the disk address of the file's one block, which
//! `activate` found with FIEMAP and passed on the kernel command line
//! (`liverestore.grubenv=OFFSET`). The block must name the activation's
//! entry (`liverestore_entry`) before it is written.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::standby::STANDBY_STARTS;
use super::{Activation, RolledBack, Status, replace_file, sync_dir, write_synced};
use crate::boot::grub_format::{self, ENV_SIZE, GrubEnv, MenuEntry, vars};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::map::disk_io::DiskWriter;
use crate::map::fiemap::{self, FIEMAP_EXTENT_UNWRITTEN};
use crate::space::hostfs::{self, FsKind, MountEntry};
use crate::store::record::StagingRecord;

pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
/// The kernel argument that tells the restored system where `grubenv` is.
pub const CMDLINE_KEY: &str = "liverestore.grubenv=";

/// What a GRUB activation created besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrubBoot {
    /// GRUB's directory (`grub.cfg`, `grubenv`, `custom.cfg`).
    pub grub_dir: String,
    /// The menu entry's `--id`.
    pub entry_id: String,
    /// Disk byte offset of `grubenv`'s block.
    pub env_disk_offset: u64,
    /// Whether `activate` created `custom.cfg` (rollback removes it again
    /// when liverestore's block was all it held).
    pub created_custom_cfg: bool,
}

impl GrubBoot {
    fn env_path(&self) -> PathBuf {
        Path::new(&self.grub_dir).join("grubenv")
    }

    fn custom_cfg(&self) -> PathBuf {
        Path::new(&self.grub_dir).join("custom.cfg")
    }
}

/// Why GRUB could not keep its environment block in `grub_dir`, on a
/// filesystem of `fs` over `block`, if it could not. The restored system's
/// commit writes `grubenv` on the raw disk as GRUB would, at the offset
/// FIEMAP gives: on btrfs that is a logical address, on a logical volume
/// an offset in the volume, and GRUB itself writes neither.
fn env_block_refusal(fs: FsKind, block: &hostfs::SysBlock, grub_dir: &Path) -> Option<String> {
    if fs == FsKind::Btrfs {
        return Some(format!(
            "GRUB's directory {} is on btrfs, where GRUB cannot write its environment block (grubenv: the trial's one-shot entry, the commit, a standby's count): use --loader uefi, or a /boot on ext4, xfs or vfat",
            grub_dir.display()
        ));
    }
    if block.is_device_mapper() {
        return Some(format!(
            "GRUB's directory {} is on {}, a device-mapper device (LVM), where GRUB cannot write its environment block (grubenv): use --loader uefi, or a /boot on a partition",
            grub_dir.display(),
            block.name
        ));
    }
    None
}

/// A checked GRUB directory, ready to be armed.
pub(super) struct Target {
    grub_dir: PathBuf,
    /// The filesystem holding it: its mount, kind and UUID.
    mount: MountEntry,
    fs: FsKind,
    fs_uuid: String,
    /// Disk byte offset of that filesystem, and its block size.
    fs_start: u64,
    fs_block_size: u64,
    env_offset: u64,
}

fn unusable(msg: String) -> Error {
    Error::new(ErrorKind::UnsupportedBootLoader, msg)
}

impl Target {
    /// Check GRUB's directory: a `grub.cfg` that loads `grubenv`, honours
    /// `next_entry` and sources `custom.cfg`; a filesystem GRUB can write
    /// `grubenv` on (ext4, xfs, vfat; not btrfs), on the staging's disk; a `grubenv`
    /// of one written block (created, empty, when missing).
    pub(super) fn open(rec: &StagingRecord, grub_dir: &Path) -> Result<Target> {
        let name = rec.name.as_str();
        let cfg_path = grub_dir.join("grub.cfg");
        let cfg = std::fs::read_to_string(&cfg_path).map_err(|e| {
            unusable(format!(
                "no GRUB configuration at {}: {e}",
                cfg_path.display()
            ))
        })?;
        grub_format::check_config(&cfg).map_err(|e| e.with_path(&cfg_path))?;
        let target = hostfs::discover(grub_dir).map_err(|e| {
            unusable(format!(
                "GRUB's directory {}: {e} (GRUB must be able to write grubenv there)",
                grub_dir.display()
            ))
        })?;
        if let Some(why) = env_block_refusal(target.fs, &target.block, grub_dir) {
            return Err(unusable(why));
        }
        let (host, grub_disk) = crate::space::identity::describe(&target)?;
        if !grub_disk.same_disk(&rec.disk) {
            return Err(unusable(format!(
                "{} is on {}, '{name}' on another disk: the restored system can only reach GRUB's environment block on its own disk",
                grub_dir.display(),
                target.disk_path.display(),
            )));
        }
        let fs_uuid = host.fs_uuid.ok_or_else(|| {
            unusable(format!(
                "the filesystem of {} has no UUID GRUB could search for",
                grub_dir.display()
            ))
        })?;
        let env_path = grub_dir.join("grubenv");
        if !env_path.exists() {
            write_synced(&env_path, &GrubEnv::new().encode()?)?;
            sync_dir(grub_dir)?;
        }
        // The variables activation and commit add must fit.
        let mut env = read_env_at(&env_path)?;
        let id = grub_format::entry_id(name);
        for v in [vars::ENTRY, vars::NEXT_ENTRY, vars::DEFAULT, vars::STANDBY] {
            env.set(v, &id);
        }
        env.set(vars::TRIES, &grub_format::MAX_STANDBY_TRIES.to_string());
        env.encode().map_err(|e| e.with_path(&env_path))?;
        let env_offset = target.block.start + env_block(&env_path, target.fs_block_size)?;
        Ok(Target {
            grub_dir: grub_dir.to_path_buf(),
            mount: target.mount,
            fs: target.fs,
            fs_uuid,
            fs_start: target.block.start,
            fs_block_size: target.fs_block_size,
            env_offset,
        })
    }

    fn boot_dir(&self) -> &Path {
        self.grub_dir.parent().unwrap_or(Path::new("/"))
    }

    /// `path` as GRUB names it inside its filesystem (the mount's root
    /// inside the filesystem, then the path below the mount point).
    fn grub_path(&self, path: &Path) -> String {
        let below = path.strip_prefix(&self.mount.mount_point).unwrap_or(path);
        self.mount.root.join(below).display().to_string()
    }

    /// Fill in the GRUB side of `a`; returns the files directory.
    pub(super) fn describe(&self, a: &mut Activation, args: impl Fn(&str) -> String) -> PathBuf {
        let files_dir = self.boot_dir().join("liverestore").join(&a.name);
        a.args = args(&format!("{CMDLINE_KEY}{}", self.env_offset));
        a.files_dir = files_dir.display().to_string();
        a.grub = Some(GrubBoot {
            grub_dir: self.grub_dir.display().to_string(),
            entry_id: grub_format::entry_id(&a.name),
            env_disk_offset: self.env_offset,
            created_custom_cfg: !self.grub_dir.join("custom.cfg").exists(),
        });
        files_dir
    }

    /// Add the menu entry to `custom.cfg`, then set `next_entry` to it.
    pub(super) fn arm(&self, a: &Activation) -> Result<()> {
        let g = a.grub.as_ref().expect("a GRUB activation");
        let files = Path::new(&a.files_dir);
        let block = grub_format::custom_block(&MenuEntry {
            name: &a.name,
            fs_module: match self.fs {
                FsKind::Ext4 => "ext2",
                FsKind::Xfs => "xfs",
                FsKind::Vfat => "fat",
                FsKind::Btrfs => "btrfs",
            },
            fs_uuid: &self.fs_uuid,
            kernel: &self.grub_path(&files.join(KERNEL_FILE)),
            initrd: &self.grub_path(&files.join(INITRD_FILE)),
            args: &a.args,
            standby: a.standby.is_some(),
        });
        let cfg = g.custom_cfg();
        let text = read_optional(&cfg)?;
        replace_file(
            &cfg,
            grub_format::with_block(&text, &a.name, &block)?.as_bytes(),
        )?;
        // GRUB reads the filesystem without replaying its journal: the
        // new files and custom.cfg must be in their home blocks before
        // next_entry can send GRUB to them.
        checkpoint(&[files, &self.grub_dir])?;
        crate::failpoint::hit("activate:boot-entry");
        let env_path = g.env_path();
        let mut env = read_env_at(&env_path)?;
        env.set(vars::ENTRY, &g.entry_id);
        match &a.standby {
            // GRUB starts it by itself after that many failed boots
            Some(arm) => {
                env.set(vars::TRIES, &arm.after_failed_boots.to_string());
                env.set(vars::STANDBY, &g.entry_id);
            }
            None => env.set(vars::NEXT_ENTRY, &g.entry_id),
        }
        write_env_at(&env_path, &env)?;
        // Written in place: the block the restored system will write is
        // still the file's.
        let now = self.fs_start + env_block(&env_path, self.fs_block_size)?;
        if now != self.env_offset {
            return Err(Error::new(
                ErrorKind::MapChanged,
                format!(
                    "grubenv moved on the disk while it was written (byte {} → {now})",
                    self.env_offset
                ),
            )
            .with_path(&env_path));
        }
        crate::failpoint::hit("activate:boot-next");
        Ok(())
    }
}

/// Make the filesystems holding `dirs` write their journals back
/// (freeze, thaw), once per filesystem.
fn checkpoint(dirs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut done = Vec::new();
    for dir in dirs {
        let f = std::fs::File::open(dir)
            .op(|| "open a directory".into())
            .map_err(|e| e.with_path(dir))?;
        let dev = f.metadata().op(|| "stat a directory".into())?.dev();
        if done.contains(&dev) {
            continue;
        }
        crate::sys::ioctl::freeze_and_thaw(&f)
            .map_err(|e| Error::from(e).with_path(dir).with_kind(ErrorKind::Io))?;
        done.push(dev);
    }
    Ok(())
}

/// A file's text, empty when it does not exist.
fn read_optional(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io("read a GRUB file", e).with_path(path)),
    }
}

/// The byte offset, inside its filesystem, of `grubenv`'s one block:
/// written (not unwritten), not inline, not shared, [`ENV_SIZE`] bytes.
fn env_block(path: &Path, block_size: u64) -> Result<u64> {
    let file = std::fs::File::open(path)
        .op(|| "open grubenv".into())
        .map_err(|e| e.with_path(path))?;
    let size = file.metadata().op(|| "stat grubenv".into())?.len();
    if size != ENV_SIZE as u64 {
        return Err(unusable(format!(
            "{} is {size} bytes, not {ENV_SIZE}: recreate it with `grub-editenv {} create`",
            path.display(),
            path.display()
        )));
    }
    let raw = crate::sys::ioctl::fiemap(&file).map_err(|e| Error::from(e).with_path(path))?;
    let extents = fiemap::validate(&raw, size, block_size).map_err(|e| {
        unusable(format!(
            "GRUB could not write grubenv in place ({e}): liverestore cannot either"
        ))
        .with_path(path)
    })?;
    match (extents.as_slice(), raw.as_slice()) {
        ([e], [r]) if r.fe_flags & FIEMAP_EXTENT_UNWRITTEN == 0 => Ok(e.physical),
        _ => Err(unusable(format!(
            "grubenv is not one written block ({} extents)",
            raw.len()
        ))
        .with_path(path)),
    }
}

fn read_env_at(path: &Path) -> Result<GrubEnv> {
    let bytes = std::fs::read(path)
        .op(|| "read grubenv".into())
        .map_err(|e| e.with_path(path))?;
    GrubEnv::parse(&bytes).map_err(|e| e.with_path(path))
}

/// Rewrite `grubenv` in place (same size, same blocks: as GRUB does).
fn write_env_at(path: &Path, env: &GrubEnv) -> Result<()> {
    let bytes = env.encode()?;
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.write_all_at(&bytes, 0)?;
            f.sync_data()
        })
        .op(|| "write grubenv".into())
        .map_err(|e| e.with_path(path))
}

/// In the old system: the environment block of an activation.
pub(super) fn read_env_file(g: &GrubBoot) -> Result<GrubEnv> {
    read_env_at(&g.env_path())
}

/// In the old system: rewrite the environment block of an activation in
/// place.
pub(super) fn write_env(g: &GrubBoot, env: &GrubEnv) -> Result<()> {
    write_env_at(&g.env_path(), env)
}

/// In the old system: take the activation's variables out of `grubenv`,
/// then its block out of `custom.cfg`. Whatever is already gone is fine.
pub(super) fn disarm(g: &GrubBoot, name: &str) -> Result<()> {
    let env_path = g.env_path();
    if env_path.exists() {
        let mut env = read_env_at(&env_path)?;
        if forget(&mut env, &g.entry_id, true) {
            write_env_at(&env_path, &env)?;
        }
    }
    crate::failpoint::hit("rollback:boot-order");
    let cfg = g.custom_cfg();
    if cfg.exists() {
        let text = grub_format::without_block(&read_optional(&cfg)?, name)?;
        if g.created_custom_cfg && text.trim().is_empty() {
            std::fs::remove_file(&cfg)
                .op(|| "remove custom.cfg".into())
                .map_err(|e| e.with_path(&cfg))?;
            sync_dir(Path::new(&g.grub_dir))?;
        } else {
            replace_file(&cfg, text.as_bytes())?;
        }
    }
    Ok(())
}

/// Remove what points GRUB at entry `id` (and, with `entry`, the mark of
/// the activation); whether anything changed.
fn forget(env: &mut GrubEnv, id: &str, entry: bool) -> bool {
    let mut changed = disarm_standby(env, id);
    for v in [vars::NEXT_ENTRY, vars::DEFAULT, vars::ENTRY] {
        if (v != vars::ENTRY || entry) && env.get(v) == Some(id) {
            changed |= env.remove(v);
        }
    }
    changed
}

/// Take standby `id` and its count out of `env`; whether anything changed.
fn disarm_standby(env: &mut GrubEnv, id: &str) -> bool {
    if env.get(vars::STANDBY) != Some(id) {
        return false;
    }
    env.remove(vars::STANDBY);
    env.remove(vars::TRIES);
    true
}

/// `grubenv` seen from the restored system: its block on the disk under
/// the device-mapper device the early-boot step made.
struct RawEnv {
    disk: PathBuf,
    /// The sector-aligned range holding the block.
    start: u64,
    len: u64,
    /// The block's offset inside that range.
    within: usize,
    align: u64,
}

impl RawEnv {
    fn find(offset: u64) -> Result<RawEnv> {
        Ok(RawEnv::on(super::restored::disk()?, offset))
    }

    /// The block at `offset` of disk `d`.
    fn on(d: super::restored::RestoredDisk, offset: u64) -> RawEnv {
        let (disk, align) = (d.path, d.sector_size);
        let start = offset / align * align;
        let end = (offset + ENV_SIZE as u64).div_ceil(align) * align;
        RawEnv {
            disk,
            start,
            len: end - start,
            within: (offset - start) as usize,
            align,
        }
    }

    /// The aligned range's bytes and the block parsed; refused unless the
    /// block marks a liverestore activation (its entry id is returned).
    fn read(&self) -> Result<(Vec<u8>, GrubEnv, String)> {
        let buf = crate::map::disk_io::read_raw(&self.disk, self.start, self.len as usize)?;
        let env = GrubEnv::parse(&buf[self.within..self.within + ENV_SIZE]).map_err(|e| {
            e.with_path(&self.disk)
                .with_offset(self.start + self.within as u64)
        })?;
        let id = env.get(vars::ENTRY).map(str::to_string).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!(
                    "the GRUB environment block at byte {} of {} names no liverestore entry: \
                     grubenv was changed or moved since activation",
                    self.start + self.within as u64,
                    self.disk.display()
                ),
            )
        })?;
        Ok((buf, env, id))
    }

    /// Write `env` back into the block, through [`DiskWriter::write_range`]
    /// confined to exactly this range.
    fn write(&self, mut buf: Vec<u8>, env: &GrubEnv) -> Result<()> {
        let bytes = env.encode()?;
        buf[self.within..self.within + ENV_SIZE].copy_from_slice(&bytes);
        DiskWriter::write_range(&self.disk, self.start, &buf, self.align)
    }
}

/// In the restored system: the environment block, read from the disk.
pub(super) fn read_env_raw(offset: u64) -> Result<GrubEnv> {
    RawEnv::find(offset)?.read().map(|(_, env, _)| env)
}

/// In the restored system's early boot: whether `commit` made a
/// liverestore entry GRUB's default (`liverestore_default` in the
/// environment block at `offset` of `disk`).
pub(super) fn default_is_set_raw(disk: super::restored::RestoredDisk, offset: u64) -> bool {
    RawEnv::on(disk, offset)
        .read()
        .is_ok_and(|(_, env, _)| env.get(vars::DEFAULT).is_some())
}

/// In the restored system: make its entry GRUB's default.
pub(super) fn commit(offset: u64) -> Result<String> {
    let raw = RawEnv::find(offset)?;
    let (buf, mut env, id) = raw.read()?;
    env.set(vars::DEFAULT, &id);
    if env.get(vars::NEXT_ENTRY) == Some(id.as_str()) {
        env.remove(vars::NEXT_ENTRY);
    }
    // a standby committed is the default: no more counting
    disarm_standby(&mut env, &id);
    raw.write(buf, &env)?;
    crate::failpoint::hit("commit:boot-order");
    Ok(id)
}

/// In the restored system: GRUB no longer chooses it; the entry and the
/// files stay for the old system's `rollback`.
pub(super) fn rollback_restored(offset: u64) -> Result<RolledBack> {
    let raw = RawEnv::find(offset)?;
    let (buf, mut env, id) = raw.read()?;
    if forget(&mut env, &id, false) {
        raw.write(buf, &env)?;
    }
    Ok(RolledBack {
        entry: format!("GRUB entry '{id}'"),
        boot_number: None,
        description: id,
        files_dir: None,
        files_removed: false,
    })
}

/// The GRUB part of `status`.
pub(super) fn fill_status(s: &mut Status, env: &GrubEnv) {
    s.loader = "grub";
    let ours = s
        .activation
        .as_ref()
        .and_then(|a| a.grub.as_ref())
        .map(|g| g.entry_id.as_str())
        .or_else(|| env.get(vars::ENTRY))
        .map(str::to_string);
    s.grub_next_entry = env.get(vars::NEXT_ENTRY).map(str::to_string);
    s.grub_default = env.get(vars::DEFAULT).map(str::to_string);
    s.standby =
        super::standby::status_of(env, s.activation.as_ref().and_then(|a| a.standby.as_ref()))
            .filter(|sb| Some(&sb.entry) == ours.as_ref());
    let standby_starts = s
        .standby
        .as_ref()
        .is_some_and(|sb| sb.failed_boots_left == 0);
    s.next_boot = match (&s.grub_next_entry, &ours) {
        (Some(n), Some(o)) if n == o => "restored system (trial, once)".into(),
        (Some(n), _) => format!("GRUB entry '{n}' (next_entry, not liverestore's)"),
        _ if ours.is_some() && s.grub_default == ours => "restored system (default)".into(),
        _ if standby_starts => STANDBY_STARTS.into(),
        _ => "old system (GRUB's default entry)".into(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grubenv_only_on_a_plain_partition_of_a_filesystem_grub_writes() {
        let part = hostfs::SysBlock {
            name: "vda2".into(),
            disk_name: "vda".into(),
            disk_major: 252,
            disk_minor: 0,
            partition_number: Some(2),
            start: 1 << 20,
            size: 1 << 30,
            disk_size: 8 << 30,
            logical_sector_size: 512,
            physical_sector_size: 512,
            serial: None,
            layout: crate::map::device_layout::DeviceLayout::contiguous(1 << 20, 1 << 30),
        };
        let dir = Path::new("/boot/grub");
        assert_eq!(env_block_refusal(FsKind::Ext4, &part, dir), None);
        assert!(env_block_refusal(FsKind::Btrfs, &part, dir).is_some_and(|w| w.contains("btrfs")));
        let lv = hostfs::SysBlock {
            name: "dm-0".into(),
            partition_number: None,
            ..part
        };
        assert!(env_block_refusal(FsKind::Ext4, &lv, dir).is_some_and(|w| w.contains("LVM")));
    }

    #[test]
    fn forgetting_an_entry() {
        let mut env = GrubEnv::new();
        env.set("saved_entry", "0");
        env.set(vars::ENTRY, "liverestore-web");
        env.set(vars::NEXT_ENTRY, "liverestore-web");
        env.set(vars::DEFAULT, "liverestore-web");
        let mut restored = env.clone();
        assert!(forget(&mut restored, "liverestore-web", false));
        assert_eq!(restored.get(vars::ENTRY), Some("liverestore-web"));
        assert_eq!(restored.get(vars::NEXT_ENTRY), None);
        assert!(forget(&mut env, "liverestore-web", true));
        assert_eq!(env.get(vars::ENTRY), None);
        assert_eq!(env.get("saved_entry"), Some("0"));
        // someone else's next_entry is left alone
        env.set(vars::NEXT_ENTRY, "1");
        assert!(!forget(&mut env, "liverestore-web", true));
        assert_eq!(env.get(vars::NEXT_ENTRY), Some("1"));
    }

    fn status_with(env: &GrubEnv) -> Status {
        let mut s = Status {
            booted_restored: true,
            loader: "none",
            activation: None,
            boot_current: None,
            boot_next: None,
            boot_order: vec![],
            grub_next_entry: None,
            grub_default: None,
            next_boot: String::new(),
            committed: false,
            old_system: None,
            trial_ended: false,
            deadline_left_secs: None,
            secure_boot: None,
            standby: None,
        };
        fill_status(&mut s, env);
        s
    }

    #[test]
    fn what_grub_starts_next() {
        let mut env = GrubEnv::new();
        assert_eq!(
            status_with(&env).next_boot,
            "old system (GRUB's default entry)"
        );
        env.set(vars::ENTRY, "liverestore-web");
        env.set(vars::NEXT_ENTRY, "liverestore-web");
        let s = status_with(&env);
        assert_eq!(
            (s.loader, s.next_boot.as_str()),
            ("grub", "restored system (trial, once)")
        );
        env.remove(vars::NEXT_ENTRY);
        env.set(vars::DEFAULT, "liverestore-web");
        assert_eq!(status_with(&env).next_boot, "restored system (default)");
        env.set(vars::NEXT_ENTRY, "2");
        assert_eq!(
            status_with(&env).next_boot,
            "GRUB entry '2' (next_entry, not liverestore's)"
        );
    }

    #[test]
    fn a_standby_in_status_and_out_of_grubenv() {
        let mut env = GrubEnv::new();
        env.set(vars::ENTRY, "liverestore-sb");
        env.set(vars::STANDBY, "liverestore-sb");
        env.set(vars::TRIES, "2");
        let s = status_with(&env);
        assert_eq!(s.next_boot, "old system (GRUB's default entry)");
        assert_eq!(s.standby.as_ref().unwrap().failed_boots_left, 2);
        env.set(vars::TRIES, "0");
        assert_eq!(status_with(&env).next_boot, STANDBY_STARTS);
        // committed from the standby: its default, no count left
        let mut committed = env.clone();
        committed.set(vars::DEFAULT, "liverestore-sb");
        assert!(disarm_standby(&mut committed, "liverestore-sb"));
        let s = status_with(&committed);
        assert_eq!(
            (s.next_boot.as_str(), s.standby),
            ("restored system (default)", None)
        );
        // rolled back from the standby: the installed system, the entry
        // kept for the old system's rollback
        assert!(forget(&mut env, "liverestore-sb", false));
        assert_eq!(env.get(vars::TRIES), None);
        assert_eq!(env.get(vars::ENTRY), Some("liverestore-sb"));
        assert_eq!(
            status_with(&env).next_boot,
            "old system (GRUB's default entry)"
        );
        // someone else's standby is left alone
        env.set(vars::STANDBY, "liverestore-other");
        assert!(!disarm_standby(&mut env, "liverestore-sb"));
    }
}
