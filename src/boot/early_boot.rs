//! The early-boot step: what `/lr/init` (a static liverestore started by
//! the kernel with `rdinit=/lr/init`) does before the restored system's
//! own initramfs runs.
//!
//! 1. mount /proc, /sys and /dev (devtmpfs) where they are not mounted;
//! 2. load the disk's driver modules and dm-mod from the restored initrd's
//!    own module tree (`/lib/modules/$(uname -r)`), dependencies first;
//! 3. find the disk: the one of the recorded size whose on-disk header, at
//!    the recorded offset, belongs to the recorded staging (waiting up to
//!    [`DISK_WAIT`] for it to appear);
//! 4. note the boot in the staging's [`boot_note`] (and in each other
//!    partition's below), then create the device-mapper `linear` device
//!    [`DM_NAME`] from the map,
//!    then one for each other partition of the same whole-disk image
//!    (`liverestore-pN`), each checked by its own on-disk header — unless
//!    the boot is native ([`BootPlan::native`]): the image is its own
//!    partition, so the boots are noted and nothing is mapped;
//! 5. arm the trial's deadline (`liverestore.deadline=`), unmount what it
//!    mounted and `exec /init`, with the same arguments.
//!
//! Any failure is printed and the machine reboots after [`FAILURE_PAUSE`]:
//! a trial boot (`BootNext`, one-shot) then returns to the old system.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::boot::plan::{BootPlan, DM_NAME, DM_UUID_PREFIX, NoteAt};
use crate::error::{Error, ErrorKind, Result};
use crate::map::disk_io::DiskWriter;
use crate::store::boot_note;
use crate::{boot::initrd, store::header, sys::dm, sys::kmod};

/// How long to wait for the disk to show up (kernel argument
/// `liverestore.disk_wait=SECONDS` changes it).
pub const DISK_WAIT: Duration = Duration::from_secs(30);
/// How long a failure stays on the console before the reboot
/// (`liverestore.failure_pause=SECONDS`).
pub const FAILURE_PAUSE: Duration = Duration::from_secs(10);

/// The early-boot step's settings from the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootParams {
    pub disk_wait: Duration,
    pub failure_pause: Duration,
    /// The trial's deadline (`liverestore.deadline=SECONDS`): the
    /// watchdog is armed with it.
    pub deadline: Option<Duration>,
}

impl BootParams {
    /// Parse `liverestore.disk_wait=` and `liverestore.failure_pause=`
    /// (whole seconds) from a kernel command line; anything else keeps
    /// the defaults.
    pub fn from_cmdline(cmdline: &str) -> BootParams {
        let mut p = BootParams {
            disk_wait: DISK_WAIT,
            failure_pause: FAILURE_PAUSE,
            deadline: None,
        };
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let Ok(secs) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "liverestore.disk_wait" => p.disk_wait = Duration::from_secs(secs),
                "liverestore.failure_pause" => p.failure_pause = Duration::from_secs(secs),
                "liverestore.deadline" => {
                    p.deadline = (secs > 0).then(|| Duration::from_secs(secs));
                }
                _ => {}
            }
        }
        p
    }
}

/// Whether this process was started as the early-boot step.
pub fn is_early_boot() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|a| a == initrd::INIT_PATH)
}

