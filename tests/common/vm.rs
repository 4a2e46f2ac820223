//! The QEMU test guest: Debian's kernel package (unpacked by
//! `scripts/vm-kernel.sh` into `target/vm/kernel`) booted under TCG with an
//! initramfs built here — static busybox, a static liverestore, the kernel
//! modules a scenario asks for (with their dependencies, from modules.dep),
//! any host binaries it needs (with their shared libraries), and the
//! scenario, a shell script. The guest's serial console is the scenario's
//! output; its last line says how the scenario ended.
//!
//! This is how we test what this host's kernel cannot do (device-mapper,
//! vfat) and, later, real boots.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ChildGuard;

/// The repository root (tests run with the package root as cwd, but do
/// not rely on it).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The unpacked guest kernel.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `lib/modules/VERSION`
    pub modules: PathBuf,
}

impl Kernel {
    pub fn get() -> Kernel {
        let dir = repo().join("target/vm/kernel");
        let vmlinuz = dir.join("vmlinuz");
        assert!(
            vmlinuz.exists(),
            "no guest kernel in {}: run `bash scripts/vm-kernel.sh` (scripts/install-deps.sh does)",
            dir.display()
        );
        let modules = fs::read_dir(dir.join("lib/modules"))
            .unwrap()
            .next()
            .expect("a modules directory")
            .unwrap()
            .path();
        Kernel { vmlinuz, modules }
    }

    /// `names` (as in modules.dep, `-` and `_` alike) and everything they
    /// depend on, dependencies first. Built-in modules need nothing.
    pub fn module_load_order(&self, names: &[&str]) -> Vec<String> {
        let dep = fs::read_to_string(self.modules.join("modules.dep")).unwrap();
        let builtin = fs::read_to_string(self.modules.join("modules.builtin")).unwrap_or_default();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        liverestore::sys::kmod::load_order(&dep, &builtin, &names)
            .unwrap_or_else(|e| panic!("guest kernel modules: {e}"))
    }

    /// The kernel release (the modules directory's name).
    pub fn release(&self) -> String {
        self.modules
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string()
    }
}

/// The guests' liverestore: this test build's own binary (static through
/// .cargo/config.toml; a debug build, so its failpoints work:
/// src/failpoint.rs), stripped once per run into `target/guest`, since
/// the guests copy it into initramfs and image files.
/// `LIVERESTORE_GUEST_BIN` names another one.
pub fn static_liverestore() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    BUILT
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("LIVERESTORE_GUEST_BIN") {
                return PathBuf::from(bin);
            }
            let dir = repo().join("target/guest");
            fs::create_dir_all(&dir).unwrap();
            let bin = dir.join("liverestore");
            let tmp = dir.join(format!(".liverestore-{}", std::process::id()));
            super::sh(
                "strip",
                &[
                    "-o",
                    tmp.to_str().unwrap(),
                    env!("CARGO_BIN_EXE_liverestore"),
                ],
            );
            fs::rename(&tmp, &bin).unwrap();
            let out = Command::new("ldd").arg(&bin).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                text.contains("not a dynamic executable") || text.contains("statically linked"),
                "the guest's liverestore is not static: {text}"
            );
            bin
        })
        .clone()
}

/// The order of the six boots of a full trial cycle (the UEFI and GRUB
/// scenarios print these): the old system activates, the restored system
/// once (nobody commits), the old system again (it activates again), the
/// restored system (it commits), the restored system by default (it rolls
/// back), the old system (it cleans up).
pub const SIX_BOOTS: &[&str] = &[
    "LR old_boot_1",
    "LR restored_boot_1",
    "LR old_boot_2",
    "LR restored_boot_2",
    "LR restored_boot_3",
    "LR old_boot_3",
];

/// What the UEFI shell prints as it starts counting down to startup.nsh.
const COUNTDOWN: &[u8] = b"in 5 seconds to skip";

