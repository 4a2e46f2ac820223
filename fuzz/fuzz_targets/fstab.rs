//! A restored image's `/etc/fstab` is whatever the image holds: finding
//! the entries whose devices will not exist at boot must never panic, and
//! making them `nofail` must leave no entry at risk and every other line
//! as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use liverestore::customize::fstab::{ImageIds, at_risk, with_nofail};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ids = ImageIds {
        uuids: vec!["1111aaaa-0000-0000-0000-000000000001".into()],
        labels: vec!["root".into()],
        ..ImageIds::default()
    };
    let risky = at_risk(&text, &ids);
    let lines: Vec<usize> = risky.iter().map(|r| r.line).collect();
    let fixed = with_nofail(&text, &lines);
    assert!(at_risk(&fixed, &ids).is_empty(), "{text:?} -> {fixed:?}");
    for (i, (a, b)) in text.split_inclusive('\n').zip(fixed.split_inclusive('\n')).enumerate() {
        if !lines.contains(&(i + 1)) {
            assert_eq!(a, b);
        }
    }
});
