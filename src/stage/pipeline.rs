//! Step 4 of staging, the image pipeline: a reader thread delivers the
//! image's chunks in order, a hasher finds zero runs and hashes them, and
//! the writer sends each chunk to its staging's sink; checkpoints flush
//! the disk and record what is durable.

use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::sink::{Sink, finish};
use super::*;
use crate::space::hostfs::HostTarget;

/// A run of a chunk, in bytes from the chunk's start: data to write, or
/// zeros to make with `BLKZEROOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRun {
    pub start: usize,
    pub len: usize,
    pub zero: bool,
}

/// A chunk as read from the image: `len` image bytes in `buf` (unless
/// `fill` says it is all zeros), for chunk `index` of sink `sink`, or, with
/// no sink, bytes between the stagings that are only hashed.
pub(super) struct ReadChunk {
    pub(super) sink: Option<usize>,
    pub(super) index: u64,
    pub(super) buf: AlignedBuf,
    pub(super) len: usize,
    pub(super) fill: Fill,
}

/// A chunk of a staging with its hash and its data and zero runs.
pub(super) struct HashedChunk {
    pub(super) sink: usize,
    pub(super) index: u64,
    pub(super) buf: AlignedBuf,
    pub(super) len: usize,
    pub(super) fill: Fill,
    pub(super) blake3: String,
    pub(super) runs: Vec<ChunkRun>,
}

/// What flows down the pipeline: read (`ReadChunk`) → hash and find zeros
/// (`HashedChunk`) → write. `Done` carries what only the end tells.
pub(super) enum Message<C> {
    Chunk(C),
    Done(Ended),
    Failed(Error),
}

/// What the end of the image tells: its SHA-256 (once the hasher computed
/// it, when one is expected) and the verdict of its signature (when one is
/// checked).
#[derive(Default)]
pub(super) struct Ended {
    pub(super) sha256: Option<[u8; 32]>,
    pub(super) signature: Option<Result<crate::trust::VerifiedSignature>>,
}

/// The BLAKE3 of a chunk of `len` zeros, which a chunk found to be all
/// zeros takes instead of being hashed (stage and verify alike).
pub(super) fn zero_chunk_hash(len: usize) -> String {
    blake3::hash(&AlignedBuf::new(len)).to_hex().to_string()
}

/// Whether `b` is all zeros (in 64-byte blocks the compiler vectorizes).
pub(super) fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks.all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Split `buf` into data and zero runs of whole [`ZERO_GRAIN`]s (the last
/// grain may be shorter), merging neighbours of the same kind.
pub fn zero_runs(buf: &[u8]) -> Vec<ChunkRun> {
    let mut runs: Vec<ChunkRun> = Vec::new();
    for (i, grain) in buf.chunks(ZERO_GRAIN).enumerate() {
        let zero = is_zero(grain);
        match runs.last_mut() {
            Some(r) if r.zero == zero => r.len += grain.len(),
            _ => runs.push(ChunkRun {
                start: i * ZERO_GRAIN,
                len: grain.len(),
                zero,
            }),
        }
    }
    runs
}

/// Zeroing requests are merged across chunks and sent when data follows,
/// at a checkpoint, or at the end: a long run of zeros is one ioctl.
#[derive(Default)]
pub(super) struct PendingZero(Option<(u64, u64)>);

impl PendingZero {
    pub(super) fn add(&mut self, writer: &mut DiskWriter, offset: u64, len: u64) -> Result<()> {
        match &mut self.0 {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => {
                self.flush(writer)?;
                self.0 = Some((offset, len));
            }
        }
        Ok(())
    }

    pub(super) fn flush(&mut self, writer: &mut DiskWriter) -> Result<()> {
        if let Some((o, l)) = self.0.take() {
            writer.zero_at(o, l)?;
        }
        Ok(())
    }
}

pub(super) fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// A byte range of the image the reader delivers: the chunks of a staging
/// (`sink`) from chunk `first` on, or bytes between stagings that are read
/// only to be hashed (`sink` None).
pub(super) struct Span {
    pub(super) sink: Option<usize>,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) first: u64,
}

