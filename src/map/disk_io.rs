//! **Every write liverestore makes to a disk happens here**, in
//! [`DiskWriter::write_at`]. A write is addressed in container offsets and
//! translated through the [`ExtentMap`]; a range that is not entirely inside
//! the map, or whose disk runs fall outside the partition that holds the
//! container, is refused before any byte moves.
//!
//! Reads of staged data go through [`DiskReader`], also by the map, never
//! through the filesystem (whose view of the container is all zeros: its
//! extents stay "unwritten").

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::map::extent_map::ExtentMap;
pub use crate::sys::aligned::{AlignedBuf, AlignedSlice, BUF_ALIGN};

fn open_direct(path: &Path, write: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC).bits() as i32)
        .open(path)
        .map_err(|e| {
            let busy = e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error());
            let err = Error::io(
                if busy {
                    "the kernel refuses to open the disk for writing (bdev_allow_write_mounted=0?)"
                } else {
                    "cannot open the disk"
                },
                e,
            )
            .with_path(path);
            if busy {
                err.with_kind(ErrorKind::UnsupportedDevice)
            } else {
                err
            }
        })
}

/// Whether disk bytes `[disk, disk + len)` lie inside one of `bounds`.
fn within(bounds: &[(u64, u64)], disk: u64, len: u64) -> bool {
    bounds
        .iter()
        .any(|&(lo, hi)| disk >= lo && disk.saturating_add(len) <= hi)
}

fn describe_bounds(bounds: &[(u64, u64)]) -> String {
    let ranges: Vec<String> = bounds
        .iter()
        .map(|(lo, hi)| format!("{lo}..{hi}"))
        .collect();
    format!("the staging's space ({})", ranges.join(", "))
}

/// Refuse ([`ErrorKind::Corrupt`]) a map that reaches a disk byte outside
/// `bounds` (the staging's partitions and unallocated segments,
/// [`crate::store::record::StagingRecord::disk_bounds`]). Every way to
/// write through a map is checked with this: [`DiskWriter`] when it is
/// made, and the device-mapper table of a writable attach or `customize`
/// before it is loaded (`crate::attach::linear_table`).
pub fn check_map_within(map: &ExtentMap, bounds: &[(u64, u64)], disk: &Path) -> Result<()> {
    match map
        .extents()
        .iter()
        .find(|e| !within(bounds, e.disk, e.length))
    {
        Some(e) => Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "refused: the map reaches disk bytes {}..{}, outside {}",
                e.disk,
                e.disk + e.length,
                describe_bounds(bounds)
            ),
        )
        .with_path(disk)),
        None => Ok(()),
    }
}

/// The one checked choke point for disk writes.
pub struct DiskWriter {
    file: Arc<File>,
    path: PathBuf,
    map: ExtentMap,
    /// Disk byte ranges `[lo, hi)` the map may touch at all: the partition
    /// of each filesystem holding a container, and each unallocated
    /// segment. Checked again for every run, in case a map was built wrong.
    bounds: Vec<(u64, u64)>,
    align: u64,
    written: u64,
    zeroed: u64,
    /// Writes in flight ([`DiskWriter::write_queued`]), when started.
    queue: Option<WriteQueue>,
}

/// A write the checks passed, for a queue thread: `range` of `buf` at
/// disk byte `disk`; the buffer goes back through `back` once no write
/// holds it any more.
struct QueuedWrite {
    disk: u64,
    buf: Arc<AlignedBuf>,
    range: std::ops::Range<usize>,
    back: mpsc::Sender<AlignedBuf>,
}

/// How many queued writes are in flight, and the first that failed.
#[derive(Default)]
struct InFlight {
    count: usize,
    failed: Option<Error>,
}

