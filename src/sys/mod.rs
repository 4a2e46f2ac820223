//! Kernel interfaces, and **the only `unsafe` code of the crate** (the lint
//! `unsafe_code` is denied everywhere else): the raw ioctls with their
//! `#[repr(C)]` structs ([`ioctl`]), `O_DIRECT` buffers ([`aligned`]),
//! device-mapper ([`dm`]), loop devices ([`loop_device`]), UEFI variables
//! ([`efivars`]), kernel modules ([`kmod`]), device nodes
//! ([`dev_node`]) and I/O priorities ([`io_priority`]).
//!
//! Owns: talking to the kernel. May not: decide anything about stagings
//! or write a disk's bytes (that is [`crate::map::disk_io`]'s alone);
//! nothing here imports from the folders above it but `error` and the
//! parsers it encodes for.

#![allow(unsafe_code)]

pub(crate) mod aligned;
pub(crate) mod dev_node;
pub mod dm;
pub(crate) mod efivars;
pub(crate) mod io_priority;
pub(crate) mod ioctl;
pub mod kmod;
pub(crate) mod loop_device;
pub(crate) mod power;
pub(crate) mod random;
pub(crate) mod watchdog;
