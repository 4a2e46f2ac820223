//! The early-boot plan and UEFI variables come from disk and firmware:
//! their decoders must never panic, and what decodes must re-encode to
//! the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::boot::plan::BootPlan;
use liverestore::boot::efi::{self, LoadOption};

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = BootPlan::decode(data) {
        assert_eq!(BootPlan::decode(&plan.encode()).unwrap(), plan);
        let _ = plan.table("8:0");
    }
    if let Ok(option) = LoadOption::decode(data) {
        assert_eq!(LoadOption::decode(&option.encode()).unwrap(), option);
        let _ = option.args();
        let _ = efi::file_path_of(&option.device_path);
    }
    let _ = efi::file_path_of(data);
    let _ = efi::parse_var_file(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let (dep, builtin) = text.split_once('\0').unwrap_or((text, ""));
        let _ = liverestore::sys::kmod::load_order(dep, builtin, &["a".into(), "dm-mod".into()]);
    }
});
