//! Activation: make the next boot — once — start a staged image (mapped:
//! through the early-boot initramfs), tell what the next boot will start,
//! make it the default (`commit`) and take it back (`rollback`).
//!
//! `activate` re-validates the map and re-reads every staged byte against
//! its hashes, finds the restored system's kernel and initrd in the image
//! (`/boot/vmlinuz-*`, `/boot/initrd.img-*`), copies the kernel and the
//! initrd with the early-boot initramfs appended where the boot loader
//! reads files, and arms a one-shot boot of them. Two boot loaders:
//!
//! - [`uefi`]: files on the ESP, a `Boot####` load option for the
//!   kernel's EFI stub, `BootNext`; `commit` puts it first in `BootOrder`.
//! - [`grub`]: files in `/boot`, a menu entry in `custom.cfg`, GRUB's
//!   one-shot `next_entry` in `grubenv`; `commit` sets a variable that the
//!   entry's block turns into GRUB's default. Chosen with `--loader grub`,
//!   or automatically when efivarfs is missing or read-only.
//!
//! Order of durable steps (power loss at any point leaves a bootable old
//! system): record → files → boot entry → one-shot choice. `rollback`
//! undoes them in reverse and tolerates any of them missing.

mod grub;
mod native;
mod restored;
pub mod standby;
mod uefi;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use grub::GrubBoot;
pub use native::{NativeBoot, VolumeBoot};
pub use standby::{HealthyBoot, StandbyArm, StandbyStatus, count_boot, healthy_boot};
pub use uefi::UefiBoot;

use crate::attach::root_dir::RootDir;
use crate::boot::early_boot::BootParams;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::progress::Progress;
use crate::store::durable::sync_dir;
use crate::store::state_dir::{StateDir, StateLock};
use crate::{attach::test_restore, boot::efi, boot::initrd, stage::verify};

/// What an activation created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub name: String,
    pub id: uuid::Uuid,
    pub kernel_version: String,
    /// The kernel arguments of the restored system's boot.
    pub args: String,
    pub trial: bool,
    /// The directory the kernel and initrd were copied to (on the ESP, or
    /// in `/boot`).
    pub files_dir: String,
    /// Set when activated through UEFI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uefi: Option<UefiBoot>,
    /// Set when activated through GRUB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grub: Option<GrubBoot>,
    /// Why GRUB was used when UEFI was not asked for explicitly
    /// (`--loader auto`: no usable efivarfs, or Secure Boot on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// A native boot's partition entries (the root's first); empty for a
    /// mapped boot (device-mapper at boot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub native: Vec<NativeBoot>,
    /// A native boot from the logical volume `--lvm-free` made (no
    /// partition entry: `root=` names the volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_volume: Option<VolumeBoot>,
    /// The other partitions of the same whole-disk image, activated
    /// together with `name` (the one with the kernel: the root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub companions: Vec<String>,
    /// A mapped boot: the seconds after its early-boot step within which
    /// the restored system must `commit`, or the watchdog resets the
    /// machine (back to the old system). None: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// `activate --standby`: armed as the fallback of the installed
    /// system (GRUB starts it after failed boots), not as a trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyArm>,
}

impl Activation {
    /// Whether staging `name` is part of this activation.
    pub fn involves(&self, name: &str) -> bool {
        self.name == name || self.companions.iter().any(|c| c == name)
    }

    /// The boot entry, as a person would name it.
    pub fn entry(&self) -> String {
        match (&self.uefi, &self.grub) {
            (Some(u), _) => format!("Boot{:04X}", u.boot_number),
            (_, Some(g)) => format!("GRUB entry '{}'", g.entry_id),
            _ => "no boot entry".into(),
        }
    }
}

/// The current activation, if any.
pub fn current(state: &StateDir) -> Result<Option<Activation>> {
    state.read_state(&state.activation_path())
}

fn save(state: &StateLock<'_>, a: &Activation) -> Result<()> {
    state.write_state(&state.activation_path(), a)
}

/// Write a boot file (kernel, initrd, GRUB's files) durably: readable by
/// everyone, as the boot loader's other files are.
fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    crate::store::durable::write_synced(path, data, 0o644)
}

/// Replace a boot loader's file durably, keeping its mode.
fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    crate::store::durable::replace_file(path, data, 0o644)
}

/// Which boot loader `activate` arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoaderChoice {
    /// UEFI when efivarfs is there and writable; GRUB otherwise (said).
    Auto,
    Uefi,
    Grub,
}

/// How the restored system finds its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootChoice {
    /// Native when the image is one contiguous range outside every
    /// partition of a GPT disk, mapped otherwise.
    Auto,
    Native,
    Mapped,
}

/// What `activate` needs besides the name.
pub struct ActivateOptions<'a> {
    pub loader: LoaderChoice,
    pub boot: BootChoice,
    /// The mounted EFI system partition (UEFI).
    pub esp: &'a Path,
    /// GRUB's directory: `grub.cfg`, `grubenv`, `custom.cfg` (GRUB).
    pub grub_dir: &'a Path,
    /// Boot the image's own ESP (a native whole-disk activation) by
    /// starting this program on it instead of copying a kernel anywhere.
    pub image_esp: Option<&'a str>,
    /// Extra kernel arguments.
    pub append: Option<&'a str>,
    /// The static liverestore for `/lr/init` (default: this program).
    pub helper: Option<&'a Path>,
    /// A mapped boot's deadline: `/lr/init` arms the watchdog with it.
    pub trial_deadline: Option<std::time::Duration>,
    /// Arm the image as the installed system's standby (through GRUB),
    /// started after this many failed boots in a row, not as a trial.
    pub standby: Option<u32>,
}

/// The kernel argument that gives `/lr/init` the trial's deadline
/// (seconds).
pub const DEADLINE_ARG: &str = "liverestore.deadline=";

