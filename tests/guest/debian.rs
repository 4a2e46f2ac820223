//! Real Debian 12 systems (debootstrap-built: systemd, udev,
//! `linux-image-amd64`; `tests/common/debian.rs`; the initramfs-tools
//! system's initrd zstd with an uncompressed archive in front, the dracut
//! system's xz; an uncompressed one made from the first for the Secure
//! Boot run, `tests/guest/debian_secure_boot.rs`) restored and trial-booted under OVMF, the old system booting
//! through the GRUB that its own `grub-install` and `update-grub` set up.
//!
//! Mapped, then natively through the firmware, in one run of seven boots:
//! (1) the old system stages a system whose initrd initramfs-tools made
//! and activates it for the firmware (`Boot####`, `BootNext`) with a
//! 60 s trial deadline and `--reboot` (through systemd); (2) the restored
//! system reaches multi-user.target from the map, then drops to the
//! emergency shell, and nobody commits: the watchdog resets the machine;
//! (3) the old system again: the trial ended; `verify` accepts the
//! changes the trial made (its early-boot step noted the boot) and
//! re-hashes; `discard` cleans up, it stages a whole-disk system (its ESP
//! mounted by UUID in its fstab, its initrd made by dracut), puts the
//! auto-commit in it (`customize --auto-commit`) and activates it through
//! GRUB (`next_entry`); (4) once its health check passes, the restored
//! system's auto-commit unit commits (and removes itself), which stops
//! the watchdog (the kernel's sysfs says so); it rolls back from
//! its side; (5) the old system removes what was left, makes a volume
//! group on its third partition (LVM: Debian's lvm2 is in both trees),
//! stages a third system (`nat`, lvm2 in its initrd) whole into a new
//! logical volume of it (`--lvm-free`) and activates it for the firmware
//! natively (a `Boot####` straight to its kernel, `root=` on the volume,
//! which its own initrd's LVM activates; nothing added to the partition
//! table); (6) it runs from the volume, commits (first in `BootOrder`)
//! and rolls back from
//! its side; (7) the old system's `discard` takes
//! back what that activation left and removes the volume: nothing on the
//! ESP, in the firmware's boot entries, in the volume group or in the
//! state directory. (Natively from a partition added over unallocated
//! space, and GRUB starting a committed system by default:
//! `tests/guest/debian_secure_boot.rs`; mapped, `tests/guest/grub.rs`.)
//!
//! With `LIVERESTORE_SLOW_TESTS=1`, Ansible drives the old system over
//! SSH in boots 1 and 3 (`reimaged_by_ansible`: the collection's
//! `reimage.yml`, the real reboots included): `deb`'s hung trial is a
//! host that never comes back (the play reports it after its reboot
//! timeout; the watchdog brings the machine back), `nat` is staged from
//! HTTP into the volume, rebooted into, committed by the play. (The trees
//! then have python3, sshd and D-Bus: 2-3 minutes more for the other
//! Debian runs, so not in every suite.)
//!
//! Natively under Secure Boot, in another run of six boots: see
//! `tests/guest/debian_secure_boot.rs`. Modules of their own, named so
//! that the test order starts the long runs first, beside each other, and
//! the short guests fill in after them (the suite's wall time).
//!
//! Every boot reports systemd's state, its failed units, its root device
//! and whether udev made the root's `/dev/disk/by-uuid` link. The old
//! system's first boot also reads liverestore's entries in its journal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::ansible::{Ansible, run, text};
use crate::common::debian::{
    ROOT_OFFSET, add_unallocated, old_system_disk, old_system_guest, replace_initrd,
    restored_disk_image, restored_image, systems, write_files, write_symlinks,
};
use crate::common::goosebit::free_port;
use crate::common::http::{Faults, serve};
use crate::common::vm::{Guest, GuestRun};
use crate::common::*;

