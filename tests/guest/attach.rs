//! Inside a real guest kernel (Debian's, under QEMU, with device-mapper):
//! stage an ext4 image onto the guest's own mounted disk, attach it
//! read-only, overlay-writable and direct-writable, test-restore it, and
//! detach, leaving no device-mapper or loop device behind. The attached
//! device's bytes must equal the image; an overlay must never change the
//! staged bytes.

use std::path::Path;
use std::time::Duration;

use crate::common::vm::{DM_OVER_LOOP, EXT4, Guest, VIRTIO_BLK};
use crate::common::*;

/// A disk image file: GPT, one partition at 1 MiB holding an empty ext4
/// host filesystem (the guest's "running system").
fn host_disk(dir: &Path, mib: u64) -> std::path::PathBuf {
    let disk = dir.join("host-disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(mib * MIB).unwrap();
    drop(f);
    let d = disk.to_str().unwrap();
    sh("sgdisk", &["-o", "-n", "1:2048:0", "-t", "1:8300", d]);
    let part_mib = mib - 2;
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "offset=1048576,nodiscard",
            d,
            &format!("{part_mib}M"),
        ],
    );
    disk
}

const SCENARIO: &str = r#"
export LIVERESTORE_STATE_DIR=/var/lib/liverestore
mkdir -p /mnt/host
mount -t ext4 /dev/vda1 /mnt/host
# device-mapper devices and attached loop devices (no udev here: count
# them in sysfs, not /dev/mapper)
leftovers() {
  echo "$(ls /sys/block | grep -c '^dm-') $(losetup -a | wc -l)"
}
echo "LR before=$(leftovers)"
liverestore stage /dev/vdb --name web --dir /mnt/host 2>/dev/null

# read-only
dev=$(liverestore attach web)
echo "LR ro_device=$dev"
cmp "$dev" /dev/vdb && echo "LR ro_equal=yes"
if dd if=/dev/zero of="$dev" bs=4096 count=1 conv=notrunc,fsync 2>/dev/null; then echo "LR ro_write=allowed"; else echo "LR ro_write=refused"; fi
e2fsck -f -n "$dev" >/dev/null && echo "LR ro_fsck=clean"
mkdir -p /mnt/ro && mount -o ro -t ext4 "$dev" /mnt/ro && echo "LR ro_hostname=$(cat /mnt/ro/etc/hostname)" && umount /mnt/ro
set +e
liverestore attach web >/dev/null 2>&1; echo "LR attach_twice=$?"
set -e
dmsetup table "$(dmsetup ls | grep -o "^liverestore-web-[0-9a-f]*" | head -1)" | head -1 | sed 's/^/LR table=/'
echo "LR ro_attached=$(leftovers)"
liverestore detach web
echo "LR ro_detached=$(leftovers)"
set +e
liverestore detach web >/dev/null 2>&1; echo "LR detach_again=$?"
set -e

# overlay: writes are thrown away
dev=$(liverestore --json attach web --rw | sed -n 's/.*"device":"\([^"]*\)".*/\1/p')
dd if=/dev/urandom of="$dev" bs=1M count=8 conv=fsync 2>/dev/null
cmp -s "$dev" /dev/vdb || echo "LR overlay_changed_view=yes"
liverestore detach web
liverestore verify web >/dev/null 2>&1 && echo "LR overlay_verify=ok"
echo "LR overlay_detached=$(leftovers)"

# test-restore (overlay; the command writes into the mounted image)
set +e
liverestore test-restore web --run 'echo new > "$LIVERESTORE_ROOT/new-file" && grep -q restored "$LIVERESTORE_ROOT/etc/hostname"'
echo "LR test_restore=$?"
liverestore test-restore web --run 'false' >/dev/null
echo "LR test_restore_false=$?"
set -e
liverestore verify web >/dev/null 2>&1 && echo "LR test_restore_verify=ok"
echo "LR test_restore_detached=$(leftovers)"

# direct: writes land in the staged image
dev=$(liverestore attach web --rw=direct)
cmp "$dev" /dev/vdb && echo "LR direct_equal=yes"
liverestore detach web
echo "LR direct_detached=$(leftovers)"

umount /mnt/host
e2fsck -f -n /dev/vda1 >/dev/null && echo "LR host_fsck=clean"
"#;

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn attach_detach_and_test_restore_in_a_guest() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = host_disk(t.path(), 400);
    // The image to restore: 64 MiB of ext4 with a few files.
    let image = ext4_image(
        t.path(),
        "image.ext4",
        64,
        &[("etc/hostname", "restored\n")],
    );
    let guest = Guest {
        modules: [VIRTIO_BLK, EXT4, DM_OVER_LOOP, &["dm-snapshot"]].concat(),
        binaries: vec!["e2fsck", "dmsetup"],
        disks: vec![disk, image],
        scenario: SCENARIO.into(),
        timeout: Duration::from_secs(600),
        ..Guest::default()
    };
    let run = guest.run_ok(&t.path().join("vm"));
    let v = |k: &str| run.get(k);
    assert_eq!(v("before"), "0 0");
    assert!(v("ro_device").starts_with("/dev/dm-"));
    assert_eq!(v("ro_equal"), "yes");
    assert_eq!(v("ro_write"), "refused");
    assert_eq!(v("ro_fsck"), "clean");
    assert_eq!(v("ro_hostname"), "restored");
    assert_eq!(v("attach_twice"), "22");
    assert!(v("table").contains("linear"), "{}", v("table"));
    assert_eq!(
        v("ro_attached"),
        "1 1",
        "one dm device over one loop device"
    );
    assert_eq!(v("ro_detached"), "0 0");
    assert_eq!(v("detach_again"), "22");
    assert_eq!(v("overlay_changed_view"), "yes");
    assert_eq!(v("overlay_verify"), "ok");
    assert_eq!(v("overlay_detached"), "0 0");
    assert_eq!(v("test_restore"), "0");
    assert_eq!(v("test_restore_false"), "20");
    assert_eq!(v("test_restore_verify"), "ok");
    assert_eq!(v("test_restore_detached"), "0 0");
    assert_eq!(v("direct_equal"), "yes");
    assert_eq!(v("direct_detached"), "0 0");
    assert_eq!(v("host_fsck"), "clean");
}