/// The modules the early-boot step needs for the trial's deadline — the
/// restored kernel's software watchdog (`softdog`, with the watchdog
/// core) and efivarfs (to tell the committed system's default boot from
/// the trial) — from the image's module tree and in load order, for the
/// early-boot archive (`/lr/modules/NN-FILE`): the restored initrd seldom
/// carries them. Built-in ones are left out; empty: the image has no
/// module tree, or lacks one of them.
pub fn early_boot_modules(root: &RootDir, version: &str) -> Vec<(String, Vec<u8>)> {
    const LIMIT: u64 = 4 << 20;
    for base in ["/lib/modules", "/usr/lib/modules"] {
        let dir = Path::new(base).join(version);
        let Ok(Some(dep)) = root.read_limited(&dir.join("modules.dep"), 16 << 20) else {
            continue;
        };
        let builtin = root
            .read_limited(&dir.join("modules.builtin"), 16 << 20)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Ok(order) = crate::sys::kmod::load_order(
            &String::from_utf8_lossy(&dep),
            &String::from_utf8_lossy(&builtin),
            &["softdog".to_string(), "efivarfs".to_string()],
        ) else {
            return Vec::new();
        };
        let mut files = Vec::new();
        for (i, rel) in order.iter().enumerate() {
            let Ok(Some(data)) = root.read_limited(&dir.join(rel), LIMIT) else {
                return Vec::new();
            };
            let file = rel.rsplit('/').next().unwrap_or(rel);
            files.push((format!("modules/{i:02}-{file}"), data));
        }
        return files;
    }
    Vec::new()
}

/// The image's newest kernel that has an initrd: its version, the
/// kernel and the initrd, read through [`RootDir`] — nothing in an image
/// is trusted: a symlink resolves inside the image (an absolute one from
/// the image's `/`, never the running system's), and only a regular file
/// within [`KERNEL_LIMIT`] / [`INITRD_LIMIT`] is read (a FIFO, a device
/// node, a symlink loop or a huge sparse file is refused as a bad image);
/// an initrd that is no initramfs is refused too.
pub fn find_kernel(root: &RootDir) -> Result<(String, Vec<u8>, Vec<u8>)> {
    let boot = Path::new("/boot");
    let mut versions: Vec<String> = root
        .list(boot)?
        .iter()
        .filter_map(|n| n.to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| root.exists(&boot.join(format!("initrd.img-{v}"))))
        .collect();
    versions.sort_by_key(|v| version_key(v));
    let v = versions.pop().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "the image has no /boot/vmlinuz-VERSION with a matching /boot/initrd.img-VERSION: liverestore cannot boot it",
        )
    })?;
    let read = |name: String, limit: u64| {
        let rel = boot.join(&name);
        root.read_limited(&rel, limit)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("/boot/{name} vanished from the image"),
            )
        })
    };
    let kernel = read(format!("vmlinuz-{v}"), KERNEL_LIMIT)?;
    let initrd = read(format!("initrd.img-{v}"), INITRD_LIMIT)?;
    if crate::boot::initrd::initrd_format(&initrd).is_none() {
        return Err(Error::new(
            ErrorKind::BadImage,
            format!(
                "the image's /boot/initrd.img-{v} is not an initramfs (neither a cpio archive nor gzip, bzip2, lzma, xz, lzo, lz4 or zstd): its kernel could not start from it"
            ),
        ));
    }
    Ok((v, kernel, initrd))
}

/// The largest kernel liverestore reads from an image (distribution
/// kernels are 5–15 MiB).
pub const KERNEL_LIMIT: u64 = 256 << 20;
/// The largest initrd liverestore reads from an image (distribution
/// initrds are 20–200 MiB, with firmware).
pub const INITRD_LIMIT: u64 = 1 << 30;

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

/// Seconds a panicking restored kernel waits before it reboots: without
/// `panic=` it would hang, and a trial would never return to the old
/// system by itself.
pub const PANIC_REBOOT_SECS: u32 = 30;

/// The kernel argument that marks a boot as liverestore's, with the
/// staging's id.
pub const ID_ARG: &str = "liverestore.id=";

/// The kernel arguments of the restored system's boot: `root_args` (the
/// early-boot step and the mapped root, or the native root), a reboot on
/// panic, the staging's id and where its on-disk header is, `loader_args`,
/// the running kernel's consoles, then the user's `append` (whose `panic=`
/// wins).
fn kernel_args(
    root_args: &str,
    (id, header): (uuid::Uuid, u64),
    loader_args: &str,
    cmdline: &str,
    append: Option<&str>,
) -> String {
    let mut args = format!(
        "{root_args} rw panic={PANIC_REBOOT_SECS} {ID_ARG}{id} {}{header}",
        restored::HEADER_ARG
    );
    for word in std::iter::once(loader_args)
        .chain(consoles(cmdline))
        .chain(append)
    {
        if !word.is_empty() {
            args.push(' ');
            args.push_str(word);
        }
    }
    args
}

/// The boot loader `activate` will arm, checked and ready.
enum Loader {
    Uefi(uefi::Target),
    Grub(grub::Target),
}

/// The loader to arm, and why GRUB stands in for UEFI when it does.
/// Under Secure Boot, refuse `--loader uefi` (without `--image-esp`) up
/// front: the firmware would refuse its `Boot####`.
fn check_loader_for_secure_boot(opts: &ActivateOptions<'_>, secure_boot: bool) -> Result<()> {
    if secure_boot && opts.loader == LoaderChoice::Uefi && opts.image_esp.is_none() {
        return Err(Error::new(
            ErrorKind::UnsupportedBootLoader,
            "Secure Boot is on: the firmware starts only what a key in its db signed, and would refuse a Boot#### straight to the image's kernel (signed for shim, not for the firmware) — the trial would quietly start the old system. Use --loader grub: the firmware → shim → the signed GRUB → the image's signed kernel",
        ));
    }
    Ok(())
}

