//! `customize --inject-drivers` inside a guest, whose kernel loads modules
//! (this host's kernel is monolithic: no `/proc/modules`). The running
//! system has loaded virtio, ext4, device-mapper and r8169 (which declares
//! `rtl_nic/*.fw` firmware; one of those files is on its `/lib/firmware`).
//! Two staged systems: one with this kernel's module tree but none of
//! those modules, which gets the module files (with what they depend on),
//! a module index rebuilt by `depmod -b`, and the firmware; one of another
//! kernel version, which gets the firmware only, and says why.

use std::time::Duration;

use crate::common::vm::{DM_OVER_LOOP, EXT4, Guest, Kernel, VIRTIO_BLK};
use crate::common::*;

const SCENARIO: &str = r#"
export LIVERESTORE_STATE_DIR=/mnt/host/var/lib/liverestore
V=$(uname -r)
# kmod's depmod and modinfo (busybox's sh would run its own applets)
/usr/bin/depmod -a
mkfs.ext4 -q -F -E nodiscard /dev/vda1
mkdir -p /mnt/host /mnt/img
mount -t ext4 /dev/vda1 /mnt/host
echo "LR loaded=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "LR r8169_firmware=$(/usr/bin/modinfo -F firmware -k $V r8169 | grep -c rtl8168h-2.fw)"
liverestore stage /dev/vdb --name same --dir /mnt/host 2>/dev/null
liverestore stage /dev/vdc --name other --dir /mnt/host 2>/dev/null
liverestore --json customize same --inject-drivers > /tmp/same.json
echo "LR same_changes=$(grep -o '"what":"[a-z]*"' /tmp/same.json | sort | uniq -c | tr -s ' \n' ' ')"
echo "LR same_verify=$(liverestore --json verify same | grep -o '"ok":[a-z]*')"
dev=$(liverestore attach same)
mount -o ro -t ext4 "$dev" /mnt/img
M=/mnt/img/lib/modules/$V
echo "LR same_firmware=$(cat /mnt/img/lib/firmware/rtl_nic/rtl8168h-2.fw)"
echo "LR same_r8169=$(ls $M/kernel/drivers/net/ethernet/realtek/)"
echo "LR same_libphy=$(ls $M/kernel/drivers/net/phy/ | grep -c libphy.ko)"
echo "LR same_virtio_blk=$(ls $M/kernel/drivers/block/ | grep -c virtio_blk.ko)"
echo "LR same_dep=$(grep -c 'realtek/r8169.ko: .*libphy.ko' $M/modules.dep)"
echo "LR same_own=$(cat $M/kernel/extra/own.ko)"
echo "LR same_own_dep=$(grep -c '^kernel/extra/own.ko:' $M/modules.dep)"
umount /mnt/img
liverestore detach same
liverestore --json customize other --inject-drivers > /tmp/other.json
echo "LR other_changes=$(grep -o '"what":"[a-z]*"' /tmp/other.json | sort | uniq -c | tr -s ' \n' ' ')"
echo "LR other_not_carried=$(grep -o 'not carried: the image[^"]*' /tmp/other.json)"
dev=$(liverestore attach other)
mount -o ro -t ext4 "$dev" /mnt/img
echo "LR other_firmware=$(cat /mnt/img/lib/firmware/rtl_nic/rtl8168h-2.fw)"
echo "LR other_modules=$(ls /mnt/img/lib/modules)"
umount /mnt/img
liverestore detach other
echo "LR dm_left=$(ls /sys/block | grep -c dm- || true)"
umount /mnt/host
"#;

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn inject_drivers_carries_loaded_modules_and_their_firmware() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let kernel = Kernel::get();
    let v = kernel.release();
    let disk = gpt_disk_file(&t.path().join("host-disk.img"), 200, &[(1, 198, "8300")]);
    // A system of this kernel version with its own module, none of ours.
    let own = format!("lib/modules/{v}/kernel/extra/own.ko");
    let own_dep = format!("lib/modules/{v}/modules.dep");
    let same = ext4_image(
        t.path(),
        "same.ext4",
        48,
        &[
            (own.as_str(), "the image's own module"),
            (own_dep.as_str(), "kernel/extra/own.ko:\n"),
        ],
    );
    let other = ext4_image(
        t.path(),
        "other.ext4",
        48,
        &[("lib/modules/5.10.0-99-amd64/modules.dep", "")],
    );
    let module_file = |f: &str| {
        (
            format!("/lib/modules/{v}/{f}"),
            std::fs::read(kernel.modules.join(f)).unwrap(),
        )
    };
    let run = Guest {
        modules: [VIRTIO_BLK, EXT4, DM_OVER_LOOP, &["r8169"]].concat(),
        binaries: vec!["mkfs.ext4", "depmod", "modinfo"],
        files: vec![
            module_file("modules.dep"),
            module_file("modules.builtin"),
            module_file("modules.order"),
            (
                "/lib/firmware/rtl_nic/rtl8168h-2.fw".into(),
                b"firmware of the running system".to_vec(),
            ),
        ],
        disks: vec![disk, same, other],
        scenario: SCENARIO.into(),
        timeout: Duration::from_secs(300),
        ..Guest::default()
    }
    .run_ok(&t.path().join("vm"));
    assert!(run.get("loaded").contains("r8169"), "{}", run.get("loaded"));
    assert_eq!(run.get("r8169_firmware"), "1", "r8169 declares the file");
    // same kernel: modules (r8169 with libphy, virtio_blk, …), firmware
    let changes = run.get("same_changes");
    assert!(changes.contains(r#""what":"firmware""#), "{changes}");
    assert!(changes.contains(r#""what":"module""#), "{changes}");
    assert_eq!(run.get("same_verify"), r#""ok":true"#);
    assert_eq!(run.get("same_firmware"), "firmware of the running system");
    assert_eq!(run.get("same_r8169"), "r8169.ko");
    assert_eq!(run.get("same_libphy"), "1", "a dependency came along");
    assert_eq!(run.get("same_virtio_blk"), "1");
    assert_eq!(run.get("same_dep"), "1", "depmod -b indexed the image");
    assert_eq!(run.get("same_own"), "the image's own module");
    assert_eq!(run.get("same_own_dep"), "1", "the image's own module kept");
    // another kernel: firmware only, and why
    let changes = run.get("other_changes");
    assert!(changes.contains(r#""what":"firmware""#), "{changes}");
    assert!(changes.contains(r#""what":"modules""#), "{changes}");
    assert!(!changes.contains(r#""what":"module""#), "{changes}");
    assert_eq!(
        run.get("other_not_carried"),
        format!("not carried: the image's kernel is 5.10.0-99-amd64 and this one is {v}")
    );
    run.assert_values(&[
        ("other_firmware", "firmware of the running system"),
        ("other_modules", "5.10.0-99-amd64"),
        ("dm_left", "0"),
    ]);
}