/// The reader's work list, in image order: each sink's chunks, and when
/// the whole image must be hashed, the bytes between and after them.
pub(super) fn spans(
    sinks: &[(u64, u64, u64)],
    image_size: u64,
    chunk: u64,
    starts_at: u64,
    hash_all: bool,
) -> Vec<Span> {
    let mut order: Vec<usize> = (0..sinks.len()).collect();
    order.sort_by_key(|&i| sinks[i].0);
    let mut out = Vec::new();
    let mut pos = 0;
    for i in order {
        let (offset, size, committed) = sinks[i];
        if hash_all && offset > pos {
            out.push(Span {
                sink: None,
                offset: pos,
                len: offset - pos,
                first: 0,
            });
        }
        // Chunks before the source's first byte are not read again.
        let skip = starts_at.saturating_sub(offset) / chunk;
        out.push(Span {
            sink: Some(i),
            offset,
            len: size,
            first: skip.min(committed),
        });
        pos = pos.max(offset + size);
    }
    if hash_all && image_size > pos {
        out.push(Span {
            sink: None,
            offset: pos,
            len: image_size - pos,
            first: 0,
        });
    }
    out
}

/// Steps 4 and 5 for every staging in `targets` (a record and the image
/// offset of its first byte), in one pass over `source`. With `resuming`,
/// chunks below each record's `written` are checked instead of blindly
/// written.
pub(super) fn write_pass(
    state: &StateLock<'_>,
    targets: &mut [(&mut StagingRecord, u64)],
    source: &mut Image,
    target: &HostTarget,
    resuming: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let align = target.io_align();
    let chunk = CHUNK_SIZE;
    let mut sinks = Vec::with_capacity(targets.len());
    let mut layout = Vec::with_capacity(targets.len());
    for (rec, offset) in targets.iter_mut() {
        let map = rec
            .map
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::InvalidState, "no map"))?;
        if rec.image.chunk_size != chunk {
            return Err(Error::new(ErrorKind::InvalidState, "unexpected chunk size"));
        }
        let mut writer = DiskWriter::for_staging(rec, target, map.clone())?;
        writer.start_queue(WRITES_IN_FLIGHT);
        let reader = DiskReader::open(&target.disk_path, map.clone())?;
        staged::write_header(&mut writer, rec, align)?;
        let committed = if resuming {
            rec.image.written / chunk
        } else {
            0
        };
        rec.image.chunk_blake3.truncate(committed as usize);
        layout.push((*offset, rec.image.size, committed));
        sinks.push(Sink {
            rec,
            writer,
            reader,
            committed,
            pending: PendingZero::default(),
            done: committed * chunk,
            last_checkpoint: (committed * chunk, Instant::now()),
        });
    }
    let want_sha256 = sinks.iter().any(|s| s.rec.image.expected_sha256.is_some());
    let image_size = source.size();
    // A signature covers the whole file: every byte is read, in order.
    let read_all = want_sha256 || source.checks_signature();
    let spans = spans(&layout, image_size, chunk, source.starts_at, read_all);
    let total: u64 = sinks.iter().map(|s| s.rec.image.size).sum();
    progress.begin("stage", total);
    let ended = std::thread::scope(|s| -> Result<Ended> {
        let (tx, rx) = mpsc::sync_channel::<Message<HashedChunk>>(PIPELINE_DEPTH);
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..2 * PIPELINE_DEPTH + 3 {
            free_tx
                .send(AlignedBuf::new(chunk as usize))
                .expect("receiver alive");
        }
        // Stage 1: read (and decompress, decode) each chunk.
        let (read_tx, read_rx) = mpsc::sync_channel::<Message<ReadChunk>>(PIPELINE_DEPTH);
        s.spawn(move || {
            for span in &spans {
                for index in span.first..span.len.div_ceil(chunk) {
                    let Ok(mut buf) = free_rx.recv() else { return };
                    let rel = index * chunk;
                    let len = (span.len - rel).min(chunk) as usize;
                    let fill = match source.read_chunk(span.offset + rel, &mut buf[..len]) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = read_tx.send(Message::Failed(e));
                            return;
                        }
                    };
                    if fill == Fill::Data && len < buf.len() {
                        buf[len..].fill(0); // sector padding of the last chunk
                    }
                    let msg = Message::Chunk(ReadChunk {
                        sink: span.sink,
                        index,
                        buf,
                        len,
                        fill,
                    });
                    if read_tx.send(msg).is_err() {
                        return;
                    }
                }
            }
            let msg = match source.finish() {
                Ok(()) => Message::Done(Ended {
                    sha256: None,
                    signature: source.finish_signature(),
                }),
                Err(e) => Message::Failed(e),
            };
            let _ = read_tx.send(msg);
        });
        // Stage 2: chunk hashes, zero runs and (when one is expected) the
        // whole-image SHA-256, in parallel with reading and writing.
        let spare_tx = free_tx.clone();
        s.spawn(move || {
            let mut whole = want_sha256.then(Sha256::new);
            let zeros = AlignedBuf::new(chunk as usize);
            let zero_hash = zero_chunk_hash(chunk as usize);
            for msg in read_rx {
                let msg = match msg {
                    Message::Chunk(c) => {
                        let (len, buf) = (c.len, &c.buf);
                        let data: &[u8] = match c.fill {
                            Fill::Zero => &zeros[..len],
                            Fill::Data => &buf[..len],
                        };
                        if let Some(w) = whole.as_mut() {
                            w.update(data);
                        }
                        let Some(sink) = c.sink else {
                            // Only hashed: the buffer goes back at once.
                            let _ = spare_tx.send(c.buf);
                            continue;
                        };
                        let io_len = align_up(len as u64, align) as usize;
                        let (blake3, runs) = match c.fill {
                            Fill::Zero => {
                                let hash = if len == zeros.len() {
                                    zero_hash.clone()
                                } else {
                                    blake3::hash(data).to_hex().to_string()
                                };
                                let all = ChunkRun {
                                    start: 0,
                                    len: io_len,
                                    zero: true,
                                };
                                (hash, vec![all])
                            }
                            Fill::Data => {
                                let runs = zero_runs(&buf[..io_len]);
                                // zeros read as data (a block device, a
                                // raw file without holes): recognized, not
                                // hashed
                                let hash = match runs.as_slice() {
                                    [r] if r.zero && len == zeros.len() => zero_hash.clone(),
                                    _ => blake3::hash(data).to_hex().to_string(),
                                };
                                (hash, runs)
                            }
                        };
                        Message::Chunk(HashedChunk {
                            sink,
                            index: c.index,
                            buf: c.buf,
                            len,
                            fill: c.fill,
                            blake3,
                            runs,
                        })
                    }
                    Message::Done(ended) => Message::Done(Ended {
                        sha256: whole.take().map(|w| w.finalize().into()),
                        ..ended
                    }),
                    Message::Failed(e) => Message::Failed(e),
                };
                let last = !matches!(msg, Message::Chunk(_));
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        });

        // Writer: this thread.
        let mut done = 0u64;
        let mut current = None;
        loop {
            let msg = match rx.recv_timeout(IDLE_CHECKPOINT) {
                Ok(msg) => msg,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    for sink in &mut sinks {
                        sink.checkpoint_if_behind(state)?;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        "the image reader stopped unexpectedly",
                    ));
                }
            };
            match msg {
                Message::Failed(e) => return Err(e),
                Message::Done(ended) => {
                    for sink in &mut sinks {
                        sink.pending.flush(&mut sink.writer)?;
                    }
                    return Ok(ended);
                }
                Message::Chunk(c) => {
                    // The previous staging got its last chunk: record it,
                    // so a resume skips it.
                    if let Some(prev) = current.replace(c.sink)
                        && prev != c.sink
                    {
                        sinks[prev].checkpoint_if_behind(state)?;
                    }
                    done += c.len as u64;
                    let sink = c.sink;
                    sinks[sink].put(state, c, align, progress, &free_tx)?;
                    progress.update(done);
                }
            }
        }
    })?;
    progress.end();
    finish(state, &mut sinks, ended, align)
}
