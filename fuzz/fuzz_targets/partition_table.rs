#![no_main]
//! Partition tables of whole-disk images: any first MiB either parses to a
//! table whose partitions lie inside the image without overlapping, or is
//! refused; nothing panics or allocates past the header's bounds.
use libfuzzer_sys::fuzz_target;
use liverestore::input::partitions;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // The first 8 bytes pick the image size; the rest is the image's head.
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 40);
    let head = &data[8..];
    if let Ok(Some(t)) = partitions::parse(head, size) {
        let mut spans: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.offset, p.size)).collect();
        spans.sort();
        for (i, &(off, len)) in spans.iter().enumerate() {
            assert!(len > 0 && off.checked_add(len).is_some_and(|end| end <= size));
            if let Some(&(next, _)) = spans.get(i + 1) {
                assert!(off + len <= next);
            }
        }
    }
});
