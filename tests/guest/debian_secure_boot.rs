//! A real Debian 12 system restored and trial-booted natively under
//! Secure Boot (`tests/guest/debian.rs` has the systems and the mapped
//! run).

use std::time::Duration;

use crate::common::debian::{add_unallocated, old_system_disk, old_system_guest_secure_boot};
use crate::common::*;
use crate::debian::{REPORT, boot_file, initramfs_tools_image, uncompressed_initrd};

const OLD_SYSTEM_SECURE_BOOT: &str = r#"
case $n in
1)
  echo "LR sb_firmware=$(liverestore --json status | grep -o '"secure_boot":[a-z]*' | cut -d: -f2)"
  echo "LR sb_lockdown=$(cat /sys/kernel/security/lockdown)"
  # whole in the unallocated space after the old system's partitions
  liverestore stage /dev/vdb --name deb --dir / --unallocated --contiguous
  # straight to the kernel: the firmware would refuse it; said up front
  rc=0; liverestore activate deb --loader uefi 2>/tmp/uefi.err || rc=$?
  echo "LR sb_uefi_refused=$rc"
  echo "LR sb_uefi_why=$(grep -c 'Secure Boot is on' /tmp/uefi.err || true)"
  # a kernel without a signature: shim would refuse it; said up front
  liverestore stage /dev/vdc --name unsigned --dir /
  rc=0; liverestore activate unsigned 2>/tmp/unsigned.err || rc=$?
  echo "LR sb_unsigned_refused=$rc"
  echo "LR sb_unsigned_why=$(grep -c 'carries no signature' /tmp/unsigned.err || true)"
  liverestore discard unsigned
  # the default goes shim → signed GRUB → the image's signed kernel, and
  # boots it natively: a partition over the image, root=PARTUUID
  liverestore --json activate deb --trial-deadline 300s > /tmp/activate.json
  echo "LR sb_grub=$(grep -c '"grub":{' /tmp/activate.json || true)"
  echo "LR sb_fallback=$(grep -c 'Secure Boot is on: through GRUB' /tmp/activate.json || true)"
  echo "LR deb_native=$(grep -o '"native":\[{"staging":"deb"' /tmp/activate.json | wc -l)"
  echo "LR deb_args=$(grep -o '"args":"[^"]*"' /tmp/activate.json | cut -d'"' -f4)"
  echo "LR deb_partition=$(ls /sys/block/vda | grep -c '^vda3$')"
  echo "LR report=old system ($state, Secure Boot): staged 'deb' whole in unallocated space, refused a Boot#### to its kernel and an unsigned kernel, activated 'deb' natively through GRUB"
  systemctl reboot
  ;;
2)
  # deb committed and rolled back from its side
  liverestore rollback
  echo "LR deb_partition_left=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  # a health check that never passes: the auto-commit gives up and
  # reboots (customize first accepts the changes of the noted boot)
  liverestore customize deb --auto-commit --health 'test -e /run/never' --commit-within 10s 2>/tmp/customize.err
  echo "LR deb_rehashed=$(grep -c 'changed by its own boot' /tmp/customize.err || true)"
  echo "LR report=old system ($state): rolled back; 'deb' re-hashed after its boot and given an auto-commit that will not pass; activating it again"
  liverestore activate deb --trial-deadline 300s --reboot
  ;;
3)
  echo "LR trial_ended_3=$(liverestore --json status | grep -o '"trial_ended":[a-z]*' | cut -d: -f2)"
  # what deb's auto-commit said before it rebooted, from its journal
  mkdir -p /mnt/deb
  mount -o ro,noload /dev/vda3 /mnt/deb
  echo "LR deb_gave_up=$(journalctl -D /mnt/deb/var/log/journal -u liverestore-auto-commit -o cat | grep -c 'did not pass within 10 s' || true)"
  echo "LR deb_auto_commit_kept=$(ls /mnt/deb/etc/systemd/system | grep -c liverestore-auto-commit || true)"
  umount /mnt/deb
  liverestore rollback
  liverestore discard deb
  echo "LR deb_partition_left_3=$(ls /sys/block/vda | grep -c '^vda3$' || true)"
  echo "LR grub_left=$(ls /boot/grub | grep -c custom.cfg || true)"
  echo "LR files_left=$(ls /boot/liverestore 2>/dev/null | wc -l)"
  echo "LR report=old system ($state, nobody committed): rolled back and discarded 'deb'"
  echo "== scenario exit 0"
  systemctl poweroff
  ;;
esac
"#;

const RESTORED_SYSTEM_SECURE_BOOT: &str = r#"
case $host/$n in
deb/1)
  echo "LR sb_restored_firmware=$(liverestore --json status | grep -o '"secure_boot":[a-z]*' | cut -d: -f2)"
  echo "LR sb_restored_lockdown=$(cat /sys/kernel/security/lockdown)"
  liverestore commit
  echo "LR deb_next_after_commit=$(next)"
  # (GRUB's default boot of a committed system: tests/guest/grub.rs)
  liverestore rollback
  echo "LR deb_next_after_rollback=$(next)"
  echo "LR report=restored 'deb' ($state) natively on $(findmnt -n -o SOURCE /) under Secure Boot (its signed kernel through shim and GRUB): committed, then rolled back from its side"
  systemctl reboot
  ;;
deb/2)
  echo "LR report=restored 'deb' ($state) natively on $(findmnt -n -o SOURCE /), a trial again: nobody commits, its auto-commit's check never passes"
  ;;
esac
"#;

