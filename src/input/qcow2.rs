//! qcow2 (QEMU, OpenStack and most cloud images), read with `imago`, the
//! maintained qcow2 library by a QEMU block-layer maintainer: it handles
//! L1/L2 tables, compressed clusters (deflate and zstd), extended L2 and
//! zero clusters. Backing files (and external data files) are refused: a
//! staging must not depend on a second file. Unallocated and zero clusters
//! become zero chunks without reading.
//!
//! Needs a local file (imago opens it by path): a qcow2 over HTTP or in a
//! compressed stream must be downloaded or decompressed first.

use std::path::Path;

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions,
};

use super::transport::ReadAt;
use super::{Fill, ImageReader, bad, read_failed};
use crate::error::Result;

pub fn is_qcow2(head: &[u8]) -> bool {
    head.starts_with(b"QFI\xfb")
}

/// Check a qcow2 header's basics before handing it to imago (so that
/// absurd values get our messages): version, cluster bits, size, and that
/// the L1 and refcount tables lie inside a file of `file_len` bytes.
/// Returns (virtual size, L1 offset, L1 entries, cluster bits).
pub fn check_header(b: &[u8], file_len: u64) -> Result<(u64, u64, u64, u32)> {
    if b.len() < 72 || !is_qcow2(b) {
        return Err(bad("not a qcow2 image"));
    }
    let be32 = |o: usize| super::bytes::be32(b, o);
    let be64 = |o: usize| super::bytes::be64(b, o);
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(bad(format!("qcow2 version {version} is not supported")));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!(
            "qcow2 cluster size 2^{cluster_bits} is absurd"
        )));
    }
    if be32(32) != 0 {
        return Err(bad("encrypted qcow2 images are not supported"));
    }
    if be64(8) != 0 {
        return Err(bad(
            "this qcow2 image has a backing file: flatten it first (qemu-img convert -O qcow2)",
        ));
    }
    if version == 3 && b.len() >= 104 {
        let incompatible = be64(72);
        // dirty (0), corrupt (1), external data file (2), compression type
        // (3), extended L2 (4): imago handles 0, 3 and 4.
        if incompatible & 2 != 0 {
            return Err(bad("this qcow2 image is marked corrupt"));
        }
        if incompatible & 4 != 0 {
            return Err(bad(
                "qcow2 images with an external data file are not supported",
            ));
        }
        if incompatible & !0b11101 != 0 {
            return Err(bad(format!(
                "this qcow2 image uses incompatible features {incompatible:#x} that are not supported"
            )));
        }
    }
    let size = be64(24);
    if size == 0 || size > 64 << 40 {
        return Err(bad(format!("qcow2 virtual size {size} is absurd")));
    }
    let (l1_entries, l1_offset) = (u64::from(be32(36)), be64(40));
    let cluster = 1u64 << cluster_bits;
    let needed = size.div_ceil(cluster).div_ceil(cluster / 8);
    if l1_entries < needed || l1_entries > 32 << 20 {
        return Err(bad(format!(
            "qcow2 L1 table has {l1_entries} entries where the disk needs {needed}"
        )));
    }
    let within = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= file_len);
    if !l1_offset.is_multiple_of(cluster) || !within(l1_offset, l1_entries * 8) {
        return Err(bad("the qcow2 L1 table lies outside the file"));
    }
    let (rc_offset, rc_clusters) = (be64(48), u64::from(be32(56)));
    if !rc_offset.is_multiple_of(cluster) || !within(rc_offset, rc_clusters * cluster) {
        return Err(bad("the qcow2 refcount table lies outside the file"));
    }
    Ok((size, l1_offset, l1_entries, cluster_bits))
}

/// Check every L1 entry: an L2 table must be cluster-aligned and inside
/// the file (imago would read past the end as zeros and call it a hole).
pub fn check_l1(l1: &[u8], cluster_bits: u32, file_len: u64) -> Result<()> {
    let cluster = 1u64 << cluster_bits;
    for e in l1.chunks_exact(8) {
        let off = u64::from_be_bytes(e.try_into().expect("8")) & 0x00ff_ffff_ffff_fe00;
        if off != 0 && (!off.is_multiple_of(cluster) || off + cluster > file_len) {
            return Err(bad(format!(
                "a qcow2 L2 table at byte {off} lies outside the file"
            )));
        }
    }
    Ok(())
}

pub struct Qcow2Reader {
    access: FormatAccess<File>,
}

impl Qcow2Reader {
    pub fn open(path: &Path, src: &dyn ReadAt, head: &[u8]) -> Result<(Qcow2Reader, u64)> {
        let (_, l1_offset, l1_entries, bits) = check_header(head, src.len())?;
        let mut l1 = vec![0u8; (l1_entries * 8) as usize];
        src.read_exact_at(&mut l1, l1_offset)
            .map_err(|e| super::read_failed("cannot read the qcow2 L1 table", e))?;
        check_l1(&l1, bits, src.len())?;
        let open_err = |e| super::read_failed("cannot open the qcow2 image", e).with_path(path);
        // The image itself is opened here; anything it references on its
        // own (backing or data files) is denied by the gate.
        let storage = File::open(StorageOpenOptions::new().filename(path)).map_err(open_err)?;
        let q = Qcow2::<File>::builder(storage)
            .open(DenyImplicitOpenGate::default())
            .map_err(|e| super::read_failed("cannot open the qcow2 image", e).with_path(path))?;
        let access = FormatAccess::new(q);
        let size = access.size();
        Ok((Qcow2Reader { access }, size))
    }
}

impl ImageReader for Qcow2Reader {
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<Fill> {
        let err = |e| read_failed("cannot read the qcow2 image", e);
        let len = buf.len() as u64;
        let mut pos = 0u64;
        let mut all_zero = true;
        while pos < len {
            let (mapping, n) = self
                .access
                .get_mapping(offset + pos, len - pos)
                .map_err(err)?;
            match mapping {
                Mapping::Zero { .. } => {}
                Mapping::Eof { .. } => return Err(bad("read past the end of the qcow2 image")),
                _ => {
                    all_zero = false;
                    break;
                }
            }
            if n == 0 {
                return Err(bad("qcow2 mapping made no progress"));
            }
            pos += n;
        }
        if all_zero {
            return Ok(Fill::Zero);
        }
        self.access.read(&mut *buf, offset).map_err(err)?;
        Ok(Fill::Data)
    }
}