/// A few threads doing checked writes, so that the disk gets several
/// requests at once (see [`DiskWriter::start_queue`]).
struct WriteQueue {
    jobs: Option<mpsc::SyncSender<QueuedWrite>>,
    state: Arc<(Mutex<InFlight>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

/// Give `buf` back through `back` if this was its last holder.
pub fn release(buf: Arc<AlignedBuf>, back: &mpsc::Sender<AlignedBuf>) {
    if let Some(b) = Arc::into_inner(buf) {
        let _ = back.send(b);
    }
}

impl WriteQueue {
    fn start(file: &Arc<File>, path: &Path, threads: usize) -> WriteQueue {
        // Rendezvous: a write is handed over only to an idle thread, so at
        // most `threads` are in flight.
        let (jobs, rx) = mpsc::sync_channel::<QueuedWrite>(0);
        let rx = Arc::new(Mutex::new(rx));
        let state: Arc<(Mutex<InFlight>, Condvar)> = Arc::default();
        let threads = (0..threads)
            .map(|_| {
                let (rx, state, file, path) =
                    (rx.clone(), state.clone(), file.clone(), path.to_path_buf());
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { return };
                        let r = file
                            .write_all_at(&job.buf[job.range.clone()], job.disk)
                            .op(|| "write to the disk".into())
                            .map_err(|e| e.with_path(&path).with_offset(job.disk));
                        release(job.buf, &job.back);
                        let (lock, cv) = &*state;
                        let mut st = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        st.count -= 1;
                        if let Err(e) = r {
                            st.failed.get_or_insert(e);
                        }
                        cv.notify_all();
                    }
                })
            })
            .collect();
        WriteQueue {
            jobs: Some(jobs),
            state,
            threads,
        }
    }

    /// The first failure so far, again (it stays, so that every later
    /// call fails too).
    fn failure(st: &InFlight) -> Result<()> {
        match &st.failed {
            Some(e) => Err(Error::new(e.kind(), e.to_string())),
            None => Ok(()),
        }
    }

    fn submit(&self, job: QueuedWrite) -> Result<()> {
        {
            let mut st = self.state.0.lock().unwrap_or_else(PoisonError::into_inner);
            WriteQueue::failure(&st)?;
            st.count += 1;
        }
        let jobs = self.jobs.as_ref().expect("open until dropped");
        jobs.send(job)
            .map_err(|_| Error::new(ErrorKind::Io, "the disk write threads stopped"))
    }

    /// Until nothing is in flight; then the first failure, if any.
    fn wait(&self) -> Result<()> {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while st.count > 0 {
            st = cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        WriteQueue::failure(&st)
    }
}

impl Drop for WriteQueue {
    /// Every write in flight ends before the writer is gone: after a
    /// failure the caller may give the space back, and no write may land
    /// there later.
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Buffer size for writing zeros where `BLKZEROOUT` is unavailable.
const ZERO_WRITE_LEN: usize = 1 << 20;

impl DiskWriter {
    /// Open the whole-disk device `disk` with O_DIRECT for writes through
    /// `map`, confined to the disk byte ranges `bounds`, with I/O aligned
    /// to `align` (the logical sector size).
    pub fn open(
        disk: &Path,
        map: ExtentMap,
        bounds: Vec<(u64, u64)>,
        align: u64,
    ) -> Result<DiskWriter> {
        let file = open_direct(disk, true)?;
        DiskWriter::from_file(file, disk, map, bounds, align)
    }

    /// A writer for staging `rec` on the disk of `target` (its first
    /// container's filesystem), confined to the partitions and unallocated
    /// ranges the record names and aligned to the disk's sectors: how every
    /// writer of a staging is made.
    pub fn for_staging(
        rec: &crate::store::record::StagingRecord,
        target: &crate::space::hostfs::HostTarget,
        map: ExtentMap,
    ) -> Result<DiskWriter> {
        DiskWriter::open(&target.disk_path, map, rec.disk_bounds(), target.io_align())
    }

    /// Write `data` at disk byte `start` of `disk` and flush: a writer
    /// whose map and bounds are exactly those bytes (a partition table's
    /// sectors, GRUB's environment block), so it can reach nothing else.
    /// `start` and the length must be multiples of `align`.
    pub fn write_range(disk: &Path, start: u64, data: &[u8], align: u64) -> Result<()> {
        let len = data.len() as u64;
        let mut w = DiskWriter::open(
            disk,
            ExtentMap::contiguous(start, len)?,
            vec![(start, start + len)],
            align,
        )?;
        let mut buf = AlignedBuf::new(data.len());
        buf.copy_from_slice(data);
        w.write_at(0, buf.whole())?;
        w.sync()
    }

