//! Activation through UEFI: make the next boot — once — start a staged
//! image (mapped: through the early-boot initramfs), tell what the next
//! boot will start, and take it back.
//!
//! `activate` re-validates the map and re-reads every staged byte against
//! its hashes, finds the restored system's kernel and initrd in the image
//! (`/boot/vmlinuz-*`, `/boot/initrd.img-*`), copies the kernel and the
//! initrd with the early-boot initramfs appended to the ESP
//! (`\liverestore\NAME\`), creates a `Boot####` load option for the
//! kernel's EFI stub and sets `BootNext` to it. `BootOrder` is not touched,
//! so the boot after that starts the old system again: a trial.
//!
//! Order of durable steps (power loss at any point leaves a bootable old
//! system): record → ESP files → `Boot####` → `BootNext`. `rollback` undoes
//! them in reverse and tolerates any of them missing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::efi::{self, GptPartition, LoadOption};
use crate::efivars::EfiVars;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::hostfs::{self, FsKind};
use crate::progress::Progress;
use crate::state_dir::StateDir;
use crate::{identity, initrd, test_restore, verify};

/// What an activation created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub name: String,
    pub id: uuid::Uuid,
    /// The `Boot####` number.
    pub boot_number: u16,
    /// The ESP's mount point and the directory of our files on it.
    pub esp: String,
    pub esp_dir: String,
    /// The kernel's path on the ESP, as the firmware sees it.
    pub loader: String,
    pub args: String,
    pub kernel_version: String,
    pub trial: bool,
}

fn record_path(state: &StateDir) -> PathBuf {
    state.root().join("activation.json")
}

/// The current activation, if any.
pub fn current(state: &StateDir) -> Result<Option<Activation>> {
    let path = record_path(state);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::new(ErrorKind::Corrupt, format!("activation record: {e}")).with_path(&path)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read the activation record", e).with_path(&path)),
    }
}

fn save(state: &StateDir, a: &Activation) -> Result<()> {
    let path = record_path(state);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(a).expect("serializable"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .op(|| "write the activation record".into())
        .map_err(|e| e.with_path(&path))?;
    sync_dir(state.root())
}

/// Make a directory's entries durable (after creating, renaming or
/// removing in it): without this a power cut can lose them.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .op(|| "sync a directory".into())
        .map_err(|e| e.with_path(dir))
}

/// What `activate` needs besides the name.
pub struct ActivateOptions<'a> {
    /// The mounted EFI system partition.
    pub esp: &'a Path,
    /// Extra kernel arguments.
    pub append: Option<&'a str>,
    /// The static liverestore for `/lr/init` (default: this program).
    pub helper: Option<&'a Path>,
}

/// The newest `/boot/vmlinuz-VERSION` with its `/boot/initrd.img-VERSION`
/// under `root`: (version, kernel, initrd).
pub fn find_kernel(root: &Path) -> Result<(String, PathBuf, PathBuf)> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("vmlinuz-")
                        .map(str::to_string)
                })
                .filter(|v| boot.join(format!("initrd.img-{v}")).exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| version_key(v));
    let v = versions.pop().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "the image has no /boot/vmlinuz-VERSION with a matching /boot/initrd.img-VERSION: liverestore cannot boot it",
        )
    })?;
    Ok((
        v.clone(),
        boot.join(format!("vmlinuz-{v}")),
        boot.join(format!("initrd.img-{v}")),
    ))
}

/// Sort key for kernel versions: numbers compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+', '~'])
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

/// The `console=` arguments of the running kernel, to carry over.
pub fn consoles(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_whitespace()
        .filter(|w| w.starts_with("console="))
        .collect()
}

fn esp_partition(esp: &Path) -> Result<(hostfs::HostTarget, GptPartition)> {
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
    let part = GptPartition {
        number,
        start_lba: target.block.start / lss,
        size_lba: target.block.size / lss,
        guid,
    };
    Ok((target, part))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data)
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .op(|| "write to the ESP".into())
        .map_err(|e| e.with_path(path))
}

