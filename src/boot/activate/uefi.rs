//! Activation through UEFI: the kernel and initrd on the ESP
//! (`\liverestore\NAME\`), a `Boot####` load option for the kernel's EFI
//! stub, `BootNext` for the trial; `commit` puts the entry first in
//! `BootOrder`. `BootOrder` is otherwise not touched, so the boot after a
//! trial starts the old system again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Activation, RolledBack, Status};
use crate::boot::efi::{self, GptPartition, LoadOption};
use crate::error::{Error, ErrorKind, Result};
use crate::space::hostfs::{self, FsKind};
use crate::space::identity;
use crate::sys::efivars::EfiVars;

use super::standby::{STANDBY_STARTS, StandbyStatus, UEFI_DESCRIPTION_PREFIX};

pub const KERNEL_FILE: &str = "vmlinuz.efi";
pub const INITRD_FILE: &str = "initrd.img";

/// What a UEFI activation created besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UefiBoot {
    /// The `Boot####` number.
    pub boot_number: u16,
    /// The ESP's mount point.
    pub esp: String,
    /// The kernel's path on the ESP, as the firmware sees it.
    pub loader: String,
}

/// A checked ESP and the firmware's variables.
pub(super) struct Target {
    esp: PathBuf,
    part: GptPartition,
    vars: EfiVars,
    /// Set when booting the image's own ESP: the program to start there
    /// (nothing is copied).
    image_loader: Option<String>,
}

/// The type GUID of an EFI system partition.
pub const ESP_TYPE: uuid::Uuid = uuid::uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");

impl Target {
    /// Check that `esp` is a mounted FAT partition of a GPT disk and that
    /// efivarfs is there and writable.
    pub(super) fn open(esp: &Path) -> Result<Target> {
        let vars = EfiVars::open()?;
        Ok(Target {
            esp: esp.to_path_buf(),
            part: esp_partition(esp)?,
            vars,
            image_loader: None,
        })
    }

    /// Boot the image's own ESP — `entries` of a native activation, one
    /// of them an EFI system partition — by starting `loader` on it, the
    /// way the image's disk would: nothing is copied to either ESP.
    pub(super) fn image_esp(entries: &[super::NativeBoot], loader: &str) -> Result<Target> {
        let vars = EfiVars::open()?;
        let esp = entries
            .iter()
            .find(|n| n.kind.type_guid == ESP_TYPE)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    "the image has no EFI system partition staged with it: leave out --image-esp",
                )
            })?;
        let ss = esp.sector_size;
        Ok(Target {
            esp: PathBuf::from(format!(
                "{} (partition {})",
                esp.staging, esp.partition.number
            )),
            part: GptPartition {
                number: esp.partition.number,
                start_lba: esp.partition.start / ss,
                size_lba: esp.partition.length / ss,
                guid: esp.partition.guid,
            },
            vars,
            image_loader: Some(loader.to_string()),
        })
    }

    /// Fill in the UEFI side of `a` (a free `Boot####`, the files on the
    /// ESP, the arguments made by `args`); returns the files directory.
    pub(super) fn describe(
        &self,
        a: &mut Activation,
        args: impl Fn(&str) -> String,
    ) -> Result<PathBuf> {
        let name = &a.name;
        let number = efi::free_boot_number(&self.vars.boot_numbers()?)
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "every Boot#### number is taken"))?;
        if let Some(loader) = &self.image_loader {
            a.args = args("");
            a.files_dir = String::new();
            a.uefi = Some(UefiBoot {
                boot_number: number,
                esp: self.esp.display().to_string(),
                loader: loader.clone(),
            });
            return Ok(PathBuf::new());
        }
        let files_dir = self.esp.join("liverestore").join(name);
        a.args = args(&format!("initrd=\\liverestore\\{name}\\{INITRD_FILE}"));
        a.files_dir = files_dir.display().to_string();
        a.uefi = Some(UefiBoot {
            boot_number: number,
            esp: self.esp.display().to_string(),
            loader: format!("\\liverestore\\{name}\\{KERNEL_FILE}"),
        });
        Ok(files_dir)
    }

    /// Create the `Boot####` entry, then set `BootNext` to it. A
    /// standby's instead goes first in `BootOrder`, with `BootNext` on
    /// the installed system's entry ([`standby_order`]).
    pub(super) fn arm(&self, a: &Activation) -> Result<()> {
        let u = a.uefi.as_ref().expect("a UEFI activation");
        let installed = a.standby.as_ref().and_then(|s| s.installed_boot);
        let description = match installed {
            Some(_) => format!("{UEFI_DESCRIPTION_PREFIX}{}", a.name),
            None => format!("liverestore {}", a.name),
        };
        let option = LoadOption::linux(&description, &self.part, &u.loader, &a.args);
        self.vars
            .set(&efi::boot_var(u.boot_number), &option.encode())?;
        crate::failpoint::hit("activate:boot-entry");
        let Some(installed) = installed else {
            self.vars.set("BootNext", &efi::u16s(&[u.boot_number]))?;
            crate::failpoint::hit("activate:boot-next");
            return Ok(());
        };
        // BootNext first: a power cut between the two leaves the next
        // boot the installed system's
        self.vars.set("BootNext", &efi::u16s(&[installed]))?;
        let order = self.vars.boot_order()?;
        self.vars.set(
            "BootOrder",
            &efi::u16s(&standby_order(&order, u.boot_number, installed)),
        )?;
        crate::failpoint::hit("activate:boot-order");
        Ok(())
    }

    /// The UEFI route of a standby: the installed system's own entry,
    /// the one it was started from (`BootCurrent`), checked to exist and
    /// not to be liverestore's.
    pub(super) fn installed_entry(&self) -> Result<u16> {
        let cur = self.vars.get_u16("BootCurrent")?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                "the firmware does not report BootCurrent: there is no entry of this system to put in BootNext",
            )
        })?;
        let option = self
            .vars
            .get(&efi::boot_var(cur))?
            .map(|d| LoadOption::decode(&d))
            .transpose()?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    format!("Boot{cur:04X} (BootCurrent) is gone: there is no entry of this system to put in BootNext"),
                )
            })?;
        if option.description.starts_with("liverestore ") {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "this system was started from Boot{cur:04X} \"{}\", liverestore's: `commit` or `rollback` first",
                    option.description
                ),
            ));
        }
        Ok(cur)
    }
}

