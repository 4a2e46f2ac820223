//! The BIOS + GRUB trial boot, end to end under SeaBIOS, six boots in one
//! run. The disk holds an "old" system booted by GRUB 2.06 from its ext4
//! (`grub.cfg` as Debian's update-grub writes it). Without efivarfs,
//! `activate` falls back to GRUB by itself: a menu entry in `custom.cfg`,
//! `next_entry` in `grubenv`. GRUB starts the restored system once
//! (through the map), then the old system again; it rolls back and
//! activates again; the restored system commits (writing `grubenv` on the
//! raw disk, as GRUB does); GRUB then starts it by default; it rolls back
//! from its side; the old system starts and removes what is left.

use std::path::Path;
use std::time::Duration;

use crate::common::vm::{Bios, DM_OVER_LOOP, EXT4, Guest, VIRTIO_BLK};
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
case $n in
2) liverestore commit && echo "LR commit=ok"
   echo "LR restored_next_2=$(next)" ;;
3) liverestore rollback
   echo "LR restored_next_after_rollback=$(next)" ;;
esac
reboot -f
"#;

#[test]
fn bios_grub_trial_boot_then_back_to_the_old_system() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path());
    let restored_initrd =
        crate::common::vm::restored_initrd(&[VIRTIO_BLK, &["dm-mod"], EXT4].concat(), EXT4);
    let image = t.path().join("restored-root.ext4");
    crate::common::vm::restored_root_image_with(
        &image,
        64,
        "restored-system",
        RESTORED_SYSTEM,
        Some(&restored_initrd),
    );
    let run = Guest {
        modules: [VIRTIO_BLK, EXT4, DM_OVER_LOOP].concat(),
        binaries: vec!["e2fsck"],
        disks: vec![disk, image],
        scenario: OLD_SYSTEM.into(),
        timeout: Duration::from_secs(600),
        bios: Some(Bios {
            core_offset: MIB,
            root_offset: 2 * MIB,
            root_size: ROOT_MIB * MIB,
            root_partition: 2,
        }),
        ..Guest::default()
    }
    .run_ok(&t.path().join("vm"));
    // boot 1: the old system stages and activates; no efivarfs: GRUB
    assert_eq!(run.get("old_boot_1"), "yes");
    let extents: usize = run.get("extents").parse().unwrap();
    assert!(extents > 20, "fragmented: {extents}");
    assert_eq!(run.get("uefi_activate"), "24", "UEFI asked for, not there");
    assert_eq!(run.get("no_grub_activate"), "25", "neither UEFI nor GRUB");
    assert_eq!(run.get("activate"), "0");
    assert_eq!(run.get("fallback_said"), "1");
    assert_eq!(run.get("activate_twice"), "22", "one activation at a time");
    assert_eq!(run.get("next_1"), "restored system (trial, once)");
    assert_eq!(run.get("next_entry_1"), "liverestore-web");
    assert_eq!(run.get("entries_1"), "1");
    assert_eq!(run.get("boot_files"), "initrd.img vmlinuz");
    // boot 2: GRUB's next_entry starts the restored system, from the map
    assert_eq!(run.get("restored_boot_1"), "restored-system");
    assert_eq!(run.get("restored_root_1"), "/dev/dm-0");
    assert_eq!(
        run.get("restored_now_1"),
        "old system (GRUB's default entry)",
        "GRUB cleared next_entry as it booted"
    );
    // boot 3: nobody committed: the old system; rollback; activate again
    assert_eq!(run.get("old_boot_2"), "yes");
    assert_eq!(run.get("next_2"), "old system (GRUB's default entry)");
    assert_eq!(run.get("next_entry_2"), "");
    assert_eq!(run.get("custom_left"), "0");
    assert_eq!(run.get("files_left"), "0");
    assert_eq!(run.get("env_left"), "0");
    assert_eq!(
        run.get("next_after_rollback"),
        "old system (nothing is activated)"
    );
    assert_eq!(run.get("activate_again"), "0");
    // boot 4: the restored system commits
    assert_eq!(run.get("restored_boot_2"), "restored-system");
    assert_eq!(run.get("commit"), "ok");
    assert_eq!(run.get("restored_next_2"), "restored system (default)");
    // boot 5: GRUB starts it by default; it rolls back from its side
    assert_eq!(run.get("restored_boot_3"), "restored-system");
    assert_eq!(run.get("restored_root_3"), "/dev/dm-0");
    assert_eq!(run.get("restored_now_3"), "restored system (default)");
    assert_eq!(
        run.get("restored_next_after_rollback"),
        "old system (GRUB's default entry)"
    );
    // boot 6: the old system, which removes what is left
    assert_eq!(run.get("old_boot_3"), "yes");
    assert_eq!(run.get("next_3"), "old system (GRUB's default entry)");
    assert_eq!(run.get("default_3"), "");
    assert_eq!(run.get("custom_left_3"), "0");
    assert_eq!(run.get("files_left_3"), "0");
    assert_eq!(run.get("env_left_3"), "0");
    assert_eq!(run.get("activation_left"), "0");
    assert_eq!(run.get("old_fsck"), "clean");
    let order = [
        "LR old_boot_1",
        "LR restored_boot_1",
        "LR old_boot_2",
        "LR restored_boot_2",
        "LR restored_boot_3",
        "LR old_boot_3",
    ]
    .map(|k| run.console.find(k).unwrap_or_else(|| panic!("{k} missing")));
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "boot order {order:?}"
    );
}
