#![no_main]
//! A DDI server's answers (a poll, a deployment, a cancellation):
//! whatever the bytes, parsing never panics; an accepted deployment's
//! artifact choice is one of its artifacts, and feedback for its id (or a
//! cancellation's) is well-formed JSON.
use libfuzzer_sys::fuzz_target;
use liverestore::ddi::protocol::{self, Execution};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = protocol::parse_poll(data) {
        let _ = p.sleep;
    }
    if let Ok(d) = protocol::parse_deployment(data) {
        if let Ok(a) = d.artifact() {
            assert!(d.artifacts.contains(a));
        }
        let f = protocol::feedback(&d.id, Execution::Proceeding { progress: Some((1, 2)) }, &[]);
        assert_eq!(f["id"], d.id.as_str());
    }
    if let Ok(c) = protocol::parse_cancel(data) {
        let f = protocol::feedback(&c.id, Execution::Rejected, &[c.stop_id.clone()]);
        assert_eq!(f["id"], c.id.as_str());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = protocol::parse_sleep(text);
    }
});
