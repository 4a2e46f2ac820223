//! The boot commands: `activate`, `status`, `commit`, `rollback` and
//! `initrd`, with their reports.

use std::path::PathBuf;

use serde::Serialize;

use super::Context;
use super::args::human_bytes;
use super::output::Report;
use crate::boot::activate::{
    self, ActivateOptions, Activation, BootChoice, Committed, LoaderChoice, RolledBack, Status,
};
use crate::error::{Error, Result};

/// Make the next boot (once) start the staged image NAME.
///
/// Re-validates the map and re-reads every staged byte, finds the
/// image's /boot/vmlinuz-VERSION and /boot/initrd.img-VERSION, copies
/// them where the boot loader reads files (the initrd with the
/// early-boot initramfs appended, see `liverestore initrd`) and arms a
/// one-shot boot of them:
///
///   UEFI  files in ESP/liverestore/NAME/, a Boot#### load option for
///         the kernel's EFI stub, BootNext set to it.
///   GRUB  files in /boot/liverestore/NAME/, a menu entry in
///         GRUB_DIR/custom.cfg, next_entry set in GRUB_DIR/grubenv
///         (BIOS or UEFI; grub.cfg as update-grub makes it).
///
/// --loader auto (the default) uses UEFI when efivarfs is mounted and
/// writable and falls back to GRUB otherwise, saying so.
///
/// The restored system's root:
///
///   native  an image staged with --unallocated --contiguous is one run
///           of the disk outside every partition: a GPT entry is added
///           over exactly it (a free slot: other partitions keep their
///           numbers; the kernel is told with BLKPG) and the restored
///           kernel and initrd boot it as they are, root=PARTUUID=….
///           An image staged with --lvm-free VG is its logical volume:
///           its own initrd activates it (lvm2 must be in the image when
///           its initrd was made: checked), root=/dev/mapper/VG-lr--NAME.
///   mapped  anything else: the early-boot step assembles the image
///           from its map with device-mapper (root=/dev/dm-0).
///
/// --boot auto (the default) is native when it can be.
///
/// A whole-disk image (staged as NAME-p1, NAME-p2, …) boots all its
/// partitions together: the one with a kernel is the root, the others
/// (its ESP, /home) come along — mapped as liverestore-pN, or each
/// with its own partition entry when native.
///
/// The boot is a trial: nothing else changes, and if the restored system
/// does not come up and `commit`, the boot after that is the old system
/// again. Only one image can be activated at a time; `liverestore
/// rollback` takes it back, and `discard` refuses it until then.
///
/// --standby arms NAME (a `snapshot` of this system, or any staged
/// image) as this system's fallback instead: nothing boots it now; the
/// installed system stays the default, and the machine starts NAME by
/// itself once the installed system failed --failed-boots boots in a
/// row (rebooted without reaching multi-user.target):
///   GRUB (the default)  liverestore_tries in grubenv, counted down by
///               NAME's block in custom.cfg at every boot of the
///               installed system, however early it then fails;
///   UEFI (--loader uefi)  NAME's Boot#### first in BootOrder; early in
///               every boot of the installed system
///               liverestore-count-boot.service counts the boot and puts
///               the installed system's own entry in BootNext again
///               while failed boots are left. A boot that fails before
///               that unit (a kernel that cannot start, an init that is
///               gone) fails over after one failed boot.
///   both        liverestore-healthy-boot.service puts the full count
///               back at every healthy boot (`liverestore healthy-boot`).
/// From the standby, `commit` makes it the default and `rollback` goes
/// back to the installed system, as after a trial.
///   liverestore snapshot --name standby --dir /var/lib/standby
///   liverestore activate standby --standby --failed-boots 2
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ActivateArgs {
    /// A staged image, or the name a whole-disk image was staged under
    /// (any of its NAME-pN works too).
    pub(crate) name: String,
    #[command(flatten)]
    trial: TrialArgs,
    /// UEFI, a whole-disk image activated natively: boot it from its
    /// own ESP, starting PROGRAM there (default \EFI\BOOT\BOOTX64.EFI,
    /// the removable-media path) as its own disk would; nothing is
    /// copied to either ESP, and the program gets only --append.
    #[arg(
        long,
        value_name = "PROGRAM",
        num_args = 0..=1,
        default_missing_value = "\\EFI\\BOOT\\BOOTX64.EFI"
    )]
    image_esp: Option<String>,
    /// Reboot into the trial once it is armed (the report is printed
    /// first): through systemd (`systemctl reboot`) when it runs, else at
    /// once (sync, then reboot(2), as `reboot -f`).
    #[arg(long)]
    reboot: bool,
    /// Arm NAME as this system's standby (started by GRUB, or the
    /// firmware with --loader uefi, after failed boots), not as a trial;
    /// no trial deadline.
    #[arg(long, conflicts_with_all = ["image_esp", "reboot"])]
    standby: bool,
    /// With --standby: the installed system's failed boots in a row after
    /// which the standby starts (1 to 9).
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::boot::activate::standby::DEFAULT_FAILED_BOOTS,
        value_parser = clap::value_parser!(u32)
            .range(1..=i64::from(crate::boot::grub_format::MAX_STANDBY_TRIES))
    )]
    failed_boots: u32,
}

