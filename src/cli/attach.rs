//! Using a staging without booting it: `attach`, `detach`, `test-restore`,
//! `customize`, and the internal `serve-image`.

use std::path::PathBuf;

use serde::Serialize;

use super::Context;
use super::output::Report;
use crate::attach::test_restore::TestReport;
use crate::attach::{AttachMode, Attachment};
use crate::customize::{CustomizeOptions, CustomizeReport};
use crate::error::{ErrorKind, Result};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RwMode {
    Overlay,
    Direct,
}

/// Show a staged image as a block device, without rebooting.
///
/// Prints its path: a device-mapper table built from the map, over a
/// loop device on the whole disk. Read-only unless --rw.
///
///   liverestore attach web            # read-only: fsck -n, mount -o ro
///   liverestore attach web --rw       # writable, changes thrown away on detach
///   liverestore attach web --rw=direct  # writable, changes the staged image
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AttachArgs {
    pub(crate) name: String,
    /// Writable: `overlay` (default) keeps writes in a throw-away
    /// copy-on-write store; `direct` writes into the staged image.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "overlay", require_equals = true)]
    rw: Option<RwMode>,
}

#[derive(Debug, Serialize)]
pub struct AttachReport {
    pub attachment: Attachment,
}

impl AttachArgs {
    pub fn run(self, cx: &Context) -> Result<AttachReport> {
        let mode = match self.rw {
            None => AttachMode::ReadOnly,
            Some(RwMode::Overlay) => AttachMode::Overlay,
            Some(RwMode::Direct) => AttachMode::Direct,
        };
        Ok(AttachReport {
            attachment: crate::attach::attach(&cx.lock()?, &self.name, mode)?,
        })
    }
}

impl Report for AttachReport {
    fn print_text(&self) {
        let a = &self.attachment;
        println!("{}", a.device);
        if a.backend == "fuse" {
            eprintln!(
                "no device-mapper in this kernel: '{}' is served {} through FUSE ({}) and a loop device",
                a.name,
                if a.mode == AttachMode::Direct {
                    "writable"
                } else {
                    "read-only"
                },
                a.fuse_mount.as_deref().unwrap_or("-")
            );
        }
    }
}

/// Take down an attachment.
///
/// Removes its device-mapper devices, loop devices and overlay store;
/// also cleans up after an interrupted attach.
#[derive(clap::Args, Debug)]
pub struct DetachArgs {
    pub(crate) name: String,
}

#[derive(Debug, Serialize)]
pub struct DetachReport {
    pub detached: Attachment,
}

impl DetachArgs {
    pub fn run(self, cx: &Context) -> Result<DetachReport> {
        Ok(DetachReport {
            detached: crate::attach::detach(&cx.lock()?, &self.name)?,
        })
    }
}

impl Report for DetachReport {
    fn print_text(&self) {
        println!("detached '{}'", self.detached.name);
    }
}

/// Test a staged filesystem image for real, then throw the test away.
///
/// Attaches it through an overlay, checks it with fsck -n, mounts it, runs CMD
/// with the mount point in $LIVERESTORE_ROOT (and as working
/// directory), reports pass/fail, always detaches. The staged image is
/// never changed. Exits 20 when the test fails. The output of fsck and
/// CMD goes to stderr (stdout is the report).
///
///   liverestore test-restore web --run 'test -s "$LIVERESTORE_ROOT/etc/hostname"'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TestRestoreArgs {
    pub(crate) name: String,
    /// Shell command to run against the mounted image.
    #[arg(long, value_name = "CMD")]
    run: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TestRestoreReport {
    pub report: TestReport,
}

impl TestRestoreArgs {
    pub fn run(self, cx: &Context) -> Result<TestRestoreReport> {
        Ok(TestRestoreReport {
            report: crate::attach::test_restore::test_restore(
                &cx.lock()?,
                &self.name,
                self.run.as_deref(),
            )?,
        })
    }
}

impl Report for TestRestoreReport {
    fn exit_code(&self) -> u8 {
        if self.report.passed {
            0
        } else {
            ErrorKind::VerifyFailed.exit_code() as u8
        }
    }

    fn print_text(&self) {
        let r = &self.report;
        let yes = |b: bool| if b { "ok" } else { "FAILED" };
        println!(
            "filesystem: {}",
            r.filesystem.as_deref().unwrap_or("unknown")
        );
        println!(
            "fsck:       {} ({})",
            yes(r.fsck_clean),
            r.fsck_command.as_deref().unwrap_or("-")
        );
        println!(
            "mount:      {}{}",
            r.mount_error
                .clone()
                .unwrap_or_else(|| yes(r.mounted).into()),
            if r.read_only {
                " (read-only: no device-mapper here for a writable overlay)"
            } else {
                ""
            }
        );
        if let (Some(c), Some(st)) = (&r.command, r.command_status) {
            println!("command:    {} (exit {st}): {c}", yes(st == 0));
        }
        println!(
            "{}: test-restore of '{}'",
            if r.passed { "PASSED" } else { "FAILED" },
            r.name
        );
    }
}

