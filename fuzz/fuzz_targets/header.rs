#![no_main]
//! The on-disk header parser must never panic on what a raw disk holds;
//! nor the boot note's, at the end of the header area (a note that
//! decodes encodes back to the same bytes).
//! The fuzzer cannot forge SHA-256, so most inputs get valid checksums
//! patched in, letting it reach the field parsing behind them.
use libfuzzer_sys::fuzz_target;
use liverestore::store::boot_note::{self, NoteArea};
use liverestore::store::header::{self, BLOCK0_SIZE};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let mut note = data.to_vec();
    if note.len() >= boot_note::LEN && data[0] & 2 == 0 {
        note[..16].copy_from_slice(boot_note::MAGIC);
        note[16..20].copy_from_slice(&1u32.to_le_bytes());
        let sum = Sha256::digest(&note[..boot_note::LEN - 32]);
        note[boot_note::LEN - 32..boot_note::LEN].copy_from_slice(&sum);
    }
    if let NoteArea::Note(n) = boot_note::decode(&note) {
        let again = boot_note::encode(&n);
        assert_eq!(again[..boot_note::LEN], note[..boot_note::LEN]);
        assert_eq!(boot_note::decode(&again), NoteArea::Note(n));
    }
    let mut block = data.to_vec();
    if block.len() >= BLOCK0_SIZE && block[0] & 1 == 0 {
        block[..16].copy_from_slice(header::MAGIC);
        let body_len = u64::from_le_bytes(block[32..40].try_into().unwrap()) as usize;
        if let Some(body) = block.get(BLOCK0_SIZE..BLOCK0_SIZE.saturating_add(body_len)) {
            let sum = Sha256::digest(body);
            block[64..96].copy_from_slice(&sum);
        }
        let sum = Sha256::digest(&block[..BLOCK0_SIZE - 32]);
        block[BLOCK0_SIZE - 32..BLOCK0_SIZE].copy_from_slice(&sum);
    }
    if let Ok(b0) = header::decode_block0(&block) {
        let _ = header::decode_body(&b0, &block);
    }
});
