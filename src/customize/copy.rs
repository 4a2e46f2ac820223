//! Copy files and trees from a source system (normally the running one)
//! into the image at the same path: `cp -a` semantics for what a system's
//! configuration holds — regular files, directories and symlinks with
//! their mode, owner and modification time. Device nodes, sockets and
//! FIFOs are skipped and counted. Existing files in the image are
//! replaced; files in the image that the source lacks are kept.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::attach::root_dir::{Kind, Meta, RootDir};
use crate::error::{Error, ErrorKind, Result};

/// What one copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyCount {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths skipped (device nodes, sockets, FIFOs), relative to the root.
    pub skipped: Vec<String>,
}

fn meta_of(m: &fs::Metadata) -> Meta {
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: Some((m.mtime(), m.mtime_nsec())),
    }
}

/// Paths that are not a system's files but views of the running kernel:
/// preserving them makes no sense.
const VIRTUAL: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Check that `path` can be preserved: absolute, no `..`, not `/`, not a
/// kernel view.
pub fn check_preserve_path(path: &Path) -> Result<()> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidState,
            format!("--preserve {}: {why}", path.display()),
        )
    };
    if !path.is_absolute() {
        return Err(bad(
            "give an absolute path (as it is on the running system)",
        ));
    }
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(bad("must not contain '..'"));
    }
    if path.components().count() < 2 {
        return Err(bad("the whole system cannot be preserved"));
    }
    if VIRTUAL.iter().any(|v| path.starts_with(v)) {
        return Err(bad("is a view of the running kernel, not a file to keep"));
    }
    Ok(())
}

/// Copy `rel` (an absolute path as seen on the source system) from the
/// system rooted at `source_root` into `dest` at the same path. Parent
/// directories missing in the image are made like the source's.
pub fn preserve(source_root: &Path, rel: &Path, dest: &RootDir) -> Result<CopyCount> {
    check_preserve_path(rel)?;
    let src = source_root.join(rel.strip_prefix("/").expect("absolute"));
    let m = fs::symlink_metadata(&src).map_err(|e| {
        Error::io(format!("--preserve {}", rel.display()), e)
            .with_kind(ErrorKind::NotFound)
            .with_path(&src)
    })?;
    // Parents, so that a preserved /etc/foo/bar keeps /etc/foo's owner.
    let mut parents: Vec<&Path> = rel.ancestors().skip(1).collect();
    parents.pop(); // "/"
    for p in parents.into_iter().rev() {
        if dest.kind(p)?.is_none() {
            let pm = fs::metadata(source_root.join(p.strip_prefix("/").expect("absolute")))
                .map(|m| meta_of(&m))
                .unwrap_or(Meta::root(0o755));
            dest.mkdir(p, pm)?;
        }
    }
    let mut count = CopyCount::default();
    copy_entry(&src, rel, &m, dest, &mut count)?;
    Ok(count)
}

fn copy_entry(
    src: &Path,
    rel: &Path,
    m: &fs::Metadata,
    dest: &RootDir,
    count: &mut CopyCount,
) -> Result<()> {
    let ft = m.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(|e| Error::io("read a link", e).with_path(src))?;
        dest.symlink(rel, &target, meta_of(m))?;
        count.symlinks += 1;
    } else if ft.is_file() {
        let mut f = File::open(src).map_err(|e| Error::io("open", e).with_path(src))?;
        count.bytes += dest.write_from(rel, &mut f, meta_of(m))?;
        count.files += 1;
    } else if ft.is_dir() {
        if matches!(dest.kind(rel)?, Some(Kind::File) | Some(Kind::Other)) {
            dest.remove(rel)?;
        }
        dest.mkdir(rel, meta_of(m))?;
        let mut entries: Vec<PathBuf> = fs::read_dir(src)
            .map_err(|e| Error::io("list", e).with_path(src))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("list", e).with_path(src))?;
        entries.sort();
        for child in entries {
            let name = child.file_name().expect("entries have names");
            let cm = fs::symlink_metadata(&child)
                .map_err(|e| Error::io("look at", e).with_path(&child))?;
            copy_entry(&child, &rel.join(name), &cm, dest, count)?;
        }
        // After the children: their creation changed the directory's time.
        dest.set_meta_of(rel, meta_of(m))?;
        count.dirs += 1;
    } else {
        count.skipped.push(rel.display().to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preserve_paths_are_checked() {
        for bad in ["etc/ssh", "/", "/etc/../shadow", "/proc/cpuinfo", "/run/x"] {
            assert!(check_preserve_path(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(check_preserve_path(Path::new("/etc/ssh")).is_ok());
    }

    #[test]
    fn trees_are_copied_with_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let root = t.path().join("root");
        fs::create_dir_all(src.join("srv/keep/sub")).unwrap();
        fs::create_dir_all(root.join("srv/keep")).unwrap();
        fs::write(src.join("srv/keep/a"), b"alpha").unwrap();
        fs::set_permissions(src.join("srv/keep/a"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(src.join("srv/keep/sub/b"), b"beta").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("srv/keep/link")).unwrap();
        fs::write(root.join("srv/keep/only-in-image"), b"stay").unwrap();
        fs::write(root.join("srv/keep/a"), b"old").unwrap();
        let dest = RootDir::open(&root).unwrap();
        let c = preserve(&src, Path::new("/srv/keep"), &dest).unwrap();
        assert_eq!((c.files, c.dirs, c.symlinks, c.bytes), (2, 2, 1, 9));
        assert_eq!(fs::read(root.join("srv/keep/a")).unwrap(), b"alpha");
        assert_eq!(
            fs::metadata(root.join("srv/keep/a")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(root.join("srv/keep/sub/b")).unwrap(), b"beta");
        assert_eq!(
            fs::read_link(root.join("srv/keep/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read(root.join("srv/keep/only-in-image")).unwrap(),
            b"stay"
        );
        // A single file, with parents made.
        fs::create_dir_all(src.join("etc/app")).unwrap();
        fs::write(src.join("etc/app/conf"), b"x=1").unwrap();
        let c = preserve(&src, Path::new("/etc/app/conf"), &dest).unwrap();
        assert_eq!(c.files, 1);
        assert_eq!(fs::read(root.join("etc/app/conf")).unwrap(), b"x=1");
        // Missing source: not found.
        let e = preserve(&src, Path::new("/nope"), &dest).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
