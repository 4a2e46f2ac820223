//! The few raw ioctls that rustix does not wrap, with their `#[repr(C)]`
//! structs. This is the only module with `unsafe` code; each block says why
//! it is sound. Everything here is a thin transport: interpretation of the
//! results (e.g. which FIEMAP flags are acceptable) lives in pure modules.

use std::os::fd::AsFd;

use rustix::io;
use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode};

/// `struct fiemap` from `<linux/fiemap.h>` (header part, 32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent` from `<linux/fiemap.h>` (56 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RawFiemapExtent {
    pub fe_logical: u64,
    pub fe_physical: u64,
    pub fe_length: u64,
    pub fe_reserved64: [u64; 2],
    pub fe_flags: u32,
    pub fe_reserved: [u32; 3],
}

/// `FIEMAP_FLAG_SYNC`: flush dirty data before mapping.
pub const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// `FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap)`.
const FS_IOC_FIEMAP: Opcode = ioctl::opcode::read_write::<FiemapHeader>(b'f', 11);
/// `BLKGETSIZE64 = _IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: Opcode = ioctl::opcode::read::<u64>(0x12, 114);

/// The buffer of one FIEMAP call: the header followed by room for
/// `capacity` extents, laid out exactly as the kernel expects.
struct FiemapRequest {
    header: FiemapHeader,
    extents: Vec<RawFiemapExtent>,
    /// Contiguous storage: `[FiemapHeader][RawFiemapExtent; capacity]`,
    /// kept as u64 words so the buffer is 8-byte aligned like both structs.
    buf: Vec<u64>,
}

impl FiemapRequest {
    fn new(capacity: u32) -> Self {
        let bytes = size_of::<FiemapHeader>() + capacity as usize * size_of::<RawFiemapExtent>();
        FiemapRequest {
            header: FiemapHeader {
                fm_start: 0,
                fm_length: u64::MAX,
                fm_flags: FIEMAP_FLAG_SYNC,
                fm_mapped_extents: 0,
                fm_extent_count: capacity,
                fm_reserved: 0,
            },
            extents: Vec::new(),
            buf: vec![0u64; bytes.div_ceil(8)],
        }
    }
}

// SAFETY: the opcode is FS_IOC_FIEMAP, whose argument is a `struct fiemap`
// followed by `fm_extent_count` `struct fiemap_extent`s. `as_ptr` hands the
// kernel `buf`, which holds the header with `fm_extent_count` set to exactly
// the number of extent slots allocated behind it, so the kernel never writes
// past the allocation. The call mutates the buffer, so IS_MUTATING is true.
unsafe impl Ioctl for &mut FiemapRequest {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        FS_IOC_FIEMAP
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        let header = self.header;
        // SAFETY: `buf` is at least size_of::<FiemapHeader>() bytes and 8-byte
        // aligned, which is FiemapHeader's alignment; write_unaligned is used
        // anyway so alignment is not a precondition.
        unsafe {
            std::ptr::write_unaligned(self.buf.as_mut_ptr().cast::<FiemapHeader>(), header);
        }
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_out: IoctlOutput, _ptr: *mut std::ffi::c_void) -> io::Result<()> {
        Ok(())
    }
}

impl FiemapRequest {
    /// Copy the kernel's answer out of the raw buffer.
    fn collect(&mut self) {
        let base = self.buf.as_ptr().cast::<u8>();
        // SAFETY: the buffer starts with a FiemapHeader the kernel filled in;
        // read_unaligned copies it out without alignment requirements.
        let header: FiemapHeader = unsafe { std::ptr::read_unaligned(base.cast()) };
        let mapped = header.fm_mapped_extents.min(self.header.fm_extent_count) as usize;
        self.extents = (0..mapped)
            .map(|i| {
                let off = size_of::<FiemapHeader>() + i * size_of::<RawFiemapExtent>();
                // SAFETY: i < fm_extent_count, so the extent lies inside the
                // buffer allocated for `fm_extent_count` slots; every bit
                // pattern is a valid RawFiemapExtent (plain integers).
                unsafe { std::ptr::read_unaligned(base.add(off).cast::<RawFiemapExtent>()) }
            })
            .collect();
        self.header = header;
    }
}

