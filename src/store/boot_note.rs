//! The boot note: the on-disk record that a staged image was booted.
//!
//! A trial boot mounts the restored root read-write, so its bytes no
//! longer match the hashes recorded while staging. To tell "changed by
//! its own boot" from corruption, the early-boot step writes this note
//! *before* it maps the image (so before anything can change it), and
//! `verify`/`activate` accept differences only when the note counts more
//! boots than the record has accepted ([`crate::store::record::ImageInfo::boots_accepted`]);
//! they then re-hash the image as the new baseline and accept those boots.
//!
//! Where: the last [`AREA`] bytes of the header area of the staging's
//! first container (container offsets `data_offset - AREA ..
//! data_offset`), which the header itself never reaches
//! ([`crate::store::header::encode`]) and no device-mapper table maps.
//! Everything is in the first 512 bytes, so the write of one sector
//! either lands whole or not at all; the rest of the area stays zero.
//!
//! Layout (little-endian):
//!
//! ```text
//!   0  magic "LIVERESTORE-BOOT"  16
//!  16  format version (1)        u32
//!  20  boots                     u32   (boots noted so far, counting this one)
//!  24  first boot, Unix seconds  u64
//!  32  last boot, Unix seconds   u64
//!  40  staging id                16
//!  56  last boot's boot_id       16    (the kernel's random boot id)
//!  72  zeros                     408
//! 480  SHA-256 of bytes 0..480   32
//! ```

use sha2::{Digest, Sha256};

/// Bytes reserved for the note at the end of the header area.
pub const AREA: u64 = 4096;
/// Bytes of the area that hold the note.
pub const LEN: usize = 512;
pub const MAGIC: &[u8; 16] = b"LIVERESTORE-BOOT";
const VERSION: u32 = 1;
const CHECKSUM_AT: usize = LEN - 32;

/// One staging's boots, as the early-boot step noted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootNote {
    pub id: uuid::Uuid,
    pub boots: u32,
    pub first_unix: u64,
    pub last_unix: u64,
    pub last_boot_id: uuid::Uuid,
}

/// What the note area holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteArea {
    /// Nothing: the image was never booted through liverestore's
    /// early-boot step.
    Blank,
    Note(BootNote),
    /// Something else: a note cut short or damaged. It explains no
    /// differences.
    Damaged,
}

/// Decode the note area's first [`LEN`] bytes (more are ignored).
pub fn decode(area: &[u8]) -> NoteArea {
    let Some(b) = area.get(..LEN) else {
        return NoteArea::Damaged;
    };
    if b.iter().all(|&x| x == 0) {
        return NoteArea::Blank;
    }
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let uuid_at = |at: usize| uuid::Uuid::from_bytes(b[at..at + 16].try_into().expect("16"));
    if &b[..16] != MAGIC
        || u32_at(16) != VERSION
        || b[72..CHECKSUM_AT].iter().any(|&x| x != 0)
        || Sha256::digest(&b[..CHECKSUM_AT]).as_slice() != &b[CHECKSUM_AT..]
    {
        return NoteArea::Damaged;
    }
    NoteArea::Note(BootNote {
        boots: u32_at(20),
        first_unix: u64_at(24),
        last_unix: u64_at(32),
        id: uuid_at(40),
        last_boot_id: uuid_at(56),
    })
}

/// The [`AREA`] bytes that hold `note`.
pub fn encode(note: &BootNote) -> Vec<u8> {
    let mut b = vec![0u8; AREA as usize];
    b[..16].copy_from_slice(MAGIC);
    b[16..20].copy_from_slice(&VERSION.to_le_bytes());
    b[20..24].copy_from_slice(&note.boots.to_le_bytes());
    b[24..32].copy_from_slice(&note.first_unix.to_le_bytes());
    b[32..40].copy_from_slice(&note.last_unix.to_le_bytes());
    b[40..56].copy_from_slice(note.id.as_bytes());
    b[56..72].copy_from_slice(note.last_boot_id.as_bytes());
    let sum = Sha256::digest(&b[..CHECKSUM_AT]);
    b[CHECKSUM_AT..LEN].copy_from_slice(&sum);
    b
}

/// The note a boot of staging `id` writes over `previous`: one more boot
/// than the previous note of the same staging, or than the `accepted`
/// boots the record knows when there is none (blank, damaged or
/// another staging's).
pub fn next(
    previous: NoteArea,
    id: uuid::Uuid,
    accepted: u32,
    now_unix: u64,
    boot_id: uuid::Uuid,
) -> BootNote {
    let (boots, first_unix) = match previous {
        NoteArea::Note(n) if n.id == id => (n.boots.max(accepted), n.first_unix),
        _ => (accepted, now_unix),
    };
    BootNote {
        id,
        boots: boots.saturating_add(1),
        first_unix,
        last_unix: now_unix,
        last_boot_id: boot_id,
    }
}

/// Whether `area` explains differences in staging `id`, whose record has
/// accepted `accepted` boots: it is that staging's note and counts more.
pub fn unaccepted_boots(area: NoteArea, id: uuid::Uuid, accepted: u32) -> Option<BootNote> {
    match area {
        NoteArea::Note(n) if n.id == id && n.boots > accepted => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: uuid::Uuid = uuid::Uuid::from_u128(7);
    const BOOT: uuid::Uuid = uuid::Uuid::from_u128(9);

    #[test]
    fn a_note_reads_back() {
        let n = next(NoteArea::Blank, ID, 0, 1000, BOOT);
        assert_eq!((n.boots, n.first_unix, n.last_unix), (1, 1000, 1000));
        let bytes = encode(&n);
        assert_eq!(bytes.len() as u64, AREA);
        assert!(bytes[LEN..].iter().all(|&b| b == 0));
        assert_eq!(decode(&bytes), NoteArea::Note(n));
        let again = next(decode(&bytes), ID, 0, 2000, BOOT);
        assert_eq!(
            (again.boots, again.first_unix, again.last_unix),
            (2, 1000, 2000)
        );
    }

    #[test]
    fn blank_and_damaged() {
        assert_eq!(decode(&[0u8; 4096]), NoteArea::Blank);
        assert_eq!(decode(&[0u8; 100]), NoteArea::Damaged);
        let good = encode(&next(NoteArea::Blank, ID, 0, 5, BOOT));
        for i in (0..LEN).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert_eq!(decode(&bad), NoteArea::Damaged, "flip at {i}");
        }
        // a sector of something else
        assert_eq!(decode(&[0x5a; 512]), NoteArea::Damaged);
    }

    #[test]
    fn what_explains_differences() {
        let n = next(NoteArea::Blank, ID, 3, 5, BOOT);
        assert_eq!(n.boots, 4, "counting on from the accepted boots");
        assert_eq!(unaccepted_boots(NoteArea::Note(n), ID, 3), Some(n));
        assert_eq!(unaccepted_boots(NoteArea::Note(n), ID, 4), None);
        let other = uuid::Uuid::from_u128(8);
        assert_eq!(unaccepted_boots(NoteArea::Note(n), other, 0), None);
        assert_eq!(unaccepted_boots(NoteArea::Damaged, ID, 0), None);
        assert_eq!(unaccepted_boots(NoteArea::Blank, ID, 0), None);
        // a damaged note is followed by one that counts past the accepted
        let after = next(NoteArea::Damaged, ID, 4, 9, BOOT);
        assert_eq!(after.boots, 5);
        // another staging's note starts over
        let theirs = next(NoteArea::Note(n), other, 0, 9, BOOT);
        assert_eq!((theirs.boots, theirs.first_unix), (1, 9));
    }
}
