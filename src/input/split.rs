//! Which stagings an image becomes: one for the whole image, or one per
//! partition of a whole-disk image (GPT or MBR), each in its own container.

use crate::error::{Error, ErrorKind, Result};
use crate::input::Image;
use crate::input::partitions::{self, PartitionTable};
use crate::store::record::StagedPartition;

/// How to treat an image that carries a partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// Every partition into its own staging `NAME-pN` (the default). An
    /// image without a table is staged whole.
    #[default]
    Partitions,
    /// Only partition N, staged as `NAME`.
    Partition(u32),
    /// The image as it is, table and all, as `NAME`.
    WholeDisk,
}

/// One staging an image becomes: `size` bytes at `offset` of the image.
#[derive(Debug, Clone)]
pub struct Piece {
    pub name: Option<String>,
    pub offset: u64,
    pub size: u64,
    pub partition: Option<StagedPartition>,
}

/// The name of partition `number`'s staging in the set `name`.
pub fn member_name(name: &str, number: u32) -> String {
    format!("{name}-p{number}")
}

/// Split `image` as `split` says. `name` may be unknown (`plan` without
/// `--name`). Reads the image's first MiB (kept for the staging pass).
pub fn pieces(image: &mut Image, name: Option<&str>, split: Split) -> Result<Vec<Piece>> {
    let size = image.size();
    let whole = || {
        vec![Piece {
            name: name.map(str::to_string),
            offset: 0,
            size,
            partition: None,
        }]
    };
    if split == Split::WholeDisk {
        return Ok(whole());
    }
    let table = partitions::parse(image.head(partitions::HEAD_LEN)?, size)?;
    let table = match (table, split) {
        (Some(t), _) if !t.partitions.is_empty() => t,
        (_, Split::Partition(n)) => {
            return Err(Error::new(
                ErrorKind::BadImage,
                format!("--partition {n}: the image has no partition table with partitions"),
            ));
        }
        _ => return Ok(whole()),
    };
    let set_id = crate::sys::random::uuid_v4()?;
    let piece = |p: &partitions::ImagePartition, piece_name: Option<String>| Piece {
        name: piece_name,
        offset: p.offset,
        size: p.size,
        partition: Some(StagedPartition {
            set: name.unwrap_or_default().to_string(),
            set_id,
            number: p.number,
            image_size: size,
            image_sha256: None,
            table: table.clone(),
        }),
    };
    match split {
        Split::Partition(n) => {
            let p = table.partition(n).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadImage,
                    format!(
                        "--partition {n}: the image's {} has partitions {}",
                        kind_name(&table),
                        numbers(&table)
                    ),
                )
            })?;
            Ok(vec![piece(p, name.map(str::to_string))])
        }
        _ => Ok(table
            .partitions
            .iter()
            .map(|p| piece(p, name.map(|n| member_name(n, p.number))))
            .collect()),
    }
}

fn kind_name(t: &PartitionTable) -> &'static str {
    match t.kind {
        partitions::TableKind::Gpt => "GPT",
        partitions::TableKind::Mbr => "MBR",
    }
}

fn numbers(t: &PartitionTable) -> String {
    let n: Vec<String> = t.partitions.iter().map(|p| p.number.to_string()).collect();
    n.join(", ")
}
