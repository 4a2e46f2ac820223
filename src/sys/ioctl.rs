//! The few raw ioctls that rustix does not wrap (FIEMAP, FIBMAP, block
//! device size and zero-out, inode generation, FAT attributes, filesystem
//! freeze, BLKPG, loop devices, device-mapper, the watchdog's timeout,
//! btrfs's tree search and filesystem info), with
//! their `#[repr(C)]` structs. This is the only module with `unsafe` code; each block says why
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
                .is_some_and(|e| e.fe_flags & crate::map::fiemap::FIEMAP_EXTENT_LAST != 0);
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

/// `struct blkpg_partition` from `<linux/blkpg.h>`: byte offsets.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: std::ffi::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: std::ffi::c_int,
    flags: std::ffi::c_int,
    datalen: std::ffi::c_int,
    data: *mut std::ffi::c_void,
}

/// `BLKPG = _IO(0x12, 105)`.
const BLKPG: Opcode = ioctl::opcode::none(0x12, 105);
const BLKPG_ADD_PARTITION: std::ffi::c_int = 1;
const BLKPG_DEL_PARTITION: std::ffi::c_int = 2;

fn blkpg<Fd: AsFd>(
    fd: Fd,
    op: std::ffi::c_int,
    pno: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| io::Errno::INVAL)?,
        length: i64::try_from(length).map_err(|_| io::Errno::INVAL)?,
        pno: std::ffi::c_int::try_from(pno).map_err(|_| io::Errno::INVAL)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as std::ffi::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a `struct blkpg_ioctl_arg` through the pointer
    // (the Updater passes one to `arg`), and through its `data` a
    // `struct blkpg_partition` of `datalen` bytes, which is `part`; both
    // are `#[repr(C)]` copies of the kernel's layouts and outlive the call.
    unsafe {
        let ctl = ioctl::Updater::<BLKPG, BlkpgIoctlArg>::new(&mut arg);
        ioctl::ioctl(fd, ctl)
    }
}

/// Tell the kernel about partition `pno` of the whole-disk device `fd`:
/// `length` bytes at byte `start` (`BLKPG_ADD_PARTITION`). The kernel
/// refuses (EBUSY) a partition that overlaps one it knows.
pub fn blkpg_add_partition<Fd: AsFd>(fd: Fd, pno: u32, start: u64, length: u64) -> io::Result<()> {
    blkpg(fd, BLKPG_ADD_PARTITION, pno, start, length)
}

/// Make the kernel forget partition `pno` (`BLKPG_DEL_PARTITION`; EBUSY
/// while it is open or mounted).
pub fn blkpg_del_partition<Fd: AsFd>(fd: Fd, pno: u32) -> io::Result<()> {
    blkpg(fd, BLKPG_DEL_PARTITION, pno, 0, 0)
}

/// `FIFREEZE = _IOWR('X', 119, int)` and `FITHAW = _IOWR('X', 120, int)`;
/// the kernel ignores their argument.
const FIFREEZE: Opcode = ioctl::opcode::read_write::<std::ffi::c_int>(b'X', 119);
const FITHAW: Opcode = ioctl::opcode::read_write::<std::ffi::c_int>(b'X', 120);

