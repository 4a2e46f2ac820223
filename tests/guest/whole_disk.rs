//! A whole-disk image (GPT: an ESP and a root) activated together, under
//! OVMF, mapped and native. Mapped: the old system stages it onto its
//! fragmented ext4 (`web-p1`, `web-p2`) and `activate web` boots the
//! partition with a kernel as the root (`/dev/dm-0`) with the image's ESP
//! mapped alongside (`liverestore-p1`), where the restored system finds its
//! own files. Native: staged whole into free space (`--contiguous`), each
//! partition gets a GPT entry with the type, name and partition GUID it had
//! in the image; the restored system runs from `/dev/vda3` and finds its
//! ESP on `/dev/vda4`. Back in the old system the trial is over, so
//! `discard` alone cleans it up (as `rollback` does: the boot entry, the
//! files, the partition entries, on the disk found by its identity) and
//! leaves nothing.

use std::path::Path;

use crate::common::vm::{EXT4, VFAT, VIRTIO_BLK};
use crate::common::*;
use crate::uefi::{ESP_MIB, old_system_guest};

/// GPT: the old system's ESP and ext4, and `free` MiB unallocated after.
fn host_disk(dir: &Path, free: u64) -> std::path::PathBuf {
    gpt_disk_file(
        &dir.join("host-disk.img"),
        2 + ESP_MIB + 300 + free,
        &[(1, ESP_MIB, "ef00"), (1 + ESP_MIB, 300, "8300")],
    )
}

/// The image's ESP size, MiB.
const IMAGE_ESP_MIB: u64 = 40;

/// The image: GPT, partition 1 a FAT ESP holding `MARKER` and `esp_files`
/// (source, path in the ESP), partition 2 the restored system's ext4 root.
fn whole_disk_image(dir: &Path, root: &Path, esp_files: &[(&Path, &str)]) -> std::path::PathBuf {
    let img = gpt_disk_file(
        &dir.join("whole-disk.img"),
        1 + IMAGE_ESP_MIB + 64 + 1,
        &[(1, IMAGE_ESP_MIB, "ef00"), (1 + IMAGE_ESP_MIB, 64, "8300")],
    );
    let esp = format!("{}@@{}", img.display(), MIB);
    sh(
        "mformat",
        &[
            "-i",
            &esp,
            "-T",
            &(IMAGE_ESP_MIB * MIB / 512).to_string(),
            "::",
        ],
    );
    let marker = dir.join("MARKER");
    std::fs::write(&marker, "the image's own ESP\n").unwrap();
    sh(
        "mcopy",
        &["-i", &esp, marker.to_str().unwrap(), "::/MARKER"],
    );
    if !esp_files.is_empty() {
        sh("mmd", &["-i", &esp, "::/EFI", "::/EFI/LINUX"]);
    }
    for (src, dst) in esp_files {
        sh("mcopy", &["-i", &esp, src.to_str().unwrap(), dst]);
    }
    let root_bytes = std::fs::read(root).unwrap();
    assert!(root_bytes.len() as u64 <= 64 * MIB);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&root_bytes, (1 + IMAGE_ESP_MIB) * MIB)
        .unwrap();
    f.sync_all().unwrap();
    img
}

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
  liverestore stage /dev/vdb --name web --dir /mnt/host $STAGE_ARGS 2>/dev/null
  # the source is gone (as it would be): its partitions' GUIDs are now
  # only on the staged copies
  sgdisk -Z /dev/vdb >/dev/null
  echo "LR stagings=$(liverestore --json list | grep -o '"name":"web-p[0-9]"' | cut -d'"' -f4 | tr '\n' ' ')"
  if [ -n "$IMAGE_ESP" ]; then
    liverestore --json activate web --image-esp "$IMAGE_ESP" --append "$APPEND" > /tmp/activate.json
  else
    liverestore --json activate web --esp /mnt/esp > /tmp/activate.json
  fi
  echo "LR host_esp_files=$(ls /mnt/esp | grep -c liverestore || true)"
  echo "LR root=$(grep -o '"name":"[^"]*"' /tmp/activate.json | head -1 | cut -d'"' -f4)"
  echo "LR companions=$(grep -o '"companions":\[[^]]*\]' /tmp/activate.json)"
  echo "LR numbers=$(grep -o '"number":[0-9]*' /tmp/activate.json | cut -d: -f2 | tr '\n' ' ')"
  echo "LR esp_partuuid=$(blkid -o value -s PARTUUID /dev/vda4 2>/dev/null)"
  echo "LR esp_type=$(sgdisk -i 4 /dev/vda 2>/dev/null | grep -o 'EFI system partition')"
  umount /mnt/esp /mnt/host
  reboot -f
  ;;
2)
  echo "LR next_2=$(next)"
  echo "LR trial_ended_2=$(liverestore --json status | grep -o '"trial_ended":[a-z]*' | cut -d: -f2)"
  # the trial is over: discard first cleans it up as rollback does (the
  # boot entry, the files, a native boot's partition entries, found on
  # the disk by its identity), says so, then discards
  set +e
  liverestore discard web >/dev/null 2>/tmp/discard.err
  echo "LR discard_after_trial=$?"
  set -e
  echo "LR discard_said=$(grep -c 'ended without a commit' /tmp/discard.err)"
  echo "LR entries_left=$(sgdisk -p /dev/vda | grep -c -E '^ +[34] ' || true)"
  echo "LR left=$(liverestore --json list | grep -c '"name"' || true)"
  echo "LR containers_left=$(ls /mnt/host | grep -c liverestore || true)"
  echo "LR esp_left=$(ls /mnt/esp | grep -c liverestore || true)"
  umount /mnt/esp /mnt/host
  e2fsck -f -n /dev/vda2 >/dev/null && echo "LR old_fsck=clean"
  ;;