/// A standby's `BootOrder`: its entry first, then the installed system's
/// (put second when it was not in the order, as after a `BootNext` boot),
/// then the rest as they were.
pub fn standby_order(order: &[u16], standby: u16, installed: u16) -> Vec<u16> {
    let mut out = vec![standby];
    if !order.contains(&installed) {
        out.push(installed);
    }
    out.extend(order.iter().copied().filter(|&n| n != standby));
    out
}

/// Whether `Boot####` `number` exists.
pub(super) fn entry_exists(number: u16) -> Result<bool> {
    Ok(EfiVars::open()?.get(&efi::boot_var(number))?.is_some())
}

/// Set `BootNext`.
pub(super) fn set_boot_next(number: u16) -> Result<()> {
    EfiVars::open()?.set("BootNext", &efi::u16s(&[number]))
}

/// Remove `BootNext` when it is `number`.
pub(super) fn clear_boot_next(number: u16) -> Result<()> {
    EfiVars::open()?.clear_boot_next(number)
}

fn esp_partition(esp: &Path) -> Result<GptPartition> {
    let target = hostfs::discover(esp)?;
    if target.fs != FsKind::Vfat {
        return Err(Error::new(
            ErrorKind::UnsupportedFilesystem,
            format!(
                "{} is {}, not a FAT EFI system partition",
                esp.display(),
                target.fs.as_str()
            ),
        ));
    }
    let (host, _) = identity::describe(&target)?;
    let lss = u64::from(target.block.logical_sector_size);
    let (Some(number), Some(guid)) = (target.block.partition_number, host.partition_uuid) else {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!("{} is not on a GPT partition", esp.display()),
        ));
    };
    let guid = guid.parse().map_err(|_| {
        Error::new(
            ErrorKind::UnsupportedDevice,
            format!("partition GUID '{guid}' of the ESP"),
        )
    })?;
    Ok(GptPartition {
        number,
        start_lba: target.block.start / lss,
        size_lba: target.block.size / lss,
        guid,
    })
}