/// All extents of `fd` from one FIEMAP call with `FIEMAP_FLAG_SYNC`.
///
/// A first call with no room counts the extents; the second fetches them.
/// If the file changed in between (more extents than counted, and the last
/// one not flagged `LAST`), the pair is retried with more room.
pub fn fiemap<Fd: AsFd>(fd: Fd) -> io::Result<Vec<RawFiemapExtent>> {
    let fd = fd.as_fd();
    let mut count = {
        let mut probe = FiemapRequest::new(0);
        // SAFETY: see the `Ioctl` impl for FiemapRequest.
        unsafe { ioctl::ioctl(fd, &mut probe)? };
        probe.collect();
        probe.header.fm_mapped_extents
    };
    for _ in 0..8 {
        let capacity = count.saturating_add(16);
        let mut req = FiemapRequest::new(capacity);
        // SAFETY: see the `Ioctl` impl for FiemapRequest.
        unsafe { ioctl::ioctl(fd, &mut req)? };
        req.collect();
        let complete = req.header.fm_mapped_extents < capacity
            || req
                .extents
                .last()
                .is_some_and(|e| e.fe_flags & crate::fiemap::FIEMAP_EXTENT_LAST != 0);
        if complete {
            return Ok(req.extents);
        }
        count = capacity.saturating_mul(2);
    }
    Err(io::Errno::AGAIN)
}

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub fn block_device_size<Fd: AsFd>(fd: Fd) -> io::Result<u64> {
    // SAFETY: BLKGETSIZE64 writes one u64 (the kernel's `size_t` on 64-bit
    // Linux, and the kernel always writes 8 bytes for this ioctl) into the
    // Getter's storage, which is exactly a u64.
    unsafe {
        let ctl = ioctl::Getter::<BLKGETSIZE64, u64>::new();
        ioctl::ioctl(fd, ctl)
    }
}

/// `BLKZEROOUT = _IO(0x12, 127)`, which takes a pointer to `u64[2]`
/// (start, length) nonetheless.
const BLKZEROOUT: Opcode = ioctl::opcode::none(0x12, 127);

/// Zero `length` bytes of the block device at byte `start` (both multiples
/// of the logical sector size). The kernel uses the device's write-zeroes
/// or unmap support and falls back to writing zero pages itself.
pub fn block_zero_out<Fd: AsFd>(fd: Fd, start: u64, length: u64) -> io::Result<()> {
    let range: [u64; 2] = [start, length];
    // SAFETY: BLKZEROOUT only reads two u64s (start, length) through its
    // argument pointer; the Setter passes a pointer to `range`, which is
    // exactly `[u64; 2]` and lives for the duration of the call.
    unsafe {
        let ctl = ioctl::Setter::<BLKZEROOUT, [u64; 2]>::new(range);
        ioctl::ioctl(fd, ctl)
    }
}

/// `FS_IOC_GETVERSION = _IOR('v', 1, long)`: the inode generation number.
const FS_IOC_GETVERSION: Opcode = ioctl::opcode::read::<std::ffi::c_long>(b'v', 1);

/// The inode generation of `fd` (ext4, xfs): together with the inode number
/// it tells a file from a later one that reuses the inode.
pub fn inode_generation<Fd: AsFd>(fd: Fd) -> io::Result<u32> {
    let mut value: u64 = 0;
    // SAFETY: the kernel writes an `int` (4 bytes) through the pointer for
    // FS_IOC_GETVERSION; the Updater points at an initialized 8-byte u64,
    // so the write stays in bounds and the unwritten bytes stay zero.
    unsafe {
        let ctl = ioctl::Updater::<FS_IOC_GETVERSION, u64>::new(&mut value);
        ioctl::ioctl(fd, ctl)?;
    }
    Ok(u32::from_le_bytes(
        value.to_le_bytes()[..4].try_into().expect("4 bytes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel_abi() {
        assert_eq!(size_of::<FiemapHeader>(), 32);
        assert_eq!(size_of::<RawFiemapExtent>(), 56);
        // _IOWR('f', 11, struct fiemap) on x86_64/aarch64.
        assert_eq!(FS_IOC_FIEMAP as u64, 0xC020_660B);
        assert_eq!(BLKGETSIZE64 as u64, 0x8008_1272);
    }

    #[test]
    fn fiemap_of_a_regular_file() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        match fiemap(&f) {
            Ok(extents) => {
                let total: u64 = extents.iter().map(|e| e.fe_length).sum();
                assert!(total >= 1 << 20, "extents cover the file: {extents:?}");
                assert!(extents.last().unwrap().fe_flags & crate::fiemap::FIEMAP_EXTENT_LAST != 0);
            }
            // tmpfs and some overlay setups do not implement FIEMAP.
            Err(e) if e == io::Errno::OPNOTSUPP || e == io::Errno::NOTSUP => {}
            Err(e) => panic!("fiemap failed: {e}"),
        }
    }
}
