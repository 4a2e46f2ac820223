#![no_main]
//! btrfs's chunk tree, as a tree search answers it: whatever the buffer
//! holds, decoding never panics or reads past it, and an accepted
//! translation covers the file's extents exactly, in `single` chunks on
//! the one device, each piece inside its chunk's stripe.
use libfuzzer_sys::fuzz_target;
use liverestore::map::btrfs;
use liverestore::map::fiemap::FileExtent;

fuzz_target!(|data: &[u8]| {
    let (extents_part, answer) = data.split_at(data.len().min(48));
    let mut args = vec![0u8; 4096];
    let n = answer.len().min(4096);
    args[..n].copy_from_slice(&answer[..n]);
    let Ok(chunks) = btrfs::parse_search_answer(&args) else {
        return;
    };
    let mut logical = 0;
    let extents: Vec<FileExtent> = extents_part
        .chunks_exact(16)
        .map(|c| {
            let e = FileExtent {
                logical,
                physical: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                length: u64::from(u32::from_le_bytes(c[8..12].try_into().unwrap())) + 1,
            };
            logical += e.length;
            e
        })
        .collect();
    if let Ok(out) = btrfs::to_device(&extents, &chunks, 1) {
        let total: u64 = extents.iter().map(|e| e.length).sum();
        assert_eq!(out.iter().map(|e| e.length).sum::<u64>(), total);
        let mut at = 0;
        for e in &out {
            assert_eq!(e.logical, at);
            at += e.length;
            assert!(chunks.iter().any(|c| c.profile() == "single"
                && c.stripes.len() == 1
                && c.stripes[0].devid == 1
                && c.stripes[0].offset <= e.physical
                && e.physical - c.stripes[0].offset + e.length <= c.length));
        }
    }
});
