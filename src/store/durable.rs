//! Durable file writes, the one way liverestore replaces a file it relies
//! on after a power cut: the state directory's records, the activation
//! and attachment records, GRUB's `grubenv` and `custom.cfg`, the kernel
//! and initrd copied for a boot. A reader, or the next boot, sees the old
//! file or the new one, never a mix, and never loses a new directory
//! entry.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Write `data` to `path` (created with `mode`, or truncated) and make it
/// durable.
pub fn write_synced(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write()
        .op(|| "write a file".into())
        .map_err(|e| e.with_path(path))
}

/// Make a directory's entries durable (after creating, renaming or
/// removing in it): without this a power cut can lose them.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .op(|| "sync a directory".into())
        .map_err(|e| e.with_path(dir))
}

/// Make `path`'s directory entry durable: [`sync_dir`] of its directory
/// (`.` for a bare file name).
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// Remove `path` durably (its directory synced); one already gone is
/// fine. Returns whether it was there.
pub fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => sync_parent(path).map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(crate::error::Error::io("remove a file", e).with_path(path)),
    }
}

/// Replace `path` with `data` durably: a temporary file beside it,
/// synced, renamed over it, and the directory synced. The file keeps its
/// permission bits; a new one gets `new_mode`.
pub fn replace_file(path: &Path, data: &[u8], new_mode: u32) -> Result<()> {
    let mode = fs::metadata(path).map_or(new_mode, |m| m.permissions().mode() & 0o7777);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.liverestore-tmp"));
    write_synced(&tmp, data, mode)?;
    fs::rename(&tmp, path)
        .op(|| "replace a file".into())
        .map_err(|e| e.with_path(path))?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_keeps_the_mode_and_leaves_no_temporary_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("grubenv");
        replace_file(&p, b"one", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        replace_file(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