/// How a trial is armed: what `activate` and `ddi` share.
#[derive(clap::Args, Debug, Clone)]
pub struct TrialArgs {
    /// Which boot loader to arm.
    #[arg(long, value_enum, default_value_t = LoaderChoice::Auto)]
    loader: LoaderChoice,
    /// How the restored system finds its root.
    #[arg(long, value_enum, default_value_t = BootChoice::Auto)]
    boot: BootChoice,
    /// The mounted EFI system partition (UEFI).
    #[arg(long, value_name = "DIR", default_value = "/boot/efi")]
    esp: PathBuf,
    /// GRUB's directory, with grub.cfg and grubenv (GRUB).
    #[arg(long, value_name = "DIR", default_value = "/boot/grub")]
    grub_dir: PathBuf,
    /// Extra kernel arguments for the restored system.
    #[arg(long, value_name = "ARGS")]
    append: Option<String>,
    /// The static liverestore for the early-boot step (default: this
    /// program, if it is statically linked).
    #[arg(long, value_name = "FILE")]
    helper: Option<PathBuf>,
    /// The trial's deadline: unless the restored system runs
    /// `liverestore commit` within DURATION of its early boot, the
    /// watchdog (the kernel's softdog, taken from the image) resets the
    /// machine, which then starts the old system again — a trial that
    /// hangs (emergency shell, a device it waits for) comes back by
    /// itself. Seconds, or with s, min, h (90s, 30min, 1h), at least 60 s
    /// (shorter would reset every restored system before it is up);
    /// `none` for no deadline. A boot through the image's own ESP (--image-esp)
    /// has none.
    #[arg(long, value_name = "DURATION", default_value = "30min", value_parser = parse_deadline)]
    trial_deadline: Deadline,
}

impl TrialArgs {
    /// The activation options these arguments ask for (a trial).
    pub fn options(&self) -> ActivateOptions<'_> {
        ActivateOptions {
            loader: self.loader,
            boot: self.boot,
            esp: &self.esp,
            grub_dir: &self.grub_dir,
            image_esp: None,
            append: self.append.as_deref(),
            helper: self.helper.as_deref(),
            trial_deadline: self.trial_deadline.0,
            standby: None,
        }
    }
}

/// `--trial-deadline`: a duration, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<std::time::Duration>);

/// The shortest trial deadline taken.
const MIN_DEADLINE_SECS: u64 = 60;

