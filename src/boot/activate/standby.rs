//! `activate --standby`: a staged copy of this system (`snapshot`) armed
//! as its fallback, not as a trial. The installed system stays the
//! default; after failed boots in a row the machine starts the standby by
//! itself, through what its boot loader can do without being replaced:
//!
//! - **GRUB** (the default): the standby's `custom.cfg` block counts the
//!   installed system's boots down in `grubenv` ([`vars::TRIES`], saved
//!   by GRUB's own `save_env`), and once none are left GRUB starts the
//!   standby. Every boot counts, however early it fails.
//! - **UEFI** (`--loader uefi`): the firmware has no counter of its own,
//!   so the standby's `Boot####` goes first in `BootOrder` and the
//!   installed system's own entry (its `BootCurrent` when armed) is put in
//!   `BootNext` by the installed system itself: [`COUNT_UNIT`], early in
//!   every boot, counts the boot (a state file, [`UefiCount`]) and sets
//!   `BootNext` again while failed boots are left ([`count_attempt`]).
//!   A boot that fails before that unit (a kernel that cannot start, an
//!   init that is gone) cannot set it: the next boot is the standby's,
//!   after one failed boot — `activate` and the guide say so.
//!
//! In both, every boot of the installed system that reaches
//! `multi-user.target` runs [`UNIT`], which puts the full count back
//! (`liverestore healthy-boot`; UEFI: and `BootNext`): only failed boots
//! in a row count. It is the shape update frameworks give GRUB and U-Boot
//! (RAUC's `grub.cfg` keeps `A_TRY`/`A_OK` in `grubenv` with `save_env`;
//! U-Boot's `bootcount` against `bootlimit` starts `altbootcmd`, reset
//! from Linux), here without replacing the machine's boot loader: the
//! GRUB block is `custom.cfg`'s, which `update-grub`'s configuration
//! sources; the UEFI route only adds a `Boot####` and orders.
//!
//! A boot "fails" when it reboots without reaching `multi-user.target`:
//! a kernel panic reboots only with `panic=N` on the installed system's
//! command line, and a hang only with a watchdog (systemd's
//! `RuntimeWatchdogSec`); `activate` says when `panic=` is missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::grub_format::{self, GrubEnv, MAX_STANDBY_TRIES, vars};
use crate::error::{Error, ErrorKind, Result};
use crate::store::state_dir::StateLock;

/// What `activate` says of the GRUB route.
pub const GRUB_ROUTE: &str = "--standby: through GRUB, which counts the installed system's failed boots in grubenv, however early they fail";
/// What `activate` says of the UEFI route.
pub const UEFI_ROUTE: &str = "--standby: through the firmware, which keeps no count: the standby's Boot#### goes first in BootOrder, and liverestore-count-boot.service, early in every boot of this system, counts the boot and puts this system's own entry in BootNext again while failed boots are left. A boot that fails before that unit runs (a kernel or initrd that cannot start, an init that is gone) cannot, so the standby starts after one such failed boot (--loader grub counts those too)";

/// The unit that resets the count on a healthy boot of the installed
/// system.
pub const UNIT: &str = "liverestore-healthy-boot.service";
/// The UEFI route's unit that counts each boot of the installed system
/// at its start (`liverestore count-boot`).
pub const COUNT_UNIT: &str = "liverestore-count-boot.service";
/// The description of a standby's `Boot####` while it is armed (`commit`
/// from the standby drops the word).
pub const UEFI_DESCRIPTION_PREFIX: &str = "liverestore standby ";
/// Where the unit goes: systemd's directory for the administrator's
/// units. `LIVERESTORE_UNIT_DIR` names another (tests; a system image
/// being built).
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The directory the unit goes into.
pub fn unit_dir() -> PathBuf {
    std::env::var_os("LIVERESTORE_UNIT_DIR").map_or_else(|| PathBuf::from(UNIT_DIR), PathBuf::from)
}

/// Failed boots in a row before the standby starts, when not given.
pub const DEFAULT_FAILED_BOOTS: u32 = 2;

