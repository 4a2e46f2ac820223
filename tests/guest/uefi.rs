//! The UEFI trial boot, end to end under OVMF, six boots in one run: an
//! "old" system (booted by the firmware from its ESP) stages a small
//! bootable system onto its own fragmented ext4 and `activate`s it; the
//! next boot (BootNext) starts the restored system from the staged bytes
//! through the map; nobody commits, so the boot after that is the old
//! system again (`status`: the trial ended, not committed), which rolls
//! back (nothing left), discards it, and takes the same system again from
//! a real DDI server (goosebit on this machine, reached over QEMU's user
//! network): `liverestore ddi --reboot` streams the `.swu` deployment
//! into a staging, activates it and reboots into it at once; the restored
//! system, started once more, `commit`s, which tells the server
//! `closed`/`success` (goosebit then shows the device finished, at the
//! deployment's version); it then starts by default, and rolls back from
//! its side; the old system starts again and removes what was left on
//! the ESP.

use std::path::Path;
use std::time::Duration;

use crate::common::vm::{
    DM_OVER_LOOP, EXT4, Guest, NET_MODULES, NETWORK_UP, Uefi, VFAT, VIRTIO_BLK,
};
use crate::common::*;

pub const ESP_MIB: u64 = 64;

/// GPT: ESP at 1..65 MiB, ext4-to-be after it (300 MiB).
fn host_disk(dir: &Path) -> std::path::PathBuf {
    gpt_disk_file(
        &dir.join("host-disk.img"),
        2 + ESP_MIB + 300,
        &[(1, ESP_MIB, "ef00"), (1 + ESP_MIB, 300, "8300")],
    )
}

/// The "old" system of a UEFI test disk, booted by OVMF from the ESP at
/// 1 MiB (`ESP_MIB` MiB) of `disks[0]`: the modules it needs, `binaries`,
/// and `scenario` after [`OLD_SYSTEM_MOUNTS`]; `vars`: the firmware's
/// variable store to keep across runs (None: a fresh one).
pub fn old_system_guest(
    disks: Vec<std::path::PathBuf>,
    binaries: Vec<&'static str>,
    scenario: &str,
    vars: Option<std::path::PathBuf>,
) -> Guest {
    Guest {
        modules: [VIRTIO_BLK, EXT4, VFAT, DM_OVER_LOOP, &["efivarfs"]].concat(),
        binaries,
        disks,
        scenario: format!("{OLD_SYSTEM_MOUNTS}{scenario}"),
        timeout: Duration::from_secs(600),
        uefi: Some(Uefi {
            esp_offset: MIB,
            esp_size: ESP_MIB * MIB,
            vars,
            startup: true,
            secure_boot: false,
        }),
        ..Guest::default()
    }
}

/// How the "old" system of a UEFI test disk starts: efivarfs, the ESP
/// (partition 1), its ext4 (partition 2, made on the first boot) with the
/// state directory on it, and `next` (what `status` says boots next).
pub const OLD_SYSTEM_MOUNTS: &str = r#"
export LIVERESTORE_STATE_DIR=/mnt/host/var/lib/liverestore
mkdir -p /mnt/host /mnt/esp
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
mount -t vfat /dev/vda1 /mnt/esp
if ! mount -t ext4 /dev/vda2 /mnt/host 2>/dev/null; then
  mkfs.ext4 -q -F -E nodiscard /dev/vda2
  mount -t ext4 /dev/vda2 /mnt/host
fi
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
"#;

const OLD_SYSTEM: &str = r#"
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
  # an ESP too full for the kernel and initrd: refused, nothing left behind
  dd if=/dev/zero of=/mnt/esp/filler bs=1M count=$(( $(df -k /mnt/esp | awk 'NR==2{print $4}') / 1024 - 4 )) 2>/dev/null
  liverestore activate web --esp /mnt/esp >/dev/null 2>&1
  echo "LR esp_full_activate=$?"
  echo "LR esp_full_left=$(ls /mnt/esp | grep -c liverestore)"
  echo "LR esp_full_activated=$(liverestore --json status | grep -c '"activation":{')"
  # efivarfs read-only, and no GRUB to fall back to: said, refused (25)
  mount -o remount,ro /sys/firmware/efi/efivars
  liverestore activate web --esp /mnt/esp --grub-dir /mnt/host/boot/grub 2>/tmp/ro.err >/dev/null
  echo "LR ro_efivars_activate=$?"
  echo "LR ro_efivars_said=$(grep -c 'read-only' /tmp/ro.err)"
  mount -o remount,rw /sys/firmware/efi/efivars
  rm /mnt/esp/filler
  liverestore activate web --esp /mnt/esp --append lr.test=trial >/tmp/activate.out 2>&1
  echo "LR activate=$?"
  cat /tmp/activate.out
  liverestore activate web --esp /mnt/esp >/dev/null 2>&1
  echo "LR activate_twice=$?"
  set -e
  echo "LR next_1=$(next)"
  liverestore --json status | grep -o '"boot_number":[0-9]*' | cut -d: -f2 > /mnt/host/boot-number
  echo "LR esp_files=$(echo $(ls /mnt/esp/liverestore/web))"
  echo "LR report=old system: staged 'web' ($(liverestore --json map web | grep -o '"disk_offset"' | wc -l) extents on its mounted ext4), activated it; next boot: $(next)"
  umount /mnt/esp
  umount /mnt/host
  reboot -f
  ;;
