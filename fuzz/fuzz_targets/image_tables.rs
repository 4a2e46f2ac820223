#![no_main]
//! The table-driven image formats (VHD, VHDX) and the compressed-size
//! parsers (xz index, zstd frames) must refuse lying input without
//! panicking, looping or allocating absurdly. The first byte picks the
//! parser; VHD/VHDX inputs get their magic and checksums patched in so the
//! fuzzer reaches the tables behind them.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use liverestore::input::compression::{xz_uncompressed_size, zstd_content_size};
use liverestore::input::transport::{MemSource, ReadAt};
use liverestore::input::{ImageReader, vhd, vhdx};

fn drain(mut r: Box<dyn ImageReader>, size: u64) {
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    for _ in 0..8 {
        if off >= size {
            break;
        }
        let n = (size - off).min(buf.len() as u64) as usize;
        if r.read_chunk(off, &mut buf[..n]).is_err() {
            return;
        }
        off += n as u64;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let src: Arc<dyn ReadAt> = Arc::new(MemSource(rest.to_vec()));
    match which % 4 {
        0 => {
            if let Ok(Some(kind)) = vhd::detect(rest, src.as_ref())
                && let Ok((r, size, _, _)) = vhd::open(src, kind)
            {
                drain(r, size);
            }
        }
        1 => {
            if let Ok((r, size)) = vhdx::VhdxReader::open(src) {
                drain(Box::new(r), size);
            }
        }
        2 => {
            let _ = xz_uncompressed_size(src.as_ref());
        }
        _ => {
            let _ = zstd_content_size(src.as_ref());
        }
    }
});