/// What goes into a guest, and how it runs.
pub struct Guest {
    /// Kernel modules to load at boot, in this order (dependencies are
    /// added and loaded first).
    pub modules: Vec<&'static str>,
    /// Host binaries to copy in (with their shared libraries), by name
    /// found on PATH or by absolute path; they land in /usr/bin.
    pub binaries: Vec<&'static str>,
    /// Extra files: (guest path, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Raw disk images, attached as virtio disks /dev/vda, /dev/vdb, …
    pub disks: Vec<PathBuf>,
    /// The scenario: run by `sh -e`; its exit status is reported.
    pub scenario: String,
    pub memory_mib: u32,
    /// QEMU's CPU model: `max` (a CPU like real machines have, RDRAND
    /// included) unless a test needs another one.
    pub cpu: &'static str,
    pub timeout: Duration,
    /// Boot this instead of the harness's own initramfs (which then is not
    /// built, and `modules`, `binaries`, `files` and `scenario` are
    /// unused): what a boot loader would load.
    pub boot: Option<Boot>,
    /// Boot through UEFI firmware (OVMF, with its own variable store)
    /// instead: the harness puts the kernel, its initramfs and a
    /// `startup.nsh` that starts them into the ESP on `disks[0]`; reboots
    /// go back to the firmware (no `-no-reboot`), so one run can hold
    /// several boots.
    pub uefi: Option<Uefi>,
    /// Boot through the BIOS (QEMU's SeaBIOS) and GRUB from `disks[0]`
    /// instead; reboots go back to the firmware, as with `uefi`.
    pub bios: Option<Bios>,
    /// A network card (an e1000, [`NET_MODULES`] to load) on QEMU's user
    /// network: the guest is 10.0.2.15/24 ([`NETWORK_UP`]), and reaches
    /// this machine's 127.0.0.1 as 10.0.2.2.
    pub network: bool,
    /// With `network`: the guest's port 22 reached at this port of this
    /// machine's 127.0.0.1 (QEMU's `hostfwd`), for SSH into the guest.
    pub ssh_port: Option<u16>,
}

/// The modules of the guest's network card.
pub const NET_MODULES: &[&str] = &["e1000"];

/// The guest's network, up (busybox `ip`).
pub const NETWORK_UP: &str = "ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
";

/// Where GRUB and the old system go on `disks[0]` (bytes; GPT partitions
/// the test made). On the first run (no ext4 there yet) the harness makes
/// the old system's ext4 in `root` — `/boot/vmlinuz`, `/boot/old.img` (the
/// harness's initramfs), and `/boot/grub` as Debian's `grub-install` and
/// `update-grub` leave it: the i386-pc modules, `grubenv`, and a
/// `grub.cfg` with Debian's `00_header` (load_env, next_entry) and
/// `41_custom` (source custom.cfg) around the old system's entry — and
/// installs GRUB's boot sector and core image as `grub-bios-setup` does
/// (boot.img in the MBR, core.img in the BIOS boot partition). Later runs
/// boot what the disk holds.
pub struct Bios {
    /// The BIOS boot partition (type ef02) that holds GRUB's core image.
    pub core_offset: u64,
    /// The old system's ext4 partition and its GPT number.
    pub root_offset: u64,
    pub root_size: u64,
    pub root_partition: u32,
}

/// Where the ESP is on `disks[0]` (bytes; a GPT partition the test made).
pub struct Uefi {
    pub esp_offset: u64,
    pub esp_size: u64,
    /// The firmware's variable store, kept between runs (created from
    /// OVMF's template when missing); None: a fresh one in the work dir.
    pub vars: Option<PathBuf>,
    /// Put the harness's kernel, initramfs and `startup.nsh` on the ESP
    /// (formatting it the first time). False: the disk boots as it is,
    /// through what its own system installed there (a real Debian's GRUB).
    pub startup: bool,
    /// Secure Boot on: Debian's OVMF built for it (SMM, on q35) with
    /// Microsoft's keys enrolled (`OVMF_VARS_4M.ms.fd` as the template);
    /// the firmware then starts only what a key in db signed (shim).
    pub secure_boot: bool,
}

/// An initrd and kernel arguments, as a boot loader would pass them.
pub struct Boot {
    pub initrd: Vec<u8>,
    /// Appended to the console arguments.
    pub append: String,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            modules: vec![],
            binaries: vec![],
            files: vec![],
            disks: vec![],
            scenario: String::new(),
            memory_mib: 768,
            cpu: "max",
            timeout: Duration::from_secs(300),
            boot: None,
            uefi: None,
            bios: None,
            network: false,
            ssh_port: None,
        }
    }
}

/// What a guest run printed, and how its scenario ended.
pub struct GuestRun {
    pub console: String,
    /// The scenario's exit status (None: it never finished: panic, timeout).
    pub status: Option<i32>,
    pub elapsed: Duration,
    /// When (seconds since QEMU started) the console showed each
    /// milestone of a boot ([`MILESTONES`]): where a run's time goes.
    pub timeline: Vec<(f64, String)>,
}

/// Console lines that mark where a boot is: the firmware starting a boot
/// entry, GRUB loading, the kernel starting, the initramfs and systemd
/// taking over, the scenario's reports, the trial's deadline, a reboot.
const MILESTONES: &[&str] = &[
    "BdsDxe: starting",
    "Loading Linux",
    "Booting in blind mode",
    "Linux version",
    "Run /init as init process",
    "Welcome to ",
    "LR report=",
    "trial deadline armed",
    "softdog: Initiating",
    "reboot: Restarting",
    POWER_DOWN,
];

