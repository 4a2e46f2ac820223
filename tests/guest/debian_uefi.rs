//! A real Debian 12 system (the initramfs-tools one of
//! `tests/common/debian.rs`, its initrd zstd with an archive in front)
//! restored and booted natively through the firmware (`Boot####`,
//! `BootNext`, no GRUB on the way): a trial that commits, then rolls back
//! from the restored side. (Through the firmware mapped — a trial that
//! hangs and comes back by the watchdog — and GRUB mapped and natively,
//! with commit, default boot and rollback, are in `tests/guest/debian.rs`
//! and `tests/guest/debian_secure_boot.rs`; the firmware's default boot of
//! a committed native system, in `tests/guest/native.rs`.)

use std::time::Duration;

use crate::common::debian::{add_unallocated, old_system_disk, old_system_guest};
use crate::common::*;
use crate::debian::{REPORT, deb_image};

const OLD_SYSTEM: &str = r#"
case $n in
1)
  # whole in the unallocated space after the old system's partitions:
  # booted natively, from a partition entry added over it
  liverestore stage /dev/vdb --name deb --dir / --unallocated --contiguous
  liverestore --json activate deb --loader uefi --trial-deadline 60s > /tmp/activate.json
  echo "LR native_args=$(grep -o '"args":"[^"]*"' /tmp/activate.json | cut -d'"' -f4)"
  echo "LR native_partition=$(ls /sys/block/vda | grep -c '^vda3$')"
  echo "LR next_armed_1=$(next)"
  echo "LR report=old system ($state): staged 'deb' whole in unallocated space, activated it natively for the firmware"
  systemctl reboot
  ;;
2)
  # deb committed and rolled back from its side:
  # discard first takes back what the activation left (partition 3, the
  # boot entry, the ESP files), says so, then discards
  liverestore discard deb > /tmp/discard.out 2>&1
  cat /tmp/discard.out
  echo "LR took_back=$(grep -c "activation of 'deb' is over" /tmp/discard.out || true)"
  echo "LR partition_left=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  echo "LR esp_left=$(ls /boot/efi | grep -c liverestore || true)"
  echo "LR entries_left=$(efibootmgr | grep -c liverestore || true)"
  echo "LR records_left=$(ls /var/lib/liverestore/images | wc -l)"
  echo "LR activation_left=$(ls /var/lib/liverestore | grep -c activation || true)"
  echo "LR report=old system ($state): took back what the rolled-back activation left, discarded 'deb'"
  echo "== scenario exit 0"
  systemctl poweroff
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
case $host/$n in
deb/1)
  liverestore commit
  echo "LR deb_next_after_commit=$(next)"
  liverestore rollback
  echo "LR deb_next_after_rollback=$(next)"
  echo "LR report=restored 'deb' ($state) on $(findmnt -n -o SOURCE /), a trial through the firmware: committed, then rolled back from its side"
  systemctl reboot
  ;;
esac
"#;

/// Three boots under OVMF: (1) the old system stages the initramfs-tools
/// system whole into the unallocated space after its partitions and
/// activates it for the firmware; `--boot auto` is native: a partition over
/// the image, a `Boot####` straight to the image's kernel with
/// `root=PARTUUID=…`; (2) it runs from /dev/vda3, commits (first in
/// `BootOrder`) and rolls back from its side; (3) the old system's
/// `discard` takes back what the activation left and discards it: nothing
/// left in the partition table, on the ESP, in the firmware's boot entries
/// or in the state directory.
#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn a_real_debian_system_commits_natively_through_the_firmware() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let deb = deb_image(t.path(), 600, RESTORED_SYSTEM);
    let (disk, vars) = old_system_disk(t.path(), &format!("{REPORT}{OLD_SYSTEM}"));
    add_unallocated(&disk, 650);
    let run = old_system_guest(vec![disk, deb], vars, Duration::from_secs(1200))
        .run_ok(&t.path().join("vm"));
    for (i, r) in run.values("report").iter().enumerate() {
        println!("boot {}: {r}", i + 1);
    }
    let args = run.get("native_args");
    assert!(
        args.starts_with("rdinit=/lr/init root=PARTUUID=")
            && args.contains("liverestore.deadline=60"),
        "{args}"
    );
    // the trial armed the deadline and mapped nothing
    run.assert_console_counts(&[
        ("trial deadline armed", 1),
        ("boots natively from its own partition", 1),
    ]);
    assert!(
        run.console.contains("boot 1 of 'deb' noted"),
        "{}",
        run.output()
    );
    run.assert_values(&[
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        ("native_partition", "1"),
        ("next_armed_1", "restored system (trial, once)"),
        ("deb_boot_1", "running"),
        ("deb_failed_1", ""),
        ("deb_root_1", "/dev/vda3"),
        ("deb_by_uuid_1", "1"),
        ("deb_next_after_commit", "restored system (default)"),
        ("old-system_boot_2", "running"),
        ("took_back", "1"),
        ("partition_left", "0"),
        ("esp_left", "0"),
        ("entries_left", "0"),
        ("records_left", "0"),
        ("activation_left", "0"),
    ]);
    let next = run.get("deb_next_after_rollback");
    assert!(next.starts_with("old system"), "{next}");
}
