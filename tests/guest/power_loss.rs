//! Power loss during activation, commit and rollback, under OVMF: the guest's
//! liverestore is built with failpoints (src/failpoint.rs), so
//! `LIVERESTORE_FAILPOINT=STEP` cuts the power right after STEP — no sync,
//! no cleanup. Each QEMU run below ends that way; the disk and the
//! firmware's variables carry over to the next run, which must boot one of
//! the two systems, whose `status` must say what the next boot starts, and
//! whose `rollback` must clean up whatever the interrupted step left.

use std::path::Path;

use crate::common::vm::{EXT4, GuestRun, VIRTIO_BLK};
use crate::common::*;
use crate::uefi::{ESP_MIB, old_system_guest};

const PRELUDE: &str = r#"
entries() { ls /sys/firmware/efi/efivars | grep -c '^Boot[0-9A-F][0-9A-F][0-9A-F][0-9A-F]-' || true; }
activated() { liverestore --json status | grep -c '"activation":{' || true; }
report() {
  echo "LR $1_old_up=yes"
  echo "LR $1_next=$(next)"
  echo "LR $1_entries=$(entries)"
  echo "LR $1_activated=$(activated)"
}
cut_power_after() { LIVERESTORE_FAILPOINT="$1" liverestore activate web --esp /mnt/esp >/dev/null; echo "LR activate_failed=$?"; }
"#;

/// The restored system: reports itself; activated with `lr.test=commit`
/// it commits — losing power right after `BootOrder` is written — when
/// it was started by `BootNext`, and rolls back when started by default.
const RESTORED_SYSTEM: &str = r#"
echo "LR restored_up=$(cat /etc/hostname)"
if grep -q lr.test=commit /proc/cmdline; then
  mount -t efivarfs efivarfs /sys/firmware/efi/efivars
  now=$(liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4)
  echo "LR restored_next=$now"
  case "$now" in
  old*) LIVERESTORE_FAILPOINT=commit:boot-order liverestore commit >/dev/null ;;
  *) liverestore rollback >/dev/null && echo "LR restored_rollback=ok" ;;
  esac
fi
reboot -f
"#;