/// What Linux prints as it powers the machine off (any other end of a
/// QEMU that boots through firmware is a reset).
const POWER_DOWN: &str = "reboot: Power down";

/// The milestone lines among the complete lines of `text` from byte
/// `from` on, stamped `secs`; returns where the next call starts.
fn milestones(text: &[u8], from: usize, secs: f64, out: &mut Vec<(f64, String)>) -> usize {
    let Some(last_newline) = text[from.min(text.len())..]
        .iter()
        .rposition(|&b| b == b'\n')
    else {
        return from;
    };
    let end = from + last_newline + 1;
    for line in String::from_utf8_lossy(&text[from..end]).lines() {
        if let Some(at) = MILESTONES.iter().find_map(|m| line.find(m)) {
            out.push((secs, line[at..].chars().take(100).collect()));
        }
    }
    end
}

impl GuestRun {
    /// The scenario's own output (between the start and end markers).
    pub fn output(&self) -> &str {
        let start = self
            .console
            .find(START)
            .map(|i| i + START.len())
            .unwrap_or(0);
        let end = self.console.rfind(END).unwrap_or(self.console.len());
        self.console.get(start..end).unwrap_or("")
    }

    /// Assert the scenario exited 0; show the console otherwise.
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.status,
            Some(0),
            "guest scenario failed; console:\n{}",
            self.console
        );
        self
    }

    /// Assert every `(key, expected value)`, listing all that differ.
    pub fn assert_values(&self, expected: &[(&str, &str)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(k, v)| {
                let got = self.value(k);
                (got.as_deref() != Some(v)).then(|| format!("{k}: expected {v:?}, got {got:?}"))
            })
            .collect();
        self.assert_none_wrong(&wrong);
    }

    /// Fail with every line of `wrong` and the scenario's output, if any.
    fn assert_none_wrong(&self, wrong: &[String]) {
        assert!(
            wrong.is_empty(),
            "{}\nscenario output:\n{}",
            wrong.join("\n"),
            self.output()
        );
    }

    /// Assert how often each text appears on the console (`(text,
    /// times)`), listing all that differ.
    pub fn assert_console_counts(&self, expected: &[(&str, usize)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|&(text, n)| {
                let got = self.console.matches(text).count();
                (got != n).then(|| format!("{text:?}: expected {n} times, seen {got}"))
            })
            .collect();
        self.assert_none_wrong(&wrong);
    }

    /// Assert that the scenario printed the lines starting with `keys` in
    /// this order (one boot after the other).
    pub fn assert_in_order(&self, keys: &[&str]) {
        let at: Vec<usize> = keys
            .iter()
            .map(|k| {
                self.console
                    .find(k)
                    .unwrap_or_else(|| panic!("{k} missing:\n{}", self.output()))
            })
            .collect();
        assert!(
            at.windows(2).all(|w| w[0] < w[1]),
            "order of {keys:?}: {at:?}"
        );
    }

    /// Assert the run ended by a simulated power cut at failpoint `point`
    /// (src/failpoint.rs), before the scenario finished.
    pub fn assert_powered_off_at(&self, point: &str) {
        assert!(
            self.console
                .contains(&format!("failpoint {point}: powering off")),
            "the power was not cut at {point}:\n{}",
            self.console
        );
        assert_eq!(self.status, None, "the scenario must not have finished");
    }

    /// The value the scenario printed for `key`; panics (showing the
    /// scenario's output) when there is none.
    pub fn get(&self, key: &str) -> String {
        self.value(key)
            .unwrap_or_else(|| panic!("no {key} in:\n{}", self.output()))
    }

    /// Every value the scenario printed for `key`, in order. A line may
    /// start with something else on the console (a login prompt that
    /// the getty printed without a newline).
    pub fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("LR {key}=");
        self.output()
            .lines()
            .filter_map(|l| {
                let l = l.trim_end_matches('\r');
                l.strip_prefix(&prefix)
                    .or_else(|| l.split_once(&format!(" {prefix}")).map(|(_, v)| v))
            })
            .map(str::to_string)
            .collect()
    }

    /// Values the scenario printed as `LR key=value` lines.
    pub fn value(&self, key: &str) -> Option<String> {
        self.values(key).pop()
    }
}

