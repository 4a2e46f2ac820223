#![no_main]
//! State files are read back after crashes and by hand-edits: never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = liverestore::store::record::decode_state_file(data) {
        let encoded = liverestore::store::record::encode_state_file(&rec);
        assert_eq!(liverestore::store::record::decode_state_file(&encoded).unwrap(), rec);
        let _ = rec.image_map();
    }
});
