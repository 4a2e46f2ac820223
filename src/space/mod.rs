//! Where a staging's bytes may go: the host filesystems a directory lives
//! on ([`hostfs`]) and the stable identity of their disk ([`identity`]),
//! the disk's unallocated space ([`unallocated`]), a volume group's free
//! extents as new logical volumes ([`lvm`]), the planner that takes
//! space from them in order ([`allocate`]), the files `--make-room` may
//! delete ([`make_room`]), and the container file itself: created,
//! preallocated, pinned and mapped ([`container`]).
//!
//! Owns: choosing space and proving it is free. May not: write to a disk
//! (that goes through [`crate::map::disk_io`]) or remember anything (that
//! is [`crate::store`]).

pub(crate) mod allocate;
pub(crate) mod container;
pub mod hostfs;
pub(crate) mod identity;
pub(crate) mod lvm;
pub(crate) mod make_room;
pub(crate) mod unallocated;