2)
  echo "LR next_2=$(next)"
  echo "LR trial_ended_2=$(liverestore --json status | grep -o '"trial_ended":[a-z]*' | cut -d: -f2)"
  ours=$(printf 'Boot%04X-' "$(cat /mnt/host/boot-number)")
  echo "LR ours_before_rollback=$(ls /sys/firmware/efi/efivars | grep -c "^$ours" || true)"
  liverestore rollback >/dev/null
  echo "LR ours_after_rollback=$(ls /sys/firmware/efi/efivars | grep -c "^$ours" || true)"
  echo "LR next_after_rollback=$(next)"
  echo "LR esp_left=$(ls /mnt/esp | grep -c liverestore || true)"
  # the same system again, from the update server: staged, activated
  # and rebooted into at once (--reboot; no systemd here: sync, then
  # reboot(2)): this time the restored system commits
  liverestore discard web >/dev/null
  echo "LR report=old system again (nobody committed): rolled back; a deployment from the DDI server, staged, activated with --reboot"
  liverestore --json ddi --once --server @SERVER@ --controller-id uefi-guest --dir /mnt/host --esp /mnt/esp --append lr.test=commit --reboot >/mnt/host/ddi.json 2>/mnt/host/ddi.err
  echo "LR ddi_returned=$?"
  tail -n 3 /mnt/host/ddi.err
  ;;
3)
  # the restored system committed, then rolled back from its side
  echo "LR ddi_again=$(grep -o '"ok":[a-z]*,"command":"ddi"' /mnt/host/ddi.json)"
  echo "LR ddi_cycle=$(grep -o '"staged":"ddi-[0-9]*","activated":true' /mnt/host/ddi.json)"
  echo "LR ddi_rebooting=$(grep -o '"rebooting":[a-z]*' /mnt/host/ddi.json)"
  echo "LR next_3=$(next)"
  liverestore rollback >/dev/null
  echo "LR esp_left_3=$(ls /mnt/esp | grep -c liverestore || true)"
  echo "LR activation_left=$(ls $LIVERESTORE_STATE_DIR | grep -c activation || true)"
  umount /mnt/esp
  umount /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR old_fsck=clean"
  echo "LR report=old system: rolled back what the restored system left; its ext4 is clean"
  ;;
esac
"#;

