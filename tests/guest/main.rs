//! Tests inside QEMU guests running Debian's kernel (see
//! `tests/common/vm.rs`), in one test binary so that two guests run at a
//! time (each QEMU under TCG keeps one core busy).

#[path = "../common/mod.rs"]
mod common;

mod attach;
mod boot;
mod drivers;
mod grub;
mod native;
mod power_loss;
mod segments;
mod uefi;
mod whole_disk;