/// Under Secure Boot (Debian's OVMF with Microsoft's keys), natively,
/// five boots. (1) The old system starts through Debian's signed shim and
/// GRUB; it stages the initramfs-tools system (its initrd uncompressed
/// here: the early-boot archive follows a cpio archive, not a compressed
/// stream) whole into the unallocated space after its partitions
/// (`--unallocated --contiguous`); `activate --loader uefi` is refused up
/// front (the firmware would refuse a `Boot####` straight to a kernel that
/// only shim trusts, and the trial would quietly start the old system), as
/// is an image whose kernel is not signed; the default goes through GRUB,
/// whose shim check passes the image's signed kernel, and boots natively:
/// a partition over the image, `root=PARTUUID=…`, the early-boot step only
/// noting the boot and arming the deadline. (2) The restored system runs
/// from /dev/vda3 (under the kernel's lockdown), commits and rolls back
/// from its side (GRUB's default boot of a committed system is
/// `tests/guest/grub.rs`'s); (3) the old system takes the partition back,
/// `customize` accepts the changes of the noted boot and puts in an
/// auto-commit whose health check never passes, and activates it again;
/// (4) its auto-commit gives up and reboots it; (5) the old system,
/// nobody having committed, reads the auto-commit's journal in the image
/// and cleans up.
#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn real_debian_native_trials_under_secure_boot() {
    require_root();
    // what this test relies on: Debian's kernel carries a signature
    let kernel = boot_file("initramfs-tools", "vmlinuz-");
    assert!(liverestore::boot::efi::pe_signed(&kernel).unwrap());
    let t = tempfile::tempdir().unwrap();
    // room for the uncompressed initrd, two boots' journal and the
    // auto-commit's static liverestore (700 MiB was not, ENOSPC, when the
    // tree was 140 MB larger: Ethernet and IIO modules, apt's lists, the
    // documentation)
    let deb = initramfs_tools_image(t.path(), "deb", 640, RESTORED_SYSTEM_SECURE_BOOT);
    let plain_size = uncompressed_initrd(&deb);
    println!(
        "deb's initrd: {plain_size} bytes, uncompressed (the archive in front, then the main one)"
    );
    // the same kernel with its signature taken off (PE32+: the security
    // directory emptied, the certificates cut from the end), and an
    // initrd, in a small image of its own
    let mut bare = kernel.clone();
    let opt = u32::from_le_bytes(bare[0x3c..0x40].try_into().unwrap()) as usize + 24;
    let sec = opt + 112 + 4 * 8;
    let at = u32::from_le_bytes(bare[sec..sec + 4].try_into().unwrap()) as usize;
    bare[sec..sec + 8].fill(0);
    bare.truncate(at);
    assert!(!liverestore::boot::efi::pe_signed(&bare).unwrap());
    let tree = t.path().join("unsigned.tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz-6.1.0-0-unsigned"), &bare).unwrap();
    std::fs::write(tree.join("boot/initrd.img-6.1.0-0-unsigned"), b"070701").unwrap();
    let unsigned = t.path().join("unsigned.ext4");
    mkfs_ext4_from(&tree, &unsigned, 32);
    let (disk, _) = old_system_disk(t.path(), &format!("{REPORT}{OLD_SYSTEM_SECURE_BOOT}"));
    add_unallocated(&disk, 690);
    let run = old_system_guest_secure_boot(
        vec![disk, deb, unsigned],
        t.path(),
        Duration::from_secs(1500),
    )
    .run_ok(&t.path().join("vm"));
    for (i, r) in run.values("report").iter().enumerate() {
        println!("boot {}: {r}", i + 1);
    }
    for key in ["old-system", "deb"] {
        for n in 1..=3 {
            if let Some(up) = run.value(&format!("{key}_uptime_{n}")) {
                println!("{key}, its boot {n}: the scenario started {up} s after the kernel");
            }
        }
    }
    let args = run.get("deb_args");
    assert!(
        args.starts_with("rdinit=/lr/init root=PARTUUID=")
            && args.contains("liverestore.deadline=300"),
        "{args}"
    );
    // both trials armed the deadline from the early-boot step, which
    // mapped nothing and noted every boot
    run.assert_console_counts(&[
        ("trial deadline armed", 2),
        ("boots natively from its own partition", 2),
    ]);
    assert!(
        run.console.contains("boot 2 of 'deb' noted"),
        "{}",
        run.output()
    );
    run.assert_values(&[
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        ("sb_firmware", "true"),
        ("sb_lockdown", "none [integrity] confidentiality"),
        ("sb_uefi_refused", "25"),
        ("sb_uefi_why", "1"),
        ("sb_unsigned_refused", "25"),
        ("sb_unsigned_why", "1"),
        ("sb_grub", "1"),
        ("sb_fallback", "1"),
        ("deb_native", "1"),
        ("deb_partition", "1"),
        ("deb_boot_1", "running"),
        ("deb_failed_1", ""),
        ("deb_root_1", "/dev/vda3"),
        ("deb_by_uuid_1", "1"),
        ("sb_restored_firmware", "true"),
        ("sb_restored_lockdown", "none [integrity] confidentiality"),
        ("deb_next_after_commit", "restored system (default)"),
        ("old-system_boot_2", "running"),
        ("deb_partition_left", "0"),
        ("deb_rehashed", "1"),
        ("deb_boot_2", "running"),
        ("deb_root_2", "/dev/vda3"),
        ("old-system_boot_3", "running"),
        ("trial_ended_3", "true"),
        ("deb_gave_up", "1"),
        ("deb_auto_commit_kept", "1"),
        ("deb_partition_left_3", "0"),
        ("grub_left", "0"),
        ("files_left", "0"),
    ]);
    assert!(
        run.get("deb_next_after_rollback").starts_with("old system"),
        "{}",
        run.get("deb_next_after_rollback")
    );
}
