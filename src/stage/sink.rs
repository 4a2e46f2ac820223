//! Where a staging's chunks go: its [`DiskWriter`], confined to its map,
//! its record (checkpoints), and step 5, `finish`: flush, re-derive the
//! map, mark complete (or failed) on disk and in the state directory.

use super::pipeline::{HashedChunk, PendingZero, align_up};
use super::*;

/// A staging being written by a pass.
pub(super) struct Sink<'r> {
    pub(super) rec: &'r mut StagingRecord,
    pub(super) writer: DiskWriter,
    pub(super) reader: DiskReader,
    /// Chunks staged before this pass (checked, not blindly rewritten).
    pub(super) committed: u64,
    pub(super) pending: PendingZero,
    /// Image bytes staged so far (contiguous from 0), and as of the last
    /// checkpoint (with its time).
    pub(super) done: u64,
    pub(super) last_checkpoint: (u64, Instant),
}

impl Sink<'_> {
    /// Flush, sync and record how far this staging got (`done`).
    pub(super) fn checkpoint(&mut self, state: &StateLock<'_>) -> Result<()> {
        let done = self.done;
        self.pending.flush(&mut self.writer)?;
        self.writer.sync()?;
        self.rec.image.written = done.min(self.rec.image.size);
        self.rec.image.disk_written = self.writer.bytes_written();
        self.rec.image.disk_zeroed = self.writer.bytes_zeroed();
        state.save(self.rec)?;
        self.last_checkpoint = (done, Instant::now());
        Ok(())
    }

    /// Checkpoint if anything was staged since the last checkpoint.
    pub(super) fn checkpoint_if_behind(&mut self, state: &StateLock<'_>) -> Result<()> {
        if self.done > self.last_checkpoint.0 {
            self.checkpoint(state)?;
        }
        Ok(())
    }

    /// Write (or, below `committed`, check) one hashed chunk.
    /// The chunk's buffer goes back through `back` once its writes are
    /// done (they may still be in flight when this returns).
    pub(super) fn put(
        &mut self,
        state: &StateLock<'_>,
        mut c: HashedChunk,
        align: u64,
        progress: &dyn Progress,
        back: &std::sync::mpsc::Sender<AlignedBuf>,
    ) -> Result<()> {
        let rec = &mut *self.rec;
        let chunk = rec.image.chunk_size;
        let (index, len) = (c.index, c.len);
        let offset = index * chunk;
        let at = rec.container.data_offset + offset;
        let io_len = align_up(len as u64, align) as usize;
        if index < self.committed {
            if rec.image.chunk_blake3[index as usize] != c.blake3 {
                return Err(Error::new(
                    ErrorKind::BadImage,
                    format!(
                        "this is not the image being staged as '{}': chunk {index} differs",
                        rec.name
                    ),
                )
                .with_offset(offset));
            }
            let mut check = AlignedBuf::new(io_len);
            self.reader.read_at(at, &mut check)?;
            if blake3::hash(&check[..len]).to_hex().as_str() != c.blake3 {
                progress.note(&format!(
                    "chunk {index} of '{}' on disk differs from the record; rewriting it",
                    rec.name
                ));
                if c.fill == Fill::Zero {
                    c.buf[..io_len].fill(0);
                }
                self.writer.write_at(at, c.buf.part(0..io_len))?;
            }
            let _ = back.send(c.buf);
            return Ok(());
        }
        let buf = std::sync::Arc::new(c.buf);
        for run in &c.runs {
            let run_at = at + run.start as u64;
            if run.zero {
                self.pending.add(&mut self.writer, run_at, run.len as u64)?;
            } else {
                self.pending.flush(&mut self.writer)?;
                let range = run.start..run.start + run.len;
                self.writer.write_queued(run_at, &buf, range, back)?;
            }
        }
        crate::map::disk_io::release(buf, back);
        rec.image.chunk_blake3.push(std::mem::take(&mut c.blake3));
        let done = offset + len as u64;
        self.done = done;
        // The end of the last staging is recorded by `finish`; the end of
        // another by the writer loop when the next staging's data arrives.
        if done - self.last_checkpoint.0 >= CHECKPOINT_BYTES
            || self.last_checkpoint.1.elapsed() >= CHECKPOINT_INTERVAL
        {
            self.checkpoint(state)?;
        }
        Ok(())
    }
}

/// Step 5 for every sink: sync, check the map did not move, check the
/// whole image's SHA-256 and its signature, then mark complete (or
/// failed) on disk and in the state directory. Nothing is marked complete
/// before the signature held.
pub(super) fn finish(
    state: &StateLock<'_>,
    sinks: &mut [Sink<'_>],
    ended: super::pipeline::Ended,
    align: u64,
) -> Result<()> {
    let sha256 = ended.sha256.map(hex::encode);
    for sink in sinks.iter_mut() {
        sink.writer.sync()?;
        let rec = &mut *sink.rec;
        rec.image.written = rec.image.size;
        rec.image.disk_written = sink.writer.bytes_written();
        rec.image.disk_zeroed = sink.writer.bytes_zeroed();
        match rec.image.partition.as_mut() {
            Some(p) => p.image_sha256 = sha256.clone(),
            None => rec.image.sha256 = sha256.clone(),
        }
        // The filesystems must still see the containers where we wrote.
        staged::revalidate(rec).map_err(|e| {
            Error::new(
                e.kind(),
                format!("while staging '{}': {}", rec.name, e.message()),
            )
        })?;
    }
    let expected = sinks[0].rec.image.expected_sha256.clone();
    let (verified, signature_failure) = match ended.signature {
        Some(Ok(v)) => (Some(v), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    if verified.is_none()
        && signature_failure.is_none()
        && sinks
            .iter()
            .any(|s| s.rec.image.expected_signature.is_some())
    {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "the signature check did not run; the staging is left incomplete",
        ));
    }
    let failure = match (&expected, &sha256) {
        (Some(e), Some(a)) if e != a => Some((
            ErrorKind::VerifyFailed,
            format!("the image's SHA-256 is {a}, but {e} was expected"),
        )),
        _ => signature_failure.map(|e| (e.kind(), e.message().to_string())),
    };
    for sink in sinks.iter_mut() {
        let rec = &mut *sink.rec;
        match &failure {
            Some((_, why)) => {
                rec.state = StagingState::Failed;
                rec.image.failure = Some(why.clone());
            }
            None => {
                rec.image.signature = verified.clone();
                rec.state = StagingState::Complete;
            }
        }
        staged::write_header(&mut sink.writer, rec, align)?;
        sink.writer.sync()?;
        state.save(rec)?;
    }
    match failure {
        Some((kind, why)) => {
            let names: Vec<&str> = sinks.iter().map(|s| s.rec.name.as_str()).collect();
            Err(Error::new(
                kind,
                format!("{why}; marked failed: {} (discard them)", names.join(", ")),
            ))
        }
        None => Ok(()),
    }
}
