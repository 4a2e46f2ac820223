//! What is remembered, on the host and on the disk: the
//! [`record::StagingRecord`] of each staging, the self-describing
//! on-disk [`header`] at the start of every container, the [`boot_note`]
//! the early-boot step leaves at the end of the header area, and the
//! [`state_dir::StateDir`] that keeps the records and the lock.
//!
//! Owns: the formats of remembered state and their durable replacement.
//! May not: act on a disk or a boot loader.

pub mod boot_note;
pub(crate) mod durable;
pub mod header;
pub mod record;
pub mod state_dir;
