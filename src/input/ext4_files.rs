//! Files of an ext4 filesystem inside an image, read without mounting or
//! staging it: what `plan` needs to look at the restored system's
//! `/etc/fstab` before anything is written. The filesystem is parsed by
//! `ext4-view` (read-only, made for untrusted images: paths and symlinks
//! resolve inside the image, never on this host) over any random-access
//! source ([`ReadAt`]: a local file, or an HTTP server that serves
//! ranges), within the byte range of one partition. xfs and btrfs have no
//! such crate; their files are read after staging, mounted read-only.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::transport::ReadAt;
use crate::error::{Error, ErrorKind, Result};

/// `len` bytes of `src` from byte `offset`: one filesystem of an image.
struct Window {
    src: Arc<dyn ReadAt>,
    offset: u64,
    len: u64,
}

impl Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte.checked_add(dst.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(format!(
                "{} bytes at {start_byte} are past the filesystem's {} bytes",
                dst.len(),
                self.len
            )
            .into());
        }
        self.src
            .read_exact_at(dst, self.offset + start_byte)
            .map_err(Into::into)
    }
}

/// Read `path` (absolute) from the ext4 filesystem in the `len` bytes of
/// `src` from `offset`, when it is a regular file (symlinks followed
/// inside the filesystem) of at most `limit` bytes. `Ok(None)`: no such
/// file.
pub fn read_file(
    src: Arc<dyn ReadAt>,
    (offset, len): (u64, u64),
    path: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let bad = |e: Ext4Error| {
        Error::new(
            ErrorKind::BadImage,
            format!("the ext4 filesystem at byte {offset} of the image cannot be read: {e}"),
        )
    };
    let fs = Ext4::load(Box::new(Window { src, offset, len })).map_err(bad)?;
    let meta = match fs.metadata(path) {
        Ok(m) => m,
        Err(Ext4Error::NotFound) => return Ok(None),
        Err(e) => return Err(bad(e)),
    };
    if meta.len() > limit {
        return Err(Error::new(
            ErrorKind::BadImage,
            format!(
                "{path} in the image is {} bytes, more than the {limit} read",
                meta.len()
            ),
        ));
    }
    match fs.read(path) {
        Ok(data) => Ok(Some(data)),
        Err(Ext4Error::NotFound) => Ok(None),
        Err(e) => Err(bad(e)),
    }
}

/// An ext4 filesystem holding `files`, made by mkfs.ext4 -d (None when
/// mkfs.ext4 is not installed); `mkfs_args` go to mkfs.ext4.
#[cfg(test)]
pub(crate) fn ext4_with(
    files: &[(&str, &[u8])],
    link: Option<(&str, &str)>,
    mkfs_args: &[&str],
) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for (path, data) in files {
        let p = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    if let Some((at, to)) = link {
        let p = tree.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, p).unwrap();
    }
    std::fs::create_dir_all(&tree).unwrap();
    let img = dir.path().join("fs.img");
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .args(mkfs_args)
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .arg("8M")
        .status()
        .ok()?
        .success();
    assert!(ok, "mkfs.ext4 failed");
    Some(std::fs::read(img).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::transport::MemSource;

    fn src(prefix: usize, fs: &[u8]) -> (Arc<dyn ReadAt>, (u64, u64)) {
        let mut bytes = vec![0xa5; prefix];
        bytes.extend_from_slice(fs);
        (Arc::new(MemSource(bytes)), (prefix as u64, fs.len() as u64))
    }

    #[test]
    fn files_are_read_inside_the_image_only() {
        let fstab = b"UUID=x / ext4 defaults 0 1\n";
        let Some(fs) = ext4_with(
            &[("/etc/fstab", fstab), ("/big", &[7u8; 70000])],
            Some(("/etc/passwd", "/etc/fstab")),
            &[],
        ) else {
            eprintln!("no mkfs.ext4: skipped");
            return;
        };
        let (s, at) = src(1 << 20, &fs);
        assert_eq!(
            read_file(s.clone(), at, "/etc/fstab", 4096)
                .unwrap()
                .unwrap(),
            fstab
        );
        // an absolute symlink resolves inside the image, not on this host
        assert_eq!(
            read_file(s.clone(), at, "/etc/passwd", 4096)
                .unwrap()
                .unwrap(),
            fstab
        );
        assert_eq!(read_file(s.clone(), at, "/etc/none", 4096).unwrap(), None);
        assert_eq!(
            read_file(s.clone(), at, "/big", 4096).unwrap_err().kind(),
            ErrorKind::BadImage
        );
        assert_eq!(
            read_file(s.clone(), at, "/etc", 4096).unwrap_err().kind(),
            ErrorKind::BadImage
        );
        // not ext4, or cut short: refused, never read past the window
        assert!(read_file(s.clone(), (0, 1 << 20), "/etc/fstab", 4096).is_err());
        assert!(read_file(s, (at.0, 4096), "/etc/fstab", 4096).is_err());
    }
}
