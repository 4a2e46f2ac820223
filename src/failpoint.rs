//! Simulated power loss, for tests only: with the `failpoints` feature,
//! [`hit`] powers the machine off on the spot — no sync, no cleanup —
//! when `LIVERESTORE_FAILPOINT` names the point. Without the feature (every
//! normal build) it does nothing. The guest tests build their static
//! liverestore with the feature to check that activation, commit and
//! rollback leave a bootable machine whatever step the power fails after.

/// A point where a test may cut the power.
#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    if std::env::var("LIVERESTORE_FAILPOINT").is_ok_and(|p| p == point) {
        eprintln!("liverestore: failpoint {point}: powering off");
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        std::process::abort();
    }
}

/// A point where a test may cut the power (inert in this build).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}
