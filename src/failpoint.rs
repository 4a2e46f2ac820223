//! Simulated power loss, for tests only: in a debug build (the tests'
//! build: `debug_assertions`) or with the `failpoints` feature, [`hit`]
//! powers the machine off on the spot — no sync, no cleanup — when
//! `LIVERESTORE_FAILPOINT` names the point. In a release build (what is
//! packaged and installed) it does nothing. The guest tests run the test
//! build's own static liverestore to check that activation, commit and
//! rollback leave a bootable machine whatever step the power fails after.

/// A point where a test may cut the power.
#[cfg(any(feature = "failpoints", debug_assertions))]
pub fn hit(point: &str) {
    if std::env::var("LIVERESTORE_FAILPOINT").is_ok_and(|p| p == point) {
        eprintln!("liverestore: failpoint {point}: powering off");
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        std::process::abort();
    }
}

/// A point where a test may cut the power (inert in this build).
#[cfg(not(any(feature = "failpoints", debug_assertions)))]
#[inline(always)]
pub fn hit(_point: &str) {}