/// What `activate --standby` armed besides the boot entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyArm {
    /// The installed system's failed boots in a row after which GRUB
    /// starts the standby.
    pub after_failed_boots: u32,
    /// The unit file that resets the count on every healthy boot.
    pub unit: String,
    /// The program the unit runs.
    pub program: String,
    /// The UEFI route: the installed system's own `Boot####` (its
    /// `BootCurrent` when armed), put in `BootNext` while failed boots are
    /// left. None: through GRUB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_boot: Option<u16>,
    /// The UEFI route: the unit file of [`COUNT_UNIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_unit: Option<String>,
}

/// The UEFI route's count, in the state directory (the firmware keeps
/// none): the installed system's failed boots left before the standby
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UefiCount {
    pub failed_boots_left: u32,
}

/// The UEFI route, at the start of a boot of the installed system: this
/// boot is one more attempt. From the failed boots `left` before it,
/// the count after it, and whether the next boot starts the installed
/// system again (`BootNext`): only while some are left — else, unless
/// this boot becomes healthy, the firmware's `BootOrder` starts the
/// standby.
pub fn count_attempt(left: u32) -> (u32, bool) {
    let after = left.saturating_sub(1);
    (after, after > 0)
}

/// `status`'s next boot once the installed system failed its boots.
pub const STANDBY_STARTS: &str = "standby (the installed system failed its boots in a row)";

/// The standby as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbyStatus {
    /// Which boot loader starts it: `grub` or `uefi`.
    pub loader: &'static str,
    /// The standby's GRUB entry, or its `Boot####`.
    pub entry: String,
    /// The count it was armed with (in the installed system).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_failed_boots: Option<u32>,
    /// Failed boots of the installed system left before GRUB starts the
    /// standby (`0`: it starts at every boot).
    pub failed_boots_left: u32,
}

/// The standby's state in `env`, when one is armed there.
pub(super) fn status_of(env: &GrubEnv, armed: Option<&StandbyArm>) -> Option<StandbyStatus> {
    Some(StandbyStatus {
        loader: "grub",
        entry: env.get(vars::STANDBY)?.to_string(),
        after_failed_boots: armed.map(|a| a.after_failed_boots),
        failed_boots_left: grub_format::tries_left(env)?,
    })
}

/// Check `--failed-boots`.
pub fn check_count(n: u32) -> Result<()> {
    if (1..=MAX_STANDBY_TRIES).contains(&n) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidState,
        format!(
            "--failed-boots {n}: from 1 to {MAX_STANDBY_TRIES} (GRUB's script counts down without arithmetic, one line per value)"
        ),
    ))
}

/// Whether kernel arguments `args` make a panic reboot (the last
/// `panic=N`, N ≠ 0).
fn panic_reboots(args: &str) -> bool {
    args.split_whitespace()
        .filter_map(|w| w.strip_prefix("panic="))
        .next_back()
        .and_then(|v| v.trim_matches('"').parse::<i64>().ok())
        .is_some_and(|v| v != 0)
}

/// A warning when this system's failed boots would not reboot by
/// themselves: no `panic=N` on the running kernel's command line
/// (`cmdline`), nor in the arguments `update-grub` gives the next boots
/// (`default_grub`, the text of `/etc/default/grub`); else None.
pub fn reboot_warning(cmdline: &str, default_grub: &str) -> Option<String> {
    let configured = default_grub
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("GRUB_CMDLINE_LINUX=") || l.starts_with("GRUB_CMDLINE_LINUX_DEFAULT=")
        })
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim_matches(['"', '\''])))
        .collect::<Vec<_>>()
        .join(" ");
    let panics_reboot = panic_reboots(cmdline) || panic_reboots(&configured);
    (!panics_reboot).then(|| {
        "neither this boot's kernel command line nor GRUB_CMDLINE_LINUX in /etc/default/grub has panic=N: a boot that panics (a broken init, a root that is gone) hangs instead of rebooting, and counts as a failed boot only once someone resets the machine. Add panic=10 to GRUB_CMDLINE_LINUX in /etc/default/grub and run update-grub; for hangs later in the boot, a watchdog (RuntimeWatchdogSec= in /etc/systemd/system.conf)".to_string()
    })
}