/// Freeze the filesystem of `fd`, then thaw it. Freezing makes ext4 and
/// xfs write their journal back to the blocks' home locations, so a reader
/// that does not replay the journal — a boot loader — sees every change
/// committed so far. Writers on that filesystem wait for the moment it is
/// frozen. The thaw is retried: a filesystem left frozen would stall the
/// system.
pub fn freeze_and_thaw<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    let fd = fd.as_fd();
    // SAFETY: FIFREEZE takes no argument; NoArg passes none and reads
    // nothing back.
    unsafe { ioctl::ioctl(fd, ioctl::NoArg::<FIFREEZE>::new())? };
    let mut last = Ok(());
    for _ in 0..5 {
        // SAFETY: as for FIFREEZE.
        last = unsafe { ioctl::ioctl(fd, ioctl::NoArg::<FITHAW>::new()) };
        if last.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

/// `FIBMAP = _IO(0x00, 1)`: maps one file block (in FIGETBSZ units) to a
/// filesystem block; takes a pointer to an `int` it reads and overwrites.
const FIBMAP: Opcode = 1;
/// `FIGETBSZ = _IO(0x00, 2)`: the block size FIBMAP counts in; writes an
/// `int` through its pointer.
const FIGETBSZ: Opcode = 2;

/// The filesystem block holding file block `block` (FIBMAP; 0 = a hole).
/// Needs CAP_SYS_RAWIO. For filesystems without FIEMAP (vfat).
pub fn fibmap<Fd: AsFd>(fd: Fd, block: u32) -> io::Result<u32> {
    let mut value = i32::try_from(block).map_err(|_| io::Errno::FBIG)?;
    // SAFETY: for FIBMAP the kernel reads one `int` through the pointer and
    // writes one `int` back; the Updater points at an initialized i32 that
    // lives for the duration of the call.
    unsafe {
        let ctl = ioctl::Updater::<FIBMAP, i32>::new(&mut value);
        ioctl::ioctl(fd, ctl)?;
    }
    u32::try_from(value).map_err(|_| io::Errno::OVERFLOW)
}

/// The block size FIBMAP counts in (FIGETBSZ).
pub fn fibmap_block_size<Fd: AsFd>(fd: Fd) -> io::Result<u32> {
    let mut value: i32 = 0;
    // SAFETY: FIGETBSZ writes one `int` through the pointer; the Updater
    // points at an initialized i32 that lives for the duration of the call.
    unsafe {
        let ctl = ioctl::Updater::<FIGETBSZ, i32>::new(&mut value);
        ioctl::ioctl(fd, ctl)?;
    }
    u32::try_from(value).map_err(|_| io::Errno::INVAL)
}

/// `FAT_IOCTL_GET_ATTRIBUTES = _IOR('r', 0x10, __u32)`.
const FAT_IOCTL_GET_ATTRIBUTES: Opcode = ioctl::opcode::read::<u32>(b'r', 0x10);
/// `FAT_IOCTL_SET_ATTRIBUTES = _IOW('r', 0x11, __u32)`.
const FAT_IOCTL_SET_ATTRIBUTES: Opcode = ioctl::opcode::write::<u32>(b'r', 0x11);

/// The FAT attribute byte of a file on vfat (`ATTR_RO` 0x01, `ATTR_SYS`
/// 0x04, …).
pub fn fat_attributes<Fd: AsFd>(fd: Fd) -> io::Result<u32> {
    // SAFETY: FAT_IOCTL_GET_ATTRIBUTES writes one u32 into the Getter's
    // storage, which is exactly a u32.
    unsafe {
        let ctl = ioctl::Getter::<FAT_IOCTL_GET_ATTRIBUTES, u32>::new();
        ioctl::ioctl(fd, ctl)
    }
}

/// Set the FAT attribute byte of a file on vfat.
pub fn set_fat_attributes<Fd: AsFd>(fd: Fd, attributes: u32) -> io::Result<()> {
    // SAFETY: FAT_IOCTL_SET_ATTRIBUTES reads one u32 through the pointer;
    // the Setter passes a pointer to its own u32, live for the call.
    unsafe {
        let ctl = ioctl::Setter::<FAT_IOCTL_SET_ATTRIBUTES, u32>::new(attributes);
        ioctl::ioctl(fd, ctl)
    }
}

/// An ioctl whose argument is ignored or an integer passed by value, and
/// whose answer is the return value (LOOP_CTL_GET_FREE, LOOP_CLR_FD).
struct IntIoctl {
    opcode: Opcode,
    arg: usize,
}

// SAFETY: the argument is passed as a plain integer disguised as a pointer
// (the kernel never dereferences it for the opcodes used with IntIoctl),
// nothing is written through it (IS_MUTATING false), and the output is the
// syscall's integer return value.
unsafe impl Ioctl for IntIoctl {
    type Output = i32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::without_provenance_mut(self.arg)
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _ptr: *mut std::ffi::c_void) -> io::Result<i32> {
        Ok(out)
    }
}

/// `LOOP_CTL_GET_FREE`, on /dev/loop-control: the number of a free loop
/// device (created if needed).
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
/// `LOOP_CLR_FD`: detach a loop device (deferred while it is open).
const LOOP_CLR_FD: Opcode = 0x4C01;
/// `LOOP_CONFIGURE`: attach and configure in one call (Linux 5.8).
const LOOP_CONFIGURE: Opcode = 0x4C0A;
/// `LOOP_GET_STATUS64`.
const LOOP_GET_STATUS64: Opcode = 0x4C05;

