//! A `--dir` on LVM, inside a guest (the host kernel has no
//! device-mapper): real LVM tools (Debian's `lvm2`) make a volume group
//! over two partitions of the guest's disk and a logical volume of three
//! segments, out of disk order, on both; an ext4 on it holds the staging.
//! liverestore composes the map from the kernel's device-mapper tables
//! (LV → PV partitions → disk).
//!
//! - The image is on the raw disk at the mapped offsets, which reach both
//!   partitions (checked from the host, on the disk file); another LV's
//!   bytes keep their pattern; the filesystem is fsck-clean.
//! - An `lvextend` after staging moves nothing: `verify` accepts it.
//! - Refused with their reasons: a staging on a volume that has a
//!   snapshot, on a striped volume.
//! - The mapped boot: the early-boot initramfs `liverestore initrd` made
//!   boots the restored system from the composed map with only the disk
//!   attached (nothing of LVM at boot).
//! - `--lvm-free vg`: the image whole in a new volume `lr-vol` (tagged
//!   `liverestore`), its header alone in a file; the image at the
//!   volume's mapped offsets (checked from the host); its mapped boot; an
//!   unknown group refused (exit 17).
//! - Then a `pvmove` of each volume to the other partition: `verify`
//!   refuses both stagings (exit 18, the map differs); `discard` removes
//!   the volume it made.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::common::vm::{Boot, DM_OVER_LOOP, EXT4, Guest, GuestRun, VIRTIO_BLK};
use crate::common::*;

/// LVM in a guest without udev: LVM makes its own device nodes, polls a
/// `pvmove` itself.
const LVM_SETUP: &str = r#"
mkdir -p /etc/lvm /run/lock/lvm /mnt/host
cat > /etc/lvm/lvm.conf <<'EOF'
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
global { use_lvmpolld = 0 }
EOF
export LVM_SUPPRESS_FD_WARNINGS=1
# the state directory on the volume itself: it lasts from boot to boot
export LIVERESTORE_STATE_DIR=/mnt/host/var/lib/liverestore
"#;

const RUNNING_SYSTEM: &str = r#"
lvm pvcreate -q /dev/vda1 /dev/vda2
lvm vgcreate -q -s 4m vg /dev/vda1 /dev/vda2
# root: 40 MiB on the second partition, 40 on the first, 20 on the second
lvm lvcreate -q -y -L 40m -n root vg /dev/vda2
lvm lvcreate -q -y -L 12m -n canary vg /dev/vda2
lvm lvextend -q -L +40m vg/root /dev/vda1
lvm lvextend -q -L +20m vg/root /dev/vda2
echo "LR segments=$(lvm lvs --noheadings -o seg_count vg/root | tr -d ' ')"
yes canary-pattern | head -c 12582912 > /dev/vg/canary
canary() { md5sum < /dev/vg/canary | cut -d' ' -f1; }
echo "LR canary_before=$(canary)"
mkfs.ext4 -q /dev/vg/root
mount /dev/vg/root /mnt/host
echo old > /mnt/host/old-system-file
liverestore stage /dev/vdb --name next --dir /mnt/host 2>/dev/null
liverestore map next | tail -n +3 | while read a b c; do echo "LR extent=$a $b $c"; done
echo "LR canary_after=$(canary)"
echo "LR old_file=$(cat /mnt/host/old-system-file)"
# an extended volume: the container did not move
lvm lvextend -q -L +8m vg/root /dev/vda1
echo "LR verify_extended=$(liverestore --json verify next | grep -o '"ok":[a-z]*')"
set +e
# a snapshot of the volume makes it a snapshot origin
lvm lvcreate -q -s -L 8m -n snap vg/root
liverestore stage /dev/vdb --name snapped --dir /mnt/host 2>/tmp/err; echo "LR snapshot_rc=$?"
echo "LR snapshot_err=$(head -c 300 /tmp/err | tr '\n' ' ')"
lvm lvremove -q -y vg/snap
lvm lvcreate -q -y -i 2 -I 64k -L 8m -n striped vg
mkfs.ext4 -q /dev/vg/striped && mkdir -p /mnt/striped && mount /dev/vg/striped /mnt/striped
liverestore stage /dev/vdb --name striped --dir /mnt/striped 2>/tmp/err; echo "LR striped_rc=$?"
echo "LR striped_err=$(head -c 300 /tmp/err | tr '\n' ' ')"
umount /mnt/striped
liverestore stage /dev/vdb --name nogroup --dir /mnt/host --lvm-free nosuch 2>/tmp/err; echo "LR nogroup_rc=$?"
echo "LR nogroup_err=$(head -c 300 /tmp/err | tr '\n' ' ')"
set -e
echo "LR verify_after=$(liverestore --json verify next | grep -o '"ok":[a-z]*')"
# the group's free extents: the image whole in a new volume, its header
# alone in a file of --dir
echo "LR vol_plan=$(liverestore --json plan /dev/vdb --name vol --dir /mnt/host --lvm-free vg | grep -o '"kind":"lvm_free"')"
liverestore stage /dev/vdb --name vol --dir /mnt/host --lvm-free vg 2>/dev/null
echo "LR vol_tags=$(lvm lvs --noheadings -o lv_tags vg/lr-vol | tr -d ' ')"
echo "LR vol_same=$(cmp -n $(blockdev --getsize64 /dev/vdb) /dev/vdb /dev/vg/lr-vol && echo yes)"
echo "LR vol_header_file=$(stat -c %s /mnt/host/vol.liverestore)"
echo "LR vol_info=$(liverestore info vol | grep -o 'logical volume /dev/vg/lr-vol')"
liverestore map vol | tail -n +3 | while read a b c; do echo "LR vol_extent=$a $b $c"; done
echo "LR vol_verify=$(liverestore --json verify vol | grep -o '"ok":[a-z]*')"
liverestore --json initrd next --output /tmp/lr.cpio > /dev/null
echo "LR cpio_bytes=$(stat -c %s /tmp/lr.cpio)"
dd if=/tmp/lr.cpio of=/dev/vdc bs=4096 conv=sync 2>/dev/null
liverestore --json initrd vol --output /tmp/lr-vol.cpio > /dev/null
echo "LR vol_cpio_bytes=$(stat -c %s /tmp/lr-vol.cpio)"
dd if=/tmp/lr-vol.cpio of=/dev/vdc bs=4096 seek=8192 conv=sync 2>/dev/null
umount /mnt/host
e2fsck -fn /dev/vg/root >/dev/null 2>&1; echo "LR fsck=$?"
lvm vgchange -q -an vg
sync
"#;