/// What every boot of every system here reports first: systemd's state
/// once the boot is over (`is-system-running --wait`), the failed units,
/// the root device, the seconds since the kernel started, and what
/// `liverestore status` says boots next. A failing command ends the run
/// (the scenario's exit status, then power off).
pub(crate) const REPORT: &str = r#"#!/bin/sh
[ "$(hostname)" = old-system ] && [ ! -e /var/lib/lr-boots ] && echo "== scenario start =="
trap 'rc=$?; if [ $rc != 0 ]; then echo "== scenario exit $rc"; systemctl poweroff; fi' EXIT
set -e
state=$(systemctl is-system-running --wait || true)
n=$(( $(cat /var/lib/lr-boots 2>/dev/null || echo 0) + 1 ))
echo $n > /var/lib/lr-boots
sync
host=$(hostname)
next() { liverestore --json status | sed -n 's/.*"next_boot":"\([^"]*\)".*/\1/p'; }
echo "LR ${host}_boot_$n=$state"
echo "LR ${host}_failed_$n=$(systemctl --failed --no-legend --plain | awk '{ print $1 }' | xargs)"
echo "LR ${host}_root_$n=$(findmnt -n -o SOURCE /)"
echo "LR ${host}_by_uuid_$n=$(ls /dev/disk/by-uuid | grep -c "^$(findmnt -n -o UUID /)$" || true)"
echo "LR ${host}_esp_$n=$(cat /boot/efi/MARKER 2>/dev/null || true)"
echo "LR ${host}_uptime_$n=$(cut -d' ' -f1 /proc/uptime)"
echo "LR ${host}_next_$n=$(next)"
"#;

const OLD_SYSTEM: &str = r#"
# Driven by Ansible (/etc/lr-ansible: LIVERESTORE_SLOW_TESTS=1), from
# here the test's ansible-playbook (reimage.yml) drives this machine over
# SSH: its network (systemd-networkd, DHCP on QEMU's user network) and
# sshd. The playbook reboots the machine, which ends this scenario:
# quietly. Otherwise the scenario goes on by itself.
ssh_ready() {
  [ -e /etc/lr-ansible ] || return 0
  systemctl start systemd-networkd ssh
  /lib/systemd/systemd-networkd-wait-online --any --timeout=90
  echo "LR ssh_ready_$1=1"
  trap - EXIT
  exec sleep infinity
}
case $n in
1)
  liverestore stage /dev/vdb --name deb --dir /
  # the journal has it, with structured fields (and a failure too)
  liverestore verify nosuch 2>/dev/null || true
  journalctl --sync
  j() { journalctl -o export SYSLOG_IDENTIFIER=liverestore "$@"; }
  echo "LR journal_stage_ok=$(j MESSAGE_ID=0a84ea21d2d349469243d591d815d555 LIVERESTORE_NAME=deb LIVERESTORE_OPERATION=stage | grep -c '^LIVERESTORE_EXIT_CODE=0$' || true)"
  echo "LR journal_stage_100=$(j MESSAGE_ID=7ab0cfd737694f2ebc2631f7cd83ddbb LIVERESTORE_NAME=deb | grep -c '^LIVERESTORE_PERCENT=100$' || true)"
  echo "LR journal_tenths=$(j MESSAGE_ID=7ab0cfd737694f2ebc2631f7cd83ddbb LIVERESTORE_NAME=deb | grep -c '^LIVERESTORE_PERCENT=' || true)"
  echo "LR journal_failed=$(j MESSAGE_ID=3692d566236846b1b8bb62f40753f472 LIVERESTORE_NAME=nosuch LIVERESTORE_OPERATION=verify | grep -c '^LIVERESTORE_EXIT_CODE=17$' || true)"
  echo "LR report=old system ($state): staged 'deb' (initramfs-tools), activating it for the firmware"
  ssh_ready 1
  liverestore activate deb --trial-deadline 60s --reboot
  ;;
