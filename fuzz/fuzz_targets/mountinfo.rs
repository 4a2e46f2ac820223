#![no_main]
//! /proc/self/mountinfo parsing never panics, whatever the mount names.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mounts = liverestore::space::hostfs::parse_mountinfo(&text);
    let _ = liverestore::space::hostfs::mount_for(&mounts, std::path::Path::new("/a/b"));
});
