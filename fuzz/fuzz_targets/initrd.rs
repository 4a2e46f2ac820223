//! The early-boot archive is appended to whatever initrd a restored image
//! carries (any length, any compression, early microcode archives in
//! front): the initrd's bytes stay as they were, only zeros follow them,
//! and the early archive starts on a 4-byte boundary, where the kernel
//! looks for the next archive after a compressed one. Reading any bytes
//! as an initrd's archives (`initrd_holds`, which `activate` does to a
//! restored initrd) ends with an answer or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::boot::initrd::{append_early_boot, initrd_holds};

fuzz_target!(|data: &[u8]| {
    let _ = initrd_holds(data, |p| p == "usr/sbin/lvm");
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (initrd, early) = data.split_at(split);
    let mut out = initrd.to_vec();
    append_early_boot(&mut out, early);
    let at = out.len() - early.len();
    assert_eq!(at % 4, 0, "the early archive must start 4-aligned");
    assert!(at - initrd.len() < 4, "at most 3 bytes of padding");
    assert_eq!(&out[..initrd.len()], initrd);
    assert!(out[initrd.len()..at].iter().all(|&b| b == 0));
    assert_eq!(&out[at..], early);
});
