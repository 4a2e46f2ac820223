//! The early-boot plan is read by `/lr/init` at boot, from the initrd, and
//! its settings from the kernel command line: neither may panic, a plan
//! that decodes must re-encode to one that decodes the same, and its
//! device-mapper tables must cover exactly the image, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::boot::early_boot::BootParams;
use liverestore::boot::plan::BootPlan;

fuzz_target!(|data: &[u8]| {
    let _ = BootParams::from_cmdline(&String::from_utf8_lossy(data));
    let Ok(plan) = BootPlan::decode(data) else {
        return;
    };
    assert_eq!(BootPlan::decode(&plan.encode()).unwrap(), plan);
    let table = plan.table("254:0");
    let mut next = 0;
    for t in &table {
        assert_eq!(t.start, next, "the table has a gap or an overlap");
        next = t.start + t.length;
    }
    assert_eq!(next * 512, plan.image_size.next_multiple_of(512));
    for c in &plan.companions {
        let sectors: u64 = c.table("254:0").iter().map(|t| t.length).sum();
        assert_eq!(sectors * 512, c.image_size.next_multiple_of(512));
    }
});