/// Activate `name` for the next boot only (trial).
pub fn activate(
    state: &StateDir,
    name: &str,
    opts: &ActivateOptions<'_>,
    progress: &dyn Progress,
) -> Result<Activation> {
    crate::plan::require_root()?;
    if let Some(a) = current(state)? {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{}' is already activated (Boot{:04X}); only one staged image can be: `liverestore rollback` first",
                a.name, a.boot_number
            ),
        ));
    }
    let rec = state.load(name)?;
    // verify re-derives the map (revalidate) before re-reading every byte.
    let report = verify::verify(state, name, progress)?;
    if !report.ok {
        return Err(Error::new(
            ErrorKind::VerifyFailed,
            format!("'{name}' no longer reads back as staged: refusing to boot it"),
        ));
    }
    let (_, part) = esp_partition(opts.esp)?;
    let vars = EfiVars::open()?;
    progress.note(&format!("looking for a kernel in '{name}'"));
    let (version, kernel, initrd_img) = test_restore::with_mounted(state, name, |root| {
        let (v, k, i) = find_kernel(root)?;
        let read = |p: &Path| {
            std::fs::read(p)
                .op(|| "read from the image".into())
                .map_err(|e| e.with_path(p))
        };
        Ok((v, read(&k)?, read(&i)?))
    })?;
    let (_, early) = initrd::for_staging(&rec, opts.helper)?;
    let mut boot_initrd = initrd_img;
    boot_initrd.extend_from_slice(&early);

    let esp_dir = opts.esp.join("liverestore").join(name);
    let loader = format!("\\liverestore\\{name}\\vmlinuz.efi");
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut args = format!(
        "initrd=\\liverestore\\{name}\\initrd.img rdinit={} root=/dev/dm-0 rw",
        initrd::INIT_PATH
    );
    for c in consoles(&cmdline) {
        args.push(' ');
        args.push_str(c);
    }
    if let Some(extra) = opts.append {
        args.push(' ');
        args.push_str(extra);
    }
    let number = efi::free_boot_number(&vars.boot_numbers()?)
        .ok_or_else(|| Error::new(ErrorKind::NoSpace, "every Boot#### number is taken"))?;
    let activation = Activation {
        name: name.to_string(),
        id: rec.id,
        boot_number: number,
        esp: opts.esp.display().to_string(),
        esp_dir: esp_dir.display().to_string(),
        loader: loader.clone(),
        args: args.clone(),
        kernel_version: version,
        trial: true,
    };
    save(state, &activation)?;
    crate::failpoint::hit("activate:record");
    let armed = (|| {
        progress.note(&format!(
            "copying the kernel and initrd to {}",
            esp_dir.display()
        ));
        std::fs::create_dir_all(&esp_dir)
            .op(|| "create the directory on the ESP".into())
            .map_err(|e| e.with_path(&esp_dir))?;
        let space_needed = (kernel.len() + boot_initrd.len()) as u64;
        let free = rustix::fs::statvfs(&esp_dir)
            .map(|s| s.f_bavail * s.f_frsize)
            .unwrap_or(u64::MAX);
        if free < space_needed {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!("the ESP has {free} bytes free, the kernel and initrd need {space_needed}"),
            ));
        }
        write_synced(&esp_dir.join("vmlinuz.efi"), &kernel)?;
        write_synced(&esp_dir.join("initrd.img"), &boot_initrd)?;
        for dir in esp_dir.ancestors().take(3) {
            sync_dir(dir)?;
        }
        crate::failpoint::hit("activate:esp-files");
        let option = LoadOption::linux(&format!("liverestore {name}"), &part, &loader, &args);
        vars.set(&efi::boot_var(number), &option.encode())?;
        crate::failpoint::hit("activate:boot-entry");
        vars.set("BootNext", &efi::u16s(&[number]))?;
        crate::failpoint::hit("activate:boot-next");
        Ok(())
    })();
    match armed {
        Ok(()) => Ok(activation),
        // Nothing half-done is left: what was written is taken back.
        Err(e) => match rollback(state) {
            Ok(_) => Err(e),
            Err(undo) => Err(Error::new(
                e.kind(),
                format!(
                    "{e}; undoing the activation also failed ({undo}): run `liverestore rollback`"
                ),
            )),
        },
    }
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Whether the running system was booted as a staged image.
    pub booted_restored: bool,
    pub activation: Option<Activation>,
    pub boot_current: Option<u16>,
    pub boot_next: Option<u16>,
    pub boot_order: Vec<u16>,
    /// "restored (trial, once)", "old system", …
    pub next_boot: String,
}

/// Whether the running system was started through `/lr/init`.
pub fn booted_restored() -> bool {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .any(|w| w == format!("rdinit={}", initrd::INIT_PATH))
}

/// The liverestore `Boot####` the running restored system was started
/// from (`BootCurrent`, checked to be one of ours), with its option.
fn current_entry(vars: &EfiVars) -> Result<(u16, LoadOption)> {
    if !booted_restored() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "this is not a system booted through liverestore (no rdinit=/lr/init): run it in the restored system",
        ));
    }
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

/// Make the running restored system the default (run in it): its
/// `Boot####` goes first in `BootOrder`. Returns the number.
pub fn commit() -> Result<u16> {
    crate::plan::require_root()?;
    let vars = EfiVars::open()?;
    let (cur, _) = current_entry(&vars)?;
    let order = vars
        .get("BootOrder")?
        .map(|d| efi::parse_u16s(&d))
        .unwrap_or_default();
    vars.set("BootOrder", &efi::u16s(&efi::order_with_first(&order, cur)))?;
    crate::failpoint::hit("commit:boot-order");
    if vars.get_u16("BootNext")? == Some(cur) {
        vars.remove("BootNext")?;
    }
    Ok(cur)
}