    /// As [`DiskWriter::open`] on an already open file (tests use a
    /// regular file as the disk).
    pub fn from_file(
        file: File,
        path: &Path,
        map: ExtentMap,
        bounds: Vec<(u64, u64)>,
        align: u64,
    ) -> Result<DiskWriter> {
        check_map_within(&map, &bounds, path)?;
        if let Some(e) = map
            .extents()
            .iter()
            .find(|e| e.disk % align != 0 || e.length % align != 0)
        {
            return Err(Error::new(
                ErrorKind::UnsupportedDevice,
                format!(
                    "extent at disk byte {} is not aligned to the {align}-byte sector size",
                    e.disk
                ),
            ));
        }
        Ok(DiskWriter {
            file: Arc::new(file),
            path: path.to_path_buf(),
            map,
            bounds,
            align,
            written: 0,
            zeroed: 0,
            queue: None,
        })
    }

    /// Bytes written to the disk so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Check that container bytes `[offset, offset + len)` may be written
    /// and return their disk runs: sector-aligned, entirely inside the map,
    /// and every run inside the partition.
    fn checked_runs(&self, offset: u64, len: u64) -> Result<Vec<crate::map::extent_map::DiskRun>> {
        if !offset.is_multiple_of(self.align) || !len.is_multiple_of(self.align) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "refused: write {offset}+{len} is not aligned to {} bytes",
                    self.align
                ),
            ));
        }
        let runs = self.map.translate(offset, len)?;
        if let Some(run) = runs
            .iter()
            .find(|r| !within(&self.bounds, r.disk, r.length))
        {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "refused: disk bytes {}+{} lie outside {}",
                    run.disk,
                    run.length,
                    describe_bounds(&self.bounds)
                ),
            ));
        }
        Ok(runs)
    }

    /// Write `data` at container offset `offset`. Offset and length must be
    /// multiples of the sector size and the whole range must be mapped;
    /// `data` is O_DIRECT memory by its type, and must start on a sector
    /// boundary of it.
    pub fn write_at(&mut self, offset: u64, data: AlignedSlice<'_>) -> Result<()> {
        if !data.starts_aligned_to(self.align as usize) {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "refused: the buffer for write {offset}+{} does not start on a {}-byte boundary",
                    data.len(),
                    self.align
                ),
            ));
        }
        let data = data.bytes();
        for run in self.checked_runs(offset, data.len() as u64)? {
            let src = &data[run.buf_offset as usize..(run.buf_offset + run.length) as usize];
            self.file
                .write_all_at(src, run.disk)
                .op(|| "write to the disk".into())
                .map_err(|e| e.with_path(&self.path).with_offset(run.disk))?;
            self.written += run.length;
        }
        Ok(())
    }

    /// Make container bytes `[offset, offset + len)` read as zeros, under
    /// the same checks as [`DiskWriter::write_at`]. On a block device this
    /// is `BLKZEROOUT` (write-zeroes or unmap where the device has them);
    /// elsewhere (a regular file standing in for a disk) zeros are written.
    pub fn zero_at(&mut self, offset: u64, len: u64) -> Result<()> {
        for run in self.checked_runs(offset, len)? {
            match crate::sys::ioctl::block_zero_out(&self.file, run.disk, run.length) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::NOTTY || e == rustix::io::Errno::OPNOTSUPP => {
                    let zeros = AlignedBuf::new(ZERO_WRITE_LEN.min(run.length as usize));
                    let mut done = 0;
                    while done < run.length {
                        let n = (run.length - done).min(zeros.len() as u64) as usize;
                        self.file
                            .write_all_at(&zeros[..n], run.disk + done)
                            .op(|| "write zeros to the disk".into())
                            .map_err(|e| e.with_path(&self.path).with_offset(run.disk + done))?;
                        done += n as u64;
                    }
                }
                Err(e) => {
                    return Err(Error::io("zero a range of the disk (BLKZEROOUT)", e.into())
                        .with_path(&self.path)
                        .with_offset(run.disk));
                }
            }
            self.zeroed += run.length;
        }
        Ok(())
    }

    /// Bytes made zero by [`DiskWriter::zero_at`] so far.
    pub fn bytes_zeroed(&self) -> u64 {
        self.zeroed
    }

    /// Let [`DiskWriter::write_queued`] keep up to `threads` writes in
    /// flight (a few threads doing `pwrite`): the staging pipeline's data.
    pub fn start_queue(&mut self, threads: usize) {
        if self.queue.is_none() && threads > 0 {
            self.queue = Some(WriteQueue::start(&self.file, &self.path, threads));
        }
    }

    /// Like [`DiskWriter::write_at`] for `range` of `buf` (checked here,
    /// before anything is submitted), but the write is done by a queue
    /// thread while this returns; `buf` goes back through `back` when its
    /// last write is done. Without a queue, written at once. A failed
    /// queued write is returned by the next call, [`DiskWriter::wait`] or
    /// [`DiskWriter::sync`].
    pub fn write_queued(
        &mut self,
        offset: u64,
        buf: &Arc<AlignedBuf>,
        range: std::ops::Range<usize>,
        back: &mpsc::Sender<AlignedBuf>,
    ) -> Result<()> {
        if self.queue.is_none() {
            return self.write_at(offset, buf.part(range));
        }
        if !buf
            .part(range.clone())
            .starts_aligned_to(self.align as usize)
        {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "refused: the buffer for write {offset}+{} does not start on a {}-byte boundary",
                    range.len(),
                    self.align
                ),
            ));
        }
        let runs = self.checked_runs(offset, range.len() as u64)?;
        let queue = self.queue.as_ref().expect("checked above");
        for run in runs {
            let start = range.start + run.buf_offset as usize;
            queue.submit(QueuedWrite {
                disk: run.disk,
                buf: buf.clone(),
                range: start..start + run.length as usize,
                back: back.clone(),
            })?;
            self.written += run.length;
        }
        Ok(())
    }

    /// Until every queued write is done; the first that failed, if any.
    pub fn wait(&self) -> Result<()> {
        match &self.queue {
            Some(q) => q.wait(),
            None => Ok(()),
        }
    }

    /// Flush the disk's write cache, after every queued write is done:
    /// everything written so far is durable.
    pub fn sync(&self) -> Result<()> {
        self.wait()?;
        self.file
            .sync_data()
            .op(|| "flush the disk".into())
            .map_err(|e| e.with_path(&self.path))
    }
}

