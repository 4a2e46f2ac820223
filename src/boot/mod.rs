//! Booting a staged image: what the early-boot step needs ([`plan`]), the
//! archive appended to the restored initrd ([`initrd`]) and the program
//! that runs from it at boot ([`early_boot`]); where boot entries change:
//! [`activate`] (UEFI, GRUB, native partition entries, commit, rollback,
//! status), and the restored system's own commit after a health check
//! ([`auto_commit`]); and the boot formats on bytes: UEFI load options
//! ([`efi`]), GRUB's files ([`grub_format`]), partition entries
//! ([`partition_entry`]).
//!
//! Owns: every change to how the machine boots. May not: write staged
//! bytes (staging and `customize` do), or touch a disk except through
//! [`crate::map::disk_io::DiskWriter`].

pub mod activate;
pub mod auto_commit;
pub mod early_boot;
pub mod efi;
pub mod grub_format;
pub mod initrd;
pub(crate) mod partition_entry;
pub mod plan;