/// `90`, `90s`, `30min`, `1h`, or `none` (also `0`); at least
/// [`MIN_DEADLINE_SECS`].
fn parse_deadline(text: &str) -> std::result::Result<Deadline, String> {
    if text.trim() == "none" {
        return Ok(Deadline(None));
    }
    let secs = parse_seconds(text)?;
    // softdog's longest timeout
    if secs > 65535 {
        return Err(format!("{text:?}: at most 65535 s (18 h)"));
    }
    // shorter than any real system's boot: every trial would be reset
    // before it could commit
    if (1..MIN_DEADLINE_SECS).contains(&secs) {
        return Err(format!(
            "{text:?}: at least {MIN_DEADLINE_SECS} s — the watchdog would reset the restored system before it is up and committed (real systems take from 20 s to minutes to boot), so every trial would end on the old system"
        ));
    }
    Ok(Deadline(
        (secs > 0).then(|| std::time::Duration::from_secs(secs)),
    ))
}

/// A duration as people write it: `90`, `90s`, `5min`, `2h`; in seconds.
pub(crate) fn parse_seconds(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?}: a number of seconds, or with s, min or h (30min), or none")
    })?;
    match unit {
        "" | "s" => Ok(n),
        "min" | "m" => n
            .checked_mul(60)
            .ok_or_else(|| format!("{text:?}: too long")),
        "h" => n
            .checked_mul(3600)
            .ok_or_else(|| format!("{text:?}: too long")),
        _ => Err(format!("{text:?}: the unit is s, min or h")),
    }
}

#[derive(Debug, Serialize)]
pub struct ActivateReport {
    pub activation: Activation,
    /// `--reboot`: whether the machine reboots now.
    pub rebooting: bool,
    /// `--standby`: what keeps the failed-boot count from working here
    /// (no `panic=` on this system's command line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl ActivateArgs {
    pub fn run(self, cx: &Context) -> Result<ActivateReport> {
        let opts = ActivateOptions {
            image_esp: self.image_esp.as_deref(),
            standby: self.standby.then_some(self.failed_boots),
            ..self.trial.options()
        };
        let activation = activate::activate(
            &cx.lock_after_ended_trial()?,
            &self.name,
            &opts,
            cx.progress.as_ref(),
        )?;
        let warning = activation.standby.as_ref().and_then(|_| {
            activate::standby::reboot_warning(
                &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
                &std::fs::read_to_string("/etc/default/grub").unwrap_or_default(),
            )
        });
        Ok(ActivateReport {
            activation,
            rebooting: self.reboot,
            warning,
        })
    }
}

impl Report for ActivateReport {
    fn after_render(&self) -> Result<()> {
        if self.rebooting {
            crate::sys::power::reboot()?;
        }
        Ok(())
    }