esac
"#;

/// The restored system: its root, and its ESP (`/dev/dm-1` when mapped,
/// `/dev/vda4` when native) with the image's `MARKER`.
const RESTORED_SYSTEM: &str = r#"
mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null || true
echo "LR restored=$(cat /etc/hostname)"
echo "LR restored_status=$(liverestore --json status | grep -o '"booted_restored":[a-z]*')"
root=$(awk '$2 == "/" { print $1 }' /proc/mounts)
echo "LR restored_root=$root"
case $root in
/dev/dm-0) esp=/dev/dm-1; echo "LR dm1_name=$(cat /sys/block/dm-1/dm/name)" ;;
*) esp=/dev/vda4; echo "LR dm_devices=$(ls /sys/block | grep -c '^dm-' || true)" ;;
esac
mkdir -p /run/esp
mount -t vfat -o ro $esp /run/esp && echo "LR esp_marker=$(cat /run/esp/MARKER)"
umount /run/esp
reboot -f
"#;

/// Stage and boot the whole-disk image; `stage_args` and `free` (MiB of
/// unallocated space on the old system's disk) choose mapped or native.
/// With `own_esp`, the image's ESP also holds a program that boots the
/// image's root — the kernel's EFI stub and an initrd, in
/// `\EFI\LINUX` — and activation starts it there (`--image-esp`).
fn run_whole_disk(
    stage_args: &str,
    free: u64,
    init_modules: &[&str],
    own_esp: bool,
) -> (crate::common::vm::GuestRun, String) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path(), free);
    let root = crate::common::vm::bootable_restored_image(
        t.path(),
        RESTORED_SYSTEM,
        &[VIRTIO_BLK, &["dm-mod"], EXT4].concat(),
        init_modules,
    );
    let kernel = crate::common::vm::Kernel::get().vmlinuz;
    let initrd = t.path().join("esp-initrd.img");
    std::fs::write(
        &initrd,
        crate::common::vm::restored_initrd(&[], init_modules),
    )
    .unwrap();
    let esp_files: &[(&Path, &str)] = if own_esp {
        &[
            // not at the removable-media path: the firmware would boot the
            // source image's disk (attached here) by itself
            (kernel.as_path(), "::/EFI/LINUX/KERNEL.EFI"),
            (initrd.as_path(), "::/EFI/LINUX/initrd.img"),
        ]
    } else {
        &[]
    };
    let image = whole_disk_image(t.path(), &root, esp_files);
    let guid = |n: &str| {
        sh("sgdisk", &["-i", n, image.to_str().unwrap()])
            .lines()
            .find_map(|l| l.strip_prefix("Partition unique GUID: "))
            .unwrap()
            .trim()
            .to_lowercase()
    };
    let own = if own_esp {
        format!(
            "IMAGE_ESP='\\EFI\\LINUX\\KERNEL.EFI'\nAPPEND='initrd=\\EFI\\LINUX\\initrd.img root=PARTUUID={} rw console=ttyS0'\n",
            guid("2")
        )
    } else {
        String::new()
    };
    let esp_guid = guid("1");
    let run = old_system_guest(
        vec![disk, image],
        vec!["mkfs.ext4", "e2fsck", "sgdisk", "blkid"],
        &format!("STAGE_ARGS='{stage_args}'\n{own}{OLD_SYSTEM}"),
        None,
    )
    .run_ok(&t.path().join("vm"));
    (run, esp_guid)
}