2)
  echo "LR trial_ended_2=$(liverestore --json status | grep -o '"trial_ended":[a-z]*' | cut -d: -f2)"
  # the trial mounted deb read-write: its own changes, noted at its boot,
  # are accepted (no re-stage); a second verify finds the new baseline
  liverestore --json verify deb > /tmp/verify.json || true
  echo "LR deb_rehashed=$(grep -c '"rehashed":true' /tmp/verify.json || true)"
  echo "LR deb_boots=$(grep -o '"boots":[0-9]*' /tmp/verify.json | cut -d: -f2)"
  echo "LR deb_verified_again=$(liverestore verify deb | grep -c 'chunks match' || true)"
  liverestore discard deb
  liverestore stage /dev/vdc --name rh --dir /
  # commits itself once the scenario says so (a health check)
  liverestore customize rh-p2 --auto-commit --health 'test -e /run/lr-ready' --commit-within 60s
  echo "LR report=old system ($state, nobody committed): 'deb' re-hashed after its trial and discarded, staged 'rh' (dracut; a whole disk: ESP and root) with auto-commit, activating it through GRUB"
  liverestore activate rh --loader grub --trial-deadline 60s --reboot
  ;;
3)
  liverestore rollback
  liverestore discard rh
  echo "LR grub_left=$(ls /boot/grub | grep -c custom.cfg || true)"
  echo "LR files_left=$(ls /boot/liverestore 2>/dev/null | wc -l)"
  echo "LR esp_left=$(ls /boot/efi | grep -c liverestore || true)"
  # a volume group on the third partition, whose free extents take nat
  pvcreate -q /dev/vda3
  vgcreate -q vg /dev/vda3
  echo "LR report=old system ($state): rolled back what was left, discarded 'rh', made a volume group; staging 'nat' whole into a new volume (--lvm-free), activating it natively from the volume for the firmware"
  ssh_ready 3
  liverestore stage /dev/vdd --name nat --dir / --lvm-free vg
  liverestore --json activate nat --loader uefi --trial-deadline 60s > /tmp/activate.json
  echo "LR native_volume=$(grep -o '"native_volume":{[^}]*}' /tmp/activate.json)"
  systemctl reboot
  ;;
4)
  # nat committed and rolled back from its side: discard first takes
  # back what the activation left (the boot entry, the ESP files), says
  # so, then discards, its volume with it
  echo "LR volume_before=$(lvs --noheadings -o lv_name,lv_tags vg | xargs)"
  liverestore discard nat > /tmp/discard.out 2>&1
  cat /tmp/discard.out
  echo "LR took_back=$(grep -c "activation of 'nat' is over" /tmp/discard.out || true)"
  echo "LR volume_left=$(lvs --noheadings -o lv_name vg | grep -c lr-nat || true)"
  echo "LR partitions_4=$(ls /sys/block/vda | grep -c '^vda[0-9]')"
  echo "LR native_esp_left=$(ls /boot/efi | grep -c liverestore || true)"
  echo "LR entries_left=$(efibootmgr | grep -c liverestore || true)"
  echo "LR records_left=$(ls /var/lib/liverestore/images | wc -l)"
  echo "LR activation_left=$(ls /var/lib/liverestore | grep -c activation || true)"
  echo "LR report=old system ($state): took back what the rolled-back activation of 'nat' left, discarded it and its volume"
  echo "== scenario exit 0"
  systemctl poweroff
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
case $host/$n in
nat/1)
  echo "LR nat_cmdline=$(cat /proc/cmdline)"
  if [ -e /etc/lr-ansible ]; then
    # its own network (networkd, enabled in the image) and root's key:
    # the playbook reaches it again, commits it; until it has seen it
    # run committed (the test says so)
    systemctl start ssh
    echo "LR nat_ssh_ready=1"
    i=0; while [ ! -e /run/lr-playbook-done ] && [ $i -lt 900 ]; do sleep 1; i=$((i+1)); done
    echo "LR nat_playbook_done=$(ls /run/lr-playbook-done 2>/dev/null | wc -l)"
  else
    liverestore commit
  fi
  echo "LR nat_next_after_commit=$(next)"
  liverestore rollback
  echo "LR nat_next_after_rollback=$(next)"
  echo "LR report=restored 'nat' ($state) on $(findmnt -n -o SOURCE /), a trial through the firmware: committed, then rolled back from its side"
  systemctl reboot
  ;;
