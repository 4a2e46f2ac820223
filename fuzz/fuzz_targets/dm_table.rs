#![no_main]
//! A device-mapper table as `DM_TABLE_STATUS` answers it, composed into a
//! device's layout on its disk: whatever the buffer holds, decoding and
//! composing never panic, and an accepted layout covers the device from
//! byte 0 without holes, each piece inside its lower device's bytes, no
//! two pieces sharing a disk byte.
use libfuzzer_sys::fuzz_target;
use liverestore::map::device_layout::DeviceLayout;
use liverestore::sys::dm;

/// Two partitions of disk 252:0 (1 MiB + 64 MiB and 100 MiB + 64 MiB);
/// any other device is a disk of its own (numbered apart from 252:0).
fn lower(dev: (u32, u32)) -> liverestore::error::Result<((u32, u32), DeviceLayout)> {
    Ok(match dev {
        (252, 1) => ((252, 0), DeviceLayout::contiguous(1 << 20, 64 << 20)),
        (252, 2) => ((252, 0), DeviceLayout::contiguous(100 << 20, 64 << 20)),
        (_, minor) => ((9999, minor), DeviceLayout::contiguous(0, 1 << 30)),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(info) = dm::decode(data) else {
        return;
    };
    let Ok((disk, layout)) = DeviceLayout::compose(&info.targets, &mut lower) else {
        return;
    };
    let mut at = 0;
    for p in layout.pieces() {
        assert_eq!(p.start, at);
        assert!(p.length > 0);
        at += p.length;
        let end = p.disk + p.length;
        let inside = |lo: u64, hi: u64| p.disk >= lo && end <= hi;
        if disk == (252, 0) {
            assert!(inside(1 << 20, 65 << 20) || inside(100 << 20, 164 << 20));
        } else {
            assert!(inside(0, 1 << 30));
        }
    }
    assert_eq!(at, layout.size());
    let mut ranges = layout.disk_ranges();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
});
