//! A real Debian 12 system (the initramfs-tools one of
//! `tests/common/debian.rs`, its initrd zstd with an archive in front)
//! restored and booted through the firmware (`Boot####`, `BootNext`, no
//! GRUB on the way), natively and then mapped: each time a trial that
//! commits, a default boot, and a rollback from the restored side. (The
//! mapped trial that hangs and comes back by the watchdog, and GRUB both
//! ways, are in `tests/guest/debian.rs` and `tests/guest/secure_boot.rs`.)

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
  # deb committed natively, was started by default, rolled back from its
  # side; now the same staging, mapped from its extents (activate first
  # takes back what the ended native activation left: partition 3)
  liverestore activate deb --loader uefi --boot mapped --trial-deadline 60s > /tmp/activate.out 2>&1
  cat /tmp/activate.out
  echo "LR mapped_took_back=$(grep -c "activation of 'deb' is over" /tmp/activate.out || true)"
  echo "LR mapped_rehashed=$(grep -c 'changed by its own boot' /tmp/activate.out || true)"
  echo "LR mapped_partition=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  echo "LR report=old system ($state): the native boots rolled back; 'deb' re-hashed after them and activated again, mapped, for the firmware"
  systemctl reboot
  ;;
3)
  liverestore discard deb
  echo "LR esp_left=$(ls /boot/efi | grep -c liverestore || true)"
  echo "LR entries_left=$(efibootmgr | grep -c liverestore || true)"
  echo "LR records_left=$(ls /var/lib/liverestore/images | wc -l)"
  echo "LR activation_left=$(ls /var/lib/liverestore | grep -c activation || true)"
  echo "LR report=old system ($state): both rolled back from the restored side; discarded 'deb'"
  echo "== scenario exit 0"
  systemctl poweroff
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
case $host/$n in
deb/1|deb/3)
  liverestore commit
  echo "LR deb_next_after_commit_$n=$(next)"
  echo "LR report=restored 'deb' ($state) on $(findmnt -n -o SOURCE /), a trial through the firmware: committed"
  systemctl reboot
  ;;
deb/2|deb/4)
  liverestore rollback
  echo "LR deb_next_after_rollback_$n=$(next)"
  echo "LR report=restored 'deb' ($state) on $(findmnt -n -o SOURCE /), started by the firmware by default: rolled back from its side"
  systemctl reboot
  ;;
esac
"#;

/// Seven boots under OVMF: (1) the old system stages the initramfs-tools
/// system whole into the unallocated space after its partitions and
/// activates it for the firmware; `--boot auto` is native: a partition over
/// the image, a `Boot####` straight to the image's kernel with
/// `root=PARTUUID=…`; (2) it runs from /dev/vda3 and commits; (3) the
/// firmware starts it by default (its `BootOrder`), it rolls back from its
/// side; (4) the old system activates the same
/// staging mapped (`--boot mapped`: device-mapper over its extents), which
/// first takes back what the native activation left (partition 3) and
/// accepts and re-hashes the changes of the two noted boots; (5) it
/// runs from /dev/dm-0 and commits; (6) the firmware starts it by default,
/// it rolls back; (7) the old system discards it: nothing left on the ESP,
/// in the firmware's boot entries or in the state directory.
#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn a_real_debian_system_commits_natively_then_mapped_through_the_firmware() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let deb = deb_image(t.path(), 600, RESTORED_SYSTEM);
    let (disk, vars) = old_system_disk(t.path(), &format!("{REPORT}{OLD_SYSTEM}"));
    add_unallocated(&disk, 650);
    let run = old_system_guest(vec![disk, deb], vars, Duration::from_secs(1500))
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
    // both trials armed the deadline; both default boots said committed
    assert_eq!(run.console.matches("trial deadline armed").count(), 2);
    assert_eq!(
        run.console
            .matches("liverestore: committed: no trial deadline")
            .count(),
        2
    );
    // the native trial and the native default boot mapped nothing
    assert_eq!(
        run.console
            .matches("boots natively from its own partition")
            .count(),
        2,
        "{}",
        run.output()
    );
    assert!(
        run.console.contains("boot 4 of 'deb' noted"),
        "{}",
        run.output()
    );
    let mut expected: Vec<(String, &str)> = [
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        ("native_partition", "1"),
        ("next_armed_1", "restored system (trial, once)"),
        ("old-system_boot_2", "running"),
        ("mapped_took_back", "1"),
        ("mapped_rehashed", "1"),
        ("mapped_partition", "0"),
        ("old-system_boot_3", "running"),
        ("esp_left", "0"),
        ("entries_left", "0"),
        ("records_left", "0"),
        ("activation_left", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    // every boot of deb: natively from the partition, then mapped
    for n in 1..=4 {
        let root = if n <= 2 { "/dev/vda3" } else { "/dev/dm-0" };
        expected.extend([
            (format!("deb_boot_{n}"), "running"),
            (format!("deb_failed_{n}"), ""),
            (format!("deb_root_{n}"), root),
            (format!("deb_by_uuid_{n}"), "1"),
        ]);
    }
    for n in [1, 3] {
        expected.push((
            format!("deb_next_after_commit_{n}"),
            "restored system (default)",
        ));
    }
    let expected: Vec<(&str, &str)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    run.assert_values(&expected);
    for n in [2, 4] {
        let next = run.get(&format!("deb_next_after_rollback_{n}"));
        assert!(next.starts_with("old system"), "{next}");
    }
}
