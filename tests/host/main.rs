//! Tests on this machine (no guest): scratch loop-backed disks, real
//! filesystems, the real tools that make each image format. One test
//! binary, so the shared harness (`tests/common/`) is built and linked
//! once; tests that need root are `#[ignore]`d with the reason
//! (`scripts/test.sh` runs them with `--include-ignored`).

// Test code: a panic is a failed test with its place (library code may not unwrap).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod activate_grub;
mod ansible;
mod attach;
mod bad_input;
mod btrfs;
mod crash;
mod customize;
mod ddi;
mod export;
mod formats;
mod inputs;
mod json_output;
mod make_room;
mod metrics;
mod partitions;
mod segments;
mod signatures;
mod stage;
mod standby;
