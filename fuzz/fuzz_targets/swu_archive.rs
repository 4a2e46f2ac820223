#![no_main]
//! An SWUpdate archive (`.swu`): whatever the bytes, reading its
//! description and streaming its raw image never panics, and a member read
//! to its end whose description gives a SHA-256 has exactly that SHA-256.
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use liverestore::input::swu;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    // the description parser alone, on the bytes as text
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = swu::describe(text);
    }
    let Ok((_, image, size, mut member)) = swu::open_member(data) else {
        return;
    };
    let mut got = Vec::new();
    if member.read_to_end(&mut got).is_ok() {
        assert_eq!(got.len() as u64, size);
        if let Some(expected) = image.sha256 {
            assert_eq!(hex::encode(Sha256::digest(&got)), expected);
        }
    }
});
