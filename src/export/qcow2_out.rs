//! The image as qcow2, written by `imago` (the qcow2 library `input::qcow2`
//! already reads with): 64 KiB clusters, version 3, no backing file. Only
//! clusters with data are written; all-zero clusters stay unallocated, so
//! they read as zeros and take no room.

use std::path::{Path, PathBuf};

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Storage,
};

use crate::error::{Error, Result};
use crate::stage::ChunkRun;

use super::ArchiveWriter;

/// qcow2's default cluster size, as `qemu-img create` uses; the grain of
/// the zero runs export is given, so a zero run is whole clusters.
pub const CLUSTER: usize = crate::stage::ZERO_GRAIN;
const _: () = assert!(CLUSTER == 64 << 10);

pub struct Qcow2Writer {
    access: FormatAccess<File>,
    path: PathBuf,
}

impl Qcow2Writer {
    /// Create a new qcow2 file of `size` virtual bytes at `path` (which
    /// must not exist).
    pub fn create(path: &Path, size: u64) -> Result<Qcow2Writer> {
        let err = |e| Error::io("create the qcow2 image", e).with_path(path);
        let file = File::create_open(
            imago::StorageCreateOptions::new()
                .filename(path)
                .overwrite(false),
        )
        .map_err(err)?;
        let q = Qcow2::<File>::create_builder(file)
            .size(size)
            .cluster_size(CLUSTER)
            .create_open(DenyImplicitOpenGate::default(), |f| {
                Ok(Qcow2::<File>::builder(f).write(true))
            })
            .map_err(err)?;
        Ok(Qcow2Writer {
            access: FormatAccess::new(q),
            path: path.to_path_buf(),
        })
    }
}

impl ArchiveWriter for Qcow2Writer {
    fn write(&mut self, offset: u64, bytes: &[u8], runs: &[ChunkRun]) -> Result<()> {
        // Zero runs are whole clusters (ZERO_GRAIN = CLUSTER): unallocated.
        for run in runs.iter().filter(|r| !r.zero) {
            let at = offset + run.start as u64;
            self.access
                .write(&bytes[run.start..run.start + run.len], at)
                .map_err(|e| {
                    Error::io("write the qcow2 image", e)
                        .with_path(&self.path)
                        .with_offset(at)
                })?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        let err = |e| Error::io("finish the qcow2 image", e).with_path(&self.path);
        self.access.flush().map_err(err)?;
        self.access.sync().map_err(err)?;
        let len = std::fs::metadata(&self.path)
            .map_err(|e| Error::io("stat the qcow2 image", e).with_path(&self.path))?
            .len();
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data runs of `b`, as (start, len).
    fn data_runs(b: &[u8]) -> Vec<(usize, usize)> {
        crate::stage::zero_runs(b)
            .into_iter()
            .filter(|r| !r.zero)
            .map(|r| (r.start, r.len))
            .collect()
    }

    #[test]
    fn only_clusters_with_data_are_written() {
        let mut b = vec![0u8; 5 * CLUSTER + 100];
        b[10] = 1;
        b[CLUSTER + 5] = 1;
        b[3 * CLUSTER] = 1;
        b[5 * CLUSTER + 99] = 1;
        assert_eq!(
            data_runs(&b),
            vec![(0, 2 * CLUSTER), (3 * CLUSTER, CLUSTER), (5 * CLUSTER, 100)]
        );
        assert!(data_runs(&vec![0u8; 3 * CLUSTER]).is_empty());
    }

    #[test]
    fn a_written_image_reads_back_through_imago() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.qcow2");
        let size = 4 * CLUSTER as u64 + 512;
        let mut w: Box<dyn ArchiveWriter> = Box::new(Qcow2Writer::create(&path, size).unwrap());
        let mut img = vec![0u8; size as usize];
        img[CLUSTER..2 * CLUSTER].fill(0xab);
        img[4 * CLUSTER + 3] = 7;
        let (a, b) = img.split_at(2 * CLUSTER);
        w.write(0, a, &crate::stage::zero_runs(a)).unwrap();
        w.write(2 * CLUSTER as u64, b, &crate::stage::zero_runs(b))
            .unwrap();
        let len = w.finish().unwrap();
        // two data clusters, not five
        assert!(len < 8 * CLUSTER as u64, "{len}");
        let f = File::open(imago::StorageOpenOptions::new().filename(&path)).unwrap();
        let q = Qcow2::<File>::builder(f)
            .open(DenyImplicitOpenGate::default())
            .unwrap();
        let r = FormatAccess::new(q);
        assert_eq!(r.size(), size);
        let mut back = vec![0u8; size as usize];
        r.read(&mut back[..], 0).unwrap();
        assert!(back == img);
    }
}