fn choose_loader(
    rec: &crate::store::record::StagingRecord,
    opts: &ActivateOptions<'_>,
    secure_boot: bool,
) -> Result<(Loader, Option<String>)> {
    let grub = || grub::Target::open(rec, opts.grub_dir).map(Loader::Grub);
    let uefi = || uefi::Target::open(opts.esp).map(Loader::Uefi);
    if opts.standby.is_some() {
        let through_grub = || {
            grub().map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("--standby through GRUB, which counts the failed boots: {e}"),
                )
            })
        };
        return match opts.loader {
            LoaderChoice::Uefi => Ok((uefi()?, Some(standby::UEFI_ROUTE.into()))),
            LoaderChoice::Grub => Ok((through_grub()?, Some(standby::GRUB_ROUTE.into()))),
            LoaderChoice::Auto => match through_grub() {
                Ok(l) => Ok((l, Some(standby::GRUB_ROUTE.into()))),
                Err(e) if secure_boot => Err(e),
                Err(no_grub) => match uefi() {
                    Ok(l) => Ok((l, Some(format!("{no_grub}; {}", standby::UEFI_ROUTE)))),
                    Err(no_uefi) => Err(Error::new(
                        ErrorKind::UnsupportedBootLoader,
                        format!(
                            "no boot loader to arm the standby with: {no_grub}; and UEFI: {no_uefi}"
                        ),
                    )),
                },
            },
        };
    }
    match opts.loader {
        LoaderChoice::Uefi => Ok((uefi()?, None)),
        LoaderChoice::Grub => Ok((grub()?, None)),
        LoaderChoice::Auto if secure_boot => {
            let loader = grub().map_err(|e| {
                Error::new(
                    ErrorKind::UnsupportedBootLoader,
                    format!(
                        "Secure Boot is on, so the trial must go through shim and the signed GRUB (the firmware would refuse a Boot#### straight to the kernel); and GRUB: {e}"
                    ),
                )
            })?;
            Ok((
                loader,
                Some("Secure Boot is on: through GRUB (the firmware → shim → the signed GRUB → the image's signed kernel), not a Boot#### to the kernel".into()),
            ))
        }
        LoaderChoice::Auto => match crate::sys::efivars::EfiVars::open() {
            Ok(_) => Ok((uefi()?, None)),
            Err(no_uefi) => {
                let why = format!("{no_uefi}: falling back to GRUB");
                let loader = grub().map_err(|e| {
                    Error::new(
                        ErrorKind::UnsupportedBootLoader,
                        format!("no boot loader to use: {no_uefi}; and GRUB: {e}"),
                    )
                })?;
                Ok((loader, Some(why)))
            }
        },
    }
}

/// Activate `name` for the next boot only (trial).
/// The machine's policy: under `require_signature`, every member must
/// have been verified against a trusted key when it was staged (the
/// verification is in its record and its on-disk header; `customize`
/// keeps it, with its changes listed).
fn check_policy(
    policy: &crate::trust::policy::Policy,
    members: &[crate::store::record::StagingRecord],
) -> Result<()> {
    if !policy.require_signature {
        return Ok(());
    }
    match members.iter().find(|m| m.image.signature.is_none()) {
        Some(m) => Err(Error::new(
            ErrorKind::PolicyForbids,
            format!(
                "'{}' was not verified against a trusted key when it was staged, and {} requires it (require_signature = true): stage the image again with its signature (--signature, or IMAGE.sig/.asc/.minisig next to it) and a trusted key",
                m.name,
                policy
                    .file
                    .as_deref()
                    .map_or("the policy".into(), |p| p.display().to_string())
            ),
        )),
        None => Ok(()),
    }
}

