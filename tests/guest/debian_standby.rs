//! A warm standby that takes over by itself, through both routes: the
//! real Debian 12 old system (`tests/common/debian.rs`: UEFI, GRUB
//! installed by its own `grub-install` and `update-grub`) copies itself
//! into a standby (`snapshot`) and arms it through the firmware
//! (`activate --standby --loader uefi`: the standby's `Boot####` first in
//! `BootOrder`, the installed system's own entry in `BootNext`, put back
//! by the units at every boot while failed boots are left); it is broken
//! so that it cannot come up, and the firmware starts the standby, which
//! reports itself, repairs the installed system and rolls back. Then the
//! same standby is armed through GRUB, which counts the failed boots in
//! `grubenv`; once there were as many as armed, GRUB starts it, and it
//! rolls back and commits.

use std::time::Duration;

use crate::common::debian::{old_system_disk, old_system_guest};
use crate::common::*;
use crate::debian::REPORT;

const SCENARIO: &str = r#"
left() { liverestore --json status | grep -o '"failed_boots_left":[0-9]*' | cut -d: -f2; }
loader() { liverestore --json status | grep -o '"standby":{"loader":"[a-z]*"' | cut -d'"' -f6; }
efi() { efibootmgr | sed -n "s/^$1: //p"; }
if [ "$(findmnt -n -o SOURCE /)" = /dev/vda2 ]; then
case $n in
1)
  # a failed boot must reboot by itself: panic=N, as `activate --standby`
  # tells an administrator whose command line lacks it
  sed -i 's/^GRUB_CMDLINE_LINUX="/GRUB_CMDLINE_LINUX="panic=1 /' /etc/default/grub
  update-grub 2>/dev/null
  # (sized to the copy: every byte of it is hashed three times here)
  liverestore snapshot --name sb --dir / --size 400M
  # from here the installed system counts its boots from 11 (the copy,
  # from 2)
  echo 10 > /var/lib/lr-boots
  efi BootCurrent > /var/lib/lr-installed-entry
  # the firmware's route: the standby's Boot#### first in BootOrder, this
  # system's own entry in BootNext
  liverestore --json activate sb --standby --loader uefi --failed-boots 1 > /tmp/activate.json 2>/tmp/activate.err
  cat /tmp/activate.err
  sbn=$(printf %04X "$(grep -o '"boot_number":[0-9]*' /tmp/activate.json | head -1 | cut -d: -f2)")
  echo "LR uefi_trial=$(grep -o '"trial":[a-z]*' /tmp/activate.json | cut -d: -f2)"
  echo "LR uefi_through=$(grep -c '"fallback":"--standby: through the firmware' /tmp/activate.json || true)"
  efibootmgr
  echo "LR uefi_entry=$(efibootmgr | grep -c "^Boot$sbn\* liverestore standby sb" || true)"
  echo "LR uefi_first=$([ "$(efi BootOrder | cut -d, -f1)" = "$sbn" ] && echo standby)"
  echo "LR uefi_boot_next=$([ "$(efi BootNext)" = "$(cat /var/lib/lr-installed-entry)" ] && echo installed)"
  liverestore status
  echo "LR uefi_armed_next=$(next)"
  echo "LR uefi_armed_left=$(left)"
  echo "LR uefi_armed_loader=$(loader)"
  echo "LR uefi_units=$(systemctl is-enabled liverestore-count-boot.service liverestore-healthy-boot.service | xargs)"
  # this boot counted by hand: none left, the standby would be next;
  # healthy: the count and BootNext back
  systemctl start liverestore-count-boot.service
  echo "LR uefi_counted_next=$(next)"
  echo "LR uefi_counted_left=$(left)"
  systemctl start liverestore-healthy-boot.service
  echo "LR uefi_reset_next=$(next)"
  echo "LR uefi_reset_left=$(left)"
  echo "LR uefi_reset_said=$(journalctl -u liverestore-healthy-boot.service -o cat | grep -c 'is back to 1 (it was 0); BootNext: Boot' || true)"
  # broken: the init fails at once; the kernel panics and reboots
  ln -sf /bin/false /sbin/init
  echo "LR report=old system ($state): copied itself into standby 'sb', armed it through the firmware after 1 failed boot, broke its init"
  systemctl reboot
  ;;
