//! The BIOS + GRUB trial boot, end to end under SeaBIOS, six boots in one
//! run. The disk holds an "old" system booted by GRUB 2.06 from its ext4
//! (`grub.cfg` as Debian's update-grub writes it). Without efivarfs,
//! `activate` falls back to GRUB by itself: a menu entry in `custom.cfg`,
//! `next_entry` in `grubenv`. GRUB starts the restored system once
//! (through the map), then the old system again; it rolls back and
//! activates again; the restored system commits (writing `grubenv` on the
//! raw disk, as GRUB does); GRUB then starts it by default; it rolls back
//! from its side; the old system starts and removes what is left. The
//! BIOS run's CPU has no RDRAND. GRUB under UEFI (its EFI build, from the
//! ESP, through shim under Secure Boot) is the real Debian runs' (trial,
//! commit and rollback through GRUB in `debian.rs` and
//! `debian_secure_boot.rs`); the fallback to GRUB when efivarfs is
//! missing is the same decision here and in the host tests.

use std::path::Path;
use std::time::Duration;

use crate::common::vm::{Bios, DM_OVER_LOOP, EXT4, Guest, GuestRun, VIRTIO_BLK};
use crate::common::*;

const ROOT_MIB: u64 = 360;

/// GPT: a BIOS boot partition at 1..2 MiB, the old system's ext4 after it.
fn host_disk(dir: &Path) -> std::path::PathBuf {
    gpt_disk_file(
        &dir.join("host-disk.img"),
        3 + ROOT_MIB,
        &[(1, 1, "ef02"), (2, ROOT_MIB, "8300")],
    )
}

/// GRUB on the old system's disk (boot.img and core.img), under the
/// BIOS, on a CPU without RDRAND (its test says why).
fn grub_guest(dir: &Path, image: std::path::PathBuf, scenario: &str) -> Guest {
    Guest {
        modules: [VIRTIO_BLK, EXT4, DM_OVER_LOOP].concat(),
        binaries: vec!["e2fsck"],
        disks: vec![host_disk(dir), image],
        scenario: scenario.into(),
        timeout: Duration::from_secs(600),
        bios: Some(Bios {
            core_offset: MIB,
            root_offset: 2 * MIB,
            root_size: ROOT_MIB * MIB,
            root_partition: 2,
        }),
        cpu: "qemu64",
        ..Guest::default()
    }
}

const OLD_SYSTEM: &str = r#"
export LIVERESTORE_STATE_DIR=/mnt/host/var/lib/liverestore
G=/mnt/host/boot/grub
mkdir -p /mnt/host
mount -t ext4 /dev/vda2 /mnt/host
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
env_var() { grep -a "^$1=" $G/grubenv | cut -d= -f2; }
n=$(( $(cat /mnt/host/boots 2>/dev/null || echo 0) + 1 ))
echo $n > /mnt/host/boots
sync
echo "LR old_boot_$n=yes"
case $n in
1)
  i=0
  while fallocate -l 1048576 /mnt/host/fill$i 2>/dev/null; do i=$((i + 1)); done
  for j in $(seq 0 2 $i); do rm -f /mnt/host/fill$j; done
  echo "LR rdrand=$(grep -c -w rdrand /proc/cpuinfo || true)"
  echo "LR crng_ready_before_stage=$(dmesg | grep -c 'crng init done' || true)"
  liverestore stage /dev/vdb --name web --dir /mnt/host 2>/dev/null
  echo "LR extents=$(liverestore --json map web | grep -o '"disk_offset"' | wc -l)"
  set +e
  liverestore activate web --loader uefi >/dev/null 2>&1
  echo "LR uefi_activate=$?"
  liverestore activate web --grub-dir /mnt/host/boot/nothing-here >/dev/null 2>&1
  echo "LR no_grub_activate=$?"
  liverestore activate web --grub-dir $G --append lr.test=trial >/tmp/activate.out 2>&1
  echo "LR activate=$?"
  cat /tmp/activate.out
  liverestore activate web --grub-dir $G >/dev/null 2>&1
  echo "LR activate_twice=$?"
  set -e
  echo "LR crng_ready_after_activate=$(dmesg | grep -c 'crng init done' || true)"
  echo "LR fallback_said=$(grep -c 'falling back to GRUB' /tmp/activate.out)"
  echo "LR next_1=$(next)"
  echo "LR next_entry_1=$(env_var next_entry)"
  echo "LR entries_1=$(grep -c '^menuentry' $G/custom.cfg)"
  echo "LR boot_files=$(echo $(ls /mnt/host/boot/liverestore/web))"
  umount /mnt/host
  reboot -f
  ;;