pub fn activate(
    state: &StateLock<'_>,
    name: &str,
    opts: &ActivateOptions<'_>,
    progress: &dyn Progress,
) -> Result<Activation> {
    crate::stage::plan::require_root()?;
    if let Some(n) = opts.standby {
        standby::check_count(n)?;
        if opts.image_esp.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                "--standby boots the standby through liverestore's early-boot step, which counts nothing without it; --image-esp starts the image's own boot program: use one or the other",
            ));
        }
    }
    // Under Secure Boot, shim (through GRUB) starts only a signed kernel.
    let secure_boot = crate::sys::efivars::secure_boot();
    check_loader_for_secure_boot(opts, secure_boot)?;
    if let Some(a) = current(state)? {
        return Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "'{}' is already activated ({}); only one staged image can be: `liverestore rollback` first",
                a.name,
                a.entry()
            ),
        ));
    }
    // A whole-disk image's partitions boot together (by the name it was
    // staged under, or any member's).
    let members = crate::stage::staged::set_of(state, name)?;
    check_policy(&crate::trust::policy::Policy::of_this_machine()?, &members)?;
    for m in &members {
        // verify re-derives the map (revalidate) before re-reading every byte.
        verify::verify_before_change(
            state,
            &m.name,
            progress,
            "it no longer reads back as staged: refusing to boot it",
        )?;
    }
    // as verified (the changes of their own boots may have been accepted)
    let mut members = crate::stage::staged::set_of(state, name)?;
    // what must not run meanwhile on the host filesystem (btrfs) or its
    // logical volume
    let mut said = Vec::new();
    for m in &members {
        let mut cautions = match crate::space::hostfs::classify_fs(&m.host.fs_type) {
            Ok(kind) => crate::space::hostfs::cautions(kind, m.host.on_device_mapper()),
            Err(_) => Vec::new(),
        };
        if !m.volumes().is_empty() {
            cautions.push(crate::space::lvm::CAUTION.to_string());
        }
        for c in cautions {
            if !said.contains(&c) {
                progress.note(&c);
                said.push(c);
            }
        }
    }
    // The root is the partition with a kernel.
    let mut found = None;
    let mut why = Vec::new();
    for (i, m) in members.iter().enumerate() {
        progress.note(&format!("looking for a kernel in '{}'", m.name));
        let kernel = test_restore::with_mounted(state, &m.name, |mnt| {
            let root = RootDir::open(mnt)?;
            let fstab = root.read(Path::new("/etc/fstab")).ok().flatten();
            find_kernel(&root).map(|k| {
                let modules = early_boot_modules(&root, &k.0);
                (k, fstab, modules)
            })
        });
        match kernel {
            Ok((k, fstab, modules)) => {
                if let Some(w) = fstab.and_then(|text| {
                    crate::customize::fstab_warning(
                        &members,
                        &String::from_utf8_lossy(&text),
                        &m.name,
                    )
                }) {
                    progress.note(&w);
                }
                found = Some((i, k, modules));
                break;
            }
            Err(e) if members.len() == 1 => return Err(e),
            Err(e) => why.push(format!("{}: {e}", m.name)),
        }
    }
    let Some((root_at, (version, kernel, initrd_img), modules)) = found else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no partition of '{name}' holds a kernel liverestore can boot ({})",
                why.join("; ")
            ),
        ));
    };
    let rec = members.remove(root_at);
    let companions = members;
    if secure_boot && opts.image_esp.is_none() && !efi::pe_signed(&kernel).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::UnsupportedBootLoader,
            format!(
                "Secure Boot is on and the image's kernel /boot/vmlinuz-{version} carries no signature: shim would refuse to start it (sign it with a key shim trusts, or turn Secure Boot off)"
            ),
        ));
    }
    let (mut loader, fallback) = match opts.image_esp {
        // set below, once the image's ESP has its partition entry
        Some(_) => (None, None),
        None => {
            let (l, f) = choose_loader(&rec, opts, secure_boot)?;
            (Some(l), f)
        }
    };
    // Native when every partition is one contiguous run outside every
    // partition of a GPT disk.
    let all: Vec<&crate::store::record::StagingRecord> =
        std::iter::once(&rec).chain(&companions).collect();
    // An image whole in the volume `--lvm-free` made boots natively from
    // it, when its initrd can activate LVM (a whole-disk image's other
    // partitions need partition entries: not from a volume).
    let volume = match native::volume_of(&rec) {
        Some(v) if opts.boot != BootChoice::Mapped && companions.is_empty() => {
            match native::check_volume_initrd(&v, &version, &initrd_img) {
                Ok(true) => Some(v),
                Ok(false) => {
                    progress.note(&format!("the initrd of '{name}' is compressed in a way liverestore does not read: it must activate LVM itself (lvm2 in the image) to find its root on {}/{}", v.vg, v.lv));
                    Some(v)
                }
                Err(e) if opts.boot == BootChoice::Auto => {
                    progress.note(&format!("booting '{name}' mapped, not natively: {e}"));
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };
    let native = match opts.boot {
        _ if volume.is_some() => Vec::new(),
        BootChoice::Mapped => Vec::new(),
        BootChoice::Native => native::prepare(&all)?,
        BootChoice::Auto if all.iter().all(|r| native::image_range(r).is_some()) => {
            native::prepare(&all).unwrap_or_else(|e| {
                progress.note(&format!("booting '{name}' mapped, not natively: {e}"));
                Vec::new()
            })
        }
        BootChoice::Auto => Vec::new(),
    };
    if let Some(program) = opts.image_esp {
        if native.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "--image-esp boots '{name}' from its own ESP, which the firmware can read only as a partition: stage the whole-disk image with --unallocated --contiguous"
                ),
            ));
        }
        loader = Some(Loader::Uefi(uefi::Target::image_esp(&native, program)?));
    }
    let loader = loader.expect("a loader was chosen");
    let mut boot_initrd = initrd_img;
    let mut deadline_secs = None;
    // The early-boot step maps the image, or, for a native boot, only
    // notes the boots and arms the trial's deadline. The image's own ESP
    // program (--image-esp) starts the image's own kernel and initrd: it
    // has none.
    let root_args = if opts.image_esp.is_some() {
        if opts.trial_deadline.is_some() {
            progress.note("no trial deadline: the image's own boot program starts its own kernel and initrd, without liverestore's early-boot step that arms the watchdog");
        }
        String::new()
    } else {
        // the modules only a deadline needs; a standby has none: it is
        // not a trial, nothing is to come back to
        let trial_deadline = opts.trial_deadline.filter(|_| opts.standby.is_none());
        let extra = match trial_deadline {
            Some(_) => modules,
            None => Vec::new(),
        };
        let (_, early) = initrd::for_set(
            &rec,
            &companions,
            opts.helper,
            &extra,
            !native.is_empty() || volume.is_some(),
        )?;
        initrd::append_early_boot(&mut boot_initrd, &early);
        if let Some(d) = trial_deadline.filter(|d| d.as_secs() > 0) {
            if extra.is_empty() {
                progress.note(&format!("the image has no softdog module for kernel {version}: the trial's deadline needs a watchdog built into its kernel or loaded by /lr/init"));
            }
            deadline_secs = Some(d.as_secs());
        }
        let root = match (&volume, native.first()) {
            (Some(v), _) => v.root_arg(),
            (None, Some(n)) => n.root_arg(),
            (None, None) => "root=/dev/dm-0".to_string(),
        };
        format!("rdinit={} {root}", initrd::INIT_PATH)
    };
    let deadline_arg = deadline_secs.map_or(String::new(), |s| format!("{DEADLINE_ARG}{s}"));

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut activation = Activation {
        name: rec.name.clone(),
        id: rec.id,
        kernel_version: version,
        args: String::new(),
        trial: opts.standby.is_none(),
        files_dir: String::new(),
        uefi: None,
        grub: None,
        fallback,
        native,
        native_volume: volume,
        companions: companions.iter().map(|c| c.name.clone()).collect(),
        deadline_secs,
        standby: match opts.standby {
            Some(n) => {
                // the UEFI route: the installed system's own entry goes in
                // BootNext, the units count the boots
                let installed = match &loader {
                    Loader::Uefi(t) => Some(t.installed_entry()?),
                    Loader::Grub(_) => None,
                };
                let unit = |name: &str| standby::unit_dir().join(name).display().to_string();
                Some(StandbyArm {
                    after_failed_boots: n,
                    unit: unit(standby::UNIT),
                    program: this_program()?,
                    installed_boot: installed,
                    count_unit: installed.map(|_| unit(standby::COUNT_UNIT)),
                })
            }
            None => None,
        },
    };
    let header_offset = rec.header_disk_offset()?;
    let args = |a: &str| {
        let loader_args = [deadline_arg.as_str(), a]
            .iter()
            .filter(|w| !w.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        kernel_args(
            &root_args,
            (rec.id, header_offset),
            &loader_args,
            &cmdline,
            opts.append,
        )
    };
    let files_dir = match (&loader, opts.image_esp) {
        // the image's own program takes only what the user gives it
        (Loader::Uefi(t), Some(_)) => {
            t.describe(&mut activation, |_| opts.append.unwrap_or("").to_string())?
        }
        (Loader::Uefi(t), None) => t.describe(&mut activation, args)?,
        (Loader::Grub(t), _) => t.describe(&mut activation, args),
    };
    save(state, &activation)?;
    crate::failpoint::hit("activate:record");
    let armed = (|| {
        // The header tells the restored system what this activation and
        // the old system are.
        let mut rec = rec.clone();
        rec.activation = Some(note_for(&activation));
        crate::stage::staged::record_changed(state, &rec)?;
        crate::failpoint::hit("activate:header");
        if !activation.native.is_empty() {
            for n in &activation.native {
                progress.note(&format!(
                    "adding partition {} over '{}' on {}",
                    n.partition.number, n.staging, n.disk
                ));
            }
            native::arm(&activation.native)?;
            crate::failpoint::hit("activate:partition");
        }
        if files_dir.as_os_str().is_empty() {
            // the image's own ESP: nothing to copy
        } else {
            progress.note(&format!(
                "copying the kernel and initrd to {}",
                files_dir.display()
            ));
            copy_boot_files(
                &files_dir,
                &kernel,
                &boot_initrd,
                loader_file_names(&loader),
            )?;
        }
        crate::failpoint::hit("activate:files");
        if let Some(arm) = &activation.standby {
            progress.note(&format!(
                "installing {} (resets the failed-boot count on every healthy boot){}",
                arm.unit,
                arm.count_unit
                    .as_ref()
                    .map(|c| format!(" and {c} (counts every boot at its start)"))
                    .unwrap_or_default()
            ));
            standby::install_units(arm)?;
            if arm.installed_boot.is_some() {
                standby::write_uefi_count(state, arm.after_failed_boots)?;
            }
        }
        match &loader {
            Loader::Uefi(t) => t.arm(&activation),
            Loader::Grub(t) => t.arm(&activation),
        }
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

/// This program's path, for a unit of the installed system to run.
fn this_program() -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find this program's path", e))?;
    let text = exe.display().to_string();
    if text.ends_with(" (deleted)") || !exe.is_file() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "this program ({text}) is no longer on the disk: the standby's unit could not run it"
            ),
        ));
    }
    Ok(text)
}