/// The liverestore `Boot####` the running restored system was started
/// from (`BootCurrent`, checked to be one of ours), with its option.
fn current_entry(vars: &EfiVars) -> Result<(u16, LoadOption)> {
    let cur = vars.get_u16("BootCurrent")?.ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidState,
            "the firmware does not report BootCurrent",
        )
    })?;
    let option = vars
        .get(&efi::boot_var(cur))?
        .map(|d| LoadOption::decode(&d))
        .transpose()?
        .filter(|o| o.description.starts_with("liverestore "))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                format!("Boot{cur:04X} (BootCurrent) is not a liverestore boot entry"),
            )
        })?;
    Ok((cur, option))
}

/// Whether the firmware started this system from a liverestore entry.
pub(super) fn started_from_ours() -> bool {
    EfiVars::open().is_ok_and(|v| current_entry(&v).is_ok())
}

/// In the restored system: whether it was started from the first entry
/// of `BootOrder` (its own once `commit` put it there), not `BootNext`.
pub(super) fn started_by_default() -> bool {
    let Ok(vars) = EfiVars::open() else {
        return false;
    };
    let current = vars.get_u16("BootCurrent").ok().flatten();
    let order = vars.boot_order().unwrap_or_default();
    current.is_some() && order.first().copied() == current
}

/// In the restored system: its `Boot####` goes first in `BootOrder`;
/// `expected` (from the on-disk header) must be the entry it was started
/// from.
pub(super) fn commit(expected: Option<u16>) -> Result<u16> {
    let vars = EfiVars::open()?;
    let (cur, mut option) = current_entry(&vars)?;
    if let Some(n) = expected
        && n != cur
    {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "this system was started from Boot{cur:04X}, but its on-disk header says it was activated as Boot{n:04X}: refusing to make either the default"
            ),
        ));
    }
    let order = vars.boot_order()?;
    // a standby (first in BootOrder already) is told from a committed
    // system by its entry's description: committed, it loses the word
    if let Some(name) = option.description.strip_prefix(UEFI_DESCRIPTION_PREFIX) {
        option.description = format!("liverestore {name}");
        vars.set(&efi::boot_var(cur), &option.encode())?;
    }
    vars.set("BootOrder", &efi::u16s(&efi::order_with_first(&order, cur)))?;
    crate::failpoint::hit("commit:boot-order");
    vars.clear_boot_next(cur)?;
    Ok(cur)
}

/// The UEFI part of `status`; `booted_uefi`: the running system is a
/// restored one started through a `Boot####` of ours; `standby_left`:
/// the UEFI route's count, from the state directory.
pub(super) fn fill_status(s: &mut Status, booted_uefi: bool, standby_left: Option<u32>) {
    let vars = EfiVars::open().ok();
    let get = |n: &str| vars.as_ref().and_then(|v| v.get_u16(n).ok().flatten());
    s.boot_order = vars
        .as_ref()
        .and_then(|v| v.boot_order().ok())
        .unwrap_or_default();
    s.boot_next = get("BootNext");
    s.boot_current = get("BootCurrent");
    if s.activation.is_some() || booted_uefi {
        s.loader = "uefi";
    }
    // In the restored system the old one's records are not at hand: the
    // entry it was started from is ours.
    let ours = s
        .activation
        .as_ref()
        .and_then(|a| a.uefi.as_ref())
        .map(|u| u.boot_number)
        .or_else(|| booted_uefi.then_some(s.boot_current).flatten());
    if vars.is_none() && ours.is_none() {
        s.next_boot = "old system (nothing is activated)".into();
        return;
    }
    let description = |n: u16| {
        vars.as_ref()
            .and_then(|v| v.get(&efi::boot_var(n)).ok().flatten())
            .and_then(|d| LoadOption::decode(&d).ok())
            .map(|o| o.description)
    };
    // a standby, armed here or running: its entry says so
    let standby =
        ours.filter(|&o| description(o).is_some_and(|d| d.starts_with(UEFI_DESCRIPTION_PREFIX)));
    let arm = s.activation.as_ref().and_then(|a| a.standby.as_ref());
    s.next_boot = next_boot(
        s.boot_next,
        &s.boot_order,
        ours,
        standby.is_some(),
        arm.and_then(|a| a.installed_boot),
    );
    if let Some(o) = standby {
        s.standby = Some(StandbyStatus {
            loader: "uefi",
            entry: format!("Boot{o:04X}"),
            after_failed_boots: arm.map(|a| a.after_failed_boots),
            // running, it was started: none were left
            failed_boots_left: match booted_uefi {
                true => 0,
                false => standby_left
                    .or(arm.map(|a| a.after_failed_boots))
                    .unwrap_or(0),
            },
        });
    }
}

