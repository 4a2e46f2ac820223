//! [`RootDir`]: file operations inside a mounted image, never outside it.
//!
//! A restored system's tree is not ours: `/etc` may be a symlink to
//! `/etc`, `/etc/hostname` a symlink to `/etc/shadow`. Followed naively
//! from the running system, such links would make "write the restored
//! system's hostname" overwrite the running system's files. Every path is
//! therefore resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of the image's root — the kernel treats absolute
//! symlinks and `..` as if the image were `/` — and the last component is
//! handled with `*at` calls that do not follow symlinks. Written by hand:
//! no crate offers chroot-style resolution on Linux (`cap-std` resolves
//! beneath a root but refuses absolute symlinks, which are normal in a
//! system tree).

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use crate::error::{Error, ErrorKind, Result};

/// Owner, permissions and modification time to give a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds since the epoch; None: now.
    pub mtime: Option<(i64, i64)>,
}

impl Meta {
    /// root:root with `mode`, modified now.
    pub fn root(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: None,
        }
    }
}

/// What is at a path inside the root (the last component not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The root directory of a mounted image.
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// `rel` as components relative to the root: a leading `/` is dropped,
/// `.` ignored; `..` is refused (nothing here needs it).
fn components(rel: &Path) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!("path {} must not contain '..'", rel.display()),
                ));
            }
        }
    }
    Ok(out)
}

