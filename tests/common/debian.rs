//! Real Debian 12 systems for the guest tests: root trees built by
//! `scripts/debian-systems.sh` (debootstrap from Debian's packages:
//! systemd, udev, dmsetup, `linux-image-amd64`, initramfs-tools or dracut,
//! GRUB for UEFI), cached under `target/distros`; made into ext4 images
//! here without mounting anything (`mkfs.ext4 -d`, then `debugfs` writes
//! the per-test files: the scenario, this build's liverestore, the
//! hostname and a real fstab).
//!
//! The old system's disk is made once per tree build: GPT, an ESP and the
//! ext4 root; a first guest run (the harness's own initramfs under OVMF)
//! chroots into it and runs `grub-install` and `update-grub` as Debian's
//! installer does, so the firmware's boot entry, `grubx64.efi` and
//! `grub.cfg` are GRUB's own. Later runs boot that disk as it is.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::vm::{EXT4, Guest, Uefi, VFAT, VIRTIO_BLK};
use super::{MIB, gpt_disk_file, sh};

/// The ESP and root of the old system's disk (MiB).
pub const ESP_MIB: u64 = 256;
pub const ROOT_MIB: u64 = 3072;
/// Where the old system's root starts on its disk.
pub const ROOT_OFFSET: u64 = (1 + ESP_MIB) * MIB;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the built trees (`initramfs-tools/`, `dracut/`),
/// building them on first use (one build at a time, across processes too).
pub fn systems() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    DIR.get_or_init(|| {
        let dir = repo().join("target/distros");
        let started = std::time::Instant::now();
        sh(
            "bash",
            &[
                repo().join("scripts/debian-systems.sh").to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        println!(
            "Debian systems ready in {:?} ({})",
            started.elapsed(),
            dir.display()
        );
        dir
    })
    .clone()
}

/// Files written into an ext4 filesystem (image path, byte offset of the
/// filesystem) with debugfs: `(guest path, contents, mode)`. Existing
/// files are replaced.
pub fn write_files(image: &Path, offset: u64, files: &[(&str, &[u8], u32)]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmds = String::new();
    for (i, (path, data, mode)) in files.iter().enumerate() {
        let src = tmp.path().join(i.to_string());
        fs::write(&src, data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&src, fs::Permissions::from_mode(*mode)).unwrap();
        let (parent, _) = path.rsplit_once('/').unwrap();
        cmds.push_str(&format!(
            "mkdir {parent}\nrm {path}\nwrite {} {path}\n",
            src.display()
        ));
    }
    let cmdfile = tmp.path().join("cmds");
    fs::write(&cmdfile, cmds).unwrap();
    let target = format!("{}?offset={offset}", image.display());
    // debugfs reports a missing file for `rm` and an existing directory
    // for `mkdir` and goes on; what counts is that every file is there
    sh("debugfs", &["-w", "-f", cmdfile.to_str().unwrap(), &target]);
    for (path, data, _) in files {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {path}"), &target])
            .output()
            .unwrap();
        assert_eq!(&out.stdout[..], *data, "{path} written into {target}");
    }
}

/// Symbolic links made in an ext4 filesystem (image path, byte offset of
/// the filesystem) with debugfs: `(link, target)`; `systemctl enable`'s
/// links, for one.
pub fn write_symlinks(image: &Path, offset: u64, links: &[(&str, &str)]) {
    let target = format!("{}?offset={offset}", image.display());
    for (link, to) in links {
        sh(
            "debugfs",
            &["-w", "-R", &format!("symlink {link} {to}"), &target],
        );
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat {link}"), &target])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("Fast link dest: \"{to}\"")),
            "{link} -> {to} in {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A restored system's image: an ext4 filesystem of `mib` MiB at `out`
/// holding `tree` (`initramfs-tools` or `dracut` under [`systems`]) with
/// `hostname`, an fstab naming its root by UUID as Debian's installer
/// writes it, liverestore in /usr/local/bin, and `scenario` as
/// `/usr/local/sbin/lr-scenario` (run by `lr-scenario.service` once the
/// boot reaches multi-user.target).
pub fn restored_image(tree: &str, out: &Path, mib: u64, hostname: &str, scenario: &str) {
    let uuid = ext4_of_tree(&systems().join(tree), out, 0, mib);
    let fstab = format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n");
    write_common_files(out, 0, hostname, &fstab, scenario);
}

/// A restored system as a whole-disk image at `out`: GPT, an ESP of
/// `esp_mib` MiB (FAT, holding `MARKER`) and the root of `root_mib` MiB
/// as [`restored_image`] makes it, whose fstab also mounts the ESP at
/// /boot/efi by its UUID, as Debian's installer writes it.
pub fn restored_disk_image(
    tree: &str,
    out: &Path,
    (esp_mib, root_mib): (u64, u64),
    hostname: &str,
    scenario: &str,
) {
    gpt_disk_file(
        out,
        1 + esp_mib + root_mib + 1,
        &[(1, esp_mib, "ef00"), (1 + esp_mib, root_mib, "8300")],
    );
    let esp = format!("{}@@{}", out.display(), MIB);
    sh(
        "mformat",
        &[
            "-i",
            &esp,
            "-F",
            "-N",
            "1A2B3C4D",
            "-T",
            &(esp_mib * 2048).to_string(),
            "-v",
            "ESP",
            "::",
        ],
    );
    let marker = out.with_extension("marker");
    fs::write(&marker, format!("the ESP of {hostname}\n")).unwrap();
    sh(
        "mcopy",
        &["-i", &esp, marker.to_str().unwrap(), "::/MARKER"],
    );
    let root_offset = (1 + esp_mib) * MIB;
    let uuid = ext4_of_tree(&systems().join(tree), out, root_offset, root_mib);
    let fstab = format!(
        "UUID={uuid} / ext4 errors=remount-ro 0 1\nUUID=1A2B-3C4D /boot/efi vfat umask=0077 0 1\n"
    );
    let target = format!("{}?offset={root_offset}", out.display());
    sh("debugfs", &["-w", "-R", "mkdir /boot/efi", &target]);
    write_common_files(out, root_offset, hostname, &fstab, scenario);
}

/// An ext4 filesystem of `mib` MiB holding `tree`, made at byte `offset`
/// of the file `out`; returns its UUID.
fn ext4_of_tree(tree: &Path, out: &Path, offset: u64, mib: u64) -> String {
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={offset},nodiscard"),
            "-d",
            tree.to_str().unwrap(),
            out.to_str().unwrap(),
            &format!("{mib}M"),
        ],
    );
    let offset = offset.to_string();
    let args = [
        "-p",
        "-O",
        &offset,
        "-o",
        "value",
        "-s",
        "UUID",
        out.to_str().unwrap(),
    ];
    sh("blkid", &args).trim().to_string()
}

