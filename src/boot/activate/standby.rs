//! `activate --standby`: a staged copy of this system (`snapshot`) armed
//! as its fallback, not as a trial. The installed system stays GRUB's
//! default; the standby's `custom.cfg` block counts the installed
//! system's boots down in `grubenv` ([`vars::TRIES`], saved by GRUB's own
//! `save_env`), and once none are left GRUB starts the standby by itself.
//! Every boot of the installed system that reaches `multi-user.target`
//! runs [`UNIT`], which puts the full count back (`liverestore
//! healthy-boot`): only failed boots in a row count. It is the shape
//! update frameworks give GRUB and U-Boot (RAUC's `grub.cfg` keeps
//! `A_TRY`/`A_OK` in `grubenv` with `save_env`; U-Boot's `bootcount`
//! against `bootlimit` starts `altbootcmd`, reset from Linux), here
//! without replacing the machine's own `grub.cfg`: the block is
//! `custom.cfg`'s, which `update-grub`'s configuration sources.
//!
//! Only GRUB can count: UEFI firmware has no counter of its own (a
//! `BootNext` set by a unit of the installed system is gone after one
//! failed boot, and a boot that never reaches the unit cannot set it), so
//! `--standby` goes through GRUB and says so.
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

/// The unit that resets the count on a healthy boot of the installed
/// system.
pub const UNIT: &str = "liverestore-healthy-boot.service";
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
}

/// The standby as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandbyStatus {
    /// The standby's GRUB entry.
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

/// The `.wants` link that enables `unit` (a path).
fn wants_link(unit: &Path) -> PathBuf {
    let dir = unit.parent().unwrap_or(Path::new(UNIT_DIR));
    dir.join("multi-user.target.wants").join(UNIT)
}

/// Install the unit file `unit` and enable it (as `systemctl enable`
/// would: the `.wants` symlink), then have systemd read it.
pub(super) fn install_unit(unit: &Path, program: &str) -> Result<()> {
    let wants = wants_link(unit);
    let wants_dir = wants.parent().unwrap_or(Path::new(UNIT_DIR));
    std::fs::create_dir_all(wants_dir)
        .map_err(|e| Error::io("create the units' directory", e).with_path(wants_dir))?;
    crate::store::durable::replace_file(unit, unit_text(program).as_bytes(), 0o644)?;
    crate::store::durable::remove_file(&wants)?;
    std::os::unix::fs::symlink(unit, &wants)
        .map_err(|e| Error::io("enable the unit", e).with_path(&wants))?;
    crate::store::durable::sync_parent(&wants)?;
    daemon_reload(unit);
    Ok(())
}

/// Remove the unit file `unit` and its link (whatever is already gone is
/// fine).
pub(super) fn remove_unit(unit: &Path) -> Result<()> {
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

/// What `healthy-boot` did.
#[derive(Debug, Clone, Serialize)]
pub struct HealthyBoot {
    /// The armed standby, if any.
    pub standby: Option<String>,
    /// The failed boots left before this run, and after it.
    pub failed_boots_left_before: Option<u32>,
    pub failed_boots_left: Option<u32>,
    /// Whether `grubenv` was written.
    pub reset: bool,
    /// Why nothing was done, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nothing_because: Option<String>,
}

/// In the installed system, once its boot is healthy: the standby's
/// count back to full. A restored system (the standby itself, or a
/// trial) and a machine with no standby armed change nothing.
pub fn healthy_boot(state: &StateLock<'_>) -> Result<HealthyBoot> {
    let nothing = |why: &str| HealthyBoot {
        standby: None,
        failed_boots_left_before: None,
        failed_boots_left: None,
        reset: false,
        nothing_because: Some(why.to_string()),
    };
    if super::booted_restored() {
        return Ok(nothing(
            "this boot was started by liverestore (the standby, or a trial): the installed system's count is left as it is",
        ));
    }
    let Some(a) = super::current(state)? else {
        return Ok(nothing("nothing is activated"));
    };
    let (Some(arm), Some(g)) = (&a.standby, &a.grub) else {
        return Ok(nothing(&format!(
            "'{}' is activated as a trial, not as a standby",
            a.name
        )));
    };
    crate::stage::plan::require_root()?;
    let path = Path::new(&g.grub_dir).join("grubenv");
    let mut env = super::grub::read_env_file(g)?;
    let before = grub_format::tries_left(&env);
    let mut out = HealthyBoot {
        standby: Some(a.name.clone()),
        failed_boots_left_before: before,
        failed_boots_left: before,
        reset: false,
        nothing_because: None,
    };
    if env.get(vars::STANDBY) != Some(g.entry_id.as_str()) {
        out.nothing_because = Some(format!(
            "grubenv ({}) no longer arms '{}' (committed or rolled back from the standby): `liverestore rollback` cleans up",
            path.display(),
            a.name
        ));
        return Ok(out);
    }
    let full = arm.after_failed_boots.to_string();
    if env.get(vars::TRIES) != Some(full.as_str()) {
        env.set(vars::TRIES, &full);
        super::grub::write_env(g, &env)?;
        out.reset = true;
    }
    out.failed_boots_left = Some(arm.after_failed_boots);
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
    fn the_unit_is_enabled_and_removed_in_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let unit = t.path().join(UNIT);
        install_unit(&unit, "/usr/bin/liverestore").unwrap();
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
        };
        assert_eq!(
            status_of(&env, Some(&arm)),
            Some(StandbyStatus {
                entry: "liverestore-sb".into(),
                after_failed_boots: Some(2),
                failed_boots_left: 1
            })
        );
    }
}