/// What the on-disk header keeps of activation `a`.
fn note_for(a: &Activation) -> crate::store::record::ActivationNote {
    crate::store::record::ActivationNote {
        at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        loader: if a.grub.is_some() { "grub" } else { "uefi" }.into(),
        entry: a.entry(),
        uefi_boot_number: a.uefi.as_ref().map(|u| u.boot_number),
        grub_env_offset: a.grub.as_ref().map(|g| g.env_disk_offset),
        old_system: this_system(a.grub.is_some()),
    }
}

/// The running (old) system, as the restored one will show it.
fn this_system(grub: bool) -> crate::store::record::OldSystem {
    let uname = rustix::system::uname();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = crate::space::hostfs::parse_mountinfo(&mounts);
    let root_device = crate::space::hostfs::mount_for(&mounts, Path::new("/"))
        .map(|m| m.source.clone())
        .unwrap_or_default();
    let boot_entry = if grub {
        Some("GRUB's default entry".into())
    } else {
        crate::sys::efivars::EfiVars::open().ok().and_then(|v| {
            let n = v.get_u16("BootCurrent").ok()??;
            let desc = v
                .get(&crate::boot::efi::boot_var(n))
                .ok()?
                .and_then(|d| crate::boot::efi::LoadOption::decode(&d).ok())
                .map(|o| o.description)
                .unwrap_or_default();
            Some(format!("Boot{n:04X} \"{desc}\""))
        })
    };
    crate::store::record::OldSystem {
        hostname: uname.nodename().to_string_lossy().into_owned(),
        kernel_release: uname.release().to_string_lossy().into_owned(),
        root_device,
        boot_entry,
    }
}

/// The kernel's and the initrd's file names in the files directory.
fn loader_file_names(loader: &Loader) -> (&'static str, &'static str) {
    match loader {
        Loader::Uefi(_) => (uefi::KERNEL_FILE, uefi::INITRD_FILE),
        Loader::Grub(_) => (grub::KERNEL_FILE, grub::INITRD_FILE),
    }
}

/// Create `dir` and write the kernel and the initrd into it, durably,
/// after checking there is room for both.
fn copy_boot_files(
    dir: &Path,
    kernel: &[u8],
    initrd: &[u8],
    (kernel_name, initrd_name): (&str, &str),
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .op(|| "create the directory for the boot files".into())
        .map_err(|e| e.with_path(dir))?;
    let needed = (kernel.len() + initrd.len()) as u64;
    let free = rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail * s.f_frsize)
        .unwrap_or(u64::MAX);
    if free < needed {
        return Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "{} has {free} bytes free, the kernel and initrd need {needed}",
                dir.display()
            ),
        ));
    }
    write_synced(&dir.join(kernel_name), kernel)?;
    write_synced(&dir.join(initrd_name), initrd)?;
    for d in dir.ancestors().take(3) {
        sync_dir(d)?;
    }
    Ok(())
}

/// Remove the files directory of an activation and, when nothing else is
/// activated from it, its `liverestore` parent.
fn remove_boot_files(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .op(|| "remove the boot files".into())
            .map_err(|e| e.with_path(dir))?;
    }
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
        for d in parent.ancestors().take(2).filter(|d| d.exists()) {
            sync_dir(d)?;
        }
    }
    Ok(())
}

/// How the running system was started, when liverestore started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootedVia {
    Uefi,
    /// Through GRUB; its environment block is at this disk byte offset.
    Grub {
        env_offset: u64,
    },
}

/// Parse the kernel command line: started by liverestore (the staging id,
/// or `/lr/init` as earlier activations did), and by which boot loader.
fn booted_via_cmdline(cmdline: &str) -> Option<BootedVia> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let ours = words.iter().any(|w| w.starts_with(ID_ARG))
        || words.contains(&format!("rdinit={}", initrd::INIT_PATH).as_str());
    if !ours {
        return None;
    }
    Some(
        words
            .iter()
            .find_map(|w| w.strip_prefix(grub::CMDLINE_KEY)?.parse().ok())
            .map_or(BootedVia::Uefi, |env_offset| BootedVia::Grub { env_offset }),
    )
}

fn booted_via() -> Option<BootedVia> {
    booted_via_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
        // started by the image's own program (--image-esp): the firmware
        // says the entry was ours
        .or_else(|| uefi::started_from_ours().then_some(BootedVia::Uefi))
}

/// In the restored system's early boot (`/lr/init`, before the root is
/// mounted): whether this boot is its default one since `commit` (GRUB's
/// `liverestore_default` set in the block on `disk`, the disk holding the
/// image; the firmware's `BootOrder` starts with the entry it was started
/// from), not the trial: no deadline then.
pub fn committed_boot(cmdline: &str, disk: &Path) -> bool {
    match booted_via_cmdline(cmdline) {
        Some(BootedVia::Grub { env_offset }) => {
            grub::default_is_set_raw(restored::RestoredDisk::at(disk), env_offset)
        }
        Some(BootedVia::Uefi) => uefi::started_by_default(),
        None => false,
    }
}