11)
  # back after the standby rolled back: both units ran early in this
  # boot and at its end, and found the standby's entry gone
  echo "LR back_current=$([ "$(efi BootCurrent)" = "$(cat /var/lib/lr-installed-entry)" ] && echo installed)"
  echo "LR back_counted=$(journalctl -b -u liverestore-count-boot.service -o cat | grep -c 'is gone (committed or rolled back from the standby)' || true)"
  echo "LR back_healthy=$(journalctl -b -u liverestore-healthy-boot.service -o cat | grep -c 'is gone (committed or rolled back from the standby)' || true)"
  echo "LR back_next=$(next)"
  liverestore rollback
  echo "LR back_left=$(ls /etc/systemd/system /etc/systemd/system/*.wants /boot/efi/liverestore /var/lib/liverestore/standby-count.json 2>/dev/null | grep -c 'liverestore-\|^sb$\|standby-count' || true)"
  echo "LR back_entry=$(efibootmgr | grep -c liverestore || true)"
  # GRUB's route, for the same standby
  liverestore --json activate sb --standby --failed-boots 1 > /tmp/activate.json 2>/tmp/activate.err
  cat /tmp/activate.err
  echo "LR standby_trial=$(grep -o '"trial":[a-z]*' /tmp/activate.json | cut -d: -f2)"
  echo "LR standby_warning=$(grep -c '"warning"' /tmp/activate.json || true)"
  echo "LR standby_through=$(grep -c '"fallback":"--standby: through GRUB, which counts' /tmp/activate.json || true)"
  liverestore status
  echo "LR armed_next=$(next)"
  echo "LR armed_left=$(left)"
  echo "LR armed_loader=$(loader)"
  echo "LR armed_unit=$(systemctl is-enabled liverestore-healthy-boot.service)"
  # one failed boot counted (in place, as GRUB's save_env writes it):
  # none left, the standby is next; then a healthy one: the unit puts
  # the count back
  at=$(grep -abo 'liverestore_tries=1' /boot/grub/grubenv | cut -d: -f1)
  printf 0 | dd of=/boot/grub/grubenv bs=1 seek=$((at + 18)) conv=notrunc,fsync 2>/dev/null
  echo "LR counted_left=$(left)"
  echo "LR counted_next=$(next)"
  systemctl start liverestore-healthy-boot.service
  echo "LR reset_left=$(left)"
  echo "LR reset_said=$(journalctl -b -u liverestore-healthy-boot.service -o cat | grep -c 'is back to 1 (it was 0)$' || true)"
  ln -sf /bin/false /sbin/init
  echo "LR report=old system ($state): rolled back, armed 'sb' through GRUB after 1 failed boot, broke its init again"
  systemctl reboot
  ;;
esac
else
case $n in
2)
  # the standby, started by the firmware (BootOrder) after the failed boot
  echo "LR uefi_sb_restored=$(liverestore --json status | grep -o '"booted_restored":[a-z]*' | cut -d: -f2)"
  echo "LR uefi_sb_next=$(next)"
  echo "LR uefi_sb_loader=$(loader)"
  echo "LR uefi_sb_init=$(readlink /sbin/init)"
  liverestore status
  # the installed system repaired from here, then back to it (through a
  # loop device: the standby's device-mapper table holds the disk, so its
  # partitions cannot be mounted directly)
  mkdir -p /mnt/installed
  mount -o loop /dev/vda2 /mnt/installed
  ln -sf /lib/systemd/systemd /mnt/installed/sbin/init
  umount /mnt/installed
  liverestore rollback
  echo "LR uefi_sb_next_after_rollback=$(next)"
  echo "LR report=standby 'sb' ($state) on $(findmnt -n -o SOURCE /), started by the firmware: repaired the installed system's init, rolled back"
  systemctl reboot
  ;;
3)
  # the standby again, started by GRUB after the failed boots
  echo "LR sb_restored=$(liverestore --json status | grep -o '"booted_restored":[a-z]*' | cut -d: -f2)"
  echo "LR sb_next=$(next)"
  echo "LR sb_left=$(left)"
  echo "LR sb_init=$(readlink /sbin/init)"
  echo "LR sb_fstab_esp=$(grep -c '^# UUID=.* /boot/efi vfat' /etc/fstab || true)"
  liverestore status
  liverestore rollback
  echo "LR sb_next_after_rollback=$(next)"
  liverestore commit
  echo "LR sb_next_after_commit=$(next)"
  echo "LR sb_left_after_commit=$(left)"
  echo "LR report=standby 'sb' ($state) on $(findmnt -n -o SOURCE /), started by GRUB after the failed boots: rolled back, then committed"
  echo "== scenario exit 0"
  systemctl poweroff
  ;;
esac
fi
"#;

