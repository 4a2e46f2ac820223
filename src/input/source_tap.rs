//! A tap on the source's own bytes (the file as published: compressed,
//! qcow2, whatever it is), fed in order to a signature check while the
//! image streams, so a signed image is read once.
//!
//! Every read of the source goes through [`TappedReadAt`] or
//! [`TappedRead`], which offer what they read to the [`SourceTap`]. The tap
//! takes the bytes that continue where it stopped, and ignores reads
//! behind it (already checked) or ahead of it (a format reading its tables
//! out of order). A jump over a hole of a sparse file is fed as the zeros
//! the hole is. Whatever is still missing at the end (bytes a format never
//! read, or read out of order) is read then, from the source, in order:
//! for a raw or compressed image that is nothing; for qcow2, VHD and VHDX
//! it can be most of the file, read a second time.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use super::transport::ReadAt;
use crate::error::{Error, ErrorKind, Result};
use crate::trust::{StreamingCheck, VerifiedSignature};

/// Zeros fed for a hole, and the read size of the final catch-up.
const STEP: usize = 4 << 20;

/// The in-order position of the source bytes fed so far, and where they go.
pub struct SourceTap {
    state: Mutex<TapState>,
}

struct TapState {
    pos: u64,
    check: Option<StreamingCheck>,
    /// The untapped source, for the holes and the catch-up at the end.
    random: Option<Arc<dyn ReadAt>>,
}

impl std::fmt::Debug for SourceTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceTap")
            .field("pos", &self.lock().pos)
            .finish()
    }
}

impl SourceTap {
    pub fn new(check: StreamingCheck) -> Arc<SourceTap> {
        Arc::new(SourceTap {
            state: Mutex::new(TapState {
                pos: 0,
                check: Some(check),
                random: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The source with random access, once it is opened.
    pub(crate) fn set_random(&self, src: Arc<dyn ReadAt>) {
        self.lock().random = Some(src);
    }

    /// Bytes `[offset, offset + bytes.len())` of the source were read.
    pub fn offer(&self, offset: u64, bytes: &[u8]) {
        let mut st = self.lock();
        let end = offset + bytes.len() as u64;
        if offset > st.pos {
            // Only a hole may be jumped: its bytes are zeros.
            let hole = st
                .random
                .as_ref()
                .is_some_and(|r| r.next_data(st.pos).is_none_or(|d| d >= offset));
            if !hole {
                return;
            }
            let zeros = vec![0u8; STEP.min((offset - st.pos) as usize)];
            while st.pos < offset {
                let n = (offset - st.pos).min(zeros.len() as u64) as usize;
                if let Some(c) = st.check.as_mut() {
                    c.update(&zeros[..n]);
                }
                st.pos += n as u64;
            }
        }
        if end > st.pos {
            let from = (st.pos - offset) as usize;
            if let Some(c) = st.check.as_mut() {
                c.update(&bytes[from..]);
            }
            st.pos = end;
        }
    }

    /// After the last read: feed what is still missing up to the source's
    /// end (when it has random access), then give the verdict.
    pub fn complete(&self) -> Result<VerifiedSignature> {
        let (check, missing) = {
            let mut st = self.lock();
            let check = st.check.take().ok_or_else(|| {
                Error::new(ErrorKind::InvalidState, "the signature check already ended")
            })?;
            (check, st.random.clone().map(|r| (r, st.pos)))
        };
        let mut check = check;
        if let Some((src, mut pos)) = missing {
            let mut buf = vec![0u8; STEP];
            while pos < src.len() {
                let n = (src.len() - pos).min(STEP as u64) as usize;
                src.read_exact_at(&mut buf[..n], pos).map_err(|e| {
                    super::read_failed("cannot read the image for its signature", e)
                        .with_offset(pos)
                })?;
                check.update(&buf[..n]);
                pos += n as u64;
            }
        }
        check.finish()
    }
}

/// A random-access source whose reads are offered to a tap.
pub struct TappedReadAt {
    pub inner: Arc<dyn ReadAt>,
    pub tap: Arc<SourceTap>,
}

impl ReadAt for TappedReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)?;
        self.tap.offer(offset, buf);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn next_data(&self, offset: u64) -> Option<u64> {
        self.inner.next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> u64 {
        self.inner.next_hole(offset)
    }
}

/// A sequential source (from byte `pos`) whose reads are offered to a tap.
pub struct TappedRead {
    pub inner: Box<dyn Read + Send>,
    pub pos: u64,
    pub tap: Arc<SourceTap>,
}

impl Read for TappedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tap.offer(self.pos, &buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::transport::MemSource;
    use crate::trust::signature_file::{self, SignatureFile};

    /// A tap checking the minisign test vector (a signature of "test").
    fn tap() -> Arc<SourceTap> {
        let key = crate::trust::minisign::Key::parse(
            crate::trust::minisign::tests::PUBLIC_KEY.as_bytes(),
        )
        .unwrap();
        let sig =
            signature_file::parse(crate::trust::minisign::tests::SIGNATURE.as_bytes()).unwrap();
        let SignatureFile::Minisign(m) = &sig else {
            panic!()
        };
        assert!(key.signer_of(m).is_some());
        let keys = crate::trust::TrustedKeys {
            dir: "/k".into(),
            keys: vec![("/k/a.pub".into(), crate::trust::TrustedKey::Minisign(key))],
        };
        SourceTap::new(keys.match_signature(&sig, "t.minisig", 0).unwrap().start())
    }

    #[test]
    fn out_of_order_reads_are_caught_up_at_the_end() {
        let t = tap();
        t.set_random(Arc::new(MemSource(b"test".to_vec())));
        t.offer(2, b"st"); // ahead: ignored
        t.offer(0, b"te");
        t.offer(0, b"t"); // behind: ignored
        assert_eq!(t.complete().unwrap().key, "2E8A1445FF6E8323");
    }

    #[test]
    fn a_stream_checks_exactly_what_it_delivered() {
        let t = tap();
        let mut r = TappedRead {
            inner: Box::new(&b"test"[..]),
            pos: 0,
            tap: t.clone(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        t.complete().unwrap();
        let t = tap();
        t.offer(0, b"tes");
        assert_eq!(
            t.complete().unwrap_err().kind(),
            ErrorKind::SignatureRejected
        );
    }
}