/// A `grub.cfg` as Debian's `update-grub` writes it, cut to what matters
/// here: `00_header` (load grubenv, honour and clear `next_entry`), the
/// old system's entry, `41_custom` (source `custom.cfg`); with no menu
/// delay and GRUB on the serial console.
pub fn debian_grub_cfg(append: &str) -> String {
    format!(
        r#"# from /etc/grub.d/00_header
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
# from /etc/grub.d/10_linux
menuentry 'Old system' --id old-system {{
	insmod part_gpt
	insmod ext2
	echo 'GRUB: starting the old system'
	linux /boot/vmlinuz {append}
	initrd /boot/old.img
}}
# from /etc/grub.d/41_custom
if [ -f  ${{config_directory}}/custom.cfg ]; then
  source ${{config_directory}}/custom.cfg
elif [ -z "${{config_directory}}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
"#
    )
}

/// Module groups for `Guest::modules` (concatenate them).
pub const VIRTIO_BLK: &[&str] = &["virtio_pci", "virtio_blk"];
pub const EXT4: &[&str] = &["crc32c_generic", "ext4"];
pub const VFAT: &[&str] = &["vfat", "nls_cp437", "nls_ascii"];
pub const DM_OVER_LOOP: &[&str] = &["loop", "dm-mod"];

/// Debian's OVMF (package `ovmf`).
const OVMF: &str = "/usr/share/OVMF";

const START: &str = "== scenario start ==";
const END: &str = "== scenario exit ";

/// The harness's `/init`: mount the usual filesystems, load `modules`,
/// run `/scenario.sh` between markers, power off. Also the `/sbin/init` of
/// test systems that are booted as restored images.
pub fn init_script(kernel_version: &str, modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/bin:/bin:/sbin:/usr/sbin\n\
         mkdir -p /proc /sys /dev /tmp /run /mnt /var/lib\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/{kernel_version}/{m} || echo \"insmod {m} failed\"\n"
        ));
    }
    s.push_str(&format!(
        "echo '{START}'\n\
         sh -e /scenario.sh\n\
         echo \"{END}$?\"\n\
         sync\n\
         poweroff -f\n"
    ));
    s
}

/// Shared libraries of a dynamic executable (and the loader), from ldd.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn which(name: &str) -> PathBuf {
    if name.starts_with('/') {
        return PathBuf::from(name);
    }
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed on the host (scripts/install-deps.sh)")
}

/// The guest's static busybox.
pub fn busybox() -> Vec<u8> {
    let path = repo().join("target/vm/busybox");
    fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `bash scripts/vm-kernel.sh` (scripts/install-deps.sh does)",
            path.display()
        )
    })
}

/// A small bootable "restored system" for boot tests: an ext4 image of
/// `mib` MiB at `path` whose `/sbin/init` runs `scenario` (like the
/// harness's own init, markers and all), with `hostname` in /etc/hostname.
pub fn restored_root_image(path: &Path, mib: u64, hostname: &str, scenario: &str) {
    restored_root_image_with(path, mib, hostname, scenario, None)
}

/// As [`restored_root_image`], with `/boot/vmlinuz-VERSION` and
/// `/boot/initrd.img-VERSION` (the guest kernel and `initrd`: what
/// `activate` looks for) and `/usr/bin/liverestore` when `initrd` is given.
pub fn restored_root_image_with(
    path: &Path,
    mib: u64,
    hostname: &str,
    scenario: &str,
    initrd: Option<&[u8]>,
) {
    let tree = path.with_extension("tree");
    if let Some(initrd) = initrd {
        let kernel = Kernel::get();
        let v = kernel.release();
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::copy(&kernel.vmlinuz, tree.join(format!("boot/vmlinuz-{v}"))).unwrap();
        fs::write(tree.join(format!("boot/initrd.img-{v}")), initrd).unwrap();
        // and liverestore, installed as a user would (for commit/rollback)
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        fs::copy(static_liverestore(), tree.join("usr/bin/liverestore")).unwrap();
    }
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt",
    ] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    let write = |p: &str, data: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::write(tree.join(p), data).unwrap();
        fs::set_permissions(tree.join(p), fs::Permissions::from_mode(mode)).unwrap();
    };
    write("bin/busybox", &busybox(), 0o755);
    // The applets as links: the root is mounted read-only, so init's
    // `busybox --install` cannot make them.
    let list = super::sh(
        repo().join("target/vm/busybox").to_str().unwrap(),
        &["--list"],
    );
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet));
    }
    write("sbin/init", init_script("none", &[]).as_bytes(), 0o755);
    write("scenario.sh", scenario.as_bytes(), 0o755);
    write("etc/hostname", format!("{hostname}\n").as_bytes(), 0o644);
    super::mkfs_ext4_from(&tree, path, mib);
}