const MOVE_IT: &str = r#"
lvm vgchange -q -ay vg
mount /dev/vg/root /mnt/host
echo "LR verify_before_move=$(liverestore --json verify next | grep -o '"ok":[a-z]*')"
echo "LR vol_devices=$(lvm lvs --noheadings -o devices vg/lr-vol | tr -d ' ')"
lvm pvmove -q -i 0 -n vg/lr-vol /dev/vda1 /dev/vda2
set +e
liverestore verify vol 2>/tmp/err; echo "LR vol_moved_rc=$?"
echo "LR vol_moved_err=$(head -c 300 /tmp/err | tr '\n' ' ')"
set -e
lvm pvmove -q -i 0 -n vg/root /dev/vda2 /dev/vda1
echo "LR segments_after_move=$(lvm lvs --noheadings -o devices vg/root | tr -d ' ')"
set +e
liverestore verify next 2>/tmp/err; echo "LR verify_moved_rc=$?"
echo "LR verify_moved_err=$(head -c 300 /tmp/err | tr '\n' ' ')"
set -e
echo "LR vol_discard=$(liverestore --json discard vol | grep -o '"volumes_removed":[^]]*]')"
echo "LR vol_left=$(lvm lvs --noheadings -o lv_name vg | grep -c lr- || true)"
umount /mnt/host
lvm vgchange -q -an vg
"#;

const RESTORED_SYSTEM: &str = r#"
echo "LR restored_hostname=$(cat /etc/hostname)"
echo "LR root_device=$(awk '$2 == "/" { print $1 }' /proc/mounts)"
"#;