/// Six boots under OVMF. The firmware's route: (1) the old system, its
/// command line given `panic=1`, snapshots itself into standby `sb` and
/// arms it through the firmware after 1 failed boot; its count unit and
/// healthy-boot unit started by hand show the count down (the standby
/// next) and back (`BootNext` on this system again); it breaks its init
/// (`/sbin/init` → `/bin/false`) and reboots; (2) started from
/// `BootNext`, its kernel panics (init exited) before the count unit
/// could set `BootNext` again, and reboots; (3) the firmware starts `sb`
/// (first in `BootOrder`), mapped from its container: it is the copy,
/// says so, repairs the installed system's init and rolls back. GRUB's
/// route: (4) the installed system is back (both units ran at its boot
/// and found the standby's entry gone), cleans up, arms `sb` through GRUB
/// after 1 failed boot (a failed boot counted in `grubenv` by hand, and
/// the healthy-boot unit putting the count back) and breaks its init
/// again; (5) GRUB counts the boot down and starts the installed system,
/// which panics; (6) none left: GRUB starts `sb`, which rolls back (the
/// next boot would be the installed system's) and commits. (GRUB counting
/// from more than 1 is `grub_format`'s unit test and the host test's.)
#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn a_broken_system_fails_over_to_its_standby_by_itself() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let (disk, vars) = old_system_disk(t.path(), &format!("{REPORT}{SCENARIO}"));
    let run =
        old_system_guest(vec![disk], vars, Duration::from_secs(1500)).run_ok(&t.path().join("vm"));
    for (i, r) in run.values("report").iter().enumerate() {
        println!("report {}: {r}", i + 1);
    }
    // one failed boot through the firmware, one through GRUB
    run.assert_console_counts(&[("Attempted to kill init", 2)]);
    run.assert_in_order(&[
        "LR uefi_armed_next",
        "Attempted to kill init",
        "LR uefi_sb_restored",
        "LR back_healthy",
        "LR armed_next",
        "LR sb_restored",
    ]);
    let standby_starts = "standby (the installed system failed its boots in a row)";
    run.assert_values(&[
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        // the firmware's route
        ("uefi_trial", "false"),
        ("uefi_through", "1"),
        ("uefi_entry", "1"),
        ("uefi_first", "standby"),
        ("uefi_boot_next", "installed"),
        ("uefi_armed_next", "old system (BootNext)"),
        ("uefi_armed_left", "1"),
        ("uefi_armed_loader", "uefi"),
        ("uefi_units", "enabled enabled"),
        ("uefi_counted_next", standby_starts),
        ("uefi_counted_left", "0"),
        ("uefi_reset_next", "old system (BootNext)"),
        ("uefi_reset_left", "1"),
        ("uefi_reset_said", "1"),
        ("old-system_boot_2", "running"),
        ("old-system_failed_2", ""),
        ("old-system_root_2", "/dev/dm-0"),
        ("uefi_sb_restored", "true"),
        ("uefi_sb_next", standby_starts),
        ("uefi_sb_loader", "uefi"),
        ("uefi_sb_init", "/lib/systemd/systemd"),
        (
            "uefi_sb_next_after_rollback",
            "old system (the firmware's BootOrder)",
        ),
        // back on the installed system: what was left of the firmware's
        // route is gone after its rollback
        ("old-system_boot_11", "running"),
        ("old-system_failed_11", ""),
        ("back_current", "installed"),
        ("back_counted", "1"),
        ("back_healthy", "1"),
        ("back_next", "old system (the firmware's BootOrder)"),
        ("back_left", "0"),
        ("back_entry", "0"),
        // GRUB's route
        ("standby_trial", "false"),
        ("standby_warning", "0"),
        ("standby_through", "1"),
        ("armed_next", "old system (GRUB's default entry)"),
        ("armed_left", "1"),
        ("armed_loader", "grub"),
        ("armed_unit", "enabled"),
        ("counted_left", "0"),
        ("counted_next", standby_starts),
        ("reset_left", "1"),
        ("reset_said", "1"),
        ("old-system_boot_3", "running"),
        ("old-system_failed_3", ""),
        ("old-system_root_3", "/dev/dm-0"),
        ("sb_restored", "true"),
        ("sb_next", standby_starts),
        ("sb_left", "0"),
        ("sb_init", "/lib/systemd/systemd"),
        ("sb_fstab_esp", "1"),
        (
            "sb_next_after_rollback",
            "old system (GRUB's default entry)",
        ),
        ("sb_next_after_commit", "restored system (default)"),
        ("sb_left_after_commit", ""),
    ]);
    for boot in 1..=2 {
        assert!(
            run.console.contains(&format!("boot {boot} of 'sb' noted")),
            "{}",
            run.output()
        );
    }
}
