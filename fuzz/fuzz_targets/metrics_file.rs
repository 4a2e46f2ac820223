//! The metrics file is read back before every write (to keep the other
//! runs' series), and anyone can write into it: reading it must never
//! panic, and what it reads must come back the same through a write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::metrics::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let series = decode(&text);
    let again = decode(&encode(&series));
    assert_eq!(again.len(), series.len(), "{text:?}");
    for s in &series {
        assert!(again.contains(s), "{s:?} lost from {text:?}");
    }
});
