//! Argument groups several commands share (where the space comes from, how
//! to read the image), the value types clap parses, and the few text
//! helpers the renderers share.

use std::path::PathBuf;

use crate::input::split::Split;
use crate::space::allocate::SpaceRequest;

/// Where the staged image's space comes from.
#[derive(clap::Args, Debug, Clone)]
pub struct SpaceArgs {
    /// Directory on a mounted ext4, xfs, vfat or btrfs (one device,
    /// single data) filesystem of the target disk, on a partition or on a
    /// linear LVM volume (its segments on this disk). Repeat it to join several filesystems of the same disk into one
    /// segment set; they are filled in the order given, and the first holds
    /// the on-disk header.
    #[arg(long, value_name = "DIR")]
    pub dir: Vec<PathBuf>,
    /// Also use the disk's free space outside every partition (after the
    /// directories). Nothing protects that space from a partitioning tool:
    /// `list` shows the staging invalid if a partition is created over it.
    #[arg(long)]
    pub unallocated: bool,
    /// Leave at least SIZE free on every filesystem (bytes, or with a K, M,
    /// G or T suffix, powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "0")]
    pub keep_free: u64,
    /// Split containers into files of at most SIZE. By default the largest
    /// file each filesystem allows is probed (vfat: 4 GiB - 1 byte).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_file_size: Option<u64>,
    /// When the image does not fit, delete files listed in FILE (absolute
    /// glob patterns, one a line, least critical first; `#` comments)
    /// until it does, and no more. Only single-link regular files on the
    /// --dir filesystems; never a container or the state directory.
    /// `plan` shows what would be deleted.
    #[arg(long, value_name = "FILE")]
    pub make_room: Option<PathBuf>,
    /// Put each image whole in one unallocated range (starting on a 1 MiB
    /// boundary), with only the on-disk header in the first --dir: then
    /// `activate` boots it natively, from a partition entry added over
    /// exactly those bytes, with no device-mapper at boot.
    #[arg(long, requires = "unallocated")]
    pub contiguous: bool,
    /// Put each image whole in a new logical volume `lr-NAME` of volume
    /// group VG (its free extents on the target disk; LVM's `lvcreate`
    /// makes it, tagged `liverestore`), with only the on-disk header in
    /// the first --dir. `discard` removes the volume. `activate` boots it
    /// natively from the volume when the image's initrd has LVM (lvm2
    /// installed in it), mapped otherwise.
    #[arg(long, value_name = "VG", conflicts_with_all = ["unallocated", "contiguous"])]
    pub lvm_free: Option<String>,
}

impl SpaceArgs {
    pub fn request(&self) -> SpaceRequest {
        SpaceRequest {
            dirs: self.dir.clone(),
            unallocated: self.unallocated,
            keep_free: self.keep_free,
            max_file_size: self.max_file_size,
            make_room: self.make_room.clone(),
            contiguous: self.contiguous,
            lvm_free: self.lvm_free.clone(),
        }
    }
}

/// A size in bytes, with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64M, 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// How to read the image.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Image size in bytes: needed for stdin or a compressed stream that
    /// does not declare its size; checked against the image otherwise.
    #[arg(long)]
    pub size: Option<u64>,
    /// bmap file for a raw image (default: IMAGE.bmap next to a local image).
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Ignore an IMAGE.bmap next to the image.
    #[arg(long, conflicts_with = "bmap")]
    pub no_bmap: bool,
    /// For a whole-disk image (GPT or MBR): stage only partition N, as NAME.
    /// By default every partition is staged into its own container,
    /// NAME-p1, NAME-p2, … (numbered as in the image), and the image's
    /// partition table is recorded with each.
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// Stage a whole-disk image as one image, partition table and all.
    #[arg(long, conflicts_with = "partition")]
    pub whole_disk: bool,
}

impl ImageArgs {
    pub fn options(&self) -> crate::input::OpenOptions {
        crate::input::OpenOptions {
            size: self.size,
            bmap: self.bmap.clone(),
            no_bmap: self.no_bmap,
            start_at: 0,
            tap: None,
            signed_bmap: None,
        }
    }

    pub fn split(&self) -> Split {
        match (self.partition, self.whole_disk) {
            (Some(n), _) => Split::Partition(n),
            (None, true) => Split::WholeDisk,
            (None, false) => Split::Partitions,
        }
    }
}

/// "64.0 MiB": sizes for people (powers of 1024).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "partition 2 ("data") of the 64.0 MiB GPT disk image staged as 'sys'".
pub fn describe_partition(p: &crate::store::record::StagedPartition) -> String {
    let label = p
        .entry()
        .and_then(|e| e.label.as_deref())
        .filter(|l| !l.is_empty())
        .map(|l| format!(" (\"{l}\")"))
        .unwrap_or_default();
    let kind = match p.table.kind {
        crate::input::partitions::TableKind::Gpt => "GPT",
        crate::input::partitions::TableKind::Mbr => "MBR",
    };
    format!(
        "partition {}{label} of the {} {kind} disk image staged as '{}'",
        p.number,
        human_bytes(p.image_size),
        p.set
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
