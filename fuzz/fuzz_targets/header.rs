#![no_main]
//! The on-disk header parser must never panic on what a raw disk holds.
use libfuzzer_sys::fuzz_target;
use liverestore::header;

fuzz_target!(|data: &[u8]| {
    let mut block = data.to_vec();
    // Let the fuzzer reach past the magic check most of the time.
    if block.len() >= 16 && block[0] & 1 == 0 {
        block[..16].copy_from_slice(header::MAGIC);
    }
    if let Ok(b0) = header::decode_block0(&block) {
        let _ = header::decode_body(&b0, &block);
    }
});