/// Change a staged system before its first boot.
///
/// So it comes up as this machine (or as a new one). The staged bytes are verified
/// first; the image is attached writable, its root filesystem mounted
/// and changed, and every chunk hashed anew, so `verify` and
/// `activate` accept the result. Applied in this order:
/// --new-identity, --hostname, --carry-network, --inject-drivers,
/// --preserve (what you name explicitly wins). Interrupted, the
/// staging stays marked as being customized (verify and activate
/// refuse it): run the same command again to finish.
///
///   liverestore customize web --carry-network --preserve /etc/ssh --preserve /home
///   liverestore customize lab-07 --new-identity --hostname lab-07
///   liverestore customize kiosk --auto-commit --health 'curl -fs http://127.0.0.1/' --commit-within 5min
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CustomizeArgs {
    pub(crate) name: String,
    /// Copy this file or tree from the running system into the
    /// restored one at the same path (mode, owner, time and links
    /// kept; files the restored system has and this one lacks stay).
    /// Repeat for more.
    #[arg(long, value_name = "PATH")]
    preserve: Vec<PathBuf>,
    /// Copy this system's network configuration (netplan,
    /// NetworkManager, systemd-networkd or ifupdown: the stacks both
    /// systems use) and a plain /etc/resolv.conf, so a remote machine
    /// comes back online.
    #[arg(long)]
    carry_network: bool,
    /// A machine of its own: empty /etc/machine-id (systemd makes a new
    /// one at first boot), new SSH host keys of the same types.
    #[arg(long)]
    new_identity: bool,
    /// Set /etc/hostname and the 127.0.1.1 line of /etc/hosts.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Copy firmware that this machine's loaded modules use and the
    /// image lacks; and, when the image's kernel is this kernel's
    /// version, the loaded modules it lacks (then depmod).
    #[arg(long)]
    inject_drivers: bool,
    /// Make `nofail` the /etc/fstab entries that name a device by UUID,
    /// LABEL, PARTUUID or PARTLABEL that none of the image's own
    /// filesystems or partitions has (the source machine's ESP, swap or
    /// data disks): systemd would wait for them and stop in emergency
    /// mode. Every other byte of the file stays. `activate` warns about
    /// such entries.
    #[arg(long)]
    fix_fstab: bool,
    /// Make the restored system's trial commit itself, with nobody at
    /// the machine: a systemd unit (and a static liverestore) go into
    /// the image; after the boot it runs the --health check until it
    /// passes, then `liverestore commit`, and removes itself. If the
    /// check does not pass within --commit-within, it reboots: the
    /// one-shot trial is over and the old system starts. Needs systemd
    /// in the image (refused, with nothing changed, without it).
    #[arg(long)]
    auto_commit: bool,
    /// The health check for --auto-commit: a shell command, healthy
    /// when it exits 0 (tried every 5 s).
    #[arg(long, value_name = "CMD", requires = "auto_commit", default_value = crate::customize::auto_commit::DEFAULT_HEALTH)]
    health: String,
    /// How long --health may take to pass after the unit starts
    /// (`90s`, `10min`).
    #[arg(long, value_name = "DURATION", requires = "auto_commit", default_value = "10min", value_parser = super::boot::parse_seconds)]
    commit_within: u64,
    /// The static liverestore put into the image for --auto-commit
    /// (default: this program, which must then be static).
    #[arg(long, value_name = "PATH", requires = "auto_commit")]
    helper: Option<PathBuf>,
    /// Take preserved files, network configuration and drivers from
    /// the system whose root is mounted at DIR, not the running one.
    #[arg(long, value_name = "DIR", default_value = "/")]
    source_root: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct CustomizeResult {
    pub customized: CustomizeReport,
}

impl CustomizeArgs {
    pub fn run(self, cx: &Context) -> Result<CustomizeResult> {
        let opts = CustomizeOptions {
            preserve: self.preserve,
            source_root: self.source_root,
            carry_network: self.carry_network,
            new_identity: self.new_identity,
            hostname: self.hostname,
            inject_drivers: self.inject_drivers,
            fix_fstab: self.fix_fstab,
            auto_commit: match self.auto_commit {
                false => None,
                true => Some(crate::customize::AutoCommitOptions::new(
                    crate::customize::auto_commit::Settings {
                        health: self.health,
                        within_secs: self.commit_within,
                    },
                    &match self.helper {
                        Some(h) => h,
                        None => std::env::current_exe()
                            .map_err(|e| crate::Error::io("find this program", e))?,
                    },
                )?),
            },
        };
        Ok(CustomizeResult {
            customized: crate::customize::customize(
                &cx.lock()?,
                &self.name,
                &opts,
                cx.progress.as_ref(),
            )?,
        })
    }
}

impl Report for CustomizeResult {
    fn print_text(&self) {
        let r = &self.customized;
        for c in &r.changes {
            println!("{:<13} {}  ({})", c.what, c.path, c.detail);
        }
        println!(
            "'{}' customized{}: {} changes in its {} filesystem; new sha256 {}",
            r.name,
            if r.resumed {
                " (an interrupted run finished)"
            } else {
                ""
            },
            r.changes.len(),
            r.filesystem,
            r.sha256
        );
    }
}

/// (internal) Serve a staged image as a FUSE file for `attach` on a
/// kernel without device-mapper; exits when unmounted.
#[derive(clap::Args, Debug)]
pub struct ServeImageArgs {
    name: String,
    mountpoint: PathBuf,
    /// Take writes (through the map) too.
    #[arg(long)]
    writable: bool,
}

#[derive(Debug, Serialize)]
pub struct Served {
    pub name: String,
}

impl ServeImageArgs {
    pub fn run(self, cx: &Context) -> Result<Served> {
        crate::attach::fuse_image::serve(&cx.state, &self.name, &self.mountpoint, self.writable)?;
        Ok(Served { name: self.name })
    }
}

impl Report for Served {
    fn print_text(&self) {}
}
