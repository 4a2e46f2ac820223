//! `customize --auto-commit`: what goes into a staged system so that its
//! trial boot commits itself once it is healthy, with nobody at the
//! machine: a static liverestore, its settings and a systemd unit, all
//! under names of their own (the runtime is [`crate::boot::auto_commit`]).
//!
//! The unit is started after `multi-user.target` (a `Type=exec` service
//! wanted by it, so the boot does not wait for it and `systemctl
//! is-system-running --wait` inside it can finish), only on a boot made
//! by liverestore (`ConditionKernelCommandLine=liverestore.id`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::attach::root_dir::{Kind, Meta, RootDir};
use crate::error::{Error, ErrorKind, Result};
use crate::store::record::Change;

/// The unit's name.
pub const UNIT: &str = "liverestore-auto-commit.service";
/// Where its files go inside the image (and so in the restored system).
pub const DIR: &str = "/usr/local/lib/liverestore";
pub const BINARY: &str = "/usr/local/lib/liverestore/liverestore";
pub const SETTINGS: &str = "/usr/local/lib/liverestore/auto-commit.json";
pub const UNIT_PATH: &str = "/etc/systemd/system/liverestore-auto-commit.service";
pub const WANTS_PATH: &str =
    "/etc/systemd/system/multi-user.target.wants/liverestore-auto-commit.service";
/// The health check when none is given: the boot finished with no unit
/// failed (`running`; `degraded` is not healthy).
pub const DEFAULT_HEALTH: &str = "systemctl is-system-running --wait";
/// How long the health check may take to pass, when not given.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(600);

/// What the restored system's auto-commit reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// A shell command (`/bin/sh -c`): exit 0 means healthy.
    pub health: String,
    /// Commit if it passes within this many seconds of the start; else
    /// reboot (back to the old system).
    pub within_secs: u64,
}

/// The unit file.
pub fn unit_text() -> String {
    format!(
        "# Put here by `liverestore customize --auto-commit`; removed by the commit.\n\
         [Unit]\n\
         Description=liverestore: commit this trial boot once the system is healthy\n\
         After=multi-user.target\n\
         ConditionKernelCommandLine=liverestore.id\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={BINARY} auto-commit\n\
         StandardOutput=journal+console\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Whether the system in `root` starts with systemd.
pub fn has_systemd(root: &RootDir) -> bool {
    ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
        .iter()
        .any(|p| matches!(root.kind(Path::new(p)), Ok(Some(Kind::File))))
}

/// Refuse, before anything is changed, an image that cannot run the unit.
pub fn check(root: &RootDir) -> Result<()> {
    if has_systemd(root) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidState,
        "--auto-commit needs systemd in the image (no /usr/lib/systemd/systemd): nothing was changed; commit by hand with `liverestore commit` in the restored system",
    ))
}

/// Refuse, before anything is changed, an image whose filesystem has no
/// room for the `helper_len` bytes of the static helper (less a helper
/// already there, which is replaced) and the unit's few files.
pub fn check_room(root: &RootDir, helper_len: u64) -> Result<()> {
    const MIB: u64 = 1 << 20;
    let present = root.file_size(Path::new(BINARY))?.unwrap_or(0);
    let need = helper_len.saturating_sub(present) + 64 * 1024;
    let free = root.free_bytes()?;
    if free >= need {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NoSpace,
        format!(
            "--auto-commit puts a static liverestore of {} MiB into the image, whose filesystem has {} MiB free: nothing was changed; grow the image's root filesystem, or commit by hand with `liverestore commit` in the restored system",
            need.div_ceil(MIB),
            free / MIB
        ),
    ))
}

/// Put the static `helper`, the settings and the enabled unit into `root`.
pub fn install(root: &RootDir, settings: &Settings, helper: &[u8]) -> Result<Vec<Change>> {
    check(root)?;
    let dir = Path::new(DIR);
    root.mkdir(dir, Meta::root(0o755))?;
    root.write(Path::new(BINARY), helper, Meta::root(0o755))?;
    let json = serde_json::to_vec_pretty(settings).expect("settings serialize");
    root.write(Path::new(SETTINGS), &json, Meta::root(0o644))?;
    root.write(
        Path::new(UNIT_PATH),
        unit_text().as_bytes(),
        Meta::root(0o644),
    )?;
    root.symlink(
        Path::new(WANTS_PATH),
        Path::new(&format!("../{UNIT}")),
        Meta::root(0o777),
    )?;
    Ok(vec![Change::new(
        "auto-commit",
        Path::new(UNIT_PATH),
        &format!(
            "commits the trial once `{}` passes within {} s, else reboots to the old system",
            settings.health, settings.within_secs
        ),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_after_the_boot_on_a_liverestore_boot_only() {
        let u = unit_text();
        assert!(u.contains("After=multi-user.target\n"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
        assert!(u.contains("ConditionKernelCommandLine=liverestore.id\n"));
        // not oneshot: the boot must be able to finish while it waits
        assert!(u.contains("Type=exec\n"));
        assert!(u.contains(&format!("ExecStart={BINARY} auto-commit\n")));
        assert!(WANTS_PATH.ends_with(UNIT) && UNIT_PATH.ends_with(UNIT));
    }

    #[test]
    fn settings_round_trip() {
        let s = Settings {
            health: "curl -fs http://127.0.0.1/ready".into(),
            within_secs: 90,
        };
        let back: Settings = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
