//! A warm standby that takes over by itself: the real Debian 12 old
//! system (`tests/common/debian.rs`: UEFI, GRUB installed by its own
//! `grub-install` and `update-grub`) copies itself into a standby
//! (`snapshot`), arms it (`activate --standby`, through GRUB), and is
//! then broken so that it cannot come up; GRUB counts the failed boots in
//! `grubenv` and, once there were as many as armed, starts the standby,
//! which reports itself, rolls back and commits.

use std::time::Duration;

use crate::common::debian::{old_system_disk, old_system_guest};
use crate::common::*;
use crate::debian::REPORT;

const SCENARIO: &str = r#"
left() { liverestore --json status | grep -o '"failed_boots_left":[0-9]*' | cut -d: -f2; }
if [ "$(findmnt -n -o SOURCE /)" = /dev/vda2 ]; then
case $n in
1)
  # a failed boot must reboot by itself: panic=N, as `activate --standby`
  # tells an administrator whose command line lacks it
  sed -i 's/^GRUB_CMDLINE_LINUX="/GRUB_CMDLINE_LINUX="panic=5 /' /etc/default/grub
  update-grub 2>/dev/null
  liverestore snapshot --name sb --dir /
  liverestore --json activate sb --standby --failed-boots 2 > /tmp/activate.json 2>/tmp/activate.err
  cat /tmp/activate.err
  echo "LR standby_trial=$(grep -o '"trial":[a-z]*' /tmp/activate.json | cut -d: -f2)"
  echo "LR standby_warning=$(grep -c '"warning"' /tmp/activate.json || true)"
  echo "LR standby_through=$(grep -c '"fallback":"--standby: through GRUB, which counts' /tmp/activate.json || true)"
  liverestore status
  echo "LR armed_next=$(next)"
  echo "LR armed_left=$(left)"
  echo "LR armed_unit=$(systemctl is-enabled liverestore-healthy-boot.service)"
  # one failed boot counted (in place, as GRUB's save_env writes it),
  # then a healthy one: the unit puts the count back
  at=$(grep -abo 'liverestore_tries=2' /boot/grub/grubenv | cut -d: -f1)
  printf 1 | dd of=/boot/grub/grubenv bs=1 seek=$((at + 18)) conv=notrunc,fsync 2>/dev/null
  echo "LR counted_left=$(left)"
  systemctl start liverestore-healthy-boot.service
  echo "LR reset_left=$(left)"
  echo "LR reset_said=$(journalctl -u liverestore-healthy-boot.service -o cat | grep -c 'is back to 2 (it was 1)' || true)"
  # broken: the init fails at once; the kernel panics and reboots
  ln -sf /bin/false /sbin/init
  echo "LR report=old system ($state): copied itself into standby 'sb', armed it after 2 failed boots, broke its init"
  systemctl reboot
  ;;
esac
else
case $n in
2)
  # the standby (a copy of the old system: its hostname, its boot count)
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

/// Four boots under OVMF: (1) the old system, its command line given
/// `panic=5`, snapshots itself into standby `sb` and arms it after 2
/// failed boots; a failed boot counted by hand and the healthy-boot unit
/// started show the count put back; it breaks its init (`/sbin/init` →
/// `/bin/false`) and reboots; (2, 3) GRUB counts the boot down and starts
/// the installed system, whose kernel panics (init exited) and reboots;
/// (4) none left: GRUB starts the standby, mapped from its container; it
/// is the copy (its own init), says so in `status`, rolls back (the next
/// boot would be the installed system's) and commits (its own).
#[test]
#[ignore = "needs root, debootstrap and QEMU: real Debian systems in guests (scripts/test.sh runs it)"]
fn a_broken_system_fails_over_to_its_standby_by_itself() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let (disk, vars) = old_system_disk(t.path(), &format!("{REPORT}{SCENARIO}"));
    let run =
        old_system_guest(vec![disk], vars, Duration::from_secs(1200)).run_ok(&t.path().join("vm"));
    for (i, r) in run.values("report").iter().enumerate() {
        println!("boot {}: {r}", i + 1);
    }
    // two failed boots of the installed system, then the standby
    run.assert_console_counts(&[("Attempted to kill init", 2)]);
    run.assert_in_order(&["LR armed_next", "Attempted to kill init", "LR sb_restored"]);
    run.assert_values(&[
        ("old-system_boot_1", "running"),
        ("old-system_failed_1", ""),
        ("standby_trial", "false"),
        ("standby_warning", "0"),
        ("standby_through", "1"),
        ("armed_next", "old system (GRUB's default entry)"),
        ("armed_left", "2"),
        ("armed_unit", "enabled"),
        ("counted_left", "1"),
        ("reset_left", "2"),
        ("reset_said", "1"),
        // the standby: the copy of the old system, from its container
        ("old-system_boot_2", "running"),
        ("old-system_failed_2", ""),
        ("old-system_root_2", "/dev/dm-0"),
        ("sb_restored", "true"),
        (
            "sb_next",
            "standby (the installed system failed its boots in a row)",
        ),
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
    assert!(
        run.console.contains("boot 1 of 'sb' noted"),
        "{}",
        run.output()
    );
}