/// Which system runs and what the next boot starts.
pub fn status(state: &StateDir) -> Result<Status> {
    let activation = current(state)?;
    let booted_restored = booted_restored();
    let vars = EfiVars::open().ok();
    let get = |n: &str| vars.as_ref().and_then(|v| v.get_u16(n).ok().flatten());
    let boot_order = vars
        .as_ref()
        .and_then(|v| v.get("BootOrder").ok().flatten())
        .map(|d| efi::parse_u16s(&d))
        .unwrap_or_default();
    let boot_next = get("BootNext");
    // In the restored system the old one's records are not at hand: the
    // entry it was started from is ours.
    let ours = activation
        .as_ref()
        .map(|a| a.boot_number)
        .or_else(|| booted_restored.then(|| get("BootCurrent")).flatten());
    let next_boot = match (boot_next, ours) {
        (Some(n), Some(o)) if n == o => "restored system (trial, once)".to_string(),
        _ if ours.is_some() && boot_order.first().copied() == ours => {
            "restored system (default)".to_string()
        }
        (Some(n), _) => format!("Boot{n:04X} (BootNext, not liverestore's)"),
        _ => "old system (the firmware's BootOrder)".to_string(),
    };
    Ok(Status {
        booted_restored,
        activation,
        boot_current: get("BootCurrent"),
        boot_next,
        boot_order,
        next_boot,
    })
}

/// What `rollback` undid.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub boot_number: u16,
    pub description: String,
    /// The ESP directory of the activation (as the firmware names it in
    /// the restored system).
    pub esp_dir: Option<String>,
    /// False in the restored system: the files stay for the old system's
    /// `rollback`.
    pub esp_files_removed: bool,
}

/// Undo the activation: `BootNext` (if ours), our `BootOrder` entry,
/// `Boot####`, the ESP files, the record. In the old system it uses the
/// activation record; in the restored system (which has not got it) the
/// entry it was started from, and the ESP files stay for the old system's
/// `rollback` (the ESP is on the disk device-mapper holds, so it cannot
/// be mounted there).
pub fn rollback(state: &StateDir) -> Result<RolledBack> {
    crate::plan::require_root()?;
    let vars = EfiVars::open()?;
    let Some(a) = current(state)? else {
        if !booted_restored() {
            return Err(Error::new(ErrorKind::InvalidState, "nothing is activated"));
        }
        let (cur, option) = current_entry(&vars)?;
        remove_entry(&vars, cur)?;
        let esp_dir = efi::file_path_of(&option.device_path)
            .and_then(|p| p.rsplit_once('\\').map(|(d, _)| d.to_string()));
        return Ok(RolledBack {
            boot_number: cur,
            description: option.description,
            esp_dir,
            esp_files_removed: false,
        });
    };
    remove_entry(&vars, a.boot_number)?;
    crate::failpoint::hit("rollback:boot-entry");
    let dir = Path::new(&a.esp_dir);
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .op(|| "remove the files on the ESP".into())
            .map_err(|e| e.with_path(dir))?;
    }
    // `ESP/liverestore` goes too once nothing else is activated from it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
        for d in parent.ancestors().take(2).filter(|d| d.exists()) {
            sync_dir(d)?;
        }
    }
    crate::failpoint::hit("rollback:esp-files");
    let path = record_path(state);
    std::fs::remove_file(&path)
        .op(|| "remove the activation record".into())
        .map_err(|e| e.with_path(&path))?;
    sync_dir(state.root())?;
    Ok(RolledBack {
        boot_number: a.boot_number,
        description: format!("liverestore {}", a.name),
        esp_dir: Some(a.esp_dir),
        esp_files_removed: true,
    })
}

/// Take boot entry `number` out of `BootNext` and `BootOrder` and delete
/// it; whatever is already gone is fine.
fn remove_entry(vars: &EfiVars, number: u16) -> Result<()> {
    if vars.get_u16("BootNext")? == Some(number) {
        vars.remove("BootNext")?;
    }
    if let Some(order) = vars.get("BootOrder")? {
        let order = efi::parse_u16s(&order);
        if order.contains(&number) {
            let kept: Vec<u16> = order.into_iter().filter(|&n| n != number).collect();
            vars.set("BootOrder", &efi::u16s(&kept))?;
        }
    }
    crate::failpoint::hit("rollback:boot-order");
    vars.remove(&efi::boot_var(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_with_an_initrd() {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        assert_eq!(
            find_kernel(t.path()).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "vmlinuz-6.5.0-1-amd64", // no initrd: skipped
        ] {
            std::fs::write(boot.join(f), f).unwrap();
        }
        let (v, k, i) = find_kernel(t.path()).unwrap();
        assert_eq!(v, "6.1.0-10-amd64");
        assert!(k.ends_with("vmlinuz-6.1.0-10-amd64") && i.ends_with("initrd.img-6.1.0-10-amd64"));
    }

    #[test]
    fn consoles_are_carried_over() {
        assert_eq!(
            consoles("BOOT_IMAGE=/vmlinuz root=UUID=x console=tty0 console=ttyS0,115200 quiet"),
            ["console=tty0", "console=ttyS0,115200"]
        );
    }
}
