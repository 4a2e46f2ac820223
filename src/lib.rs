//! liverestore: restore a disk or partition image onto the disk the running
//! Linux system lives on, while it keeps running.
//!
//! The image is written into the pinned extents of an ordinary file (the
//! *container*) of a live filesystem, straight through the raw whole-disk
//! device. The folders follow the data:
//!
//! - [`input`]: reading images (transports, compression, formats, the
//!   partitions of a whole-disk image) — parsers on bytes, fuzzed.
//! - [`space`]: where bytes may go (host filesystems, unallocated space,
//!   `--make-room`, the container file).
//! - [`map`]: the container → disk map and **the only place that writes to
//!   a disk** ([`map::disk_io::DiskWriter`]).
//! - [`store`]: what is remembered (records, the on-disk header, the state
//!   directory and its lock).
//! - [`stage`]: staging and its checks (plan, verify, scan, list/discard).
//! - [`attach`]: using a staging without booting it (attach, the FUSE
//!   fallback, test-restore).
//! - [`customize`]: changing a staged system before its first boot.
//! - [`standby`]: warm standbys, copies of this very system kept as
//!   stagings (`snapshot`).
//! - [`export`]: streaming a staging out into an archive file (raw+zstd,
//!   qcow2) that `stage` takes back.
//! - [`boot`]: **where boot entries change** (activate, commit, rollback),
//!   the early-boot step and the boot formats.
//! - [`cli`]: the command line, one function and one report per command.
//! - [`ddi`]: pull-mode management, a client of hawkBit's DDI API
//!   (hawkBit, goosebit): deployments staged, activated, reported.
//! - [`trust`]: image signatures (OpenPGP, minisign), trusted keys and the
//!   machine's policy (`policy.toml`).
//! - [`sys`]: kernel interfaces and the only `unsafe` code.
//! - [`error`]: one error type, a kind per exit code; [`progress`]:
//!   progress events; [`metrics`]: the Prometheus textfile
//!   (`--metrics-file`); [`journal`]: events in the systemd journal;
//!   [`failpoint`]: simulated power loss for tests.

pub mod attach;
pub mod boot;
pub mod cli;
pub mod customize;
pub mod ddi;
pub mod error;
pub mod export;
pub mod failpoint;
pub mod input;
pub mod journal;
pub mod map;
pub mod metrics;
pub mod progress;
pub mod space;
pub mod stage;
pub mod standby;
pub mod store;
pub mod sys;
pub mod trust;

pub use error::{Error, ErrorKind, Result};