/// One QEMU run with this run's old-system scenario.
fn run(t: &Path, disks: &[std::path::PathBuf], name: &str, scenario: &str) -> GuestRun {
    let run = old_system_guest(
        disks.to_vec(),
        vec!["mkfs.ext4", "e2fsck"],
        &format!("{PRELUDE}{scenario}"),
        Some(t.join("OVMF_VARS.fd")),
    )
    .run(&t.join(name));
    println!("== {name} ({:?}):\n{}", run.elapsed, run.output());
    run
}

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn power_loss_during_activate_commit_and_rollback_leaves_a_bootable_machine() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = gpt_disk_file(
        &t.path().join("host-disk.img"),
        2 + ESP_MIB + 300,
        &[(1, ESP_MIB, "ef00"), (1 + ESP_MIB, 300, "8300")],
    );
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        RESTORED_SYSTEM,
        &[VIRTIO_BLK, &["dm-mod"], EXT4].concat(),
        &[EXT4, &["efivarfs"]].concat(),
    );
    let disks = [disk, image];

    // A: stage, then lose power once the kernel and initrd are on the ESP.
    let a = run(
        t.path(),
        &disks,
        "a",
        r#"
echo "LR a_entries_before=$(entries)"
liverestore stage /dev/vdb --name web --dir /mnt/host 2>/dev/null
cut_power_after activate:files
"#,
    );
    a.assert_powered_off_at("activate:files");
    let base = a.get("a_entries_before");

    // B: the old system (no boot entry yet); rollback cleans the ESP files
    // and the record; then lose power right after the Boot#### is written.
    let b = run(
        t.path(),
        &disks,
        "b",
        r#"
report b
liverestore rollback >/dev/null && echo "LR b_rollback=ok"
echo "LR b_esp_files=$(ls /mnt/esp | grep -c liverestore || true)"
cut_power_after activate:boot-entry
"#,
    );
    b.assert_powered_off_at("activate:boot-entry");
    assert_eq!(b.get("b_old_up"), "yes");
    assert_eq!(b.get("b_next"), "old system (the firmware's BootOrder)");
    assert_eq!(b.get("b_entries"), base);
    assert_eq!(
        b.get("b_activated"),
        "1",
        "status shows the half-done activation"
    );
    assert_eq!(b.get("b_rollback"), "ok");
    assert_eq!(b.get("b_esp_files"), "0");

    // C: the old system again (Boot#### exists, BootNext does not);
    // rollback removes the entry; lose power once BootNext is set.
    let c = run(
        t.path(),
        &disks,
        "c",
        r#"
report c
liverestore rollback >/dev/null && echo "LR c_rollback=ok"
echo "LR c_entries_after=$(entries)"
cut_power_after activate:boot-next
"#,
    );
    c.assert_powered_off_at("activate:boot-next");
    assert_eq!(c.get("c_next"), "old system (the firmware's BootOrder)");
    assert_eq!(
        c.get("c_entries").parse::<u32>().unwrap(),
        base.parse::<u32>().unwrap() + 1,
        "the Boot#### written before the power cut"
    );
    assert_eq!(c.get("c_rollback"), "ok");
    assert_eq!(c.get("c_entries_after"), base);

    // D: BootNext was set: the restored system starts, then reboots into
    // the old one, whose rollback loses power between clearing BootOrder
    // and deleting the Boot####.
    let d = run(
        t.path(),
        &disks,
        "d",
        r#"
report d
LIVERESTORE_FAILPOINT=rollback:boot-order liverestore rollback >/dev/null
"#,
    );
    d.assert_powered_off_at("rollback:boot-order");
    d.assert_values(&[
        ("restored_up", "restored-system"),
        ("d_old_up", "yes"),
        ("d_next", "old system (the firmware's BootOrder)"),
        ("d_activated", "1"),
    ]);

    // E: the old system; rollback finishes what was left; nothing remains.
    let e = run(
        t.path(),
        &disks,
        "e",
        r#"
report e
liverestore rollback >/dev/null && echo "LR e_rollback=ok"
echo "LR e_entries_after=$(entries)"
echo "LR e_activated_after=$(activated)"
echo "LR e_esp_files=$(ls /mnt/esp | grep -c liverestore || true)"
liverestore verify web >/dev/null 2>&1 && echo "LR e_verify=ok"
umount /mnt/esp /mnt/host
e2fsck -f -n /dev/vda2 >/dev/null && echo "LR e_fsck=clean"
"#,
    );
    e.assert_ok();
    assert_eq!(e.get("e_next"), "old system (the firmware's BootOrder)");
    assert_eq!(e.get("e_rollback"), "ok");
    assert_eq!(e.get("e_entries_after"), base);
    assert_eq!(e.get("e_activated_after"), "0");
    assert_eq!(e.get("e_esp_files"), "0");
    assert_eq!(e.get("e_verify"), "ok", "the staged image survived it all");
    assert_eq!(e.get("e_fsck"), "clean");

    // F: activate once more; BootNext starts the restored system, whose
    // `commit` loses power right after it wrote BootOrder.
    let f = run(
        t.path(),
        &disks,
        "f",
        r#"
liverestore activate web --esp /mnt/esp --append lr.test=commit >/dev/null && echo "LR f_activate=ok"
umount /mnt/esp /mnt/host
reboot -f
"#,
    );
    f.assert_powered_off_at("commit:boot-order");
    assert_eq!(f.get("f_activate"), "ok");
    assert_eq!(
        f.get("restored_next"),
        "old system (the firmware's BootOrder)"
    );

    // G: the commit held: the firmware starts the restored system by
    // default; it rolls back from its side; the old system comes up, says
    // it boots next, and its rollback leaves nothing.
    let g = run(
        t.path(),
        &disks,
        "g",
        r#"
report g
liverestore rollback >/dev/null && echo "LR g_rollback=ok"
echo "LR g_entries_after=$(entries)"
echo "LR g_activated_after=$(activated)"
echo "LR g_esp_files=$(ls /mnt/esp | grep -c liverestore || true)"
umount /mnt/esp /mnt/host
e2fsck -f -n /dev/vda2 >/dev/null && echo "LR g_fsck=clean"
"#,
    );
    g.assert_ok();
    assert_eq!(
        g.get("restored_next"),
        "restored system (default)",
        "the commit survived the power cut"
    );
    assert_eq!(g.get("restored_rollback"), "ok");
    assert!(
        g.console.find("LR restored_up").unwrap() < g.console.find("LR g_old_up").unwrap(),
        "the restored system started first, by default"
    );
    assert_eq!(g.get("g_next"), "old system (the firmware's BootOrder)");
    assert_eq!(g.get("g_rollback"), "ok");
    assert_eq!(g.get("g_entries_after"), base);
    g.assert_values(&[
        ("g_activated_after", "0"),
        ("g_esp_files", "0"),
        ("g_fsck", "clean"),
    ]);
}