/// In a restored system: its own record, from its on-disk header (None:
/// not a restored system, or no header where its command line says).
pub fn restored_record() -> Result<Option<crate::store::record::StagingRecord>> {
    restored::own_record()
}

/// Whether the running system was started by a liverestore activation.
pub fn booted_restored() -> bool {
    booted_via().is_some()
}

fn not_restored() -> Error {
    Error::new(
        ErrorKind::InvalidState,
        "this is not a system booted through liverestore (no liverestore.id= on its command line): run it in the restored system",
    )
}

/// What `commit` did.
#[derive(Debug, Clone, Serialize)]
pub struct Committed {
    /// UEFI: the `Boot####` now first in `BootOrder`.
    pub boot_number: Option<u16>,
    /// GRUB: the menu entry now GRUB's default.
    pub grub_entry: Option<String>,
    /// The system that activated this one (from the on-disk header): it
    /// stays reachable with `rollback`.
    pub old_system: Option<crate::store::record::OldSystem>,
    /// A boot with a trial deadline: its watchdog, stopped ("stopped"),
    /// or why it could not be (the machine then resets when the deadline
    /// passes, and starts this system, the default now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// Make the running restored system the default (run in it). Its own
/// on-disk header (where the command line says it is) says what the
/// activation was: the boot entry to make the default must be that one.
/// `_lock` (the restored system's own state directory's) keeps a second
/// `commit` or `rollback` from changing the boot entries at the same time;
/// no state file is written.
pub fn commit(_lock: &StateLock<'_>) -> Result<Committed> {
    crate::stage::plan::require_root()?;
    let via = booted_via().ok_or_else(not_restored)?;
    let note = restored::own_note()?;
    let mut done = match via {
        BootedVia::Uefi => {
            let expected = note.as_ref().and_then(|n| n.uefi_boot_number);
            uefi::commit(expected).map(|n| Committed {
                boot_number: Some(n),
                grub_entry: None,
                old_system: None,
                deadline: None,
            })?
        }
        BootedVia::Grub { env_offset } => {
            if let Some(recorded) = note.as_ref().and_then(|n| n.grub_env_offset)
                && recorded != env_offset
            {
                return Err(Error::new(
                    ErrorKind::MapChanged,
                    format!(
                        "the header says grubenv is at byte {recorded}, the command line says {env_offset}: refusing to write either"
                    ),
                ));
            }
            grub::commit(env_offset).map(|id| Committed {
                boot_number: None,
                grub_entry: Some(id),
                old_system: None,
                deadline: None,
            })?
        }
    };
    done.old_system = note.map(|n| n.old_system);
    // The trial is over: its deadline no longer applies.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if BootParams::from_cmdline(&cmdline).deadline.is_some() {
        done.deadline = Some(match crate::sys::watchdog::disarm() {
            Ok(crate::sys::watchdog::Disarmed::Stopped) => "stopped".to_string(),
            Ok(crate::sys::watchdog::Disarmed::NoWatchdog) => "no watchdog was armed".to_string(),
            Err(e) => format!(
                "not stopped: {e}; the machine resets when the deadline passes (it then starts this system)"
            ),
        });
    }
    Ok(done)
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Whether the running system was booted as a staged image.
    pub booted_restored: bool,
    /// The boot loader of the activation: "uefi", "grub" or "none".
    pub loader: &'static str,
    pub activation: Option<Activation>,
    pub boot_current: Option<u16>,
    pub boot_next: Option<u16>,
    pub boot_order: Vec<u16>,
    /// GRUB's `next_entry` and liverestore's default entry, when GRUB.
    pub grub_next_entry: Option<String>,
    pub grub_default: Option<String>,
    /// "restored system (trial, once)", "old system …", …
    pub next_boot: String,
    /// The activated restored system is the boot loader's default: it was
    /// committed (`next_boot` is "restored system (default)").
    pub committed: bool,
    /// In a restored system: the system that activated it, from the
    /// on-disk header.
    pub old_system: Option<crate::store::record::OldSystem>,
    /// In the old system: an activation is recorded, but its one-shot
    /// choice is gone (`BootNext` consumed, `next_entry` cleared) and it
    /// was not made the default: the trial ended without a commit. The
    /// next `stage`, `discard` or `activate` cleans it up by itself.
    pub trial_ended: bool,
    /// In a restored system on its trial: about how many seconds are
    /// left before the watchdog resets the machine, unless `commit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_left_secs: Option<u64>,
    /// Whether the firmware runs with Secure Boot on (UEFI only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// A standby armed in GRUB's environment block (`activate
    /// --standby`): its entry and the failed boots left before it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
}

/// Which system runs and what the next boot starts.
pub fn status(state: &StateDir) -> Result<Status> {
    let activation = current(state)?;
    let via = booted_via();
    let grub_env = match (&activation, via) {
        (Some(Activation { grub: Some(g), .. }), _) => Some(grub::read_env_file(g)?),
        (None, Some(BootedVia::Grub { env_offset })) => Some(grub::read_env_raw(env_offset)?),
        _ => None,
    };
    let mut s = Status {
        booted_restored: via.is_some(),
        loader: "none",
        activation,
        boot_current: None,
        boot_next: None,
        boot_order: Vec::new(),
        grub_next_entry: None,
        grub_default: None,
        next_boot: String::new(),
        committed: false,
        old_system: via
            .and_then(|_| restored::own_note().ok().flatten())
            .map(|n| n.old_system),
        trial_ended: false,
        deadline_left_secs: None,
        secure_boot: Path::new("/sys/firmware/efi")
            .exists()
            .then(crate::sys::efivars::secure_boot),
        standby: None,
    };
    if via.is_some() {
        s.deadline_left_secs = deadline_left(
            &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            &std::fs::read_to_string("/proc/uptime").unwrap_or_default(),
            crate::sys::watchdog::counting(),
        );
    }
    match grub_env {
        Some(env) => grub::fill_status(&mut s, &env),
        None => uefi::fill_status(
            &mut s,
            via == Some(BootedVia::Uefi),
            standby::uefi_count(state).ok().flatten(),
        ),
    }
    s.committed = s.next_boot == "restored system (default)";
    // Known only when the boot loader's state could be read: an
    // unreadable one (no efivarfs) leaves the activation alone.
    let readable = s.loader == "grub" || !s.boot_order.is_empty();
    // a standby still armed has not ended: the installed system boots
    // by default all along
    let armed_standby =
        s.activation.as_ref().is_some_and(|a| a.standby.is_some()) && s.standby.is_some();
    s.trial_ended = !s.booted_restored
        && readable
        && s.activation.is_some()
        && !armed_standby
        && s.next_boot.starts_with("old system");
    Ok(s)
}

