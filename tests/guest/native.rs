//! Native activation under OVMF, four boots in one run. The old system
//! stages a small bootable system whole into its disk's unallocated space
//! (`--unallocated --contiguous`); `activate` adds GPT partition 3 over
//! exactly those bytes (the kernel sees it at once: BLKPG) and a
//! `Boot####` whose kernel boots `root=PARTUUID=…` with the restored
//! system's own initrd — no device-mapper; the early-boot step appended
//! to it only notes the boot (and would arm a deadline). BootNext
//! starts it from `/dev/vda3`; it commits; the firmware then starts it by
//! default; it rolls back from its side; the old system removes the entry
//! (table and kernel), the ESP files and the record.

use std::path::Path;

use crate::common::vm::{EXT4, VIRTIO_BLK};
use crate::common::*;
use crate::uefi::{ESP_MIB, old_system_guest};

/// GPT: ESP at 1 MiB, the old system's ext4 after it, 100 MiB free after.
fn host_disk(dir: &Path) -> std::path::PathBuf {
    gpt_disk_file(
        &dir.join("host-disk.img"),
        2 + ESP_MIB + 200 + 100,
        &[(1, ESP_MIB, "ef00"), (1 + ESP_MIB, 200, "8300")],
    )
}

const OLD_SYSTEM: &str = r#"
n=$(( $(cat /mnt/host/boots 2>/dev/null || echo 0) + 1 ))
echo $n > /mnt/host/boots
sync
echo "LR old_boot_$n=yes"
case $n in
1)
  liverestore stage /dev/vdb --name web --dir /mnt/host --unallocated --contiguous 2>/dev/null
  liverestore --json activate web --esp /mnt/esp --append lr.test=commit > /tmp/activate.json
  echo "LR native_number=$(grep -o '"number":[0-9]*' /tmp/activate.json | cut -d: -f2)"
  echo "LR native_guid=$(grep -o '"guid":"[^"]*"' /tmp/activate.json | cut -d'"' -f4)"
  echo "LR args=$(grep -o '"args":"[^"]*"' /tmp/activate.json | cut -d'"' -f4)"
  echo "LR kernel_sees=$(ls /sys/block/vda | grep -c '^vda3$')"
  echo "LR vda3_fs=$(blkid -o value -s TYPE /dev/vda3)"
  echo "LR table_ok=$(sgdisk -v /dev/vda | grep -c 'No problems found')"
  echo "LR next_1=$(next)"
  umount /mnt/esp /mnt/host
  reboot -f
  ;;
2)
  # the restored system committed, then rolled back from its side
  echo "LR next_2=$(next)"
  liverestore rollback >/dev/null
  echo "LR partitions_left=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  echo "LR table_entries=$(sgdisk -p /dev/vda | grep -c '^ *[0-9]')"
  echo "LR table_ok_2=$(sgdisk -v /dev/vda | grep -c 'No problems found')"
  echo "LR esp_left=$(ls /mnt/esp | grep -c liverestore || true)"
  echo "LR activation_left=$(ls $LIVERESTORE_STATE_DIR | grep -c activation || true)"
  umount /mnt/esp /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR old_fsck=clean"
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
now=$(next)
case "$now" in
old*) n=1 ;;                            # the trial, from BootNext
*) n=2 ;;                               # started by default
esac
echo "LR restored_boot_$n=$(cat /etc/hostname)"
echo "LR restored_root_$n=$(awk '$2 == "/" { print $1 }' /proc/mounts)"
echo "LR restored_dm_$n=$(ls /sys/block | grep -c '^dm-' || true)"
echo "LR restored_now_$n=$now"
case $n in
1) liverestore commit >/dev/null && echo "LR commit=ok"
   echo "LR restored_next_1=$(next)" ;;
2) liverestore rollback >/dev/null && echo "LR restored_rollback=ok"
   echo "LR restored_next_2=$(next)" ;;
