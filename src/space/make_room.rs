//! `--make-room FILE`: when the image does not fit, delete files the user
//! designated as expendable, least critical first, until it does.
//!
//! FILE lists absolute glob patterns, one a line (`#` starts a comment),
//! in the order their files may go: the first line's files are deleted
//! first; within a pattern, paths go in sorted order. Only regular files
//! on the filesystems of the `--dir`s count; a file with other hard links
//! (deleting it frees nothing), a staging's container and anything under
//! the state directory are never candidates. [`plan_deletions`] (pure)
//! takes candidates one at a time until the space planner succeeds, so no
//! more is deleted than needed; `plan` shows the list, `stage` deletes it,
//! syncs the filesystems and plans again from what is really free.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::space::allocate::{self, Capacity, Planned};

/// A file that may be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub path: PathBuf,
    /// Bytes its deletion frees (allocated blocks).
    pub bytes: u64,
    /// The space source (a `--dir`, by index) whose filesystem holds it.
    #[serde(skip)]
    pub source: usize,
    /// The line of the list that named it.
    pub pattern: String,
}

/// The patterns of a make-room list, in order. Relative patterns are
/// refused (they would depend on the working directory).
pub fn parse_list(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let p = line.split('#').next().unwrap_or("").trim();
        if p.is_empty() {
            continue;
        }
        if !p.starts_with('/') {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!(
                    "--make-room list, line {}: {p:?} is not an absolute path pattern",
                    n + 1
                ),
            ));
        }
        if let Err(e) = glob::Pattern::new(p) {
            return Err(Error::new(
                ErrorKind::InvalidState,
                format!("--make-room list, line {}: {p:?}: {e}", n + 1),
            ));
        }
        out.push(p.to_string());
    }
    Ok(out)
}

/// Read and parse the list at `path`.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("read the --make-room list", e).with_path(path))?;
    parse_list(&text)
}

/// The files the patterns match, in deletion order: regular files with a
/// single link on one of `filesystems` (`(source index, st_dev)`), none of
/// them under `protected` or a container.
pub fn candidates(
    patterns: &[String],
    filesystems: &[(usize, u64)],
    protected: &[PathBuf],
) -> Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = Vec::new();
    for p in patterns {
        let paths = glob::glob(p).map_err(|e| {
            Error::new(
                ErrorKind::InvalidState,
                format!("--make-room pattern {p:?}: {e}"),
            )
        })?;
        let mut matched: Vec<PathBuf> = paths.filter_map(|r| r.ok()).collect();
        matched.sort();
        for path in matched {
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let Some(&(source, _)) = filesystems.iter().find(|(_, dev)| *dev == m.dev()) else {
                continue;
            };
            let is_container = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".liverestore"));
            if !m.is_file()
                || m.nlink() != 1
                || is_container
                || protected.iter().any(|p| path.starts_with(p))
                || out.iter().any(|c| c.path == path)
            {
                continue;
            }
            out.push(Candidate {
                path,
                bytes: m.blocks() * 512,
                source,
                pattern: p.clone(),
            });
        }
    }
    Ok(out)
}

/// The fewest leading `candidates` whose deletion lets `needs` fit in
/// `caps`, and the plan that then fits. [`ErrorKind::NoSpace`] when even
/// all of them are not enough.
pub fn plan_deletions(
    needs: &[(u64, u64)],
    caps: &[Capacity],
    candidates: &[Candidate],
) -> Result<(usize, Vec<Vec<Planned>>)> {
    let mut caps = caps.to_vec();
    let mut taken = 0;
    loop {
        match allocate::assign(needs, &caps) {
            Ok(plan) => return Ok((taken, plan)),
            Err(e) if e.kind() == ErrorKind::NoSpace => {}
            Err(e) => return Err(e),
        }
        let Some(c) = candidates.get(taken) else {
            let all: u64 = candidates.iter().map(|c| c.bytes).sum();
            let why = allocate::assign(needs, &caps)
                .err()
                .map(|e| e.message().to_string());
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "even deleting all {} files the --make-room list allows ({all} bytes) is not enough: {}",
                    candidates.len(),
                    why.unwrap_or_default()
                ),
            ));
        };
        if let Some(Capacity::Dir { budget, .. }) = caps.get_mut(c.source) {
            *budget += c.bytes;
        }
        taken += 1;
    }
}

