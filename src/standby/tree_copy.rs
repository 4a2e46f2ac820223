//! Copying a running system's tree: rsync, as an administrator would copy
//! a system by hand (`rsync -aHAXS --one-file-system --numeric-ids`:
//! owners by number, modes, times, hard links, ACLs, extended attributes
//! — file capabilities and SELinux labels among them —, sparse files,
//! device nodes and other special files; one filesystem at a time).
//! rsync is used rather than a copier of our own: it is what the users
//! trust for this, it handles every attribute the kernel has, and its
//! delta transfer is what `--refresh` needs. `--inplace`: a file that
//! changed is rewritten where it is, so a refresh changes few blocks
//! beyond those of the changed files (the copy is not live: nothing reads
//! it meanwhile).
//!
//! A running system changes while it is copied. Pass one copies the tree;
//! pass two runs the same copy again and lists what it had to transfer:
//! those files changed while pass one ran, and are copied again (pass two
//! is short, so each file ends up copied consistently unless it keeps
//! changing). Files that vanish are counted, not fatal. The tree as a
//! whole is not a point-in-time image: the record says so.
//!
//! The parsing of rsync's output is separate from running it, and tested
//! on text.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, ErrorKind, Result};

/// rsync's exit code when some files vanished before they could be
/// copied (not an error for a live system).
const VANISHED: i32 = 24;

/// What one rsync pass reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassOutcome {
    /// Items it transferred or created (`--itemize-changes`), as paths
    /// relative to the tree.
    pub transferred: Vec<String>,
    /// Files that vanished before they could be read.
    pub vanished: Vec<String>,
    /// Bytes of file data sent (`--stats`' "Total transferred file size").
    pub bytes: u64,
}

/// The rsync arguments of a copy of the tree at `src` into `dst`, with
/// `exclude` patterns (rsync's syntax, anchored at the tree's root when
/// they start with `/`).
pub fn rsync_args(src: &Path, dst: &Path, exclude: &[String], itemize: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "-aHAXS",
        "--one-file-system",
        "--numeric-ids",
        "--delete",
        "--inplace",
        "--stats",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if itemize {
        args.push("--itemize-changes".into());
    }
    for e in exclude {
        args.push(format!("--exclude={e}"));
    }
    let dir = |p: &Path| {
        let mut s = p.display().to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        s
    };
    args.push(dir(src));
    args.push(dir(dst));
    args
}

/// Parse what rsync printed: `--itemize-changes` lines on stdout (an item
/// transferred, `>f…`, or created, `c…`; a directory whose times alone
/// changed, `.d…`, is no change of content), `--stats`, and the vanished
/// files on stderr.
pub fn parse_output(stdout: &str, stderr: &str) -> PassOutcome {
    let mut out = PassOutcome::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("Total transferred file size: ") {
            let digits: String = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            out.bytes = digits.parse().unwrap_or(0);
            continue;
        }
        // YXcstpoguax path: 11 columns, a space, the path.
        let (Some(flags), Some(path)) = (line.get(..11), line.get(12..)) else {
            continue;
        };
        let kind = flags.as_bytes();
        let item = matches!(kind[0], b'>' | b'c' | b'<')
            && matches!(kind[1], b'f' | b'd' | b'L' | b'D' | b'S')
            && line.as_bytes().get(11) == Some(&b' ');
        if item && !(kind[0] == b'c' && kind[1] == b'd') {
            out.transferred.push(path.to_string());
        } else if let Some(path) = line.strip_prefix("*deleting ") {
            out.transferred.push(path.trim_start().to_string());
        }
    }
    for line in stderr.lines() {
        if let Some(rest) = line.split("file has vanished: ").nth(1) {
            out.vanished.push(rest.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Run one pass; rsync's failure (anything but success or "some files
/// vanished") is an error with what it printed.
pub fn run_pass(src: &Path, dst: &Path, exclude: &[String], itemize: bool) -> Result<PassOutcome> {
    let args = rsync_args(src, dst, exclude, itemize);
    let out = Command::new("rsync").args(&args).output().map_err(|e| {
        Error::new(
            ErrorKind::KernelLacks,
            format!("cannot run rsync ({e}): install rsync"),
        )
    })?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    match out.status.code() {
        Some(0) | Some(VANISHED) => Ok(parse_output(&stdout, &stderr)),
        code => Err(Error::new(
            ErrorKind::Io,
            format!(
                "rsync {} failed (exit {}): {}",
                args.join(" "),
                code.map_or("by a signal".into(), |c| c.to_string()),
                stderr.trim()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemized_changes_vanished_files_and_stats_are_read() {
        let stdout = "\
>f..t...... var/log/syslog
.d..t...... var/log/
cd+++++++++ var/cache/new/
>f+++++++++ var/cache/new/a b.txt
cL+++++++++ etc/alt -> /usr/bin/x
*deleting   tmp/gone
\n\
Number of files: 1,234 (reg: 1,000, dir: 234)
Total transferred file size: 1,048,576 bytes
";
        let stderr = "file has vanished: \"/src/run/lock/x\"\nrsync warning: some files vanished before they could be transferred (code 24)\n";
        let o = parse_output(stdout, stderr);
        assert_eq!(
            o.transferred,
            [
                "var/log/syslog",
                "var/cache/new/a b.txt",
                "etc/alt -> /usr/bin/x",
                "tmp/gone"
            ]
        );
        assert_eq!(o.vanished, ["/src/run/lock/x"]);
        assert_eq!(o.bytes, 1_048_576);
        assert_eq!(parse_output("", ""), PassOutcome::default());
    }

    #[test]
    fn the_arguments_copy_one_filesystem_with_every_attribute() {
        let a = rsync_args(
            Path::new("/"),
            Path::new("/run/x"),
            &["/var/lib/liverestore/***".into()],
            true,
        );
        assert_eq!(
            a,
            [
                "-aHAXS",
                "--one-file-system",
                "--numeric-ids",
                "--delete",
                "--inplace",
                "--stats",
                "--itemize-changes",
                "--exclude=/var/lib/liverestore/***",
                "/",
                "/run/x/"
            ]
        );
    }
}