/// The seconds left of the trial's deadline: the watchdog's own count
/// where it tells, else the deadline on the command line less the time
/// since the kernel started (a few seconds early: `/lr/init` armed it a
/// little later). None: no deadline, or the watchdog is not counting
/// (`commit` stopped it, or this is the committed system's boot).
fn deadline_left(cmdline: &str, uptime: &str, counting: Option<Option<u64>>) -> Option<u64> {
    let deadline = BootParams::from_cmdline(cmdline).deadline?.as_secs();
    match counting? {
        Some(left) => Some(left),
        None => {
            let up = uptime.split('.').next()?.trim().parse::<u64>().ok()?;
            Some(deadline.saturating_sub(up))
        }
    }
}

/// In the old system, before `stage`, `discard` or `activate`: when the
/// trial of the recorded activation ended without a commit, or the
/// restored system committed and later rolled back from its side (the
/// old system cannot tell the two apart: either way the boot loader
/// starts it again; [`Status::trial_ended`]), clean it up as `rollback` does and say so;
/// what comes next then just works. Anything else is left as it is.
pub fn clean_up_ended_trial(
    state: &StateLock<'_>,
    progress: &dyn Progress,
) -> Result<Option<RolledBack>> {
    let s = status(state)?;
    if !s.trial_ended {
        return Ok(None);
    }
    let name = s
        .activation
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_default();
    let done = rollback(state)?;
    progress.note(&format!(
        "the activation of '{name}' is over (its trial ended without a commit, or the restored system rolled back): its boot entry ({}) and boot files are removed, as `liverestore rollback` does",
        done.entry
    ));
    Ok(Some(done))
}

/// What `rollback` undid.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// The entry, as `status` names it (`Boot0003`, `GRUB entry '…'`).
    pub entry: String,
    pub boot_number: Option<u16>,
    pub description: String,
    /// The files directory of the activation (as the boot loader names it
    /// in the restored system).
    pub files_dir: Option<String>,
    /// False in the restored system: the files stay for the old system's
    /// `rollback`.
    pub files_removed: bool,
}