2)
  # nobody committed: GRUB's default, the old system, again
  echo "LR next_2=$(next)"
  echo "LR trial_ended_2=$(liverestore --json status | grep -o '"trial_ended":[a-z]*' | cut -d: -f2)"
  echo "LR next_entry_2=$(env_var next_entry)"
  liverestore rollback >/dev/null
  echo "LR custom_left=$(ls $G | grep -c custom.cfg || true)"
  echo "LR files_left=$(ls /mnt/host/boot | grep -c liverestore || true)"
  echo "LR env_left=$(grep -ac liverestore $G/grubenv || true)"
  echo "LR next_after_rollback=$(next)"
  liverestore activate web --grub-dir $G --append lr.test=commit 2>/dev/null
  echo "LR activate_again=$?"
  umount /mnt/host
  reboot -f
  ;;
3)
  # the restored system committed, then rolled back from its side
  echo "LR next_3=$(next)"
  echo "LR default_3=$(env_var liverestore_default)"
  liverestore rollback >/dev/null
  echo "LR custom_left_3=$(ls $G | grep -c custom.cfg || true)"
  echo "LR files_left_3=$(ls /mnt/host/boot | grep -c liverestore || true)"
  echo "LR env_left_3=$(grep -ac liverestore $G/grubenv || true)"
  echo "LR activation_left=$(ls $LIVERESTORE_STATE_DIR | grep -c activation || true)"
  umount /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR old_fsck=clean"
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
mode=$(grep -o 'lr.test=[a-z]*' /proc/cmdline | cut -d= -f2)
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
now=$(next)
case "$mode/$now" in
trial/*) n=1 ;;                         # a trial nobody commits
commit/old*) n=2 ;;                     # a trial that commits
commit/*) n=3 ;;                        # started by default
esac
echo "LR restored_boot_$n=$(cat /etc/hostname)"
echo "LR restored_root_$n=$(awk '$2 == "/" { print $1 }' /proc/mounts)"
echo "LR restored_now_$n=$now"
echo "LR restored_crng_ready_$n=$(dmesg | grep -c 'crng init done' || true)"
case $n in
2) liverestore commit && echo "LR commit=ok"
   echo "LR restored_next_2=$(next)" ;;
3) liverestore rollback
   echo "LR restored_next_after_rollback=$(next)" ;;
esac
reboot -f
"#;

/// Under the BIOS the guest's CPU has no RDRAND (`-cpu qemu64`, no
/// virtio-rng): `stage`, `activate` and the restored system's early-boot
/// step run before the kernel's random number generator is initialised,
/// and must not wait for it (they once hung for good there).
#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn bios_grub_trial_boot_then_back_to_the_old_system() {
    let run = grub_trial();
    assert_eq!(run.get("rdrand"), "0", "the guest's CPU must lack RDRAND");
    run.assert_values(&[
        ("crng_ready_before_stage", "0"),
        ("crng_ready_after_activate", "0"),
        ("restored_crng_ready_1", "0"),
    ]);
}

fn grub_trial() -> GuestRun {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        RESTORED_SYSTEM,
        &[VIRTIO_BLK, &["dm-mod"], EXT4].concat(),
        EXT4,
    );
    let run = grub_guest(t.path(), image, OLD_SYSTEM).run_ok(&t.path().join("vm"));
    // boot 1: the old system stages and activates; no efivarfs: GRUB
    assert_eq!(run.get("old_boot_1"), "yes");
    let extents: usize = run.get("extents").parse().unwrap();
    assert!(extents > 20, "fragmented: {extents}");
    assert_eq!(run.get("uefi_activate"), "24", "UEFI asked for, not there");
    assert_eq!(run.get("no_grub_activate"), "25", "neither UEFI nor GRUB");
    assert_eq!(run.get("activate"), "0");
    assert_eq!(run.get("fallback_said"), "1");
    assert_eq!(run.get("activate_twice"), "22", "one activation at a time");
    run.assert_values(&[
        ("next_1", "restored system (trial, once)"),
        ("next_entry_1", "liverestore-web"),
        ("entries_1", "1"),
        ("boot_files", "initrd.img vmlinuz"),
    ]);
    run.assert_values(&[
        // boot 2: GRUB's next_entry starts the restored system, from the map
        ("restored_boot_1", "restored-system"),
        ("restored_root_1", "/dev/dm-0"),
    ]);
    assert_eq!(
        run.get("restored_now_1"),
        "old system (GRUB's default entry)",
        "GRUB cleared next_entry as it booted"
    );
    // boot 3: nobody committed: the old system; rollback; activate again
    run.assert_values(&[
        ("old_boot_2", "yes"),
        ("next_2", "old system (GRUB's default entry)"),
        ("trial_ended_2", "true"),
        ("next_entry_2", ""),
        ("custom_left", "0"),
        ("files_left", "0"),
        ("env_left", "0"),
    ]);
    assert_eq!(
        run.get("next_after_rollback"),
        "old system (nothing is activated)"
    );
    assert_eq!(run.get("activate_again"), "0");
    assert_eq!(
        run.get("restored_now_2"),
        "old system (GRUB's default entry)",
        "GRUB cleared next_entry as it booted"
    );
    // the early-boot step of the committed system's default boot reads
    // GRUB's environment block on the disk it found: no deadline then
    run.assert_console_counts(&[("liverestore: committed: no trial deadline", 1)]);
    run.assert_values(&[
        // boot 4: the restored system commits
        ("restored_boot_2", "restored-system"),
        ("commit", "ok"),
        ("restored_next_2", "restored system (default)"),
        // boot 5: GRUB starts it by default; it rolls back from its side
        ("restored_boot_3", "restored-system"),
        ("restored_root_3", "/dev/dm-0"),
        ("restored_now_3", "restored system (default)"),
    ]);
    assert_eq!(
        run.get("restored_next_after_rollback"),
        "old system (GRUB's default entry)"
    );
    // boot 6: the old system, which removes what is left
    run.assert_values(&[
        ("old_boot_3", "yes"),
        ("next_3", "old system (GRUB's default entry)"),
        ("default_3", ""),
        ("custom_left_3", "0"),
        ("files_left_3", "0"),
        ("env_left_3", "0"),
        ("activation_left", "0"),
        ("old_fsck", "clean"),
    ]);
    run.assert_in_order(crate::common::vm::SIX_BOOTS);
    run
}

/// The old system of the power-loss runs: one initramfs for all of them
/// (the harness makes the disk once), so the step is chosen by a boot
/// counter on its ext4.
const OLD_SYSTEM_POWER_LOSS: &str = r#"
export LIVERESTORE_STATE_DIR=/mnt/host/var/lib/liverestore
G=/mnt/host/boot/grub
mkdir -p /mnt/host
mount -t ext4 /dev/vda2 /mnt/host
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
env_var() { grep -a "^$1=" $G/grubenv | cut -d= -f2; }
report() {
  echo "LR $1_old_up=yes"
  echo "LR $1_next=$(next)"
  echo "LR $1_next_entry=$(env_var next_entry)"
  echo "LR $1_activated=$(liverestore --json status | grep -c '"activation":{' || true)"
  echo "LR $1_entries=$(grep -sc '^menuentry' $G/custom.cfg || true)"
}
left() {
  echo "LR $1_custom_left=$(ls $G | grep -c custom.cfg || true)"
  echo "LR $1_files_left=$(ls /mnt/host/boot | grep -c liverestore || true)"
  echo "LR $1_env_left=$(grep -ac liverestore $G/grubenv || true)"
}
cut_power_after() { LIVERESTORE_FAILPOINT="$1" liverestore activate web --grub-dir $G $2 >/dev/null; echo "LR activate_failed=$?"; }
n=$(( $(cat /mnt/host/boots 2>/dev/null || echo 0) + 1 ))
echo $n > /mnt/host/boots
sync
case $n in
1)
  liverestore stage /dev/vdb --name web --dir /mnt/host 2>/dev/null
  cut_power_after activate:boot-entry
  ;;
2)
  report b
  liverestore rollback >/dev/null && echo "LR b_rollback=ok"
  left b
  cut_power_after activate:boot-next "--append lr.test=commit"
  ;;
3)
  report d
  LIVERESTORE_FAILPOINT=rollback:boot-order liverestore rollback >/dev/null
  ;;
4)
  report e
  liverestore rollback >/dev/null && echo "LR e_rollback=ok"
  left e
  echo "LR e_activated_after=$(liverestore --json status | grep -c '"activation":{' || true)"
  liverestore verify web >/dev/null 2>&1 && echo "LR e_verify=ok"
  umount /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR e_fsck=clean"
  ;;
esac
"#;

/// The restored system of the power-loss runs: started by `next_entry`
/// it commits, losing power right after `grubenv` is written; started by
/// default it rolls back.
const RESTORED_POWER_LOSS: &str = r#"
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
echo "LR restored_up=$(cat /etc/hostname)"
now=$(next)
echo "LR restored_next=$now"
case "$now" in
old*) LIVERESTORE_FAILPOINT=commit:boot-order liverestore commit >/dev/null ;;
*) liverestore rollback >/dev/null && echo "LR restored_rollback=ok" ;;
esac
reboot -f
"#;

/// Power loss during GRUB activation, commit and rollback: each QEMU run
/// ends with the power cut right after a step (the guest's liverestore is
/// built with failpoints); the next run must boot one of the two systems,
/// whose `status` must say what boots next, and whose `rollback` cleans up.
#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn grub_power_loss_leaves_a_bootable_machine() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path());
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        RESTORED_POWER_LOSS,
        &[VIRTIO_BLK, &["dm-mod"], EXT4].concat(),
        EXT4,
    );
    let disks = vec![disk, image];
    let run = |name: &str| {
        let run = Guest {
            modules: [VIRTIO_BLK, EXT4, DM_OVER_LOOP].concat(),
            binaries: vec!["e2fsck"],
            disks: disks.clone(),
            scenario: OLD_SYSTEM_POWER_LOSS.into(),
            timeout: Duration::from_secs(300),
            bios: Some(Bios {
                core_offset: MIB,
                root_offset: 2 * MIB,
                root_size: ROOT_MIB * MIB,
                root_partition: 2,
            }),
            ..Guest::default()
        }
        .run(&t.path().join(name));
        println!("== {name} ({:?}):\n{}", run.elapsed, run.output());
        run
    };

    // A: stage; the power goes once the custom.cfg entry is written
    // (next_entry is not set yet).
    let a = run("a");
    a.assert_powered_off_at("activate:boot-entry");

    // B: GRUB starts the old system; status tells the half-done
    // activation; rollback cleans it; activate again, and the power goes
    // right after next_entry is written.
    let b = run("b");
    b.assert_powered_off_at("activate:boot-next");
    b.assert_values(&[
        ("b_old_up", "yes"),
        ("b_next", "old system (GRUB's default entry)"),
        ("b_next_entry", ""),
        ("b_activated", "1"),
    ]);
    assert_eq!(b.get("b_entries"), "1", "the entry written before the cut");
    b.assert_values(&[
        ("b_rollback", "ok"),
        ("b_custom_left", "0"),
        ("b_files_left", "0"),
        ("b_env_left", "0"),
    ]);

    // C: next_entry starts the restored system; its commit loses power
    // right after grubenv is written on the raw disk.
    let c = run("c");
    c.assert_powered_off_at("commit:boot-order");
    assert_eq!(c.get("restored_up"), "restored-system");
    assert_eq!(c.get("restored_next"), "old system (GRUB's default entry)");

    // D: the commit held: GRUB starts the restored system by default; it
    // rolls back; the old system comes up, and its rollback loses power
    // between grubenv and custom.cfg.
    let d = run("d");
    d.assert_powered_off_at("rollback:boot-order");
    assert_eq!(
        d.get("restored_next"),
        "restored system (default)",
        "the commit survived the power cut"
    );
    assert_eq!(d.get("restored_rollback"), "ok");
    assert!(
        d.console.find("LR restored_up").unwrap() < d.console.find("LR d_old_up").unwrap(),
        "the restored system started first, by default"
    );
    assert_eq!(d.get("d_next"), "old system (GRUB's default entry)");
    assert_eq!(d.get("d_activated"), "1");

    // E: the old system; the entry is still in custom.cfg, but nothing
    // chooses it; rollback finishes; nothing remains.
    let e = run("e");
    e.assert_ok();
    e.assert_values(&[
        ("e_next", "old system (GRUB's default entry)"),
        ("e_entries", "1"),
        ("e_rollback", "ok"),
        ("e_custom_left", "0"),
        ("e_files_left", "0"),
        ("e_env_left", "0"),
        ("e_activated_after", "0"),
    ]);
    assert_eq!(e.get("e_verify"), "ok", "the staged image survived it all");
    assert_eq!(e.get("e_fsck"), "clean");
}