/// A bootable "restored system" at `dir/restored-root.ext4` (64 MiB,
/// hostname `restored-system`) whose init runs `scenario`, with its
/// initrd made by [`restored_initrd`] from `modules` and `init_modules`.
pub fn bootable_restored_image(
    dir: &Path,
    scenario: &str,
    modules: &[&str],
    init_modules: &[&str],
) -> PathBuf {
    let initrd = restored_initrd(modules, init_modules);
    let image = dir.join("restored-root.ext4");
    restored_root_image_with(&image, 64, "restored-system", scenario, Some(&initrd));
    image
}

/// What a boot loader starts for a mapped boot: the restored system's
/// initrd (virtio, device-mapper, ext4) with the early-boot initramfs
/// `early` (`liverestore initrd`) appended; the kernel is given
/// `rdinit=/lr/init`.
pub fn mapped_boot_initrd(early: &[u8]) -> Vec<u8> {
    let mut initrd = restored_initrd(
        &[
            "virtio_pci",
            "virtio_blk",
            "dm-mod",
            "crc32c_generic",
            "ext4",
        ],
        &["crc32c_generic", "ext4"],
    );
    liverestore::boot::initrd::append_early_boot(&mut initrd, early);
    initrd
}

/// The initrd a restored system of the guest kernel would have: busybox,
/// util-linux's blkid, the guest kernel's modules `modules` and
/// `init_modules` (with dependencies) and its `modules.dep`, and an
/// `/init` that loads `init_modules`, mounts `root=` (a path, `UUID=` or
/// `PARTUUID=`) and switches to it.
pub fn restored_initrd(modules: &[&str], init_modules: &[&str]) -> Vec<u8> {
    let kernel = Kernel::get();
    let version = kernel.release();
    let mut c = Cpio::new();
    c.file("/bin/busybox", 0o755, &busybox());
    c.binaries(&["blkid"]);
    let all: Vec<&str> = modules.iter().chain(init_modules).copied().collect();
    for m in kernel.module_load_order(&all) {
        c.file(
            &format!("/lib/modules/{version}/{m}"),
            0o644,
            &fs::read(kernel.modules.join(&m)).unwrap(),
        );
    }
    for f in ["modules.dep", "modules.builtin"] {
        if let Ok(data) = fs::read(kernel.modules.join(f)) {
            c.file(&format!("/lib/modules/{version}/{f}"), 0o644, &data);
        }
    }
    let mut init = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mkdir -p /proc /sys /dev /newroot\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n",
    );
    for m in kernel.module_load_order(init_modules) {
        init.push_str(&format!(
            "[ -d /sys/module/$(basename {m} .ko | tr - _) ] || insmod /lib/modules/{version}/{m}\n"
        ));
    }
    init.push_str(
        "root=$(sed -n 's/.*root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
         case \"$root\" in UUID=*) for i in $(seq 50); do r=$(findfs \"$root\" 2>/dev/null) && break; sleep 0.2; done; root=$r;;\n\
         PARTUUID=*) for i in $(seq 50); do r=$(/usr/bin/blkid -c /dev/null -t \"$root\" -o device | head -1); [ -n \"$r\" ] && break; sleep 0.2; done; root=$r;; esac\n\
         for i in $(seq 50); do [ -b \"$root\" ] && break; sleep 0.2; done\n\
         echo \"initrd: root is $root\"\n\
         mount -o ro -t ext4 \"$root\" /newroot || { echo 'initrd: cannot mount root'; poweroff -f; }\n\
         umount /proc /sys /dev\n\
         exec switch_root /newroot /sbin/init\n",
    );
    c.file("/init", 0o755, init.as_bytes());
    as_distributions_ship(c.finish())
}

/// `cpio` packed as distributions ship initrds: an uncompressed archive
/// in front (where early microcode goes), then the main archive
/// compressed with gzip, its length not a multiple of 4 (Debian 12's was
/// 30715354 bytes): what liverestore appends its early-boot archive to
/// must still unpack.
fn as_distributions_ship(cpio: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    let mut front = Cpio::new();
    front.file("/early/liverestore-test", 0o644, b"an early archive\n");
    let mut out = front.finish();
    for name_len in 1..=4 {
        let mut gz = flate2::GzBuilder::new()
            .filename("i".repeat(name_len))
            .write(Vec::new(), flate2::Compression::fast());
        gz.write_all(&cpio).unwrap();
        let gz = gz.finish().unwrap();
        if (out.len() + gz.len()) % 4 == 3 {
            out.extend_from_slice(&gz);
            return out;
        }
    }
    unreachable!("four name lengths cover every length modulo 4")
}