/// Undo the activation. In the old system it uses the activation record
/// and removes everything: the one-shot choice, the entry, the files, the
/// record. In the restored system (which has not got the record) it
/// takes back the boot loader's choice of it; the files stay for the old
/// system's `rollback` (they are on the disk device-mapper holds, whose
/// filesystems cannot be mounted there).
pub fn rollback(state: &StateLock<'_>) -> Result<RolledBack> {
    crate::stage::plan::require_root()?;
    let Some(a) = current(state)? else {
        return match booted_via()
            .ok_or_else(|| Error::new(ErrorKind::InvalidState, "nothing is activated"))?
        {
            BootedVia::Uefi => uefi::rollback_restored(),
            BootedVia::Grub { env_offset } => grub::rollback_restored(env_offset),
        };
    };
    if let Some(u) = &a.uefi {
        uefi::disarm(u, a.standby.as_ref().and_then(|s| s.installed_boot))?;
    }
    if let Some(g) = &a.grub {
        grub::disarm(g, &a.name)?;
    }
    if let Some(arm) = &a.standby {
        standby::remove_units(arm)?;
        standby::remove_uefi_count(state)?;
    }
    crate::failpoint::hit("rollback:boot-entry");
    if !a.files_dir.is_empty() {
        remove_boot_files(Path::new(&a.files_dir))?;
    }
    crate::failpoint::hit("rollback:files");
    if !a.native.is_empty() {
        native::disarm(&a.native)?;
        crate::failpoint::hit("rollback:partition");
    }
    match state.load(&a.name) {
        Ok(mut rec) if rec.activation.is_some() => {
            rec.activation = None;
            crate::stage::staged::record_changed(state, &rec)?;
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    state.remove_state(&state.activation_path())?;
    Ok(RolledBack {
        entry: a.entry(),
        boot_number: a.uefi.as_ref().map(|u| u.boot_number),
        description: format!("liverestore {}", a.name),
        files_dir: Some(a.files_dir),
        files_removed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_of_a_trial() {
        let cmdline = format!("root=/dev/dm-0 {DEADLINE_ARG}1800 quiet");
        assert_eq!(
            deadline_left(&cmdline, "100.52 80.1\n", Some(Some(1703))),
            Some(1703)
        );
        assert_eq!(
            deadline_left(&cmdline, "100.52 80.1\n", Some(None)),
            Some(1700)
        );
        assert_eq!(
            deadline_left(&cmdline, "2000.1 80.1\n", Some(None)),
            Some(0)
        );
        assert_eq!(
            deadline_left(&cmdline, "100.52 80.1\n", None),
            None,
            "stopped"
        );
        assert_eq!(deadline_left("root=/dev/dm-0", "1.0 1.0", Some(None)), None);
    }

    #[test]
    fn the_early_boot_modules_come_with_what_they_need() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("lib/modules/6.1.0-9-amd64");
        std::fs::create_dir_all(dir.join("kernel/drivers/watchdog")).unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert!(
            early_boot_modules(&root, "6.1.0-9-amd64").is_empty(),
            "no module tree"
        );
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/watchdog/softdog.ko: kernel/drivers/watchdog/watchdog.ko\n\
             kernel/drivers/watchdog/watchdog.ko:\n\
             kernel/fs/efivarfs/efivarfs.ko:\n",
        )
        .unwrap();
        for m in ["softdog", "watchdog"] {
            std::fs::write(dir.join(format!("kernel/drivers/watchdog/{m}.ko")), m).unwrap();
        }
        std::fs::create_dir_all(dir.join("kernel/fs/efivarfs")).unwrap();
        std::fs::write(dir.join("kernel/fs/efivarfs/efivarfs.ko"), "efivarfs").unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert_eq!(
            early_boot_modules(&root, "6.1.0-9-amd64"),
            [
                ("modules/00-watchdog.ko".to_string(), b"watchdog".to_vec()),
                ("modules/01-softdog.ko".to_string(), b"softdog".to_vec()),
                ("modules/02-efivarfs.ko".to_string(), b"efivarfs".to_vec())
            ],
            "dependencies first"
        );
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/watchdog/softdog.ko\nkernel/drivers/watchdog/watchdog.ko\n\
             kernel/fs/efivarfs/efivarfs.ko\n",
        )
        .unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert!(
            early_boot_modules(&root, "6.1.0-9-amd64").is_empty(),
            "built in"
        );
    }

    #[test]
    fn newest_kernel_with_an_initrd() {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        let root = RootDir::open(t.path()).unwrap();
        assert_eq!(find_kernel(&root).unwrap_err().kind(), ErrorKind::NotFound);
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "vmlinuz-6.5.0-1-amd64", // no initrd: skipped
        ] {
            std::fs::write(boot.join(f), format!("070701{f}")).unwrap();
        }
        let (v, k, i) = find_kernel(&root).unwrap();
        assert_eq!(v, "6.1.0-10-amd64");
        assert_eq!(
            (&k[..], &i[..]),
            (
                &b"070701vmlinuz-6.1.0-10-amd64"[..],
                &b"070701initrd.img-6.1.0-10-amd64"[..]
            )
        );
        // an initrd that is no initramfs: refused
        std::fs::write(boot.join("initrd.img-6.1.0-10-amd64"), "not an archive").unwrap();
        let e = find_kernel(&root).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadImage, "{e}");
    }

    /// Hostile images: what `/boot` holds decides what is read, but never
    /// a file of the running system, never a FIFO or device, never more
    /// than the limits.
    #[test]
    fn nothing_in_an_image_is_trusted() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, "root:SECRET").unwrap();
        let image = || {
            let t = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(t.path().join("boot")).unwrap();
            std::fs::write(t.path().join("boot/initrd.img-1"), "070701INITRD").unwrap();
            t
        };
        let kernel = |t: &tempfile::TempDir| find_kernel(&RootDir::open(t.path()).unwrap());

        // absolute and relative symlinks out of the image resolve inside it
        for target in [
            secret.clone(),
            Path::new("../../../../../..").join(secret.strip_prefix("/").unwrap()),
        ] {
            let t = image();
            symlink(&target, t.path().join("boot/vmlinuz-1")).unwrap();
            assert_eq!(
                kernel(&t).unwrap_err().kind(),
                ErrorKind::NotFound,
                "{target:?}"
            );
            // the same path inside the image is what is read
            let inside = t.path().join(secret.strip_prefix("/").unwrap());
            std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
            std::fs::write(&inside, "the image's own file").unwrap();
            assert_eq!(kernel(&t).unwrap().1, b"the image's own file", "{target:?}");
        }
        // a FIFO: refused without blocking
        let t = image();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("boot/vmlinuz-1"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = kernel(&t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadImage, "{e}");
        assert!(e.message().contains("not a regular file"), "{e}");
        // a symlink to a device of the image (absolute: the image's /dev)
        let t = image();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        symlink("/dev/zero", t.path().join("boot/vmlinuz-1")).unwrap();
        assert_eq!(kernel(&t).unwrap_err().kind(), ErrorKind::NotFound);
        if rustix::process::geteuid().is_root() {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                t.path().join("dev/zero"),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rustix::fs::makedev(1, 5),
            )
            .unwrap();
            assert_eq!(kernel(&t).unwrap_err().kind(), ErrorKind::BadImage);
        }
        // a 10 GiB sparse "kernel"
        let t = image();
        std::fs::File::create(t.path().join("boot/vmlinuz-1"))
            .unwrap()
            .set_len(10 << 30)
            .unwrap();
        let e = kernel(&t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadImage, "{e}");
        assert!(e.message().contains("more than"), "{e}");
        // a symlink loop
        let t = image();
        symlink("vmlinuz-2", t.path().join("boot/vmlinuz-1")).unwrap();
        symlink("vmlinuz-1", t.path().join("boot/vmlinuz-2")).unwrap();
        std::fs::write(t.path().join("boot/initrd.img-2"), "x").unwrap();
        assert_eq!(kernel(&t).unwrap_err().kind(), ErrorKind::BadImage);
        // a /boot that is itself a symlink out of the image
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("boot")).unwrap();
        std::fs::write(outside.path().join("boot/vmlinuz-1"), "HOST").unwrap();
        std::fs::write(outside.path().join("boot/initrd.img-1"), "HOST").unwrap();
        symlink(outside.path().join("boot"), t.path().join("boot")).unwrap();
        assert_eq!(kernel(&t).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn consoles_are_carried_over() {
        assert_eq!(
            consoles("BOOT_IMAGE=/vmlinuz root=UUID=x console=tty0 console=ttyS0,115200 quiet"),
            ["console=tty0", "console=ttyS0,115200"]
        );
    }

    #[test]
    fn arguments_of_the_restored_boot() {
        let id = uuid::Uuid::from_u128(1);
        assert_eq!(
            kernel_args(
                "rdinit=/lr/init root=/dev/dm-0",
                (id, 1 << 20),
                "liverestore.grubenv=4096",
                "quiet console=ttyS0",
                Some("lr.test=x")
            ),
            "rdinit=/lr/init root=/dev/dm-0 rw panic=30 liverestore.id=00000000-0000-0000-0000-000000000001 \
             liverestore.header=1048576 liverestore.grubenv=4096 console=ttyS0 lr.test=x"
        );
        assert_eq!(
            kernel_args("root=PARTUUID=x", (id, 4096), "", "", None),
            "root=PARTUUID=x rw panic=30 liverestore.id=00000000-0000-0000-0000-000000000001 liverestore.header=4096"
        );
    }

    #[test]
    fn how_the_running_system_was_started() {
        assert_eq!(booted_via_cmdline("root=/dev/vda2 quiet"), None);
        assert_eq!(
            booted_via_cmdline("initrd=\\x rdinit=/lr/init root=/dev/dm-0"),
            Some(BootedVia::Uefi)
        );
        assert_eq!(
            booted_via_cmdline("root=PARTUUID=x liverestore.id=1 rw"),
            Some(BootedVia::Uefi),
            "a native boot"
        );
        assert_eq!(
            booted_via_cmdline("rdinit=/lr/init liverestore.grubenv=1052672 rw"),
            Some(BootedVia::Grub {
                env_offset: 1052672
            })
        );
    }
}