deb/1)
  # a trial that hangs: the emergency shell, nobody at the console; the
  # watchdog armed by the early-boot step resets the machine
  echo "LR report=restored 'deb' ($state) on $(findmnt -n -o SOURCE /), a trial: it drops to the emergency shell, nobody commits"
  systemctl --no-block isolate emergency.target
  ;;
rh/1)
  # the kernel's own word on the watchdog the early-boot step armed
  wd() { echo "$(cat /sys/class/watchdog/watchdog0/identity):$(cat /sys/class/watchdog/watchdog0/state)"; }
  echo "LR rh_watchdog_armed=$(wd)"
  echo "LR rh_deadline_left=$(liverestore --json status | grep -o '"deadline_left_secs":[0-9]*' | cut -d: -f2)"
  liverestore status | grep deadline
  # healthy now: the auto-commit unit commits and removes itself
  touch /run/lr-ready
  i=0; while [ "$(next)" != "restored system (default)" ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
  while systemctl -q is-active liverestore-auto-commit; do sleep 1; done
  echo "LR rh_next_after_commit=$(next)"
  echo "LR rh_deadline_left_after_commit=$(liverestore --json status | grep -c deadline_left_secs || true)"
  echo "LR rh_deadline_off=$(journalctl -b -u liverestore-auto-commit -o cat | grep -c "deadline is off" || true)"
  echo "LR rh_auto_commit_passed=$(journalctl -b -u liverestore-auto-commit -o cat | grep -c "^healthy (" || true)"
  echo "LR rh_auto_commit_left=$(ls /etc/systemd/system /etc/systemd/system/multi-user.target.wants /usr/local/lib | grep -c liverestore || true)"
  # the commit stopped it: nothing resets the machine now (a trial that
  # nobody commits is reset: deb above)
  echo "LR rh_watchdog_after_commit=$(wd)"
  liverestore rollback
  echo "LR rh_next_after_rollback=$(next)"
  echo "LR report=restored 'rh' ($state) on $(findmnt -n -o SOURCE /): committed by its auto-commit unit once healthy, which stopped the watchdog; rolled back from its side"
  systemctl reboot
  ;;
esac
"#;

/// The first file of the Debian `tree`'s /boot whose name starts with
/// `prefix` (`vmlinuz-`, `initrd.img-`): its name and bytes.
fn boot_file_named(tree: &str, prefix: &str) -> (String, Vec<u8>) {
    let boot = systems().join(tree).join("boot");
    let name = std::fs::read_dir(&boot)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(prefix))
        .unwrap();
    let bytes = std::fs::read(boot.join(&name)).unwrap();
    (name, bytes)
}

/// As [`boot_file_named`], the bytes only.
pub(crate) fn boot_file(tree: &str, prefix: &str) -> Vec<u8> {
    boot_file_named(tree, prefix).1
}

/// The initramfs-tools system's initrd as it made it: its name, the
/// uncompressed archive in front (with the zeros after it) and the
/// zstd-compressed main archive.
fn initramfs_tools_initrd() -> (String, Vec<u8>, Vec<u8>) {
    let (name, it) = boot_file_named("initramfs-tools", "initrd.img-");
    assert!(it.starts_with(b"070701"), "an uncompressed archive first");
    let trailer = it.windows(10).position(|w| w == b"TRAILER!!!").unwrap();
    let main = trailer + it[trailer..].iter().position(|&b| b == 0).unwrap();
    let main = main + it[main..].iter().position(|&b| b != 0).unwrap();
    assert_eq!(it[main..main + 4], [0x28, 0xb5, 0x2f, 0xfd], "then zstd");
    (name, it[..main].to_vec(), it[main..].to_vec())
}

/// `data` through `program args` (stdin to stdout).
fn filter(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{program} {args:?}");
    out.stdout
}

/// The initramfs-tools system's initrd with its main archive
/// decompressed (the archive in front kept), in `image`; returns its size.
pub(crate) fn uncompressed_initrd(image: &std::path::Path) -> usize {
    let (name, early, zstd) = initramfs_tools_initrd();
    let main = filter("zstd", &["-dc"], &zstd);
    assert_eq!(
        liverestore::boot::initrd::initrd_format(&main),
        Some("cpio")
    );
    let initrd = [early, main].concat();
    replace_initrd(image, &name, &initrd);
    initrd.len()
}

/// The initramfs-tools system as an ext4 image of `mib` MiB with host
/// name `name`, `dir/NAME.ext4`, with the restored systems' `scenario`.
pub(crate) fn initramfs_tools_image(
    dir: &std::path::Path,
    name: &str,
    mib: u64,
    scenario: &str,
) -> std::path::PathBuf {
    let image = dir.join(format!("{name}.ext4"));
    restored_image(
        "initramfs-tools",
        &image,
        mib,
        name,
        &format!("{REPORT}{scenario}"),
    );
    image
}

/// systemd-networkd's configuration on the old system: DHCP on QEMU's
/// user network (the guest is 10.0.2.15, this machine 10.0.2.2).
const NETWORK: &str = "[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n";

/// Run `guest`, the old system on `disk`, which Ansible drives over SSH
/// twice: each time the old system says `ssh_ready_N`, the test's
/// ansible-playbook runs the collection's `reimage.yml` against it (QEMU
/// forwards a port of this machine's 127.0.0.1 to its port 22).
/// - Boot 1: `deb`, which the scenario staged from /dev/vdb (the play
///   has no `reimage_url`: it activates what is staged), is activated
///   for the firmware with a 60 s trial and rebooted into; its trial hangs
///   without SSH, so the play reports the host failed after its 60 s
///   reboot timeout, and the watchdog brings the machine back to the old
///   system by itself.
/// - Boot 3: `nat` (`image`, served by this machine over HTTP, zstd;
///   root's key and its network put in it first, as a fleet's golden
///   image has them) is staged into a new volume of group `vg`,
///   activated for the firmware with a 5 min trial and rebooted into;
///   the play reaches the restored system, commits it, checks that it
///   runs and is committed, and prints its summary. Then the test tells
///   the restored system that the play is over (it rolls back and
///   reboots).
///
/// (Customizing, `carry_network` and `preserve`, is
/// `tests/host/ansible.rs`'s: 50 s more here under emulation.) Returns
/// the guest's run and what each play printed.
fn reimaged_by_ansible(
    dir: &Path,
    mut guest: Guest,
    disk: &Path,
    image: &Path,
) -> (GuestRun, Vec<String>) {
    let key = dir.join("id_ed25519");
    sh(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let public = std::fs::read(dir.join("id_ed25519.pub")).unwrap();
    let files: &[(&str, &[u8], u32)] = &[
        // the scenarios' sign that Ansible drives
        ("/etc/lr-ansible", b"", 0o644),
        ("/root/.ssh/authorized_keys", &public, 0o600),
        (
            "/etc/systemd/network/10-lr-tests.network",
            NETWORK.as_bytes(),
            0o644,
        ),
    ];
    write_files(disk, ROOT_OFFSET, files);
    // the image as a fleet's golden image is: the administrators' key,
    // its network (systemd-networkd enabled)
    write_files(image, 0, files);
    write_symlinks(
        image,
        0,
        &[(
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        )],
    );
    let bytes = std::fs::read(image).unwrap();
    let zst = zstd::encode_all(&bytes[..], 3).unwrap();
    drop(bytes);
    let server = serve(
        "127.0.0.1",
        HashMap::from([("/nat.img.zst".to_string(), Arc::new(zst))]),
        Faults::default(),
    );
    let ssh_port = free_port();
    guest.network = true;
    guest.ssh_port = Some(ssh_port);
    let ans = Ansible::new(dir);
    // (an SSH connection to a guest under emulation beside another takes
    // seconds: 10 s timed out once; one is kept across a play's tasks)
    let ssh_args =
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=30";
    // what both plays share; each adds its own (`-e`)
    std::fs::write(
        &ans.inventory,
        format!(
            "all:\n  hosts:\n    old-system:\n      ansible_host: 127.0.0.1\n      \
             ansible_port: {ssh_port}\n      ansible_user: root\n      \
             ansible_ssh_private_key_file: {key}\n      ansible_ssh_common_args: {ssh_args}\n      \
             liverestore_binary: /usr/local/bin/liverestore\n      reimage_dir: [/]\n      \
             reimage_loader: uefi\n      reimage_carry_network: false\n      \
             reimage_auto_commit: false\n      reimage_poll_interval: 10\n",
            key = key.display(),
        ),
    )
    .unwrap();
    let plays = [
        // deb, which the scenario staged (no reimage_url: the play
        // activates what is staged), its trial hangs without SSH: the
        // reboot task times out, the watchdog takes the machine back
        (
            "LR ssh_ready_1=1",
            serde_json::json!({
                "reimage_name": "deb",
                "reimage_trial_deadline": "60s",
                "reimage_reboot_timeout": 60,
            }),
        ),
        (
            "LR ssh_ready_3=1",
            serde_json::json!({
                "reimage_name": "nat",
                "reimage_url": format!("http://10.0.2.2:{}/nat.img.zst", server.port),
                "reimage_lvm_free": "vg",
                "reimage_trial_deadline": "5min",
                "reimage_reboot_timeout": 900,
            }),
        ),
    ];
    let work = dir.join("vm");
    let console = work.join("serial.out");
    // under the test's name: the harness reports each run by it
    let name = std::thread::current()
        .name()
        .unwrap_or("debian")
        .to_string();
    let running = std::thread::Builder::new()
        .name(name)
        .spawn(move || guest.run_ok(&work))
        .unwrap();
    // the console of the boot that is on (QEMU starts it anew each boot)
    let said = |marker: &str| loop {
        if running.is_finished() {
            return false;
        }
        let text = std::fs::read(&console).unwrap_or_default();
        if text.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return true;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut printed = Vec::new();
    for (ready, vars) in plays {
        if !said(ready) {
            break;
        }
        let start = std::time::Instant::now();
        let out = run(ans
            .cmd("ansible-playbook")
            .arg("liverestore.liverestore.reimage")
            .args(["-e", &vars.to_string()])
            .env("ANSIBLE_TIMEOUT", "30")
            .env(
                "ANSIBLE_SSH_ARGS",
                "-o ControlMaster=auto -o ControlPersist=300s",
            ));
        let log = text(&out);
        println!(
            "reimage.yml of {} through SSH, the reboot included: {:.1} s, {}\n{log}",
            vars["reimage_name"],
            start.elapsed().as_secs_f64(),
            out.status
        );
        printed.push(log);
    }
    if printed.len() == 2 {
        // the restored system goes on (rolls back, reboots); should the
        // play have failed before the reboot, the old system powers off
        let tell = "touch /run/lr-playbook-done; [ \"$(hostname)\" = nat ] || systemctl poweroff";
        let mut ssh = std::process::Command::new("ssh");
        ssh.args(ssh_args.split(' '))
            .args(["-i", key.to_str().unwrap(), "-p", &ssh_port.to_string()])
            .args(["root@127.0.0.1", tell]);
        let told = run(&mut ssh);
        assert!(told.status.success(), "{}", text(&told));
    }
    (running.join().unwrap(), printed)
}

/// The size of this run's restored systems (MiB): the 305 MB tree with
/// room for the trials' journals and changes (each MiB is staged and
/// hashed under emulation, several times).
const SYSTEM_MIB: u64 = 480;

#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn real_debian_systems_trial_boot_through_uefi_and_grub() {
    require_root();
    // The restored initrds, as their tools made them: initramfs-tools'
    // zstd with an uncompressed archive in front (as the CPU microcode
    // packages add), dracut's xz; each gets the early-boot archive
    // appended, and both boot below.
    let (_, early, zstd) = initramfs_tools_initrd();
    let main = early.len();
    let dr = boot_file("dracut", "initrd.img-");
    assert!(
        dr.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
        "dracut's is xz"
    );
    println!(
        "initrds: initramfs-tools {} bytes (an uncompressed archive of {main} bytes, then zstd), dracut {} bytes (xz)",
        main + zstd.len(),
        dr.len()
    );
    let t = tempfile::tempdir().unwrap();
    let deb = initramfs_tools_image(t.path(), "deb", SYSTEM_MIB, RESTORED_SYSTEM);
    let rh = t.path().join("rh-disk.img");
    restored_disk_image(
        "dracut",
        &rh,
        (64, SYSTEM_MIB),
        "rh",
        &format!("{REPORT}{RESTORED_SYSTEM}"),
    );
    // nat: /dev/vdd, or served over HTTP (zstd) when Ansible stages it
    let nat = initramfs_tools_image(t.path(), "nat", SYSTEM_MIB, RESTORED_SYSTEM);
    let (disk, vars) = old_system_disk(t.path(), &format!("{REPORT}{OLD_SYSTEM}"));
    // a third partition for LVM, over new space after the others
    add_unallocated(&disk, SYSTEM_MIB + 40);
    sh(
        "sgdisk",
        &["-n", "3:0:0", "-t", "3:8e00", disk.to_str().unwrap()],
    );
    // Ansible drives boots 1 and 3 with the slow tests (its managed host's
    // python3, sshd and D-Bus in the trees cost the other runs minutes)
    let ansible = std::env::var("LIVERESTORE_SLOW_TESTS").is_ok_and(|v| v == "1");
    let timeout = Duration::from_secs(1800);
    let (run, playbook) = if ansible {
        reimaged_by_ansible(
            t.path(),
            old_system_guest(vec![disk.clone(), deb, rh], vars, timeout),
            &disk,
            &nat,
        )
    } else {
        let run =
            old_system_guest(vec![disk, deb, rh, nat], vars, timeout).run_ok(&t.path().join("vm"));
        (run, Vec::new())
    };
    for (i, r) in run.values("report").iter().enumerate() {
        println!("boot {}: {r}", i + 1);
    }
    for key in ["old-system", "deb", "rh"] {
        for n in 1..=3 {
            if let Some(up) = run.value(&format!("{key}_uptime_{n}")) {
                println!("{key}, its boot {n}: the scenario started {up} s after the kernel");
            }
        }
    }
    // a tenth at most once each (a run of zeros may skip some)
    let tenths: u32 = run.get("journal_tenths").parse().unwrap();
    assert!((2..=11).contains(&tenths), "{tenths}");
    // status tells how long the trial has left, until the commit
    let left: u64 = run.get("rh_deadline_left").parse().unwrap();
    assert!((1..60).contains(&left), "{left}");
    assert_eq!(run.get("rh_deadline_left_after_commit"), "0");
    // the hung trial came back by the watchdog, not by its own reboot
    assert!(
        run.console.contains("softdog: Initiating system reboot"),
        "{}",
        run.output()
    );
    // every mapped boot noted on the disk before the image was mapped:
    // deb once, rh's root and ESP
    assert!(
        run.console.contains("boot 1 of 'deb' noted"),
        "{}",
        run.output()
    );
    assert!(
        run.console.contains("boot 1 of 'liverestore-p1' noted"),
        "{}",
        run.output()
    );
    assert!(!run.console.contains("is not noted"), "{}", run.output());
    // armed for the three trials; nat mapped nothing
    run.assert_console_counts(&[
        ("trial deadline armed", 3),
        ("boots natively from its own partition or volume", 1),
        ("boot 1 of 'nat' noted", 1),
    ]);
    for key in ["rh_next_after_rollback", "nat_next_after_rollback"] {
        let next = run.get(key);
        assert!(next.starts_with("old system"), "{key}: {next}");
    }
    if ansible {
        // the plays: both ran; each recap says how it ended
        assert_eq!(playbook.len(), 2, "{}", run.output());
        let recap = |log: &str| {
            log.lines()
                .rev()
                .find(|l| l.starts_with("old-system ") && l.contains("ok="))
                .unwrap_or_else(|| panic!("no recap: {log}"))
                .to_string()
        };
        // deb never came back over SSH (its trial hung): the play reports it
        // after its reboot timeout; the machine came back to the old system
        // by itself (trial_ended_2 below)
        assert!(recap(&playbook[0]).contains("failed=1"), "{}", playbook[0]);
        // (timed out waiting for it, or unreachable when the wait ended in a
        // refused connection: the task after the reboot says so then)
        assert!(
            playbook[0].contains("deb FAILED at 'Reboot into the restored system': Timed out")
                || playbook[0].contains("deb FAILED at 'Check that the host came back'"),
            "{}",
            playbook[0]
        );
        // nat: re-imaged, rebooted into, committed
        let r = recap(&playbook[1]);
        assert!(
            r.contains("failed=0") && r.contains("unreachable=0"),
            "{}",
            playbook[1]
        );
        assert!(
            playbook[1].contains("running the restored system, committed")
                && playbook[1].contains("next boot: restored system (default)"),
            "{}",
            playbook[1]
        );
        assert_eq!(run.get("nat_playbook_done"), "1");
    } else {
        assert_eq!(
            run.get("native_volume"),
            r#""native_volume":{"staging":"nat","vg":"vg","lv":"lr-nat"}"#
        );
    }
    // natively from its volume (no partition added: partitions_4), the
    // trial's deadline armed as the playbook asked
    let cmdline = run.get("nat_cmdline");
    assert!(
        cmdline.contains("rdinit=/lr/init root=/dev/mapper/vg-lr--nat rd.lvm.lv=vg/lr-nat ")
            && cmdline.contains(if ansible {
                "liverestore.deadline=300"
            } else {
                "liverestore.deadline=60"
            }),
        "{cmdline}"
    );

    run.assert_values(&[
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        // the journal: stage's success with its exit code, its progress
        // by tenths (0 % to 100 %), a failed verify's exit code
        ("journal_stage_ok", "1"),
        ("journal_stage_100", "1"),
        ("journal_failed", "1"),
        ("deb_boot_1", "running"),
        ("deb_failed_1", ""),
        ("deb_root_1", "/dev/dm-0"),
        ("deb_by_uuid_1", "1"),
        ("old-system_boot_2", "running"),
        ("trial_ended_2", "true"),
        // the hung trial changed deb; noted at its boot, so accepted
        ("deb_rehashed", "1"),
        ("deb_boots", "1"),
        ("deb_verified_again", "1"),
        ("rh_auto_commit_passed", "1"),
        ("rh_auto_commit_left", "0"),
        ("rh_boot_1", "running"),
        // dracut mounts root= through udev's link to /dev/dm-0
        ("rh_root_1", "/dev/mapper/liverestore-root"),
        ("rh_by_uuid_1", "1"),
        // the image's own ESP, mounted by its fstab through udev's
        // /dev/disk/by-uuid link to liverestore-p1
        ("rh_esp_1", "the ESP of rh"),
        ("rh_failed_1", ""),
        ("rh_next_after_commit", "restored system (default)"),
        ("rh_deadline_off", "1"),
        ("rh_watchdog_armed", "Software Watchdog:active"),
        ("rh_watchdog_after_commit", "Software Watchdog:inactive"),
        ("old-system_boot_3", "running"),
        ("grub_left", "0"),
        ("files_left", "0"),
        ("esp_left", "0"),
        // natively through the firmware from its volume, its own root
        // there, committed by the playbook (first in BootOrder), rolled
        // back after it
        ("nat_boot_1", "running"),
        ("nat_failed_1", ""),
        ("nat_root_1", "/dev/mapper/vg-lr--nat"),
        ("nat_by_uuid_1", "1"),
        ("nat_next_after_commit", "restored system (default)"),
        // and the old system's discard took back what was left
        ("old-system_boot_4", "running"),
        ("old-system_failed_4", ""),
        ("volume_before", "lr-nat liverestore"),
        ("took_back", "1"),
        ("volume_left", "0"),
        ("partitions_4", "3"),
        ("native_esp_left", "0"),
        ("entries_left", "0"),
        ("records_left", "0"),
        ("activation_left", "0"),
    ]);
}