/// A newc cpio archive being built.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
            dirs: Vec::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let b = cpio::NewcBuilder::new(name.trim_start_matches('/'))
            .ino(self.ino)
            .mode(mode)
            .nlink(1);
        let mut w = b.write(&mut self.out, data.len() as u32);
        w.write_all(data).unwrap();
        w.finish().unwrap();
    }

    fn dir_all(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            if !self.dirs.contains(&cur) {
                self.dirs.push(cur.clone());
                let c = cur.clone();
                self.entry(&c, 0o040755, &[]);
            }
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir_all(parent);
        }
        self.entry(path, 0o100000 | mode, data);
    }

    /// Host binaries (found on PATH, or absolute), in /usr/bin, with
    /// their shared libraries at the paths ldd names.
    fn binaries(&mut self, names: &[&str]) {
        let mut libs: Vec<PathBuf> = Vec::new();
        for b in names {
            let path = which(b);
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            self.file(
                &format!("/usr/bin/{name}"),
                0o755,
                &fs::read(&path).unwrap(),
            );
            for l in shared_libraries(&path) {
                if !libs.contains(&l) {
                    libs.push(l);
                }
            }
        }
        for l in &libs {
            // At the path ldd names (the loader's is baked into binaries).
            self.file(&l.to_string_lossy(), 0o755, &fs::read(l).unwrap());
        }
    }

    fn finish(self) -> Vec<u8> {
        cpio::newc::trailer(self.out).unwrap()
    }
}

impl Guest {
    fn initramfs(&self, kernel: &Kernel) -> Vec<u8> {
        let version = kernel.release();
        let mut c = Cpio::new();
        c.file("/bin/busybox", 0o755, &busybox());
        c.file(
            "/usr/bin/liverestore",
            0o755,
            &fs::read(static_liverestore()).unwrap(),
        );
        let order = kernel.module_load_order(&self.modules);
        for m in &order {
            c.file(
                &format!("/lib/modules/{version}/{m}"),
                0o644,
                &fs::read(kernel.modules.join(m)).unwrap(),
            );
        }
        c.binaries(&self.binaries);
        for (path, data) in &self.files {
            c.file(path, 0o755, data);
        }
        c.file("/scenario.sh", 0o755, self.scenario.as_bytes());
        c.file("/init", 0o755, init_script(&version, &order).as_bytes());
        c.finish()
    }