esac
reboot -f
"#;

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn native_boot_from_a_partition_added_over_the_image() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path());
    // Its /init loads the disk's driver itself (a real initramfs has
    // udev for that), unless /lr/init loaded it first.
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        RESTORED_SYSTEM,
        &[],
        &[VIRTIO_BLK, EXT4, &["efivarfs"]].concat(),
    );
    let run = old_system_guest(
        vec![disk, image],
        vec!["mkfs.ext4", "e2fsck", "sgdisk", "blkid"],
        OLD_SYSTEM,
        None,
    )
    .run_ok(&t.path().join("vm"));
    // boot 1: staged contiguous; partition 3 added, the kernel sees it
    assert_eq!(run.get("native_number"), "3");
    let guid = run.get("native_guid");
    assert!(
        run.get("args").starts_with(&format!(
            "rdinit=/lr/init root=PARTUUID={guid} rw panic=30 liverestore.id="
        )),
        "{}",
        run.get("args")
    );
    // the early-boot step maps nothing, and notes both boots
    assert!(
        run.console.contains(
            "'web' boots natively from its own partition or volume on /dev/vda: nothing to map"
        ),
        "{}",
        run.output()
    );
    assert!(
        run.console.contains("boot 2 of 'web' noted"),
        "{}",
        run.output()
    );
    run.assert_values(&[
        ("kernel_sees", "1"),
        ("vda3_fs", "ext4"),
        ("table_ok", "1"),
        ("next_1", "restored system (trial, once)"),
        // boot 2: BootNext: the restored system, from the partition itself
        ("restored_boot_1", "restored-system"),
        ("restored_root_1", "/dev/vda3"),
    ]);
    assert_eq!(run.get("restored_dm_1"), "0", "no device-mapper");
    assert_eq!(
        run.get("restored_now_1"),
        "old system (the firmware's BootOrder)"
    );
    run.assert_values(&[
        ("commit", "ok"),
        ("restored_next_1", "restored system (default)"),
        // boot 3: by default; rollback from its side
        ("restored_boot_2", "restored-system"),
        ("restored_root_2", "/dev/vda3"),
        ("restored_rollback", "ok"),
    ]);
    assert_eq!(
        run.get("restored_next_2"),
        "old system (the firmware's BootOrder)"
    );
    // boot 4: the old system takes everything back
    run.assert_values(&[
        ("old_boot_2", "yes"),
        ("next_2", "old system (the firmware's BootOrder)"),
        ("partitions_left", "0"),
        ("table_entries", "2"),
        ("table_ok_2", "1"),
        ("esp_left", "0"),
        ("activation_left", "0"),
        ("old_fsck", "clean"),
    ]);
}

/// The old system of the native power-loss runs, by boot count.
const OLD_SYSTEM_POWER_LOSS: &str = r#"
n=$(( $(cat /mnt/host/boots 2>/dev/null || echo 0) + 1 ))
echo $n > /mnt/host/boots
sync
report() {
  echo "LR $1_next=$(next)"
  echo "LR $1_activated=$(liverestore --json status | grep -c '"activation":{' || true)"
  echo "LR $1_vda3=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  echo "LR $1_entries=$(sgdisk -p /dev/vda | grep -c '^ *[0-9]')"
}
case $n in
1)
  liverestore stage /dev/vdb --name web --dir /mnt/host --unallocated --contiguous 2>/dev/null
  LIVERESTORE_FAILPOINT=activate:partition liverestore activate web --esp /mnt/esp >/dev/null
  ;;
2)
  report b
  liverestore rollback >/dev/null && echo "LR b_rollback=ok"
  report b_after
  echo "LR b_table_ok=$(sgdisk -v /dev/vda | grep -c 'No problems found')"
  liverestore activate web --esp /mnt/esp >/dev/null && echo "LR b_activate=ok"
  LIVERESTORE_FAILPOINT=rollback:partition liverestore rollback >/dev/null
  ;;
3)
  report c
  liverestore rollback >/dev/null && echo "LR c_rollback=ok"
  report c_after
  echo "LR c_table_ok=$(sgdisk -v /dev/vda | grep -c 'No problems found')"
  echo "LR c_esp_left=$(ls /mnt/esp | grep -c liverestore || true)"
  liverestore verify web >/dev/null 2>&1 && echo "LR c_verify=ok"
  umount /mnt/esp /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR c_fsck=clean"
  ;;
esac
"#;

/// Power loss during native activation and rollback: right after the
/// partition entry is written (and told to the kernel), and right after
/// rollback removed it. Each next boot is the old system, `status` tells
/// the half-done activation, and `rollback` finishes the job.
#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn native_power_loss_leaves_a_bootable_machine() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path());
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        "reboot -f\n",
        &[],
        &[VIRTIO_BLK, EXT4].concat(),
    );
    let disks = vec![disk, image];
    let run = |name: &str| {
        let run = old_system_guest(
            disks.clone(),
            vec!["mkfs.ext4", "e2fsck", "sgdisk"],
            OLD_SYSTEM_POWER_LOSS,
            Some(t.path().join("OVMF_VARS.fd")),
        )
        .run(&t.path().join(name));
        println!("== {name} ({:?}):\n{}", run.elapsed, run.output());
        run
    };
    let a = run("a");
    a.assert_powered_off_at("activate:partition");
    // The entry was written: the kernel sees vda3 at boot; nothing boots
    // it; rollback removes it; then the power goes right after rollback
    // took it out of the kernel and the table.
    let b = run("b");
    b.assert_powered_off_at("rollback:partition");
    b.assert_values(&[
        ("b_next", "old system (the firmware's BootOrder)"),
        ("b_activated", "1"),
        ("b_vda3", "1"),
        ("b_entries", "3"),
        ("b_rollback", "ok"),
        ("b_after_activated", "0"),
        ("b_after_vda3", "0"),
        ("b_after_entries", "2"),
        ("b_table_ok", "1"),
        ("b_activate", "ok"),
    ]);
    // The record is still there; the entry is not; rollback finishes.
    let c = run("c");
    c.assert_ok();
    c.assert_values(&[
        ("c_next", "old system (the firmware's BootOrder)"),
        ("c_activated", "1"),
        ("c_vda3", "0"),
        ("c_entries", "2"),
        ("c_rollback", "ok"),
        ("c_after_activated", "0"),
        ("c_table_ok", "1"),
        ("c_esp_left", "0"),
        ("c_verify", "ok"),
        ("c_fsck", "clean"),
    ]);
}