/// What both runs show the same way: the set, its root, the marker, and
/// what the old system's rollback leaves.
fn assert_set_booted(run: &crate::common::vm::GuestRun) {
    assert_eq!(run.get("stagings"), "web-p1 web-p2 ");
    assert_eq!(run.get("root"), "web-p2", "the partition with a kernel");
    assert_eq!(run.get("companions"), r#""companions":["web-p1"]"#);
    run.assert_values(&[
        ("restored", "restored-system"),
        ("esp_marker", "the image's own ESP"),
        ("next_2", "old system (the firmware's BootOrder)"),
        ("trial_ended_2", "true"),
        ("discard_after_trial", "0"),
        ("discard_said", "1"),
        ("entries_left", "0"),
        ("left", "0"),
        ("containers_left", "0"),
        ("esp_left", "0"),
        ("old_fsck", "clean"),
    ]);
}

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn a_whole_disk_image_boots_with_its_partitions_together() {
    let (run, _) = run_whole_disk("", 0, &[EXT4, VFAT].concat(), false);
    assert_set_booted(&run);
    assert_eq!(run.get("restored_root"), "/dev/dm-0");
    assert_eq!(run.get("dm1_name"), "liverestore-p1");
}

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn a_whole_disk_image_boots_natively_from_its_own_partitions() {
    // /lr/init maps nothing: the image's partitions are the disk's
    let (run, esp_guid) = run_whole_disk(
        "--unallocated --contiguous",
        120,
        &[VIRTIO_BLK, EXT4, VFAT].concat(),
        false,
    );
    assert_set_booted(&run);
    assert_eq!(run.get("numbers"), "3 4 ", "the root, then the ESP");
    assert_eq!(run.get("esp_partuuid"), esp_guid, "the image's own GUID");
    run.assert_values(&[
        ("esp_type", "EFI system partition"),
        ("restored_root", "/dev/vda3"),
        ("dm_devices", "0"),
    ]);
}

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn a_whole_disk_image_boots_from_its_own_esp() {
    let (run, esp_guid) = run_whole_disk(
        "--unallocated --contiguous",
        120,
        &[VIRTIO_BLK, EXT4, VFAT, &["efivarfs"]].concat(),
        true,
    );
    assert_set_booted(&run);
    run.assert_values(&[
        ("numbers", "3 4 "),
        ("esp_partuuid", &esp_guid),
        ("host_esp_files", "0"),
        ("restored_root", "/dev/vda3"),
        ("dm_devices", "0"),
        // started by the image's own program: the firmware's BootCurrent
        // tells it is a liverestore boot
        ("restored_status", r#""booted_restored":true"#),
    ]);
}