/// `LO_FLAGS_*` from `<linux/loop.h>`.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` (232 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` (304 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A free loop device number, from /dev/loop-control.
pub fn loop_get_free<Fd: AsFd>(control: Fd) -> io::Result<u32> {
    let ctl = IntIoctl {
        opcode: LOOP_CTL_GET_FREE,
        arg: 0,
    };
    // SAFETY: see IntIoctl; LOOP_CTL_GET_FREE ignores its argument.
    let n = unsafe { ioctl::ioctl(control, ctl)? };
    u32::try_from(n).map_err(|_| io::Errno::RANGE)
}

/// Attach `backing` to the loop device `dev` with `flags` (LO_FLAGS_*).
pub fn loop_configure<D: AsFd, B: AsFd>(dev: D, backing: B, flags: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let config = LoopConfig {
        fd: u32::try_from(backing.as_fd().as_raw_fd()).map_err(|_| io::Errno::BADF)?,
        info: LoopInfo64 {
            lo_flags: flags,
            ..LoopInfo64::default()
        },
        ..LoopConfig::default()
    };
    // SAFETY: LOOP_CONFIGURE only reads a `struct loop_config` through its
    // argument; the Setter passes a pointer to `config`, a #[repr(C)] copy
    // of that struct (layout checked in the tests), alive for the call.
    unsafe {
        let ctl = ioctl::Setter::<LOOP_CONFIGURE, LoopConfig>::new(config);
        ioctl::ioctl(dev, ctl)
    }
}