fn old_system(disks: Vec<std::path::PathBuf>, scenario: &str) -> Guest {
    Guest {
        modules: [
            VIRTIO_BLK,
            EXT4,
            DM_OVER_LOOP,
            &["dm-snapshot", "dm-mirror"],
        ]
        .concat(),
        binaries: vec!["lvm", "mkfs.ext4", "e2fsck"],
        disks,
        scenario: format!("{LVM_SETUP}{scenario}"),
        timeout: Duration::from_secs(300),
        ..Guest::default()
    }
}

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn a_logical_volume_holds_the_staging_and_its_system_boots() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let (p1, p2) = ((1, 200), (201, 180));
    let disk = gpt_disk_file(
        &t.path().join("host-disk.img"),
        382,
        &[(p1.0, p1.1, "8e00"), (p2.0, p2.1, "8e00")],
    );
    let root_image = t.path().join("restored-root.ext4");
    crate::common::vm::restored_root_image(&root_image, 48, "restored-on-lvm", RESTORED_SYSTEM);
    let out_disk = t.path().join("out.img");
    std::fs::File::create(&out_disk)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();

    // Boot 1: LVM, the staging, the checks, the early-boot initramfs.
    let run = old_system(
        vec![disk.clone(), root_image.clone(), out_disk.clone()],
        RUNNING_SYSTEM,
    )
    .run_ok(&t.path().join("vm1"));
    assert_eq!(run.get("segments"), "3");
    let canary = run.get("canary_before");
    assert_eq!(canary.len(), 32, "an MD5 of the other volume: {canary}");
    assert_eq!(canary, run.get("canary_after"));
    assert_eq!(run.get("old_file"), "old");
    assert_eq!(run.get("verify_extended"), r#""ok":true"#);
    assert_eq!(run.get("verify_after"), r#""ok":true"#);
    assert_eq!(run.get("fsck"), "0", "the host filesystem is clean");
    refused(&run, "snapshot", 12, "a logical volume with a snapshot");
    refused(&run, "striped", 12, "a striped logical volume");
    refused(&run, "nogroup", 17, "there is no volume group 'nosuch'");
    // the image at the mapped offsets of the disk file, on both partitions
    let image = std::fs::read(&root_image).unwrap();
    let on = image_on_disk(&run, "extent", &disk, &image, [p1, p2]);
    assert_eq!(on, [true, true], "the map reaches both physical volumes");
    // --lvm-free: the image whole in the new volume, tagged ours
    assert_eq!(run.get("vol_plan"), r#""kind":"lvm_free""#);
    assert_eq!(run.get("vol_tags"), "liverestore");
    assert_eq!(run.get("vol_same"), "yes", "the new volume holds the image");
    assert_eq!(run.get("vol_info"), "logical volume /dev/vg/lr-vol");
    assert_eq!(run.get("vol_verify"), r#""ok":true"#);
    let header: u64 = run.get("vol_header_file").parse().unwrap();
    assert!(
        header <= 2 * MIB,
        "the file holds the header only: {header}"
    );
    let on = image_on_disk(&run, "vol_extent", &disk, &image, [p1, p2]);
    assert!(on.contains(&true), "the volume is on the physical volumes");
    let out = std::fs::read(&out_disk).unwrap();
    let len: usize = run.get("cpio_bytes").parse().unwrap();
    let early = out[..len].to_vec();
    let vol_len: usize = run.get("vol_cpio_bytes").parse().unwrap();
    let vol_early = out[32 * MIB as usize..32 * MIB as usize + vol_len].to_vec();

    // Boot 2: the restored system from the map, only the disk attached.
    let initrd = crate::common::vm::mapped_boot_initrd(&early);
    let run = Guest {
        disks: vec![disk.clone()],
        timeout: Duration::from_secs(300),
        boot: Some(Boot {
            initrd,
            append: "rdinit=/lr/init root=/dev/dm-0".into(),
        }),
        ..Guest::default()
    }
    .run_ok(&t.path().join("vm2"));
    assert_eq!(run.get("restored_hostname"), "restored-on-lvm");
    assert_eq!(run.get("root_device"), "/dev/dm-0");

    // Boot 2b: the same from the volume --lvm-free made.
    let run = Guest {
        disks: vec![disk.clone()],
        timeout: Duration::from_secs(300),
        boot: Some(Boot {
            initrd: crate::common::vm::mapped_boot_initrd(&vol_early),
            append: "rdinit=/lr/init root=/dev/dm-0".into(),
        }),
        ..Guest::default()
    }
    .run_ok(&t.path().join("vm2b"));
    assert_eq!(run.get("restored_hostname"), "restored-on-lvm");

    // Boot 3: the old system moves the volume: the staging is refused.
    let run = old_system(vec![disk], MOVE_IT).run_ok(&t.path().join("vm3"));
    assert_eq!(run.get("verify_before_move"), r#""ok":true"#);
    assert!(
        !run.get("segments_after_move").contains("vda2"),
        "{}",
        run.get("segments_after_move")
    );
    refused(&run, "verify_moved", 18, "no longer at disk byte");
    assert!(
        run.get("vol_devices").starts_with("/dev/vda1"),
        "{}",
        run.get("vol_devices")
    );
    refused(
        &run,
        "vol_moved",
        18,
        "the logical volume vg/lr-vol moved (pvmove?)",
    );
    assert_eq!(run.get("vol_discard"), r#""volumes_removed":["vg/lr-vol"]"#);
    assert_eq!(run.get("vol_left"), "0", "discard removed the volume");
}

/// Check the `key` extents (image offset, disk offset, length) of `run`
/// against the disk file: the image's bytes are there, and the map covers
/// it. Which of the partitions `parts` (start, size in MiB) hold extents.
fn image_on_disk(
    run: &GuestRun,
    key: &str,
    disk: &std::path::Path,
    image: &[u8],
    parts: [(u64, u64); 2],
) -> [bool; 2] {
    let disk_file = std::fs::File::open(disk).unwrap();
    let (mut total, mut on) = (0u64, [false, false]);
    for e in run.values(key) {
        let v: Vec<u64> = e.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let (image_at, disk_at, len) = (v[0], v[1], v[2]);
        let mut buf = vec![0u8; len as usize];
        disk_file.read_exact_at(&mut buf, disk_at).unwrap();
        assert!(
            buf == image[image_at as usize..(image_at + len) as usize],
            "{key}: image bytes {image_at}+{len} are not at disk byte {disk_at}"
        );
        for (i, (start, size)) in parts.iter().enumerate() {
            if disk_at >= start * MIB && disk_at + len <= (start + size) * MIB {
                on[i] = true;
            }
        }
        total += len;
    }
    assert_eq!(total, image.len() as u64, "{key}: the map covers the image");
    on
}

/// The scenario's `KEY_rc` is `rc` and its `KEY_err` says `why`.
fn refused(run: &GuestRun, key: &str, rc: i32, why: &str) {
    assert_eq!(run.get(&format!("{key}_rc")), rc.to_string());
    let err = run.get(&format!("{key}_err"));
    assert!(err.contains(why), "{key}: {err}");
}
