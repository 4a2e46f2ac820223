//! GRUB's environment block and `custom.cfg` come from disk (the restored
//! system reads `grubenv` straight off the raw disk): parsing must never
//! panic, a parsed block must re-encode to one that parses the same, and
//! liverestore's `custom.cfg` block must go in and out of any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::boot::grub_format::{self, GrubEnv, MenuEntry};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = GrubEnv::parse(data)
        && let Ok(bytes) = env.encode()
    {
        assert_eq!(bytes.len(), data.len());
        assert_eq!(GrubEnv::parse(&bytes).unwrap(), env);
    }
    let text = String::from_utf8_lossy(data);
    let block = grub_format::custom_block(&MenuEntry {
        name: "web",
        fs_module: "ext2",
        fs_uuid: "uuid",
        kernel: "/boot/liverestore/web/vmlinuz",
        initrd: "/boot/liverestore/web/initrd.img",
        args: "rdinit=/lr/init",
        standby: data.first().is_some_and(|b| b & 1 == 1),
    });
    if let Ok(with) = grub_format::with_block(&text, "web", &block) {
        assert_eq!(with.matches("### BEGIN liverestore web ###").count(), 1);
        let without = grub_format::without_block(&with, "web").unwrap();
        assert!(!without.contains("### BEGIN liverestore web ###"));
    }
    let _ = grub_format::check_config(&text);
});