    /// Format the ESP of `disks[0]` (mtools, no kernel support needed) and
    /// put the kernel, the initramfs and a `startup.nsh` in it, which the
    /// firmware's shell runs when no other boot option works.
    fn write_esp(&self, u: &Uefi, kernel: &Kernel, initrd: &Path, append: &str) {
        let img = format!("{}@@{}", self.disks[0].display(), u.esp_offset);
        // Formatted once: a later run of the same disk keeps what the
        // guest wrote there, and gets this run's initramfs.
        let formatted = Command::new("mdir")
            .args(["-i", &img, "::/startup.nsh"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !formatted {
            super::sh(
                "mformat",
                &[
                    "-i",
                    &img,
                    "-F",
                    "-T",
                    &(u.esp_size / 512).to_string(),
                    "-v",
                    "ESP",
                    "::",
                ],
            );
        }
        let nsh = initrd.with_file_name("startup.nsh");
        fs::write(
            &nsh,
            format!("fs0:\\vmlinuz.efi initrd=\\old.img {append}\r\n"),
        )
        .unwrap();
        for (src, dst) in [
            (kernel.vmlinuz.as_path(), "::/vmlinuz.efi"),
            (initrd, "::/old.img"),
            (nsh.as_path(), "::/startup.nsh"),
        ] {
            super::sh("mcopy", &["-o", "-i", &img, src.to_str().unwrap(), dst]);
        }
    }

    /// Make the old system's ext4 and install GRUB on `disks[0]` (see
    /// [`Bios`]), unless a first run did.
    fn install_grub(&self, b: &Bios, kernel: &Kernel, initrd: &Path, append: &str) {
        let (platform, format) = ("i386-pc", "i386-pc");
        let grub_lib = format!("/usr/lib/grub/{platform}");
        let disk = &self.disks[0];
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .unwrap();
        let mut magic = [0u8; 2];
        {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut magic, b.root_offset + 1024 + 0x38)
                .unwrap();
        }
        if magic == [0x53, 0xef] {
            return;
        }
        let work = initrd.with_file_name("bios");
        let tree = work.join("tree");
        let grub = tree.join("boot/grub");
        fs::create_dir_all(grub.join(platform)).unwrap();
        for e in fs::read_dir(&grub_lib).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(".mod") || n.ends_with(".lst") {
                fs::copy(e.path(), grub.join(platform).join(&n)).unwrap();
            }
        }
        fs::copy(&kernel.vmlinuz, tree.join("boot/vmlinuz")).unwrap();
        fs::copy(initrd, tree.join("boot/old.img")).unwrap();
        fs::write(grub.join("grub.cfg"), debian_grub_cfg(append)).unwrap();
        super::sh(
            "grub-editenv",
            &[grub.join("grubenv").to_str().unwrap(), "create"],
        );
        super::sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                // what GRUB 2.06 and the guest's kernel read
                "-O",
                "^metadata_csum_seed,^orphan_file",
                "-E",
                &format!("offset={},nodiscard", b.root_offset),
                "-d",
                tree.to_str().unwrap(),
                disk.to_str().unwrap(),
                &format!("{}k", b.root_size / 1024),
            ],
        );
        let core = work.join("core.img");
        let disk_module = "biosdisk";
        super::sh(
            "grub-mkimage",
            &[
                "-d",
                &grub_lib,
                "-O",
                format,
                "-p",
                &format!("(hd0,gpt{})/boot/grub", b.root_partition),
                "-o",
                core.to_str().unwrap(),
                disk_module,
                "part_gpt",
                "ext2",
            ],
        );
        let core = fs::read(&core).unwrap();
        assert!(core.len() as u64 <= b.root_offset - b.core_offset);
        let core_lba = b.core_offset / 512;
        let boot = fs::read(format!("{grub_lib}/boot.img")).unwrap();
        use std::io::{Seek, SeekFrom};
        // core.img, told where its second sector is (diskboot's block
        // list: the start sector at byte 500 of its first sector)
        f.seek(SeekFrom::Start(b.core_offset)).unwrap();
        f.write_all(&core).unwrap();
        f.seek(SeekFrom::Start(b.core_offset + 500)).unwrap();
        f.write_all(&(core_lba + 1).to_le_bytes()).unwrap();
        // boot.img's code (not the partition table), told where core.img is
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&boot[..440]).unwrap();
        f.seek(SeekFrom::Start(0x5c)).unwrap();
        f.write_all(&core_lba.to_le_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Run, print the scenario's output (shown by `cargo test` on failure)
    /// and assert it exited 0.
    pub fn run_ok(&self, work: &Path) -> GuestRun {
        let run = self.run(work);
        println!("guest ran in {:?}:\n{}", run.elapsed, run.output());
        println!("timeline:");
        for (secs, line) in &run.timeline {
            println!("{secs:7.1} s  {line}");
        }
        run.assert_ok();
        run
    }

    /// Boot, run the scenario, power off. Panics on a QEMU that cannot
    /// start; a scenario that fails or hangs is reported in the result.
    pub fn run(&self, work: &Path) -> GuestRun {
        let kernel = Kernel::get();
        fs::create_dir_all(work).unwrap();
        let initrd = work.join("initrd.cpio");
        let append = match &self.boot {
            Some(b) => {
                fs::write(&initrd, &b.initrd).unwrap();
                format!("console=ttyS0 panic=-1 loglevel=3 {}", b.append)
            }
            None => {
                if self.uefi.as_ref().is_none_or(|u| u.startup) {
                    fs::write(&initrd, self.initramfs(&kernel)).unwrap();
                }
                "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init".to_string()
            }
        };
        if let Some(u) = self.uefi.as_ref().filter(|u| u.startup) {
            self.write_esp(u, &kernel, &initrd, &append);
        }
        if let Some(b) = &self.bios {
            self.install_grub(b, &kernel, &initrd, &append);
        }
        let console = work.join("console.log");
        let _ = fs::remove_file(&console);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-display", "none"])
            .args(["-accel", "tcg", "-cpu", self.cpu, "-smp", "1"])
            .args(["-m", &self.memory_mib.to_string()]);
        if let Some(u) = &self.uefi {
            let vars = u.vars.clone().unwrap_or_else(|| work.join("OVMF_VARS.fd"));
            let (code, template) = match u.secure_boot {
                false => ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
                true => ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"),
            };
            if u.vars.is_none() || !vars.exists() {
                fs::copy(format!("{OVMF}/{template}"), &vars).unwrap();
            }
            if u.secure_boot {
                // the Secure Boot build keeps its variables behind SMM
                cmd.args(["-machine", "q35,smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file={OVMF}/{code}"
                ))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        } else if self.bios.is_some() {
            // SeaBIOS, QEMU's default firmware, boots disks[0]
        } else {
            cmd.arg("-no-reboot")
                .arg("-kernel")
                .arg(&kernel.vmlinuz)
                .arg("-initrd")
                .arg(&initrd)
                .arg("-append")
                .arg(&append);
        }
        // The UEFI shell waits 5 s before it runs startup.nsh unless a key
        // is pressed: the serial port gets an input (a FIFO, `serial.in`;
        // output to `serial.out`, the console log) and the harness presses
        // a key each time the shell starts counting down.
        let mut keys = None;
        if self.uefi.is_some() {
            let (fifo, out) = (work.join("serial.in"), work.join("serial.out"));
            let _ = fs::remove_file(&fifo);
            super::sh("mkfifo", &[fifo.to_str().unwrap()]);
            fs::write(&out, b"").unwrap();
            std::os::unix::fs::symlink("serial.out", &console).unwrap();
            // read and write: opening a FIFO so never waits for the other end
            let input = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .unwrap();
            keys = Some((input, 0usize));
            cmd.arg("-chardev")
                .arg(format!(
                    "pipe,id=serial0,path={}",
                    work.join("serial").display()
                ))
                .args(["-serial", "chardev:serial0"]);
        } else {
            cmd.arg("-serial")
                .arg(format!("file:{}", console.display()));
        }
        cmd.args(["-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.network {
            // An e1000 without its option ROM: no firmware here drives it,
            // so none tries to boot from the network first (OVMF tries
            // PXE and HTTP boot over IPv4 and IPv6 on a virtio-net card, a
            // minute or more before the disk).
            let forward = self
                .ssh_port
                .map_or(String::new(), |p| format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
            cmd.args([
                "-netdev",
                &format!("user,id=net0{forward}"),
                "-device",
                "e1000,netdev=net0,romfile=",
            ]);
        }
        for d in &self.disks {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                d.display()
            ));
        }
        // A machine that boots through its firmware is reset by a reboot,
        // the trial's watchdog or the firmware itself. QEMU's emulation
        // after an in-process reset runs the firmware and GRUB 3-10 times
        // slower than after a cold start (measured: OVMF 3 s cold, 9-27 s
        // after a reset; GRUB loading a 29 MB initrd 0.5 s against 6-19 s).
        // So a reset ends QEMU (`-no-reboot`) and the harness starts it
        // again on the same disks and firmware variables, as a power cycle
        // would; only a guest that powers off ends the run.
        let firmware_boot = self.uefi.is_some() || self.bios.is_some();
        if firmware_boot {
            cmd.arg("-no-reboot");
        }
        let start = Instant::now();
        let mut timed_out = false;
        let mut timeline = Vec::new();
        // the console of the machine's earlier boots (QEMU starts each
        // launch's file anew)
        let mut earlier = Vec::new();
        let stderr = loop {
            let mut child = ChildGuard::from(cmd.spawn().expect("qemu-system-x86_64"));
            // where this launch's console has been read to; its UEFI
            // shell countdowns seen so far
            let mut scanned = 0;
            if let Some((_, pressed)) = &mut keys {
                *pressed = 0;
            }
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if start.elapsed() > self.timeout {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
                let text = fs::read(&console).unwrap_or_default();
                scanned = milestones(&text, scanned, start.elapsed().as_secs_f64(), &mut timeline);
                if let Some((input, pressed)) = &mut keys {
                    let shells = text
                        .windows(COUNTDOWN.len())
                        .filter(|w| *w == COUNTDOWN)
                        .count();
                    if shells > *pressed {
                        input.write_all(b" ").unwrap();
                        *pressed = shells;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let out = child.wait_with_output().unwrap();
            let this = fs::read(&console).unwrap_or_default();
            milestones(&this, scanned, start.elapsed().as_secs_f64(), &mut timeline);
            let powered_off = this
                .windows(POWER_DOWN.len())
                .any(|w| w == POWER_DOWN.as_bytes());
            earlier.extend_from_slice(&this);
            if timed_out || !firmware_boot || powered_off || !out.status.success() {
                break out.stderr;
            }
            // reset: the next boot's console starts empty (through the
            // symlink for UEFI: `serial.out`)
            fs::write(&console, b"").unwrap();
            timeline.push((
                start.elapsed().as_secs_f64(),
                "(reset: QEMU started again)".into(),
            ));
        };
        let text = String::from_utf8_lossy(&earlier).into_owned();
        assert!(
            !text.is_empty() || timed_out,
            "QEMU printed nothing: {}",
            String::from_utf8_lossy(&stderr)
        );
        let status = text
            .rfind(END)
            .and_then(|i| text[i + END.len()..].split_whitespace().next())
            .and_then(|s| s.parse().ok());
        let elapsed = start.elapsed();
        // Straight to the process's stderr, past the test harness's
        // capture: where the suite's time goes, in every CI log.
        let _ = writeln!(
            std::io::stderr(),
            "[guest] {} ran {:.1} s",
            std::thread::current().name().unwrap_or("?"),
            elapsed.as_secs_f64()
        );
        GuestRun {
            console: text,
            status,
            elapsed,
            timeline,
        }
    }
}