/// The per-test files of a restored system: hostname, fstab, this build's
/// liverestore and the scenario.
fn write_common_files(image: &Path, offset: u64, hostname: &str, fstab: &str, scenario: &str) {
    let bin = fs::read(super::vm::static_liverestore()).unwrap();
    write_files(
        image,
        offset,
        &[
            ("/etc/hostname", format!("{hostname}\n").as_bytes(), 0o644),
            ("/etc/fstab", fstab.as_bytes(), 0o644),
            ("/usr/local/bin/liverestore", &bin, 0o755),
            ("/usr/local/sbin/lr-scenario", scenario.as_bytes(), 0o755),
        ],
    );
}

/// What the old system's first run does: chrooted into its ext4, with its
/// ESP at /boot/efi, install GRUB as Debian's installer does, write its
/// fstab (root and ESP by UUID), and take away the harness's boot files.
const GRUB_SETUP: &str = r#"
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
mkdir -p /t
mount -t ext4 /dev/vda2 /t
mkdir -p /t/boot/efi
mount -t vfat /dev/vda1 /t/boot/efi
uuid() { blkid -o value -s UUID "$1"; }
printf 'UUID=%s / ext4 errors=remount-ro 0 1\nUUID=%s /boot/efi vfat umask=0077 0 1\n' \
  "$(uuid /dev/vda2)" "$(uuid /dev/vda1)" > /t/etc/fstab
cat /t/etc/fstab
! grep -q 'UUID= ' /t/etc/fstab
for d in dev proc sys sys/firmware/efi/efivars; do mount --bind /$d /t/$d; done
chroot /t grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --uefi-secure-boot
chroot /t update-grub
# the removable path too, for firmware with no entry of its own (the
# Secure Boot guest's fresh variables): the signed shim, the signed GRUB
# and its stub configuration, as grub-install --force-extra-removable
# puts them
mkdir -p /t/boot/efi/EFI/BOOT
cp /t/boot/efi/EFI/debian/shimx64.efi /t/boot/efi/EFI/BOOT/BOOTX64.EFI
cp /t/boot/efi/EFI/debian/grubx64.efi /t/boot/efi/EFI/debian/grub.cfg /t/boot/efi/EFI/BOOT/
rm -f /t/boot/efi/vmlinuz.efi /t/boot/efi/old.img /t/boot/efi/startup.nsh
for d in sys/firmware/efi/efivars sys proc dev boot/efi; do umount /t/$d; done
umount /t
echo "LR grub_installed=yes"
"#;

