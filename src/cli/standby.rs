//! Warm standbys: `snapshot`.

use std::path::PathBuf;

use super::Context;
use super::args::{SpaceArgs, human_bytes, parse_size};
use super::output::Report;
use crate::error::Result;
use crate::standby::{SnapshotOptions, SnapshotReport};

/// Make a warm standby: a bootable copy of the running system, kept on
/// this disk as a staging.
///
/// An empty filesystem of the root's type (ext4 or xfs; its own UUID) is
/// staged into --dir like any image, then the running root filesystem —
/// and /boot when it is separate — is copied into it with rsync
/// (-aHAXS --one-file-system --numeric-ids: owners, modes, hard links,
/// ACLs, extended attributes and file capabilities, sparse files, device
/// nodes; /proc, /sys, /dev, /run, other filesystems, the staging
/// containers and liverestore's state directory are left out). Its
/// /etc/fstab then names its own root. `verify`, `test-restore`,
/// `customize`, `export` and `activate` take it like any staging;
/// `discard` reclaims its space.
///
/// The system keeps running while it is copied: each file is copied
/// consistently (files that changed while copied are copied again and
/// counted), but the tree as a whole is not a point-in-time image. Use
/// --pre/--post to flush or pause what must be consistent together (a
/// database). A failure (a hook, the copy) keeps nothing; power lost
/// halfway leaves a staging marked incomplete.
///
///   liverestore snapshot --name standby-1 --dir /var/tmp --keep 2
///   liverestore snapshot --refresh standby-1
///   liverestore snapshot --name db --dir /srv --exclude '/var/cache/***' \
///       --pre 'systemctl stop postgresql' --post 'systemctl start postgresql'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SnapshotArgs {
    /// Name of the new standby (letters, digits, '.', '-', '_').
    #[arg(long, required_unless_present = "refresh")]
    pub(crate) name: Option<String>,
    /// Bring the standby NAME up to date in place instead: the same tree
    /// and exclusions copied again (only what changed is written), then
    /// re-hashed.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["name", "size", "exclude", "keep", "source_root"])]
    pub(crate) refresh: Option<String>,
    /// After the snapshot, keep only the N newest standbys of the same
    /// tree: older ones are discarded (never an activated one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    #[command(flatten)]
    space: SpaceArgs,
    /// The tree to copy: `/` (the running system), or a system mounted
    /// elsewhere.
    #[arg(long, value_name = "DIR", default_value = "/")]
    source_root: PathBuf,
    /// Leave out what matches PATTERN (rsync's syntax; anchored at the
    /// tree's root when it starts with `/`, e.g. '/var/cache/***').
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// The standby's size (bytes, or with K, M, G, T). By default the data
    /// to copy and a quarter more (at least 256 MiB more).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Run CMD (`sh -c`) before the copy; if it fails nothing is made.
    #[arg(long, value_name = "CMD")]
    pre: Option<String>,
    /// Run CMD after the copy, also when the copy failed (it resumes what
    /// --pre paused); if it fails the new standby is discarded.
    #[arg(long, value_name = "CMD")]
    post: Option<String>,
}

impl SnapshotArgs {
    pub fn run(self, cx: &Context) -> Result<SnapshotReport> {
        let state = cx.lock_after_ended_trial()?;
        if let Some(name) = &self.refresh {
            return crate::standby::refresh(
                &state,
                name,
                (self.pre.as_deref(), self.post.as_deref()),
                cx.progress.as_ref(),
            );
        }
        crate::standby::snapshot(
            &state,
            &SnapshotOptions {
                name: self.name.unwrap_or_default(),
                keep: self.keep.map(|n| n as usize),
                space: self.space.request(),
                source_root: self.source_root,
                exclude: self.exclude,
                size: self.size,
                pre: self.pre,
                post: self.post,
            },
            cx.progress.as_ref(),
        )
    }
}

impl Report for SnapshotReport {
    fn print_text(&self) {
        let s = &self.standby;
        println!(
            "standby '{}' {}: a copy of {} ({} of file data) in a {} {} filesystem (uuid {}), {:.1} s",
            self.name,
            if self.refreshed {
                format!(
                    "refreshed ({} of {} chunks changed)",
                    self.chunks_changed, self.chunks
                )
            } else {
                "made".to_string()
            },
            s.source_root,
            human_bytes(self.bytes_copied),
            human_bytes(self.size),
            s.fs_type,
            s.fs_uuid,
            self.seconds
        );
        println!(
            "each file copied consistently, not the tree as of one instant: {} changed while copied (copied again), {} vanished",
            s.changed_during_copy, s.vanished_during_copy
        );
        for c in &self.fstab_changes {
            println!("fstab: {c}");
        }
        for p in &self.pruned {
            println!("--keep: discarded the older standby '{p}'");
        }
        println!("sha256 {}", self.sha256);
    }
}
