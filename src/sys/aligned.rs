//! Heap buffers aligned for `O_DIRECT`: the memory every disk read and
//! write of staged data goes through. Written here (not a crate) because
//! it is forty lines around `alloc_zeroed`; it lives in `sys/` because it
//! is `unsafe`.

use std::alloc::{self, Layout};

/// Alignment of [`AlignedBuf`] memory: enough for O_DIRECT on any disk.
pub const BUF_ALIGN: usize = 4096;

/// A zero-initialized heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads (`Deref` to `&[u8]`); writing needs
// `&mut self`, as for a Box<[u8]>. Lets several disk writes in flight
// share one chunk (`DiskWriter::write_queued`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes (`len` > 0).
    pub fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(1), BUF_ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A part of an [`AlignedBuf`], and the only thing
/// [`crate::map::disk_io::DiskWriter`] writes: a caller cannot hand it
/// memory of unknown alignment (a `Vec`, a slice of anything), because
/// this is made only from an `AlignedBuf`, and it knows how far into that
/// 4096-aligned allocation it starts.
#[derive(Clone, Copy)]
pub struct AlignedSlice<'a> {
    bytes: &'a [u8],
    /// Where `bytes` starts in its `AlignedBuf`.
    offset: usize,
}

impl<'a> AlignedSlice<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether its memory starts on an `align`-byte boundary (`align` a
    /// power of two of at most [`BUF_ALIGN`], as a sector size is).
    pub fn starts_aligned_to(&self, align: usize) -> bool {
        align <= BUF_ALIGN && self.offset.is_multiple_of(align)
    }
}

impl AlignedBuf {
    /// All of it, for a disk write.
    pub fn whole(&self) -> AlignedSlice<'_> {
        self.part(0..self.len)
    }

    /// Bytes `range` of it, for a disk write (panics when out of range,
    /// as slicing does).
    pub fn part(&self, range: std::ops::Range<usize>) -> AlignedSlice<'_> {
        AlignedSlice {
            offset: range.start,
            bytes: &self[range],
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), BUF_ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_know_their_alignment() {
        let b = AlignedBuf::new(3 * BUF_ALIGN);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.whole().starts_aligned_to(4096));
        assert_eq!(b.whole().len(), 3 * BUF_ALIGN);
        let p = b.part(512..1024);
        assert!(p.starts_aligned_to(512) && !p.starts_aligned_to(4096));
        assert_eq!(p.len(), 512);
        assert!(b.part(BUF_ALIGN..2 * BUF_ALIGN).starts_aligned_to(4096));
        assert!(
            !b.whole().starts_aligned_to(8192),
            "never more than the allocation's"
        );
    }
}
