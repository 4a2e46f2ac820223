#![no_main]
//! ExtentMap invariants: a translation covers exactly the asked range, each
//! run lies inside one extent, and anything outside the map is refused.
use libfuzzer_sys::fuzz_target;
use liverestore::map::extent_map::{ExtentMap, MapExtent};

fn u64s(data: &[u8]) -> Vec<u64> {
    data.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) % (1 << 24)).collect()
}

fuzz_target!(|data: &[u8]| {
    let v = u64s(data);
    if v.len() < 3 {
        return;
    }
    let (len, q_off, q_len) = (v[0], v[1], v[2]);
    let mut logical = 0;
    let extents: Vec<MapExtent> = v[3..]
        .chunks_exact(2)
        .map(|p| {
            let e = MapExtent { logical, disk: p[0], length: p[1] };
            logical += p[1];
            e
        })
        .collect();
    let Ok(map) = ExtentMap::new(extents, len) else { return };
    match map.translate(q_off, q_len) {
        Ok(runs) => {
            assert!(q_off + q_len <= map.len());
            assert_eq!(runs.iter().map(|r| r.length).sum::<u64>(), q_len);
            for r in &runs {
                assert!(map.extents().iter().any(|e| r.disk >= e.disk && r.disk + r.length <= e.disk + e.length));
            }
        }
        Err(_) => assert!(q_off + q_len > map.len()),
    }
});