/// The unit file: after `multi-user.target` (and `boot-complete.target`,
/// where systemd's boot assessment checks run), on the installed
/// system's boots only.
pub fn unit_text(program: &str) -> String {
    format!(
        "# Put here by `liverestore activate --standby`; `liverestore rollback` removes it.\n\
         [Unit]\n\
         Description=liverestore: this boot is healthy, reset the standby's failed-boot count\n\
         Wants=boot-complete.target\n\
         After=multi-user.target boot-complete.target\n\
         ConditionKernelCommandLine=!liverestore.id\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={program} healthy-boot\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The UEFI route's unit file: early in every boot of the installed
/// system (once its filesystems are mounted, before `sysinit.target`),
/// the boot is counted and `BootNext` set again while failed boots are
/// left.
pub fn count_unit_text(program: &str) -> String {
    format!(
        "# Put here by `liverestore activate --standby --loader uefi`; `liverestore rollback` removes it.\n\
         [Unit]\n\
         Description=liverestore: count this boot of the installed system against its standby\n\
         DefaultDependencies=no\n\
         After=local-fs.target\n\
         Before=sysinit.target shutdown.target\n\
         Conflicts=shutdown.target\n\
         ConditionKernelCommandLine=!liverestore.id\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={program} count-boot\n\
         \n\
         [Install]\n\
         WantedBy=sysinit.target\n"
    )
}

/// The target whose `.wants` enables the unit file `unit` (by its name).
fn wanted_by(unit: &Path) -> &'static str {
    if unit.file_name() == Some(std::ffi::OsStr::new(COUNT_UNIT)) {
        "sysinit.target"
    } else {
        "multi-user.target"
    }
}

/// The `.wants` link that enables `unit` (a path).
fn wants_link(unit: &Path) -> PathBuf {
    let dir = unit.parent().unwrap_or(Path::new(UNIT_DIR));
    let name = unit.file_name().unwrap_or(std::ffi::OsStr::new(UNIT));
    dir.join(format!("{}.wants", wanted_by(unit))).join(name)
}

/// Install the unit file `unit` with `text` and enable it (as `systemctl
/// enable` would: the `.wants` symlink of its target), then have systemd
/// read it.
pub(super) fn install_unit(unit: &Path, text: &str) -> Result<()> {
    let wants = wants_link(unit);
    let wants_dir = wants.parent().unwrap_or(Path::new(UNIT_DIR));
    std::fs::create_dir_all(wants_dir)
        .map_err(|e| Error::io("create the units' directory", e).with_path(wants_dir))?;
    crate::store::durable::replace_file(unit, text.as_bytes(), 0o644)?;
    crate::store::durable::remove_file(&wants)?;
    std::os::unix::fs::symlink(unit, &wants)
        .map_err(|e| Error::io("enable the unit", e).with_path(&wants))?;
    crate::store::durable::sync_parent(&wants)?;
    daemon_reload(unit);
    Ok(())
}

/// Install what arm `arm` runs: [`UNIT`], and [`COUNT_UNIT`] for the
/// UEFI route.
pub(super) fn install_units(arm: &StandbyArm) -> Result<()> {
    install_unit(Path::new(&arm.unit), &unit_text(&arm.program))?;
    if let Some(count) = &arm.count_unit {
        install_unit(Path::new(count), &count_unit_text(&arm.program))?;
    }
    Ok(())
}

/// Remove what [`install_units`] installed (whatever is already gone is
/// fine).
pub(super) fn remove_units(arm: &StandbyArm) -> Result<()> {
    if let Some(count) = &arm.count_unit {
        remove_unit(Path::new(count))?;
    }
    remove_unit(Path::new(&arm.unit))
}

/// Remove the unit file `unit` and its link (whatever is already gone is
/// fine).
fn remove_unit(unit: &Path) -> Result<()> {
    let link = crate::store::durable::remove_file(&wants_link(unit))?;
    if crate::store::durable::remove_file(unit)? || link {
        daemon_reload(unit);
    }
    Ok(())
}

/// Have systemd read its units again, when `unit` is in its directory
/// (not a test's or an image's).
fn daemon_reload(unit: &Path) {
    if unit.parent() == Some(Path::new(UNIT_DIR)) {
        crate::sys::power::daemon_reload();
    }
}

/// What `healthy-boot` (and `count-boot`) did.
#[derive(Debug, Clone, Serialize)]
pub struct HealthyBoot {
    /// The armed standby, if any.
    pub standby: Option<String>,
    /// The failed boots left before this run, and after it.
    pub failed_boots_left_before: Option<u32>,
    pub failed_boots_left: Option<u32>,
    /// Whether the count was written (`grubenv`, or the UEFI route's
    /// state file).
    pub reset: bool,
    /// The UEFI route: the `Boot####` put in `BootNext` (the installed
    /// system's), when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_next: Option<u16>,
    /// Why nothing was done, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nothing_because: Option<String>,
}

impl HealthyBoot {
    /// For standby `name`, whose count was `before`; nothing done yet.
    fn of(name: &str, before: Option<u32>, nothing_because: Option<String>) -> HealthyBoot {
        HealthyBoot {
            standby: Some(name.to_string()),
            failed_boots_left_before: before,
            failed_boots_left: before,
            reset: false,
            boot_next: None,
            nothing_because,
        }
    }

    fn nothing(why: &str) -> HealthyBoot {
        HealthyBoot {
            standby: None,
            failed_boots_left_before: None,
            failed_boots_left: None,
            reset: false,
            boot_next: None,
            nothing_because: Some(why.to_string()),
        }
    }
}

/// The armed standby's activation and arm; or, when there is none to
/// count for, what to report.
fn armed_standby(
    state: &StateLock<'_>,
) -> Result<std::result::Result<(super::Activation, StandbyArm), HealthyBoot>> {
    if super::booted_restored() {
        return Ok(Err(HealthyBoot::nothing(
            "this boot was started by liverestore (the standby, or a trial): the installed system's count is left as it is",
        )));
    }
    let Some(a) = super::current(state)? else {
        return Ok(Err(HealthyBoot::nothing("nothing is activated")));
    };
    let Some(arm) = a.standby.clone() else {
        return Ok(Err(HealthyBoot::nothing(&format!(
            "'{}' is activated as a trial, not as a standby",
            a.name
        ))));
    };
    crate::stage::plan::require_root()?;
    Ok(Ok((a, arm)))
}

/// The UEFI route's count as the state file has it (none: as armed).
pub(super) fn uefi_count(state: &crate::store::state_dir::StateDir) -> Result<Option<u32>> {
    Ok(state
        .read_state::<UefiCount>(&state.standby_count_path())?
        .map(|c| c.failed_boots_left))
}

/// Write the UEFI route's count (armed: full).
pub(super) fn write_uefi_count(state: &StateLock<'_>, left: u32) -> Result<()> {
    state.write_state(
        &state.standby_count_path(),
        &UefiCount {
            failed_boots_left: left,
        },
    )
}

/// Remove the UEFI route's count (rollback); a missing one is fine.
pub(super) fn remove_uefi_count(state: &StateLock<'_>) -> Result<()> {
    state.remove_state(&state.standby_count_path())
}

/// The UEFI route: the standby's `Boot####`, or why it is no longer
/// armed.
fn uefi_entry_armed(u: &super::uefi::UefiBoot, name: &str) -> Result<Option<String>> {
    Ok((!super::uefi::entry_exists(u.boot_number)?).then(|| {
        format!(
            "Boot{:04X} of standby '{name}' is gone (committed or rolled back from the standby): `liverestore rollback` cleans up",
            u.boot_number
        )
    }))
}

/// In the installed system, once its boot is healthy: the standby's
/// count back to full (UEFI: and `BootNext` to the installed system's
/// entry). A restored system (the standby itself, or a trial) and a
/// machine with no standby armed change nothing.
pub fn healthy_boot(state: &StateLock<'_>) -> Result<HealthyBoot> {
    let (a, arm) = match armed_standby(state)? {
        Ok(x) => x,
        Err(nothing) => return Ok(nothing),
    };
    let full = arm.after_failed_boots;
    if let (Some(u), Some(installed)) = (&a.uefi, arm.installed_boot) {
        let before = uefi_count(state)?;
        let mut out = HealthyBoot::of(&a.name, before, uefi_entry_armed(u, &a.name)?);
        if out.nothing_because.is_some() {
            return Ok(out);
        }
        if before != Some(full) {
            write_uefi_count(state, full)?;
            out.reset = true;
        }
        super::uefi::set_boot_next(installed)?;
        out.boot_next = Some(installed);
        out.failed_boots_left = Some(full);
        return Ok(out);
    }
    let Some(g) = &a.grub else {
        return Ok(HealthyBoot::nothing(&format!(
            "'{}' is armed without a boot loader that counts",
            a.name
        )));
    };
    let path = Path::new(&g.grub_dir).join("grubenv");
    let mut env = super::grub::read_env_file(g)?;
    let mut out = HealthyBoot::of(&a.name, grub_format::tries_left(&env), None);
    if env.get(vars::STANDBY) != Some(g.entry_id.as_str()) {
        out.nothing_because = Some(format!(
            "grubenv ({}) no longer arms '{}' (committed or rolled back from the standby): `liverestore rollback` cleans up",
            path.display(),
            a.name
        ));
        return Ok(out);
    }
    let full = full.to_string();
    if env.get(vars::TRIES) != Some(full.as_str()) {
        env.set(vars::TRIES, &full);
        super::grub::write_env(g, &env)?;
        out.reset = true;
    }
    out.failed_boots_left = Some(arm.after_failed_boots);
    Ok(out)
}

/// The UEFI route, early in every boot of the installed system
/// ([`COUNT_UNIT`]): this boot is counted ([`count_attempt`]) and, while
/// failed boots are left, `BootNext` is set to the installed system's
/// entry again; with none left, the next boot is the standby's unless
/// this one becomes healthy. Through GRUB nothing is done (GRUB counts).
pub fn count_boot(state: &StateLock<'_>) -> Result<HealthyBoot> {
    let (a, arm) = match armed_standby(state)? {
        Ok(x) => x,
        Err(nothing) => return Ok(nothing),
    };
    let (Some(u), Some(installed)) = (&a.uefi, arm.installed_boot) else {
        return Ok(HealthyBoot::nothing(
            "the standby is armed through GRUB, which counts the boots itself",
        ));
    };
    let before = uefi_count(state)?;
    let mut out = HealthyBoot::of(&a.name, before, uefi_entry_armed(u, &a.name)?);
    if out.nothing_because.is_some() {
        return Ok(out);
    }
    let (after, again) = count_attempt(before.unwrap_or(arm.after_failed_boots));
    write_uefi_count(state, after)?;
    out.reset = true;
    out.failed_boots_left = Some(after);
    if again {
        super::uefi::set_boot_next(installed)?;
        out.boot_next = Some(installed);
    } else {
        super::uefi::clear_boot_next(installed)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_warnings() {
        check_count(2).unwrap();
        check_count(MAX_STANDBY_TRIES).unwrap();
        assert_eq!(check_count(0).unwrap_err().kind(), ErrorKind::InvalidState);
        assert!(check_count(10).is_err());
        assert!(reboot_warning("root=/dev/sda1 ro quiet", "").is_some());
        assert!(reboot_warning("root=/dev/sda1 panic=0", "").is_some());
        assert!(reboot_warning("panic=10 root=/dev/sda1", "").is_none());
        assert!(reboot_warning("panic=-1", "").is_none(), "at once");
        assert!(
            reboot_warning("panic=10 panic=0", "").is_some(),
            "the last wins"
        );
        // set for the next boots already (update-grub ran)
        let grub = "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"panic=10 console=ttyS0\"\n";
        assert!(reboot_warning("root=/dev/sda1 ro", grub).is_none());
        assert!(reboot_warning("root=/dev/sda1 ro", "GRUB_CMDLINE_LINUX=\"quiet\"").is_some());
    }

    #[test]
    fn the_uefi_route_counts_down_to_the_standby() {
        // armed with 2: the first boot leaves 1 (BootNext again), the
        // second none (the next boot is the standby's unless it is
        // healthy); an installed boot with none left stays at none
        assert_eq!(count_attempt(2), (1, true));
        assert_eq!(count_attempt(1), (0, false));
        assert_eq!(count_attempt(0), (0, false));
        assert_eq!(
            count_attempt(MAX_STANDBY_TRIES),
            (MAX_STANDBY_TRIES - 1, true)
        );
    }

    #[test]
    fn the_count_unit_runs_early_on_the_installed_systems_boots() {
        let u = count_unit_text("/usr/bin/liverestore");
        for line in [
            "DefaultDependencies=no\n",
            "After=local-fs.target\n",
            "Before=sysinit.target shutdown.target\n",
            "ConditionKernelCommandLine=!liverestore.id\n",
            "ExecStart=/usr/bin/liverestore count-boot\n",
            "WantedBy=sysinit.target\n",
        ] {
            assert!(u.contains(line), "{line}: {u}");
        }
        let t = tempfile::tempdir().unwrap();
        let arm = StandbyArm {
            after_failed_boots: 2,
            unit: t.path().join(UNIT).display().to_string(),
            program: "/usr/bin/liverestore".into(),
            installed_boot: Some(1),
            count_unit: Some(t.path().join(COUNT_UNIT).display().to_string()),
        };
        install_units(&arm).unwrap();
        let early = t.path().join("sysinit.target.wants").join(COUNT_UNIT);
        let healthy = t.path().join("multi-user.target.wants").join(UNIT);
        assert_eq!(
            std::fs::read_link(&early).unwrap(),
            t.path().join(COUNT_UNIT)
        );
        assert_eq!(std::fs::read_link(&healthy).unwrap(), t.path().join(UNIT));
        remove_units(&arm).unwrap();
        assert_eq!(
            std::fs::read_dir(t.path().join("sysinit.target.wants"))
                .unwrap()
                .count(),
            0
        );
        assert!(!t.path().join(COUNT_UNIT).exists() && !t.path().join(UNIT).exists());
    }

    #[test]
    fn the_unit_is_enabled_and_removed_in_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let unit = t.path().join(UNIT);
        install_unit(&unit, &unit_text("/usr/bin/liverestore")).unwrap();
        let link = t.path().join("multi-user.target.wants").join(UNIT);
        assert_eq!(std::fs::read_link(&link).unwrap(), unit);
        assert!(
            std::fs::read_to_string(&unit)
                .unwrap()
                .contains("healthy-boot")
        );
        remove_unit(&unit).unwrap();
        assert!(!unit.exists() && link.symlink_metadata().is_err());
        remove_unit(&unit).unwrap();
    }

    #[test]
    fn the_unit_runs_on_the_installed_systems_healthy_boots() {
        let u = unit_text("/usr/bin/liverestore");
        assert!(u.contains("After=multi-user.target boot-complete.target\n"));
        assert!(u.contains("ConditionKernelCommandLine=!liverestore.id\n"));
        assert!(u.contains("ExecStart=/usr/bin/liverestore healthy-boot\n"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn what_status_shows() {
        let mut env = GrubEnv::new();
        assert_eq!(status_of(&env, None), None);
        env.set(vars::STANDBY, "liverestore-sb");
        env.set(vars::TRIES, "1");
        let arm = StandbyArm {
            after_failed_boots: 2,
            unit: format!("{UNIT_DIR}/{UNIT}"),
            program: "/usr/bin/liverestore".into(),
            installed_boot: None,
            count_unit: None,
        };
        assert_eq!(
            status_of(&env, Some(&arm)),
            Some(StandbyStatus {
                loader: "grub",
                entry: "liverestore-sb".into(),
                after_failed_boots: Some(2),
                failed_boots_left: 1
            })
        );
    }
}