/// What the firmware starts next: `ours` is liverestore's entry (a
/// standby's when `standby`, whose installed system's entry is
/// `installed`).
fn next_boot(
    boot_next: Option<u16>,
    order: &[u16],
    ours: Option<u16>,
    standby: bool,
    installed: Option<u16>,
) -> String {
    let first = order.first().copied();
    match (boot_next, ours) {
        (Some(n), Some(o)) if n == o => "restored system (trial, once)".to_string(),
        (Some(n), _) if standby && Some(n) == installed => "old system (BootNext)".to_string(),
        _ if standby && ours.is_some() && first == ours => STANDBY_STARTS.to_string(),
        _ if ours.is_some() && first == ours => "restored system (default)".to_string(),
        (Some(n), _) => format!("Boot{n:04X} (BootNext, not liverestore's)"),
        _ => "old system (the firmware's BootOrder)".to_string(),
    }
}

/// In the old system: take the activation's entry out (a standby's:
/// and the `BootNext` to the installed system it kept).
pub(super) fn disarm(u: &UefiBoot, installed: Option<u16>) -> Result<()> {
    let vars = EfiVars::open()?;
    remove_entry(&vars, u.boot_number)?;
    match installed {
        Some(n) => vars.clear_boot_next(n),
        None => Ok(()),
    }
}

/// In the restored system: remove the entry it was started from; the
/// files on the ESP stay for the old system's `rollback`.
pub(super) fn rollback_restored() -> Result<RolledBack> {
    let vars = EfiVars::open()?;
    let (cur, option) = current_entry(&vars)?;
    remove_entry(&vars, cur)?;
    let files_dir = efi::file_path_of(&option.device_path)
        .and_then(|p| p.rsplit_once('\\').map(|(d, _)| d.to_string()));
    Ok(RolledBack {
        entry: format!("Boot{cur:04X}"),
        boot_number: Some(cur),
        description: option.description,
        files_dir,
        files_removed: false,
    })
}

/// Take boot entry `number` out of `BootNext` and `BootOrder` and delete
/// it; whatever is already gone is fine.
fn remove_entry(vars: &EfiVars, number: u16) -> Result<()> {
    vars.clear_boot_next(number)?;
    let order = vars.boot_order()?;
    if order.contains(&number) {
        let kept: Vec<u16> = order.into_iter().filter(|&n| n != number).collect();
        vars.set("BootOrder", &efi::u16s(&kept))?;
    }
    crate::failpoint::hit("rollback:boot-order");
    vars.remove(&efi::boot_var(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_goes_first_and_the_installed_system_stays_in_the_order() {
        assert_eq!(standby_order(&[1, 0, 2], 5, 1), [5, 1, 0, 2]);
        assert_eq!(
            standby_order(&[0, 5, 2], 5, 1),
            [5, 1, 0, 2],
            "started through BootNext: put second"
        );
        assert_eq!(standby_order(&[], 5, 1), [5, 1]);
    }

    #[test]
    fn what_the_firmware_starts_next() {
        // a trial
        assert_eq!(
            next_boot(Some(5), &[1, 5], Some(5), false, None),
            "restored system (trial, once)"
        );
        assert_eq!(
            next_boot(None, &[1, 5], Some(5), false, None),
            "old system (the firmware's BootOrder)"
        );
        assert_eq!(
            next_boot(None, &[5, 1], Some(5), false, None),
            "restored system (default)"
        );
        assert_eq!(
            next_boot(Some(3), &[1], Some(5), false, None),
            "Boot0003 (BootNext, not liverestore's)"
        );
        // a standby: BootNext on the installed system while boots are left
        assert_eq!(
            next_boot(Some(1), &[5, 1], Some(5), true, Some(1)),
            "old system (BootNext)"
        );
        assert_eq!(
            next_boot(None, &[5, 1], Some(5), true, Some(1)),
            STANDBY_STARTS
        );
        // running in the standby (its records are not at hand)
        assert_eq!(
            next_boot(None, &[5, 1], Some(5), true, None),
            STANDBY_STARTS
        );
        // rolled back from it: its entry is gone
        assert_eq!(
            next_boot(None, &[1], Some(5), false, Some(1)),
            "old system (the firmware's BootOrder)"
        );
    }
}
