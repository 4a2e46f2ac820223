//! liverestore: restore a disk or partition image onto the disk the running
//! Linux system lives on, while it keeps running.
//!
//! The image is written into the pinned extents of an ordinary file (the
//! *container*) of a live ext4, xfs or vfat filesystem, straight through the
//! raw whole-disk device. Where things happen:
//!
//! - [`hostfs`]: directory → filesystem → partition → disk.
//! - [`space`] + [`unallocated`]: where a staging's space comes from (one
//!   directory, or a segment set of several filesystems and free disk).
//! - [`container`]: create, preallocate, pin and map the container file.
//! - [`fiemap`] + [`extent_map`]: the container → disk map and its checks.
//! - [`disk_io`]: **the only place that writes to a disk** ([`disk_io::DiskWriter`]).
//! - [`record`], [`header`], [`state_dir`]: what is remembered, on the host
//!   and on the disk.
//! - [`stage`], [`verify`], [`staged`], [`plan`], [`scan`]: the operations.
//! - [`boot_plan`], [`initrd`], [`early_boot`], [`kmod`]: booting a staged
//!   image: the plan, the appended early-boot initramfs, and `/lr/init`.
//! - [`activate`], [`efi`], [`efivars`]: the UEFI trial boot, status and
//!   rollback.
//! - [`customize`]: change a staged system before its first boot (files to
//!   keep, network configuration, a new identity, drivers).

pub mod activate;
pub mod attach;
pub mod boot_plan;
pub mod container;
pub mod customize;
pub mod dev_node;
pub mod disk_io;
pub mod dm;
pub mod early_boot;
pub mod efi;
pub mod efivars;
pub mod error;
pub mod extent_map;
pub mod failpoint;
pub mod fiemap;
pub mod fuse_image;
pub mod grub_format;
pub mod header;
pub mod hostfs;
pub mod identity;
pub mod initrd;
pub mod input;
pub mod kmod;
pub mod loop_device;
pub mod make_room;
pub mod partition_entry;
pub mod plan;
pub mod progress;
pub mod record;
pub mod scan;
pub mod space;
pub mod split;
pub mod stage;
pub mod staged;
pub mod state_dir;
mod sys;
pub mod test_restore;
pub mod unallocated;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