/// A copy in `work` of the old system's disk (GPT: the ESP, the
/// `initramfs-tools` tree's ext4 with GRUB installed by itself) and its
/// firmware variables (GRUB's boot entry first in BootOrder), with this
/// build's liverestore in /usr/local/bin and `scenario` as
/// `/usr/local/sbin/lr-scenario`. Returns (disk, variables).
pub fn old_system_disk(work: &Path, scenario: &str) -> (PathBuf, PathBuf) {
    let cached = cached_old_system();
    fs::create_dir_all(work).unwrap();
    let (disk, vars) = (work.join("old-disk.img"), work.join("old-vars.fd"));
    for (from, to) in [(&cached.0, &disk), (&cached.1, &vars)] {
        sh(
            "cp",
            &[
                "--sparse=always",
                from.to_str().unwrap(),
                to.to_str().unwrap(),
            ],
        );
    }
    let bin = fs::read(super::vm::static_liverestore()).unwrap();
    write_files(
        &disk,
        ROOT_OFFSET,
        &[
            ("/usr/local/bin/liverestore", &bin, 0o755),
            ("/usr/local/sbin/lr-scenario", scenario.as_bytes(), 0o755),
        ],
    );
    (disk, vars)
}

/// `disk` (a copy from [`old_system_disk`]) made `mib` MiB larger, the
/// new space unallocated after its last partition (the backup GPT moved
/// to the new end), for stagings made `--unallocated --contiguous`.
pub fn add_unallocated(disk: &Path, mib: u64) {
    let len = fs::metadata(disk).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .unwrap()
        .set_len(len + mib * MIB)
        .unwrap();
    sh("sgdisk", &["-e", disk.to_str().unwrap()]);
}

/// The initrd `name` (in `/boot`) of the ext4 image at `image` replaced by
/// `initrd`.
pub fn replace_initrd(image: &Path, name: &str, initrd: &[u8]) {
    write_files(image, 0, &[(&format!("/boot/{name}"), initrd, 0o644)]);
}

/// The old system's disk and variables after GRUB's installation, made
/// once per tree build (`target/distros/old-system/`), by one test at a
/// time across processes too (scripts/test.sh runs the guest tests in
/// two): `old-system.lock` is held while it is made.
fn cached_old_system() -> (PathBuf, PathBuf) {
    static DONE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    DONE.get_or_init(|| {
        let systems = systems();
        let lock = fs::File::create(systems.join("old-system.lock")).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let dir = systems.join("old-system");
        let (disk, vars) = (dir.join("disk.img"), dir.join("vars.fd"));
        if disk.exists() && vars.exists() {
            return (disk, vars);
        }
        let work = systems.join("old-system.new");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        let new_disk = gpt_disk_file(
            &work.join("disk.img"),
            1 + ESP_MIB + ROOT_MIB + 1,
            &[(1, ESP_MIB, "ef00"), (1 + ESP_MIB, ROOT_MIB, "8300")],
        );
        ext4_of_tree(
            &systems.join("initramfs-tools"),
            &new_disk,
            ROOT_OFFSET,
            ROOT_MIB,
        );
        write_files(
            &new_disk,
            ROOT_OFFSET,
            &[("/etc/hostname", b"old-system\n", 0o644)],
        );
        let new_vars = work.join("vars.fd");
        let run = Guest {
            modules: [VIRTIO_BLK, EXT4, VFAT, &["efivarfs"]].concat(),
            binaries: vec!["blkid"],
            disks: vec![new_disk.clone()],
            scenario: GRUB_SETUP.to_string(),
            timeout: Duration::from_secs(300),
            uefi: Some(Uefi {
                esp_offset: MIB,
                esp_size: ESP_MIB * MIB,
                vars: Some(new_vars.clone()),
                startup: true,
                secure_boot: false,
            }),
            ..Guest::default()
        }
        .run_ok(&work.join("vm"));
        assert_eq!(run.get("grub_installed"), "yes");
        fs::create_dir_all(&dir).unwrap();
        fs::rename(&new_vars, &vars).unwrap();
        fs::rename(&new_disk, &disk).unwrap();
        let _ = fs::remove_dir_all(&work);
        (disk, vars)
    })
    .clone()
}

/// A guest that boots the old system's disk `disks[0]` (from
/// [`old_system_disk`]) through the firmware, its boot entry and GRUB as
/// they are.
pub fn old_system_guest(disks: Vec<PathBuf>, vars: PathBuf, timeout: Duration) -> Guest {
    Guest {
        disks,
        memory_mib: 1024,
        timeout,
        uefi: Some(Uefi {
            esp_offset: MIB,
            esp_size: ESP_MIB * MIB,
            vars: Some(vars),
            startup: false,
            secure_boot: false,
        }),
        ..Guest::default()
    }
}

/// The same old system under Secure Boot: Debian's OVMF with Microsoft's
/// keys, fresh variables (no boot entry of its own: the firmware starts
/// the disk's `\EFI\BOOT\BOOTX64.EFI`, Debian's signed shim, which
/// starts the signed GRUB, which has shim check the kernel).
pub fn old_system_guest_secure_boot(disks: Vec<PathBuf>, work: &Path, timeout: Duration) -> Guest {
    let mut g = old_system_guest(disks, work.join("sb-vars.fd"), timeout);
    if let Some(u) = g.uefi.as_mut() {
        u.secure_boot = true;
    }
    g
}
