//! The map and the write choke point: FIEMAP answers ([`fiemap`]) and, on
//! btrfs, their logical addresses through the chunk tree ([`btrfs`]); a
//! device's place on its disk, a logical volume's composed from
//! device-mapper tables ([`device_layout`]); the
//! container → disk [`extent_map::ExtentMap`] with its checks
//! ([`extent_map`]), and [`disk_io`] — **the only place that writes to a
//! disk** ([`disk_io::DiskWriter`]): every write is addressed through a
//! map and refused when any byte of it falls outside.
//!
//! Owns: translating and bounding disk I/O. May not: choose space, keep
//! state, or open a disk for writing anywhere but in `disk_io`.

pub mod btrfs;
pub mod device_layout;
pub mod disk_io;
pub mod extent_map;
pub mod fiemap;