fn join(parts: &[OsString]) -> PathBuf {
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

impl RootDir {
    /// Open `path` (a directory) as the root.
    pub fn open(path: &Path) -> Result<RootDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::from(e).with_path(path))?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Where the root is mounted (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, what: &str, rel: &Path, e: Errno) -> Error {
        Error::io(format!("{what} {} in the image", rel.display()), e.into())
            .with_path(self.path.join(rel.strip_prefix("/").unwrap_or(rel)))
    }

    /// Resolve `rel` inside the root, following symlinks as the image's
    /// own system would (absolute ones from the image's `/`).
    ///
    /// The kernel answers EAGAIN when a rename or mount anywhere on the
    /// system raced a lookup that went through `..` (openat2(2)); the
    /// lookup is then simply tried again.
    fn resolve(&self, rel: &Path, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
        let parts = components(rel).map_err(|_| Errno::INVAL)?;
        let path = join(&parts);
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                &path,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::AGAIN) if tries < 1000 => tries += 1,
                other => return other,
            }
        }
    }

    /// The directory that holds `rel`'s last component, and that
    /// component; with `create`, missing directories are made (owned by
    /// root, 0755).
    fn parent(&self, rel: &Path, create: bool) -> Result<(OwnedFd, OsString)> {
        let mut parts = components(rel)?;
        let name = parts.pop().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidState,
                "the image's root itself cannot be replaced",
            )
        })?;
        let mut done: Vec<OsString> = Vec::new();
        let mut dir = self
            .resolve(Path::new("."), OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.err("open", Path::new("/"), e))?;
        for p in parts {
            done.push(p.clone());
            let here = join(&done);
            dir = match self.resolve(&here, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, &p, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.err("create directory", &here, e)),
                    }
                    self.resolve(&here, OFlags::PATH | OFlags::DIRECTORY)
                        .map_err(|e| self.err("open", &here, e))?
                }
                Err(e) => return Err(self.err("open", &here, e)),
            };
        }
        Ok((dir, name))
    }

    /// What is at `rel` (its last component not followed), if anything.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>> {
        let (dir, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if e.errno() == Some(Errno::NOENT) => return Ok(None),
            Err(e) if e.errno() == Some(Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink => Kind::Symlink,
                _ => Kind::Other,
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err("look at", rel, e)),
        }
    }

    /// The size of the regular file at `rel` (not followed), if it is one.
    pub fn file_size(&self, rel: &Path) -> Result<Option<u64>> {
        let (dir, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if matches!(e.errno(), Some(Errno::NOENT | Errno::NOTDIR)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Some(st.st_size as u64))
            }
            Ok(_) | Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err("look at", rel, e)),
        }
    }

    /// The bytes root's writes may still use on the root's filesystem
    /// (its reserved blocks included).
    pub fn free_bytes(&self) -> Result<u64> {
        let st =
            rustix::fs::fstatvfs(&self.fd).map_err(|e| self.err("statvfs", Path::new("/"), e))?;
        Ok(st.f_bfree.saturating_mul(st.f_frsize))
    }

    /// Whether `rel` exists, following symlinks inside the image.
    pub fn exists(&self, rel: &Path) -> bool {
        self.resolve(rel, OFlags::PATH).is_ok()
    }

    /// The contents of the file at `rel` (symlinks followed inside the
    /// image), or None when there is none.
    /// Owner and mode of what `rel` resolves to (inside the image), if
    /// anything; its modification time is left to the next write.
    pub fn meta(&self, rel: &Path) -> Result<Option<Meta>> {
        match self.resolve(rel, OFlags::PATH) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| self.err("look at", rel, e))?;
                Ok(Some(Meta {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    mtime: None,
                }))
            }
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.err("open", rel, e)),
        }
    }

    /// A regular file only, of at most [`RootDir::READ_LIMIT`] bytes.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        self.read_limited(rel, Self::READ_LIMIT)
    }

    /// What [`RootDir::read`] reads at most: configuration files, keys,
    /// the files customize looks at.
    pub const READ_LIMIT: u64 = 64 << 20;

    /// The contents of the regular file at `rel` (symlinks followed inside
    /// the image), or None when there is none. Anything else is refused
    /// with [`ErrorKind::BadImage`] before a byte is read: a FIFO or a
    /// device node (opened without blocking, never read: it could hang or
    /// never end), a directory, a symlink loop, a file larger than `max`.
    pub fn read_limited(&self, rel: &Path, max: u64) -> Result<Option<Vec<u8>>> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::BadImage,
                format!("{} in the image {why}: not read", rel.display()),
            )
            .with_path(self.path.join(rel.strip_prefix("/").unwrap_or(rel)))
        };
        let fd = match self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(None),
            Err(Errno::LOOP) => return Err(bad("is a symlink loop".into())),
            Err(e) => return Err(self.err("open", rel, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.err("look at", rel, e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(bad(format!("is not a regular file ({kind:?})")));
        }
        let size = st.st_size as u64;
        if size > max {
            return Err(bad(format!(
                "is {size} bytes, more than the {max} liverestore accepts"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        File::from(fd)
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(format!("read {} in the image", rel.display()), e))?;
        if data.len() as u64 > max {
            return Err(bad(format!("grew past {max} bytes while read")));
        }
        Ok(Some(data))
    }

    /// The names in directory `rel` (symlinks followed inside the image),
    /// sorted; empty when it does not exist.
    pub fn list(&self, rel: &Path) -> Result<Vec<OsString>> {
        let fd = match self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(self.err("open", rel, e)),
        };
        let mut names = Vec::new();
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| self.err("list", rel, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| self.err("list", rel, e))?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Make directory `rel` (and its parents) when missing, with `meta`
    /// for the last one; an existing directory keeps what it has.
    pub fn mkdir(&self, rel: &Path, meta: Meta) -> Result<bool> {
        let (dir, name) = self.parent(rel, true)?;
        match rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(meta.mode & 0o7777)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return match self.kind(rel)? {
                    Some(Kind::Dir) => Ok(false),
                    // A symlink to a directory inside the image is fine.
                    Some(Kind::Symlink)
                        if self.resolve(rel, OFlags::PATH | OFlags::DIRECTORY).is_ok() =>
                    {
                        Ok(false)
                    }
                    _ => Err(Error::new(
                        ErrorKind::InvalidState,
                        format!("{} in the image is not a directory", rel.display()),
                    )),
                };
            }
            Err(e) => return Err(self.err("create directory", rel, e)),
        }
        self.set_meta(&dir, &name, rel, meta, false)?;
        Ok(true)
    }

    /// Remove what is at `rel` unless it is a directory (a symlink is
    /// removed, not followed). Whether something was removed.
    pub fn remove(&self, rel: &Path) -> Result<bool> {
        let (dir, name) = match self.parent(rel, false) {
            Ok(p) => p,
            Err(e) if matches!(e.errno(), Some(Errno::NOENT) | Some(Errno::NOTDIR)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.err("remove", rel, e)),
        }
    }

    /// Write a file at `rel` with `data` from `src`, replacing whatever
    /// non-directory was there (a symlink is replaced, never followed):
    /// written to a temporary name, synced, then renamed over.
    pub fn write_from(&self, rel: &Path, src: &mut dyn Read, meta: Meta) -> Result<u64> {
        let (dir, name) = self.parent(rel, true)?;
        if let Some(Kind::Dir) = self.kind(rel)? {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "{} is a directory in the image, not a file: not replaced",
                    rel.display()
                ),
            ));
        }
        let mut tmp = name.clone();
        tmp.push(".liverestore-new");
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err("create", rel, e))?;
        let mut file = File::from(fd);
        let written = std::io::copy(src, &mut file)
            .and_then(|n| file.sync_all().map(|()| n))
            .map_err(|e| {
                let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
                Error::io(format!("write {} in the image", rel.display()), e)
            })?;
        drop(file);
        let done = self.set_meta(&dir, &tmp, rel, meta, false).and_then(|()| {
            rustix::fs::renameat(&dir, &tmp, &dir, &name)
                .map_err(|e| self.err("rename into place", rel, e))
        });
        if done.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        }
        done.map(|()| written)
    }

    /// [`RootDir::write_from`] with bytes in memory.
    pub fn write(&self, rel: &Path, data: &[u8], meta: Meta) -> Result<()> {
        self.write_from(rel, &mut &data[..], meta).map(|_| ())
    }

    /// Make `rel` a symlink to `target`, replacing a non-directory.
    pub fn symlink(&self, rel: &Path, target: &Path, meta: Meta) -> Result<()> {
        let (dir, name) = self.parent(rel, true)?;
        match self.kind(rel)? {
            Some(Kind::Dir) => {
                return Err(Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "{} is a directory in the image, not a link: not replaced",
                        rel.display()
                    ),
                ));
            }
            Some(_) => {
                rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
                    .map_err(|e| self.err("replace", rel, e))?;
            }
            None => {}
        }
        rustix::fs::symlinkat(target, &dir, &name).map_err(|e| self.err("create link", rel, e))?;
        self.set_meta(&dir, &name, rel, meta, true)
    }

    /// Give the existing `rel` `meta`; a symlink is left as it is (a mode
    /// change would follow it).
    pub fn set_meta_of(&self, rel: &Path, meta: Meta) -> Result<()> {
        match self.kind(rel)? {
            Some(Kind::Symlink) | None => Ok(()),
            Some(_) => {
                let (dir, name) = self.parent(rel, false)?;
                self.set_meta(&dir, &name, rel, meta, false)
            }
        }
    }

    /// Owner, permissions (not for links) and mtime of `name` in `dir`,
    /// not following a symlink.
    fn set_meta(
        &self,
        dir: &OwnedFd,
        name: &OsString,
        rel: &Path,
        meta: Meta,
        link: bool,
    ) -> Result<()> {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("set the owner of", rel, e))?;
        if !link {
            // After chown, which clears set-id bits.
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(meta.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| self.err("set the mode of", rel, e))?;
        }
        if let Some((sec, nsec)) = meta.mtime {
            let t = rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            };
            rustix::fs::utimensat(
                dir,
                name,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.err("set the time of", rel, e))?;
        }
        Ok(())
    }

    /// The real path of directory `rel` on this system, resolved inside
    /// the image (for tools that take a directory, e.g. `depmod -b`).
    pub fn real_dir(&self, rel: &Path) -> Result<PathBuf> {
        let fd = self
            .resolve(rel, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.err("open", rel, e))?;
        let link = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd())
        );
        std::fs::read_link(&link).map_err(|e| Error::io("resolve a directory of the image", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        (t, root, outside)
    }

    fn me() -> Meta {
        Meta {
            mode: 0o640,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mtime: Some((1_000_000_000, 0)),
        }
    }

    #[test]
    fn writes_land_inside_and_carry_meta() {
        let (_t, root, _) = fixture();
        let r = RootDir::open(&root).unwrap();
        r.write(Path::new("/etc/new/deep/file"), b"hello", me())
            .unwrap();
        let p = root.join("etc/new/deep/file");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime(), 1_000_000_000);
        assert_eq!(
            r.read(Path::new("etc/new/deep/file")).unwrap().unwrap(),
            b"hello"
        );
        assert_eq!(r.kind(Path::new("/etc/new")).unwrap(), Some(Kind::Dir));
        assert_eq!(r.kind(Path::new("/nope/x")).unwrap(), None);
        assert!(r.remove(Path::new("/etc/new/deep/file")).unwrap());
        assert!(!r.remove(Path::new("/etc/new/deep/file")).unwrap());
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_image() {
        let (_t, root, outside) = fixture();
        // /conf -> <outside> as an absolute link: inside the image it means
        // <root>/<outside>, never the real <outside>.
        std::os::unix::fs::symlink(&outside, root.join("conf")).unwrap();
        std::os::unix::fs::symlink("/../../../../", root.join("up")).unwrap();
        let r = RootDir::open(&root).unwrap();
        // Dangling inside the image: refused, and nothing written outside.
        assert!(r.write(Path::new("/conf/x"), b"in", me()).is_err());
        assert!(
            !outside.join("x").exists(),
            "escaped through an absolute link"
        );
        let inner = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inner).unwrap();
        r.write(Path::new("/conf/x"), b"in", me()).unwrap();
        r.write(Path::new("/up/etc/y"), b"in", me()).unwrap();
        assert!(
            !outside.join("x").exists(),
            "escaped through an absolute link"
        );
        assert_eq!(std::fs::read(inner.join("x")).unwrap(), b"in");
        assert_eq!(std::fs::read(root.join("etc/y")).unwrap(), b"in");
        // `..` in the caller's path is refused outright.
        assert!(r.write(Path::new("/etc/../../z"), b"", me()).is_err());
    }

    #[test]
    fn a_symlinked_file_is_replaced_not_followed() {
        let (_t, root, outside) = fixture();
        let victim = outside.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("etc/hostname")).unwrap();
        let r = RootDir::open(&root).unwrap();
        // Reading follows it inside the image: there is nothing there.
        assert_eq!(r.read(Path::new("/etc/hostname")).unwrap(), None);
        r.write(Path::new("/etc/hostname"), b"new\n", me()).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"new\n");
        r.symlink(Path::new("/etc/l"), Path::new("/somewhere"), me())
            .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("etc/l")).unwrap(),
            Path::new("/somewhere")
        );
        assert_eq!(
            r.list(Path::new("/etc")).unwrap(),
            vec![OsString::from("hostname"), OsString::from("l")]
        );
        // A directory is never replaced by a file.
        assert!(r.write(Path::new("/etc"), b"", me()).is_err());
        assert_eq!(
            r.real_dir(Path::new("/etc")).unwrap(),
            root.join("etc").canonicalize().unwrap()
        );
    }
}
