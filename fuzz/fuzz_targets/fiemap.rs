#![no_main]
//! FIEMAP validation: whatever the kernel could answer, an accepted answer
//! covers the file without holes and carries only understood flags.
use libfuzzer_sys::fuzz_target;
use liverestore::map::fiemap::{self, RawFiemapExtent};

fuzz_target!(|data: &[u8]| {
    let raw: Vec<RawFiemapExtent> = data
        .chunks_exact(20)
        .map(|c| RawFiemapExtent {
            fe_logical: u64::from(u32::from_le_bytes(c[0..4].try_into().unwrap())) * 512,
            fe_physical: u64::from_le_bytes(c[4..12].try_into().unwrap()),
            fe_length: u64::from(u32::from_le_bytes(c[12..16].try_into().unwrap())) * 512,
            fe_flags: u32::from_le_bytes(c[16..20].try_into().unwrap()),
            ..Default::default()
        })
        .collect();
    let size = raw.iter().map(|e| e.fe_length).sum::<u64>();
    if let Ok(extents) = fiemap::validate(&raw, size, 512) {
        assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), size);
        assert!(raw.iter().all(|e| e.fe_flags & !(fiemap::FIEMAP_EXTENT_LAST | fiemap::FIEMAP_EXTENT_UNWRITTEN) == 0));
    }
});
