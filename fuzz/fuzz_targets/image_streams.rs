#![no_main]
//! Streamed formats and sidecars: Android sparse images, bmap XML and the
//! qcow2 header checks must refuse lying input without panicking.
use libfuzzer_sys::fuzz_target;
use liverestore::input::{ImageReader, bmap, qcow2, sparse};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            let mut input = sparse::MAGIC.to_le_bytes().to_vec();
            input.extend_from_slice(rest);
            if let Ok((mut r, size)) = sparse::SparseReader::new(Box::new(std::io::Cursor::new(input))) {
                let mut buf = vec![0u8; 64 << 10];
                let mut off = 0;
                while off < size.min(1 << 20) {
                    let n = (size - off).min(buf.len() as u64) as usize;
                    if r.read_chunk(off, &mut buf[..n]).is_err() {
                        return;
                    }
                    off += n as u64;
                }
                let _ = r.finish();
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = bmap::Bmap::parse(text);
            }
        }
        _ => {
            let mut head = b"QFI\xfb".to_vec();
            head.extend_from_slice(rest);
            if let Ok((_, _, _, bits)) = qcow2::check_header(&head, head.len() as u64) {
                let _ = qcow2::check_l1(&head, bits, head.len() as u64);
            }
        }
    }
});