const RESTORED_SYSTEM: &str = r#"
@NETWORK_UP@
# (its root is read-only here)
export LIVERESTORE_STATE_DIR=/run/liverestore
mode=$(grep -o 'lr.test=[a-z]*' /proc/cmdline | cut -d= -f2)
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
next() { liverestore --json status | grep -o '"next_boot":"[^"]*"' | cut -d'"' -f4; }
now=$(next)
case "$mode/$now" in
trial/*) n=1 ;;                         # a trial nobody commits
commit/old*) n=2 ;;                     # a trial that commits
commit/*) n=3 ;;                        # started by default
esac
echo "LR restored_boot_$n=$(cat /etc/hostname)"
echo "LR restored_root_$n=$(awk '$2 == "/" { print $1 }' /proc/mounts)"
echo "LR restored_old_system_$n=$(liverestore --json status | grep -o '"boot_entry":"[^"]*' | cut -d'"' -f4 | cut -c1-4)"
root=$(awk '$2 == "/" { print $1 }' /proc/mounts)
case $n in
1) echo "LR report=restored system ($(cat /etc/hostname)) on $root, a trial: nobody commits; next boot: $(next)" ;;
2) liverestore --json commit >/tmp/commit.json && echo "LR commit=ok"
   echo "LR deployment_reported=$(grep -o '"deployment_reported":[a-z]*' /tmp/commit.json)"
   # a poll from here: the server was told once, and is not told again
   liverestore --json ddi --once --server @SERVER@ --controller-id uefi-guest --dir /tmp >/tmp/ddi.json
   echo "LR restored_poll=$(grep -o '"closed":[a-z"]*' /tmp/ddi.json)"
   echo "LR restored_next_2=$(next)"
   echo "LR report=restored system on $root: committed; next boot: $(next)" ;;
3) echo "LR restored_next_3=$now"
   liverestore rollback
   echo "LR restored_next_after_rollback=$(next)"
   echo "LR report=restored system on $root, started by default: rolled back from its side; next boot: $(next)" ;;
esac
reboot -f
"#;

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn uefi_trial_boot_then_back_to_the_old_system() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path());
    // the same system as a deployment on a DDI server
    let gb = crate::common::goosebit::Goosebit::start(&t.path().join("goosebit"));
    let server = format!("http://10.0.2.2:{}", gb.port);
    let image = crate::common::vm::bootable_restored_image(
        t.path(),
        &RESTORED_SYSTEM
            .replace("@NETWORK_UP@", NETWORK_UP)
            .replace("@SERVER@", &server),
        &[VIRTIO_BLK, &["dm-mod"], EXT4, NET_MODULES].concat(),
        &[EXT4, &["efivarfs"], NET_MODULES].concat(),
    );
    let swu = t.path().join("restored-system.swu");
    let bytes = std::fs::read(&image).unwrap();
    crate::common::goosebit::swu(&swu, &bytes, "2.0.0", &sha256_hex(&bytes));
    drop(bytes);
    gb.assign("uefi-guest", gb.upload(&swu));
    let mut guest = old_system_guest(
        vec![disk, image],
        vec!["mkfs.ext4", "e2fsck"],
        &format!("{NETWORK_UP}{OLD_SYSTEM}").replace("@SERVER@", &server),
        None,
    );
    guest.modules.extend(NET_MODULES);
    guest.network = true;
    let run = guest.run_ok(&t.path().join("vm"));
    // boot 1: the old system stages and activates
    assert_eq!(run.get("old_boot_1"), "yes");
    let extents: usize = run.get("extents").parse().unwrap();
    assert!(extents > 20, "fragmented: {extents}");
    run.assert_values(&[
        ("esp_full_activate", "13"),
        ("esp_full_left", "0"),
        ("esp_full_activated", "0"),
        ("ro_efivars_activate", "25"),
        ("ro_efivars_said", "1"),
        ("activate", "0"),
    ]);
    assert_eq!(run.get("activate_twice"), "22", "one activation at a time");
    run.assert_values(&[
        ("next_1", "restored system (trial, once)"),
        ("esp_files", "initrd.img vmlinuz.efi"),
        // boot 2: BootNext starts the restored system, from the map
        ("restored_boot_1", "restored-system"),
        ("restored_root_1", "/dev/dm-0"),
    ]);
    assert_eq!(
        run.get("restored_old_system_1"),
        "Boot",
        "the old system, from the on-disk header"
    );
    // boot 3: nobody committed: the old system again; rollback; activate again
    run.assert_values(&[
        ("old_boot_2", "yes"),
        ("next_2", "old system (the firmware's BootOrder)"),
        ("trial_ended_2", "true"),
        ("ours_before_rollback", "1"),
        ("ours_after_rollback", "0"),
    ]);
    assert_eq!(
        run.get("next_after_rollback"),
        "old system (the firmware's BootOrder)"
    );
    run.assert_values(&[
        ("esp_left", "0"),
        // ddi --reboot printed its result, then rebooted (it never
        // returned to the scenario)
        ("ddi_again", r#""ok":true,"command":"ddi""#),
        ("ddi_cycle", r#""staged":"ddi-1","activated":true"#),
        ("ddi_rebooting", r#""rebooting":true"#),
        // boot 4: the restored system commits, and tells the server
        ("restored_boot_2", "restored-system"),
        ("commit", "ok"),
        ("deployment_reported", r#""deployment_reported":true"#),
        ("restored_poll", r#""closed":null"#),
        ("restored_next_2", "restored system (default)"),
        // boot 5: it starts by default; it rolls back from its side
        ("restored_boot_3", "restored-system"),
        ("restored_root_3", "/dev/dm-0"),
        ("restored_next_3", "restored system (default)"),
    ]);
    assert_eq!(run.value("ddi_returned"), None, "--reboot rebooted");
    let (device, log) = gb.device("uefi-guest");
    assert_eq!(device["last_state"], "Finished", "{device}\n{log}");
    assert_eq!(device["sw_version"], "2.0.0", "{device}");
    assert!(log.contains("Downloaded"), "progress was reported: {log}");
    assert!(log.contains("runs and is committed"), "{log}");
    assert_eq!(
        run.get("restored_next_after_rollback"),
        "old system (the firmware's BootOrder)"
    );
    // boot 6: the old system, which removes what is left on the ESP
    run.assert_values(&[
        ("old_boot_3", "yes"),
        ("next_3", "old system (the firmware's BootOrder)"),
        ("esp_left_3", "0"),
        ("activation_left", "0"),
        ("old_fsck", "clean"),
    ]);
    run.assert_in_order(crate::common::vm::SIX_BOOTS);
    // the committed system's default boot (5) is no trial: /lr/init
    // finds its entry first in BootOrder and arms no deadline
    assert_eq!(
        run.console
            .matches("liverestore: committed: no trial deadline")
            .count(),
        1,
        "{}",
        run.output()
    );
    // each boot's one-line report (scripts/demo.sh --boot shows them)
    let reports = run.values("report");
    for (i, r) in reports.iter().enumerate() {
        println!("boot {}: {r}", i + 1);
    }
    assert_eq!(reports.len(), 6, "{reports:#?}");
    assert!(
        reports[1].starts_with("restored system (restored-system) on /dev/dm-0"),
        "{reports:#?}"
    );
}