/// Delete `chosen`, then sync each filesystem so the freed blocks count.
/// Stops with an error at the first file that cannot be deleted.
pub fn delete(chosen: &[Candidate]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in chosen {
        std::fs::remove_file(&c.path)
            .map_err(|e| Error::io("delete a file to make room", e).with_path(&c.path))?;
        if let Some(d) = c.path.parent()
            && !dirs.iter().any(|x| x == d)
        {
            dirs.push(d.to_path_buf());
        }
    }
    for d in dirs {
        // ext4 returns the blocks of a deleted file at the next journal
        // commit; syncfs makes that now.
        let f = std::fs::File::open(&d).map_err(|e| Error::io("open", e).with_path(&d))?;
        rustix::fs::syncfs(&f).map_err(|e| Error::from(e).with_path(&d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let l = parse_list(
            "# least critical first\n/var/cache/**/*.deb\n\n/home/*/Downloads/*  # big\n",
        )
        .unwrap();
        assert_eq!(l, ["/var/cache/**/*.deb", "/home/*/Downloads/*"]);
        assert!(
            parse_list("var/cache/*\n")
                .unwrap_err()
                .message()
                .contains("line 1")
        );
        assert!(
            parse_list("/ok\n/a/***/b\n")
                .unwrap_err()
                .message()
                .contains("line 2")
        );
    }

    fn cand(source: usize, bytes: u64) -> Candidate {
        Candidate {
            path: PathBuf::from(format!("/f{bytes}")),
            bytes,
            source,
            pattern: "/*".into(),
        }
    }

    #[test]
    fn no_more_is_deleted_than_needed() {
        let dir = |budget| Capacity::Dir {
            block: 4096,
            max_file: u64::MAX,
            budget,
        };
        let needs = [(100 << 20, 1 << 20)];
        // Fits already: nothing goes.
        let (n, _) = plan_deletions(&needs, &[dir(200 << 20)], &[cand(0, 50 << 20)]).unwrap();
        assert_eq!(n, 0);
        // 30 MiB short: the first two of three files (20 + 20 MiB) go.
        let c = [cand(0, 20 << 20), cand(0, 20 << 20), cand(0, 20 << 20)];
        let (n, plan) = plan_deletions(&needs, &[dir(70 << 20)], &c).unwrap();
        assert_eq!(n, 2);
        assert_eq!(plan[0].iter().map(Planned::len).sum::<u64>(), 100 << 20);
        // Space freed on the second filesystem counts there.
        let (n, _) =
            plan_deletions(&needs, &[dir(60 << 20), dir(0)], &[cand(1, 50 << 20)]).unwrap();
        assert_eq!(n, 1);
        // Not enough even with all of them.
        let e = plan_deletions(&needs, &[dir(10 << 20)], &c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.message().contains("all 3 files"), "{e}");
    }

    #[test]
    fn candidates_are_files_in_list_order_on_the_right_filesystem() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for f in [
            "cache/b.deb",
            "cache/a.deb",
            "dl/big.iso",
            "keep/x.liverestore",
            "state/s.json",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![1u8; 8192]).unwrap();
        }
        std::fs::hard_link(d.join("dl/big.iso"), d.join("dl/linked")).unwrap();
        std::fs::write(d.join("dl/solo"), b"x").unwrap();
        let dev = std::fs::metadata(d).unwrap().dev();
        let pats = vec![
            format!("{}/dl/*", d.display()),
            format!("{}/cache/*.deb", d.display()),
            format!("{}/*/*", d.display()),
        ];
        let c = candidates(&pats, &[(0, dev)], &[d.join("state")]).unwrap();
        let names: Vec<String> = c
            .iter()
            .map(|c| c.path.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["dl/solo", "cache/a.deb", "cache/b.deb"]);
        assert!(c[1].bytes >= 8192);
        // Another filesystem's files are not candidates.
        assert!(candidates(&pats, &[(0, dev + 1)], &[]).unwrap().is_empty());
    }
}
