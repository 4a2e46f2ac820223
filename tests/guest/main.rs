//! Tests inside QEMU guests running Debian's kernel (see
//! `tests/common/vm.rs`), in one test binary so that two guests run at a
//! time (each QEMU under TCG keeps one core busy).

// Test code: a panic is a failed test with its place (library code may not unwrap).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod attach;
mod boot;
mod debian;
mod debian_secure_boot;
mod debian_standby;
mod drivers;
mod grub;
mod lvm;
mod native;
mod package;
mod power_loss;
mod segments;
mod uefi;
mod whole_disk;