/// Run the early-boot step; never returns.
pub fn run() -> ! {
    let mut mounted = Vec::new();
    let mut params = BootParams::from_cmdline("");
    let err = match assemble(&mut mounted, &mut params) {
        Ok((what, disk)) => {
            eprintln!("liverestore: {what}");
            if let Some(deadline) = params.deadline {
                start_deadline(&mut mounted, deadline, &disk);
            }
            for m in mounted.iter().rev() {
                let _ = rustix::mount::unmount(*m, rustix::mount::UnmountFlags::DETACH);
            }
            let e = std::process::Command::new("/init")
                .args(std::env::args_os().skip(1))
                .exec();
            Error::io("start the restored system's /init", e)
        }
        Err(e) => e,
    };
    eprintln!("liverestore: early boot failed: {err}");
    eprintln!(
        "liverestore: rebooting in {} s (a trial boot returns to the previous system)",
        params.failure_pause.as_secs()
    );
    std::thread::sleep(params.failure_pause);
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The trial's deadline: the watchdog armed for `deadline`, unless this
/// boot is the committed system's default one (see
/// [`crate::boot::activate::committed_boot`]; efivarfs is mounted for it
/// where there is UEFI). Said on the console; a failure does not stop the
/// boot.
fn start_deadline(mounted: &mut Vec<&'static str>, deadline: Duration, disk: &Path) {
    if let Err(e) = load_our_modules() {
        eprintln!("liverestore: warning: {e}");
    }
    const EFIVARS: &str = crate::sys::efivars::EFIVARS;
    if Path::new("/sys/firmware/efi").exists()
        && !is_mount_point(Path::new(EFIVARS))
        && rustix::mount::mount(
            "efivarfs",
            EFIVARS,
            "efivarfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .is_ok()
    {
        mounted.push(EFIVARS);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if crate::boot::activate::committed_boot(&cmdline, disk) {
        eprintln!("liverestore: committed: no trial deadline");
        return;
    }
    let secs = u32::try_from(deadline.as_secs()).unwrap_or(u32::MAX);
    match crate::sys::watchdog::arm(secs) {
        Ok(secs) => eprintln!(
            "liverestore: trial deadline armed: unless the restored system runs `liverestore commit` within {secs} s, the watchdog resets the machine (back to the previous system)"
        ),
        Err(e) => eprintln!("liverestore: warning: no trial deadline: {e}"),
    }
}

/// Load softdog and efivarfs: from the restored initrd's module tree
/// where it has them, else what `activate` put in `/lr/modules` (in load
/// order), each unless loaded or built in; the first failure is
/// returned, the rest still tried.
fn load_our_modules() -> Result<()> {
    // the restored initrd's own, where it has them
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let tree = Path::new("/lib/modules").join(&release);
    if tree.join("modules.dep").exists() {
        for name in ["softdog", "efivarfs"] {
            let _ = kmod::load(&tree, &[name.to_string()]);
        }
    }
    let Ok(dir) = std::fs::read_dir("/lr/modules") else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut first_error = None;
    for f in &files {
        if let Err(e) = kmod::load_file(f) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Mount what is not mounted yet. /dev counts as mounted only when it is
/// a mount point of its own: dracut's initrds carry a few static nodes
/// (`/dev/null`, `/dev/console`, …) in a plain /dev, where the disks'
/// nodes never appear.
fn mount_missing(mounted: &mut Vec<&'static str>) -> Result<()> {
    for (fs, dir, probe) in [
        ("proc", "/proc", Some("/proc/self")),
        ("sysfs", "/sys", Some("/sys/block")),
        ("devtmpfs", "/dev", None),
    ] {
        let there = match probe {
            Some(probe) => Path::new(probe).exists(),
            None => is_mount_point(Path::new(dir)),
        };
        if there {
            continue;
        }
        let _ = std::fs::create_dir_all(dir);
        rustix::mount::mount(fs, dir, fs, rustix::mount::MountFlags::empty(), None)
            .map_err(|e| Error::from(e).with_path(dir))?;
        mounted.push(dir);
    }
    Ok(())
}

/// Find the disk, note the boots and map the image (unless native);
/// what was done (for the console), and the disk's node.
fn assemble(mounted: &mut Vec<&'static str>, params: &mut BootParams) -> Result<(String, PathBuf)> {
    mount_missing(mounted)?;
    *params =
        BootParams::from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let plan_bytes = std::fs::read(initrd::PLAN_PATH)
        .map_err(|e| Error::io("read the boot plan", e).with_path(initrd::PLAN_PATH))?;
    let plan = BootPlan::decode(&plan_bytes)?;
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let modules = Path::new("/lib/modules").join(&release);
    let mut wanted = plan.modules.clone();
    if !plan.native {
        wanted.push("dm_mod".into());
    }
    if modules.join("modules.dep").exists() {
        kmod::load(&modules, &wanted)?;
    } else if !plan.native && !Path::new(dm::CONTROL).exists() {
        return Err(Error::new(
            ErrorKind::KernelLacks,
            format!(
                "the initramfs has no {}/modules.dep and the kernel has no device-mapper built in",
                modules.display()
            ),
        ));
    }
    let (name, dev_t) = find_disk(&plan, params.disk_wait)?;
    let node = Path::new("/dev").join(&name);
    let what = if plan.native {
        "it boots natively".to_string()
    } else {
        format!("mapping {} extents", plan.extents.len())
    };
    eprintln!("liverestore: '{}' found on /dev/{name}; {what}", plan.name);
    // Every boot noted before anything is mapped; the image's other
    // partitions each checked by its own header first.
    note_boot(&node, &plan.name, plan.id, &plan.note);
    for c in &plan.companions {
        check_companion(&node, &name, c)?;
        note_boot(&node, &c.dm_name, c.id, &c.note);
    }
    if plan.native {
        let what = format!(
            "'{}' boots natively from its own partition or volume on /dev/{name}: nothing to map",
            plan.name
        );
        return Ok((what, node));
    }
    let info = dm::create(
        DM_NAME,
        &format!("{DM_UUID_PREFIX}{}", plan.id),
        &plan.table(&dev_t),
        false,
    )?;
    for c in &plan.companions {
        dm::create(
            &c.dm_name,
            &format!("{DM_UUID_PREFIX}{}", c.id),
            &c.table(&dev_t),
            false,
        )?;
        eprintln!(
            "liverestore: {} mapped ({} extents)",
            c.dm_name,
            c.extents.len()
        );
    }
    Ok((
        format!("the staged image is {}", info.path().display()),
        node,
    ))
}

/// Refuse a companion whose on-disk header is not its own any more.
fn check_companion(node: &Path, name: &str, c: &crate::boot::plan::Companion) -> Result<()> {
    if holds_header(node, c.header_offset, c.id)? {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::MapChanged,
        format!(
            "the header at byte {} of /dev/{name} is not {}'s any more",
            c.header_offset, c.dm_name
        ),
    ))
}

/// Note this boot in staging `id`'s boot note ([`boot_note`]), before its
/// image is mapped, so before anything can change it. A failure is said
/// and the boot goes on: a trial is still worth having, but its changes
/// will then look like corruption to `verify`.
fn note_boot(disk: &Path, what: &str, id: uuid::Uuid, at: &NoteAt) {
    let Some(offset) = at.note_offset else {
        return;
    };
    let note = || -> Result<u32> {
        let old = boot_note::decode(&crate::map::disk_io::read_raw(
            disk,
            offset,
            boot_note::LEN,
        )?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_default();
        let new = boot_note::next(old, id, at.boots_accepted, now, boot_id);
        let sector = crate::space::hostfs::logical_sector_size(
            &disk.file_name().unwrap_or_default().to_string_lossy(),
        );
        DiskWriter::write_range(disk, offset, &boot_note::encode(&new), sector)?;
        Ok(new.boots)
    };
    match note() {
        Ok(boots) => eprintln!("liverestore: boot {boots} of '{what}' noted"),
        Err(e) => eprintln!(
            "liverestore: warning: this boot of '{what}' is not noted ({e}): the changes it makes will look like corruption to `verify`"
        ),
    }
}

/// Whether `dir` is a mount point (another filesystem than its parent's).
fn is_mount_point(dir: &Path) -> bool {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    match (rustix::fs::stat(dir), rustix::fs::stat(parent)) {
        (Ok(d), Ok(p)) => d.st_dev != p.st_dev,
        _ => false,
    }
}

/// Whether `disk` holds, at `offset`, the header block 0 of staging `id`
/// (written for that offset); an error when it cannot be read at all.
fn holds_header(disk: &Path, offset: u64, id: uuid::Uuid) -> Result<bool> {
    let block = crate::map::disk_io::read_raw(disk, offset, header::BLOCK0_SIZE)?;
    Ok(header::decode_block0(&block).is_ok_and(|b0| b0.id == id && b0.self_disk_offset == offset))
}

/// The disk holding the plan's staging: name and "major:minor".
fn find_disk(plan: &BootPlan, wait: Duration) -> Result<(String, String)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        for entry in std::fs::read_dir("/sys/block")
            .map_err(|e| Error::io("list /sys/block", e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "dm-", "zram", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).unwrap_or_default();
            let sectors: u64 = read("size").trim().parse().unwrap_or(0);
            if sectors * 512 != plan.disk_size {
                continue;
            }
            let said =
                match holds_header(&Path::new("/dev").join(&name), plan.header_offset, plan.id) {
                    Ok(true) => return Ok((name, read("dev").trim().to_string())),
                    Ok(false) => name.clone(),
                    Err(e) => format!("{name} ({e})"),
                };
            seen.retain(|s: &String| s != &name && !s.starts_with(&format!("{name} (")));
            seen.push(said);
        }
        if start.elapsed() > wait {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no disk of {} bytes holds the header of '{}' at byte {} (disks of that size: {})",
                    plan.disk_size,
                    plan.name,
                    plan.header_offset,
                    if seen.is_empty() {
                        "none".into()
                    } else {
                        seen.join(", ")
                    }
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_params_from_the_command_line() {
        let p = BootParams::from_cmdline("ro root=/dev/dm-0 liverestore.disk_wait=3 quiet");
        assert_eq!(p.disk_wait, Duration::from_secs(3));
        assert_eq!(p.failure_pause, FAILURE_PAUSE);
        let p = BootParams::from_cmdline("liverestore.failure_pause=0 liverestore.disk_wait=x");
        assert_eq!((p.disk_wait, p.failure_pause), (DISK_WAIT, Duration::ZERO));
        assert_eq!(p.deadline, None, "no deadline unless asked");
        let arg = crate::boot::activate::DEADLINE_ARG;
        let p = BootParams::from_cmdline(&format!("rw {arg}1800 quiet"));
        assert_eq!(p.deadline, Some(Duration::from_secs(1800)));
        assert_eq!(BootParams::from_cmdline(&format!("{arg}0")).deadline, None);
    }
}