/// What the loop device `dev` is attached to.
pub fn loop_status<D: AsFd>(dev: D) -> io::Result<LoopInfo64> {
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` into the
    // Getter's storage, a #[repr(C)] copy of that struct (layout checked in
    // the tests); every bit pattern is valid for its integer fields.
    unsafe {
        let ctl = ioctl::Getter::<LOOP_GET_STATUS64, LoopInfo64>::new();
        ioctl::ioctl(dev, ctl)
    }
}

/// Detach the loop device `dev` (deferred by the kernel while it is open).
pub fn loop_clear<D: AsFd>(dev: D) -> io::Result<()> {
    let ctl = IntIoctl {
        opcode: LOOP_CLR_FD,
        arg: 0,
    };
    // SAFETY: see IntIoctl; LOOP_CLR_FD ignores its argument.
    unsafe { ioctl::ioctl(dev, ctl)? };
    Ok(())
}

/// Size of `struct dm_ioctl`; the encoding lives in `crate::sys::dm`.
pub const DM_IOCTL_SIZE: usize = 312;

/// An ioctl whose argument is one buffer, request and answer in place:
/// device-mapper's (`_IOWR(0xfd, cmd, struct dm_ioctl)` on
/// /dev/mapper/control) and btrfs's tree search and filesystem info.
struct BufferRequest<'a> {
    opcode: Opcode,
    buf: &'a mut [u64],
}

// SAFETY: every caller makes `buf` exactly as large as the kernel reads
// and writes for `opcode`: `dm_ioctl` checks that the `struct dm_ioctl`'s
// `data_size` field equals the buffer's length; `btrfs_ioctl` that the
// buffer is the size of the struct its opcode encodes. So the kernel
// stays inside `buf`. The buffer is 8-byte aligned (u64), as every one
// of these structs needs.
unsafe impl Ioctl for BufferRequest<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(_out: IoctlOutput, _ptr: *mut std::ffi::c_void) -> io::Result<()> {
        Ok(())
    }
}

/// Run device-mapper command `cmd` with the encoded request `bytes` (a
/// `struct dm_ioctl` and its payload, from `crate::sys::dm`); the kernel's
/// answer replaces `bytes`.
pub fn dm_ioctl<Fd: AsFd>(control: Fd, cmd: u8, bytes: &mut [u8]) -> io::Result<()> {
    if bytes.len() < DM_IOCTL_SIZE || !bytes.len().is_multiple_of(8) {
        return Err(io::Errno::INVAL);
    }
    let data_size = u32::from_ne_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if data_size as usize != bytes.len() {
        return Err(io::Errno::INVAL);
    }
    through_words(bytes, |words| {
        let req = BufferRequest {
            opcode: ioctl::opcode::read_write::<[u8; DM_IOCTL_SIZE]>(0xfd, cmd),
            buf: words,
        };
        // SAFETY: see the Ioctl impl for BufferRequest; data_size was checked.
        unsafe { ioctl::ioctl(control, req) }
    })
}

/// Run `call` on `bytes` (a multiple of 8 long) as 8-byte aligned words,
/// then copy what it left in them back.
fn through_words(
    bytes: &mut [u8],
    call: impl FnOnce(&mut [u64]) -> io::Result<()>,
) -> io::Result<()> {
    let mut words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect();
    call(&mut words)?;
    for (c, w) in bytes.chunks_exact_mut(8).zip(&words) {
        c.copy_from_slice(&w.to_ne_bytes());
    }
    Ok(())
}

/// `WDIOC_SETTIMEOUT = _IOWR('W', 6, int)`: sets a watchdog's timeout in
/// seconds (and pings it); the driver writes back the timeout it took.
const WDIOC_SETTIMEOUT: Opcode = ioctl::opcode::read_write::<std::ffi::c_int>(b'W', 6);

/// Set the timeout of the open watchdog device `fd`; returns the seconds
/// the driver took (it may round).
pub fn watchdog_set_timeout<Fd: AsFd>(fd: Fd, seconds: u32) -> io::Result<u32> {
    let mut value = std::ffi::c_int::try_from(seconds).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the
    // pointer; the Updater passes a pointer to `value`, live for the call.
    unsafe {
        let ctl = ioctl::Updater::<WDIOC_SETTIMEOUT, std::ffi::c_int>::new(&mut value);
        ioctl::ioctl(fd, ctl)?;
    }
    Ok(u32::try_from(value).unwrap_or(0))
}

/// `BTRFS_IOCTL_MAGIC`.
const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `struct btrfs_ioctl_search_args`: a 104-byte key, then the results.
pub const BTRFS_SEARCH_ARGS_SIZE: usize = 4096;
/// `struct btrfs_ioctl_fs_info_args`.
pub const BTRFS_FS_INFO_SIZE: usize = 1024;

fn btrfs_ioctl<Fd: AsFd, const N: usize>(
    fd: Fd,
    opcode: Opcode,
    bytes: &mut [u8],
) -> io::Result<()> {
    if bytes.len() != N || !N.is_multiple_of(8) {
        return Err(io::Errno::INVAL);
    }
    through_words(bytes, |words| {
        let req = BufferRequest { opcode, buf: words };
        // SAFETY: see the Ioctl impl for BufferRequest; the length was checked.
        unsafe { ioctl::ioctl(fd, req) }
    })
}

/// `BTRFS_IOC_TREE_SEARCH = _IOWR(0x94, 17, struct btrfs_ioctl_search_args)`
/// on any file of the filesystem (needs CAP_SYS_ADMIN): `args` is the
/// encoded search key followed by the result buffer
/// (`crate::map::btrfs` encodes and decodes both).
pub fn btrfs_tree_search<Fd: AsFd>(fd: Fd, args: &mut [u8]) -> io::Result<()> {
    btrfs_ioctl::<_, BTRFS_SEARCH_ARGS_SIZE>(
        fd,
        ioctl::opcode::read_write::<[u8; BTRFS_SEARCH_ARGS_SIZE]>(BTRFS_IOCTL_MAGIC, 17),
        args,
    )
}

/// `BTRFS_IOC_FS_INFO = _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)`:
/// the filesystem's device count, fsid and sizes, raw.
pub fn btrfs_fs_info<Fd: AsFd>(fd: Fd) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; BTRFS_FS_INFO_SIZE];
    btrfs_ioctl::<_, BTRFS_FS_INFO_SIZE>(
        fd,
        ioctl::opcode::read::<[u8; BTRFS_FS_INFO_SIZE]>(BTRFS_IOCTL_MAGIC, 31),
        &mut bytes,
    )?;
    Ok(bytes)
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
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(size_of::<LoopConfig>(), 304);
        // DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl)
        assert_eq!(
            ioctl::opcode::read_write::<[u8; DM_IOCTL_SIZE]>(0xfd, 3) as u64,
            0xC138_FD03
        );
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
                assert!(
                    extents.last().unwrap().fe_flags & crate::map::fiemap::FIEMAP_EXTENT_LAST != 0
                );
            }
            // tmpfs and some overlay setups do not implement FIEMAP.
            Err(e) if e == io::Errno::OPNOTSUPP || e == io::Errno::NOTSUP => {}
            Err(e) => panic!("fiemap failed: {e}"),
        }
    }
}
