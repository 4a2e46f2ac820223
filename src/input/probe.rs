//! The size of a raw image read from a stream that does not declare it,
//! guessed from what the image itself says in its first MiB: a GPT
//! (the backup header's LBA), or an ext2/3/4 or xfs superblock. A guess is
//! only ever used when it agrees with every other hint (gzip's `ISIZE`),
//! and the stream's real length is checked at the end anyway: a wrong
//! guess fails the staging, it never completes it.

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Disk size from a GPT header (LBA 1 with 512- or 4096-byte sectors):
/// the backup header sits in the disk's last sector.
pub fn gpt_disk_size(head: &[u8]) -> Option<u64> {
    [512usize, 4096].iter().find_map(|&sector| {
        let h = head.get(sector..sector + 92)?;
        if &h[..8] != b"EFI PART" {
            return None;
        }
        let alternate = le64(h, 32)?;
        let current = le64(h, 24)?;
        (current == 1 && alternate > 1).then(|| (alternate + 1).checked_mul(sector as u64))?
    })
}

/// Filesystem size from an ext2/3/4 superblock at byte 1024.
pub fn ext_fs_size(head: &[u8]) -> Option<u64> {
    let sb = head.get(1024..2048)?;
    if sb[56..58] != [0x53, 0xef] {
        return None;
    }
    let log = le32(sb, 24)?;
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let incompat = le32(sb, 0x60)?;
    let hi = if incompat & 0x80 != 0 {
        le32(sb, 0x150)?
    } else {
        0
    };
    ((hi << 32) | le32(sb, 4)?).checked_mul(block)
}

/// Filesystem size from an xfs superblock at byte 0.
pub fn xfs_fs_size(head: &[u8]) -> Option<u64> {
    let sb = head.get(..16)?;
    if &sb[..4] != b"XFSB" {
        return None;
    }
    let block = u64::from(u32::from_be_bytes(sb[4..8].try_into().ok()?));
    let blocks = u64::from_be_bytes(sb[8..16].try_into().ok()?);
    if !(512..=65536).contains(&block) {
        return None;
    }
    blocks.checked_mul(block)
}

/// The image size its content declares, if any, consistent with gzip's
/// `ISIZE` (size mod 2^32) when one is given.
pub fn size_from_content(head: &[u8], gzip_isize: Option<u32>) -> Option<u64> {
    let size = gpt_disk_size(head)
        .or_else(|| ext_fs_size(head))
        .or_else(|| xfs_fs_size(head))?;
    match gzip_isize {
        Some(i) if size % (1 << 32) != u64::from(i) => None,
        _ => Some(size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_ext_xfs() {
        let mut b = vec![0u8; 8192];
        b[512..520].copy_from_slice(b"EFI PART");
        b[512 + 24..512 + 32].copy_from_slice(&1u64.to_le_bytes());
        b[512 + 32..512 + 40].copy_from_slice(&2047u64.to_le_bytes());
        assert_eq!(gpt_disk_size(&b), Some(1 << 20));
        assert_eq!(size_from_content(&b, Some(1 << 20)), Some(1 << 20));
        assert_eq!(size_from_content(&b, Some(5)), None);

        let mut e = vec![0u8; 4096];
        e[1024 + 56] = 0x53;
        e[1024 + 57] = 0xef;
        e[1024 + 24] = 2; // 4 KiB blocks
        e[1024 + 4..1024 + 8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(ext_fs_size(&e), Some(4096 * 1000));

        let mut x = vec![0u8; 512];
        x[..4].copy_from_slice(b"XFSB");
        x[4..8].copy_from_slice(&4096u32.to_be_bytes());
        x[8..16].copy_from_slice(&77u64.to_be_bytes());
        assert_eq!(xfs_fs_size(&x), Some(77 * 4096));
        assert_eq!(size_from_content(&[0u8; 100], None), None);
    }
}