    fn print_text(&self) {
        let a = &self.activation;
        let how = match (&a.uefi, &a.grub) {
            (Some(u), _) => format!("Boot{:04X} ({}), BootNext set", u.boot_number, u.loader),
            (_, Some(g)) => format!(
                "GRUB entry '{}' in {}/custom.cfg, next_entry set",
                g.entry_id, g.grub_dir
            ),
            _ => String::new(),
        };
        if let Some(why) = &a.fallback {
            eprintln!("{why}");
        }
        if let Some(arm) = &a.standby {
            let (entry, by) = match (&a.uefi, &a.grub) {
                (Some(u), _) => (
                    format!(
                        "Boot{:04X} ({}), first in BootOrder; BootNext: this system's Boot{:04X}",
                        u.boot_number,
                        u.loader,
                        arm.installed_boot.unwrap_or_default()
                    ),
                    "the firmware",
                ),
                (_, Some(g)) => (
                    format!("GRUB entry '{}' in {}/custom.cfg", g.entry_id, g.grub_dir),
                    "GRUB",
                ),
                _ => (String::new(), "the boot loader"),
            };
            println!(
                "'{}' armed as this system's standby: {entry}; kernel {} in {}",
                a.name, a.kernel_version, a.files_dir
            );
            println!(
                "failover: after {} failed boot(s) in a row of this system (a reboot before multi-user.target), {by} starts '{}' by itself; {} puts the count back at every healthy boot{}",
                arm.after_failed_boots,
                a.name,
                arm.unit,
                arm.count_unit
                    .as_ref()
                    .map(|c| format!(", {c} counts every boot at its start (a boot that fails before it fails over at once)"))
                    .unwrap_or_default()
            );
            println!(
                "from the standby: `liverestore commit` keeps it, `liverestore rollback` goes back to this system; here, `liverestore rollback` disarms it"
            );
            if let Some(w) = &self.warning {
                eprintln!("warning: {w}");
            }
            return;
        }
        println!(
            "'{}' activated for the next boot only: {how}; kernel {} in {}",
            a.name, a.kernel_version, a.files_dir
        );
        for (i, n) in a.native.iter().enumerate() {
            println!(
                "native boot: partition {} of {} over '{}' ({}), PARTUUID={}{}",
                n.partition.number,
                n.disk,
                n.staging,
                human_bytes(n.partition.length),
                n.partition.guid,
                if i == 0 { " (the root)" } else { "" }
            );
        }
        if let Some(v) = &a.native_volume {
            println!(
                "native boot: from its logical volume {}/{} ({}), activated by the restored system's own initrd",
                v.vg,
                v.lv,
                v.root_arg()
            );
        } else if a.native.is_empty() {
            println!("mapped boot: device-mapper at boot, root=/dev/dm-0");
            match a.deadline_secs {
                Some(s) => println!(
                    "trial deadline: {} — unless the restored system runs `liverestore commit` by then, the watchdog resets the machine and it starts the old system again",
                    human_duration(s)
                ),
                None => println!(
                    "no trial deadline: a restored system that hangs stays until someone resets the machine"
                ),
            }
            if !a.companions.is_empty() {
                println!(
                    "with the image's other partitions, mapped alongside as liverestore-pN: {}",
                    a.companions.join(", ")
                );
            }
        }
    }
}

/// `90 s`, `30 min`, `1 h 30 min`.
fn human_duration(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, 0) => format!("{h} h {m} min"),
        _ => format!("{secs} s"),
    }
}

/// Which system is running, what is activated, what the next boot starts.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {}

impl StatusArgs {
    pub fn run(self, cx: &Context) -> Result<Status> {
        activate::status(&cx.state)
    }
}