/// Reads through a map with O_DIRECT.
pub struct DiskReader {
    file: File,
    path: PathBuf,
    map: ExtentMap,
}

impl DiskReader {
    pub fn open(disk: &Path, map: ExtentMap) -> Result<DiskReader> {
        Ok(DiskReader {
            file: open_direct(disk, false)?,
            path: disk.to_path_buf(),
            map,
        })
    }

    pub fn from_file(file: File, path: &Path, map: ExtentMap) -> DiskReader {
        DiskReader {
            file,
            path: path.to_path_buf(),
            map,
        }
    }

    /// Fill `buf` from container offset `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        for run in self.map.translate(offset, buf.len() as u64)? {
            let dst = &mut buf[run.buf_offset as usize..(run.buf_offset + run.length) as usize];
            self.file
                .read_exact_at(dst, run.disk)
                .op(|| "read from the disk".into())
                .map_err(|e| e.with_path(&self.path).with_offset(run.disk))?;
        }
        Ok(())
    }
}

/// Read `len` bytes at a raw disk offset (no map): for scanning and
/// identity probes. Never used for writing.
pub fn read_raw(disk: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let file = File::open(disk)
        .op(|| "cannot open the disk".into())
        .map_err(|e| e.with_path(disk))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .op(|| "read from the disk".into())
        .map_err(|e| e.with_path(disk).with_offset(offset))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::extent_map::MapExtent;

    fn fixture() -> (tempfile::NamedTempFile, ExtentMap) {
        let disk = tempfile::NamedTempFile::new().unwrap();
        disk.as_file().set_len(64 * 1024).unwrap();
        let map = ExtentMap::new(
            vec![
                MapExtent {
                    logical: 0,
                    disk: 16384,
                    length: 4096,
                },
                MapExtent {
                    logical: 4096,
                    disk: 8192,
                    length: 8192,
                },
            ],
            12288,
        )
        .unwrap();
        (disk, map)
    }

    /// A writer over the fixture, bounded to bytes 4096..60000.
    fn writer(disk: &tempfile::NamedTempFile, map: &ExtentMap) -> DiskWriter {
        let file = disk.reopen().unwrap();
        DiskWriter::from_file(file, disk.path(), map.clone(), vec![(4096, 60000)], 512).unwrap()
    }

    #[test]
    fn writes_land_only_at_mapped_bytes() {
        let (disk, map) = fixture();
        let mut w = writer(&disk, &map);
        let data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut buf = AlignedBuf::new(data.len());
        buf.copy_from_slice(&data);
        w.write_at(0, buf.whole()).unwrap();
        assert_eq!(w.bytes_written(), 12288);
        let raw = std::fs::read(disk.path()).unwrap();
        assert_eq!(&raw[16384..20480], &data[..4096]);
        assert_eq!(&raw[8192..16384], &data[4096..]);
        let untouched = raw[..8192].iter().chain(&raw[20480..]).all(|&b| b == 0);
        assert!(untouched, "a byte outside the map changed");
        let r = DiskReader::from_file(disk.reopen().unwrap(), disk.path(), map);
        let mut back = vec![0u8; 12288];
        r.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn queued_writes_land_at_mapped_bytes_and_give_their_buffers_back() {
        let (disk, map) = fixture();
        let mut w = writer(&disk, &map);
        w.start_queue(3);
        let data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8 + 1).collect();
        let (back, returned) = mpsc::channel();
        for piece in 0..3usize {
            let mut buf = AlignedBuf::new(4096);
            buf.copy_from_slice(&data[piece * 4096..][..4096]);
            let buf = Arc::new(buf);
            // two writes share the buffer (halves of it)
            w.write_queued(piece as u64 * 4096, &buf, 0..2048, &back)
                .unwrap();
            w.write_queued(piece as u64 * 4096 + 2048, &buf, 2048..4096, &back)
                .unwrap();
            release(buf, &back);
        }
        // refused before submission, like write_at
        let stray = Arc::new(AlignedBuf::new(4096));
        assert!(w.write_queued(12288, &stray, 0..512, &back).is_err());
        w.sync().unwrap();
        assert_eq!(w.bytes_written(), 12288);
        assert_eq!(returned.try_iter().count(), 3, "each buffer back once");
        let raw = std::fs::read(disk.path()).unwrap();
        assert_eq!(&raw[16384..20480], &data[..4096]);
        assert_eq!(&raw[8192..16384], &data[4096..]);
    }

    #[test]
    fn a_failed_queued_write_is_reported_by_the_next_wait() {
        let (disk, map) = fixture();
        // read-only: every write fails (EBADF)
        let ro = std::fs::File::open(disk.path()).unwrap();
        let mut w = DiskWriter::from_file(ro, disk.path(), map, vec![(0, 65536)], 512).unwrap();
        w.start_queue(2);
        let (back, _returned) = mpsc::channel();
        let buf = Arc::new(AlignedBuf::new(4096));
        w.write_queued(0, &buf, 0..4096, &back).unwrap();
        let e = w.sync().unwrap_err();
        assert!(e.to_string().contains("write to the disk"), "{e}");
        assert!(
            w.write_queued(0, &buf, 0..512, &back).is_err(),
            "and stays failed"
        );
    }

    #[test]
    fn refuses_out_of_map_unaligned_and_out_of_bounds() {
        let (disk, map) = fixture();
        let mut w = DiskWriter::from_file(
            disk.reopen().unwrap(),
            disk.path(),
            map.clone(),
            vec![(0, 65536)],
            512,
        )
        .unwrap();
        let zeros = AlignedBuf::new(4096);
        let part = |n: usize| zeros.part(0..n);
        assert!(w.write_at(12288, part(512)).is_err(), "past the end");
        assert!(w.write_at(11776, part(1024)).is_err(), "straddles the end");
        assert!(w.write_at(100, part(512)).is_err(), "unaligned offset");
        assert!(w.write_at(0, part(100)).is_err(), "unaligned length");
        let e = w.write_at(0, zeros.part(256..768)).unwrap_err();
        assert!(e.message().contains("boundary"), "unaligned memory: {e}");
        assert_eq!(w.bytes_written(), 0);
        assert!(std::fs::read(disk.path()).unwrap().iter().all(|&b| b == 0));
        // a map reaching outside the partition is refused up front
        assert!(
            DiskWriter::from_file(
                disk.reopen().unwrap(),
                disk.path(),
                map.clone(),
                vec![(10000, 65536)],
                512
            )
            .is_err()
        );
        // every extent must fit inside one of several ranges
        assert!(
            DiskWriter::from_file(
                disk.reopen().unwrap(),
                disk.path(),
                map.clone(),
                vec![(8192, 16384), (16384, 20480)],
                512
            )
            .is_ok()
        );
        assert!(
            DiskWriter::from_file(
                disk.reopen().unwrap(),
                disk.path(),
                map,
                vec![(8192, 16000), (16384, 20480)],
                512
            )
            .is_err()
        );
    }

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let b = AlignedBuf::new(3 * 4096);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
    }
}