impl Report for Status {
    fn print_text(&self) {
        let s = self;
        if let Some(left) = s.deadline_left_secs {
            println!(
                "deadline:   the watchdog resets this machine in about {} unless `liverestore commit`",
                human_duration(left)
            );
        }
        println!(
            "running:    {}",
            if s.booted_restored {
                "a restored image (booted through liverestore)"
            } else {
                "the installed system"
            }
        );
        match &s.activation {
            Some(a) => println!(
                "activated:  '{}' as {} (kernel {})",
                a.name,
                a.entry(),
                a.kernel_version
            ),
            None => println!("activated:  nothing"),
        }
        println!("next boot:  {}", s.next_boot);
        if let Some(sb) = &s.standby {
            println!(
                "standby:    {} armed: {} starts it after {} more failed boot(s) of the installed system{}",
                sb.entry,
                if sb.loader == "uefi" {
                    "the firmware"
                } else {
                    "GRUB"
                },
                sb.failed_boots_left,
                sb.after_failed_boots
                    .map(|n| format!(" (armed with {n}; a healthy boot puts it back)"))
                    .unwrap_or_default()
            );
        }
        if let Some(sb) = s.secure_boot {
            println!(
                "firmware:   UEFI, Secure Boot {}",
                if sb { "on" } else { "off" }
            );
        }
        if s.trial_ended {
            println!(
                "trial:      ended, not committed (the next stage, discard or activate cleans it up, or `liverestore rollback`)"
            );
        }
        if let Some(o) = &s.old_system {
            println!(
                "old system: {} (root {}, kernel {}{})",
                o.hostname,
                o.root_device,
                o.kernel_release,
                o.boot_entry
                    .as_deref()
                    .map(|e| format!(", started from {e}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Undo an activation, from either system.
///
/// From the old system:
/// the one-shot choice (BootNext / next_entry), the default (BootOrder
/// entry / liverestore_default), the boot entry (Boot#### / the
/// custom.cfg block) and the kernel and initrd files. From the
/// restored system: the boot loader's choice of it (the files stay
/// until `rollback` runs in the old system). The next boot starts the
/// old system.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {}

#[derive(Debug, Serialize)]
pub struct RollbackReport {
    pub rolled_back: RolledBack,
}

impl RollbackArgs {
    pub fn run(self, cx: &Context) -> Result<RollbackReport> {
        Ok(RollbackReport {
            rolled_back: activate::rollback(&cx.lock()?)?,
        })
    }
}

impl Report for RollbackReport {
    fn print_text(&self) {
        let r = &self.rolled_back;
        println!(
            "{} ({}) removed; the next boot starts the old system",
            r.entry, r.description
        );
        if !r.files_removed {
            println!(
                "the kernel and initrd{} stay until `liverestore rollback` runs in the old system",
                r.files_dir
                    .as_deref()
                    .map(|d| format!(" in {d}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Keep the restored system: run in it after a trial boot.
///
/// Makes it the default (UEFI: its Boot#### goes first in BootOrder; GRUB: liverestore_default
/// is set in grubenv, which its custom.cfg block turns into the default).
#[derive(clap::Args, Debug)]
pub struct CommitArgs {}

#[derive(Debug, Serialize)]
pub struct CommitReport {
    pub committed: Committed,
    /// A system from a DDI deployment (`liverestore ddi`): whether its
    /// update server was told (`closed`/`success`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_reported: Option<bool>,
}

impl CommitArgs {
    pub fn run(self, cx: &Context) -> Result<CommitReport> {
        let lock = cx.lock()?;
        let committed = activate::commit(&lock)?;
        Ok(CommitReport {
            committed,
            deployment_reported: crate::ddi::report_commit(&lock, cx.progress.as_ref()),
        })
    }
}

impl Report for CommitReport {
    fn print_text(&self) {
        print_committed(&self.committed);
    }
}

/// What a commit changed, for people.
fn print_committed(c: &Committed) {
    match (c.boot_number, &c.grub_entry) {
        (Some(n), _) => {
            println!("Boot{n:04X} is first in BootOrder: this system now starts by default")
        }
        (_, Some(id)) => println!(
            "GRUB's default is now '{id}' (liverestore_default in grubenv): this system now starts by default"
        ),
        _ => {}
    }
    if let Some(o) = &c.old_system {
        println!(
            "the old system ({}, root {}, kernel {}) stays reachable: `liverestore rollback`",
            o.hostname, o.root_device, o.kernel_release
        );
    }
    match c.deadline.as_deref() {
        Some("stopped") => println!("the trial's deadline is off: its watchdog is stopped"),
        Some(other) => eprintln!("the trial's deadline: {other}"),
        None => {}
    }
}

/// (run by the unit `customize --auto-commit` puts in the image) Commit
/// this trial boot once the health check passes.
///
/// Reads /usr/local/lib/liverestore/auto-commit.json, runs its health
/// check every 5 s; when it passes, commits (as `liverestore commit`) and
/// removes the unit, its settings and its liverestore; when it has not
/// passed within the time given, reboots: the one-shot trial is over and
/// the old system starts.
#[derive(clap::Args, Debug)]
pub struct AutoCommitArgs {}

#[derive(Debug, Serialize)]
pub struct AutoCommitReport {
    pub auto_committed: crate::boot::auto_commit::AutoCommitted,
    /// As `commit`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_reported: Option<bool>,
}

impl AutoCommitArgs {
    pub fn run(self, cx: &Context) -> Result<AutoCommitReport> {
        let auto_committed = crate::boot::auto_commit::run(&cx.state, cx.progress.as_ref())?;
        Ok(AutoCommitReport {
            auto_committed,
            // committed already: a lock another liverestore holds now
            // only skips the report (`liverestore ddi` tells it later)
            deployment_reported: cx
                .lock()
                .ok()
                .and_then(|l| crate::ddi::report_commit(&l, cx.progress.as_ref())),
        })
    }
}

impl Report for AutoCommitReport {
    fn print_text(&self) {
        let a = &self.auto_committed;
        println!(
            "healthy (`{}` passed after {} s, {} runs): committed",
            a.health, a.passed_after_secs, a.checks
        );
        print_committed(&a.committed);
        if !a.removed.is_empty() {
            println!("the auto-commit removed itself: {}", a.removed.join(", "));
        }
    }
}

/// (run by liverestore-healthy-boot.service, which `activate --standby`
/// installs) This boot of the installed system is healthy: put the
/// standby's failed-boot count back.
///
/// GRUB: sets liverestore_tries in GRUB_DIR/grubenv back to the
/// --failed-boots of the activation. UEFI: the count in the state
/// directory back to it, and BootNext to the installed system's entry.
/// Changes nothing in a system liverestore started (the standby itself,
/// a trial) or when no standby is armed.
#[derive(clap::Args, Debug)]
pub struct HealthyBootArgs {}

impl HealthyBootArgs {
    pub fn run(self, cx: &Context) -> Result<activate::HealthyBoot> {
        activate::healthy_boot(&cx.state.lock()?)
    }
}

impl Report for activate::HealthyBoot {
    fn print_text(&self) {
        let next = self
            .boot_next
            .map(|n| format!("; BootNext: Boot{n:04X}"))
            .unwrap_or_default();
        match (&self.standby, &self.nothing_because) {
            (_, Some(why)) => println!("nothing to do: {why}"),
            (Some(name), None) if self.reset => println!(
                "healthy boot: the failed-boot count of standby '{name}' is back to {} (it was {}){next}",
                self.failed_boots_left.unwrap_or(0),
                self.failed_boots_left_before
                    .map_or("unset".to_string(), |n| n.to_string())
            ),
            (Some(name), None) => println!(
                "healthy boot: standby '{name}' needs {} failed boot(s) in a row, as armed{next}",
                self.failed_boots_left.unwrap_or(0)
            ),
            (None, None) => {}
        }
    }
}

/// (run by liverestore-count-boot.service, which `activate --standby
/// --loader uefi` installs) Count this boot of the installed system
/// against its standby, early in the boot.
///
/// One failed boot less is left (the count is in the state directory:
/// the firmware keeps none); while some are left, BootNext is set to
/// the installed system's entry again, so a failure of this boot is
/// followed by another boot of it. With none left, the next boot starts
/// the standby (first in BootOrder) unless this one reaches
/// multi-user.target (`healthy-boot`). Changes nothing in a system
/// liverestore started, through GRUB (which counts itself), or when no
/// standby is armed.
#[derive(clap::Args, Debug)]
pub struct CountBootArgs {}

/// What `count-boot` did.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct CountedBoot(activate::HealthyBoot);

impl CountBootArgs {
    pub fn run(self, cx: &Context) -> Result<CountedBoot> {
        activate::count_boot(&cx.state.lock()?).map(CountedBoot)
    }
}

impl Report for CountedBoot {
    fn print_text(&self) {
        let c = &self.0;
        match (&c.standby, &c.nothing_because) {
            (_, Some(why)) => println!("nothing to do: {why}"),
            (Some(name), None) => match c.boot_next {
                Some(n) => println!(
                    "boot counted: {} failed boot(s) of this system left before standby '{name}' starts (BootNext: Boot{n:04X}, this system, again)",
                    c.failed_boots_left.unwrap_or(0)
                ),
                None => println!(
                    "boot counted: none left — unless this boot reaches multi-user.target, the next one starts standby '{name}'"
                ),
            },
            (None, None) => {}
        }
    }
}

/// Write the early-boot initramfs that boots the staged image NAME.
///
/// Append it to the restored system's own initrd and boot its kernel
/// with `rdinit=/lr/init root=/dev/dm-0`: `/lr/init` (a static
/// liverestore) loads the disk's driver and dm-mod from that initrd's
/// modules, finds the disk by the staging's on-disk header, maps the
/// image with device-mapper (`/dev/dm-0`, named liverestore-root) and
/// starts the initrd's `/init`. On any failure it reboots after 10 s.
///   liverestore initrd web --append-to /boot/initrd.img-6.1.0 --output /boot/initrd-web.img
///   liverestore initrd web --output /boot/lr-web.cpio   # the archive alone
/// Appending by hand: the archive must start at a multiple of 4 bytes
/// (pad the initrd with zeros first), or the kernel rejects it.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct InitrdArgs {
    name: String,
    /// Where to write the archive (or, with --append-to, the whole initrd).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// The restored system's own initrd: write it with the archive
    /// appended, padded to the 4-byte boundary the kernel needs.
    #[arg(long, value_name = "INITRD")]
    append_to: Option<PathBuf>,
    /// The static liverestore to put in it (default: this program,
    /// if it is statically linked).
    #[arg(long, value_name = "FILE")]
    helper: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct InitrdReport {
    pub output: PathBuf,
    pub bytes: usize,
    pub modules: Vec<String>,
    pub extents: usize,
    pub dm_name: &'static str,
    #[serde(skip)]
    append_to: Option<PathBuf>,
}

impl InitrdArgs {
    pub fn run(self, cx: &Context) -> Result<InitrdReport> {
        let rec = cx.state.load(&self.name)?;
        crate::stage::staged::revalidate(&rec)?;
        let (plan, early) = crate::boot::initrd::for_staging(&rec, self.helper.as_deref())?;
        let bytes = match &self.append_to {
            None => early,
            Some(base) => {
                let mut all = std::fs::read(base)
                    .map_err(|e| Error::io("read the restored initrd", e).with_path(base))?;
                crate::boot::initrd::append_early_boot(&mut all, &early);
                all
            }
        };
        std::fs::write(&self.output, &bytes)
            .map_err(|e| Error::io("write the initramfs", e).with_path(&self.output))?;
        Ok(InitrdReport {
            output: self.output,
            bytes: bytes.len(),
            modules: plan.modules,
            extents: plan.extents.len(),
            dm_name: crate::boot::plan::DM_NAME,
            append_to: self.append_to,
        })
    }
}

impl Report for InitrdReport {
    fn print_text(&self) {
        println!(
            "{}: {} bytes; {} and boot with rdinit={} (modules: {})",
            self.output.display(),
            self.bytes,
            match &self.append_to {
                Some(base) => format!(
                    "{} with the early-boot archive appended: boot it",
                    base.display()
                ),
                None => "append it to the restored initrd (padded to a multiple of 4 bytes)".into(),
            },
            crate::boot::initrd::INIT_PATH,
            if self.modules.is_empty() {
                "built in".to_string()
            } else {
                self.modules.join(", ")
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_deadlines_are_read_as_people_write_them() {
        let secs = |t: &str| parse_deadline(t).map(|d| d.0.map(|d| d.as_secs()));
        assert_eq!(secs("90"), Ok(Some(90)));
        assert_eq!(secs("90s"), Ok(Some(90)));
        assert_eq!(secs("30min"), Ok(Some(1800)));
        assert_eq!(secs("2h"), Ok(Some(7200)));
        assert_eq!(secs("none"), Ok(None));
        assert_eq!(secs("0"), Ok(None));
        assert_eq!(secs("60"), Ok(Some(60)));
        assert!(parse_deadline("59s").unwrap_err().contains("at least 60 s"));
        for bad in ["", "min", "10 days", "-5", "19h", "1.5h", "1", "30s"] {
            assert!(parse_deadline(bad).is_err(), "{bad:?}");
        }
        assert_eq!(human_duration(90), "90 s");
        assert_eq!(human_duration(1800), "30 min");
        assert_eq!(human_duration(5400), "1 h 30 min");
    }
}
