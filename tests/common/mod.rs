//! Test fixtures: loop-backed scratch disks and mounts that clean up exactly
//! what they created (on failure too), plus helpers to run the binary.
//!
//! Every scratch disk starts filled with a pattern in which each 512-byte
//! sector names its own number, so a sector that still holds its pattern was
//! provably never written by anyone.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod ansible;
pub mod debian;
pub mod goosebit;
pub mod http;
pub mod schema;
pub mod vm;

pub const MIB: u64 = 1 << 20;
pub const SECTOR: u64 = 512;
const PATTERN_MAGIC: u64 = 0x4c52_5041_5454_0000; // "LRPATT\0\0"

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create loop devices and mounts: run them as root (CI does)"
    );
}

/// Run a command, panic with its output if it fails; return stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sector pattern for sector `n`.
pub fn pattern_sector(n: u64) -> [u8; SECTOR as usize] {
    let mut s = [0u8; SECTOR as usize];
    for (i, w) in s.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(PATTERN_MAGIC ^ (n << 8) ^ i as u64).to_le_bytes());
    }
    s
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
    Btrfs,
}

/// A mount this test made; unmounted on drop.
pub struct Mount {
    pub path: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn new(source: &str, path: &Path, fstype: &str, options: &str) -> Mount {
        fs::create_dir_all(path).unwrap();
        let mut args = vec!["-t", fstype];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        let p = path.to_str().unwrap();
        args.extend([source, p]);
        sh("mount", &args);
        Mount {
            path: path.to_path_buf(),
            mounted: true,
        }
    }

    /// Unmount now. A process that is just leaving the filesystem (a
    /// child another test forked, before its exec closed what it
    /// inherited) may hold it for a moment: a busy mount is retried for
    /// 10 s, as liverestore's own unmount does, then the processes that
    /// hold it are named.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        use rustix::io::Errno;
        for _ in 0..100 {
            match rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {
                    self.mounted = false;
                    return;
                }
                Err(e) if e == Errno::BUSY => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => panic!("umount {}: {e}", self.path.display()),
            }
        }
        panic!(
            "umount {}: still busy after 10 s; held by: {}",
            self.path.display(),
            holders(&self.path).join("; ")
        );
    }
}

/// The processes with a file, a working directory, a root or a mapping
/// under `path` (what `fuser -m` would name), as "pid (comm): what".
pub fn holders(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let mut links = vec![dir.join("cwd"), dir.join("root")];
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if let Ok(t) = fs::read_link(&l)
                && t.starts_with(path)
            {
                out.push(format!(
                    "{pid} ({}): {} -> {}",
                    comm.trim(),
                    l.display(),
                    t.display()
                ));
            }
        }
        let maps = fs::read_to_string(dir.join("maps")).unwrap_or_default();
        let under = path.to_string_lossy();
        if maps.contains(under.as_ref()) {
            out.push(format!("{pid} ({}): a mapping", comm.trim()));
        }
    }
    out
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // A process that just exited may hold the filesystem for a moment:
        // retry, and only then detach it lazily so it still goes away.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("{} stayed busy: unmounting lazily", self.path.display());
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Detaches a staged image on drop, so a failing test leaves no loop
/// device, device-mapper device or FUSE mount behind.
pub struct Detach<'a>(pub &'a Cli, pub &'a str);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["detach", self.1]);
    }
}

/// A liverestore process a test started: killed and reaped on drop, so a
/// failing test never leaves one holding a mount or the lock.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.0.take().expect("child").wait_with_output()
    }
}

impl From<std::process::Child> for ChildGuard {
    fn from(c: std::process::Child) -> Self {
        ChildGuard(Some(c))
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("child")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch disk: a pattern-filled file in a temp dir, attached to a loop
/// device, with one GPT partition holding a filesystem, mounted.
pub struct LoopDisk {
    pub file: PathBuf,
    /// /dev/loopN
    pub dev: String,
    /// /dev/loopNp1
    pub part: String,
    pub fs: Fs,
    pub part_start: u64,
    pub part_size: u64,
    pub mnt: PathBuf,
    mount: Option<Mount>,
    attached: bool,
    /// Partitions 2, 3, … (see [`LoopDisk::with_partitions`]).
    pub others: Vec<Partition>,
}

/// A further partition of a [`LoopDisk`], formatted and mounted.
pub struct Partition {
    pub node: String,
    pub fs: Fs,
    pub start: u64,
    pub size: u64,
    pub mnt: PathBuf,
    pub mount: Option<Mount>,
}

fn mkfs(fs_kind: Fs, node: &str) {
    match fs_kind {
        Fs::Ext4 => sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                node,
            ],
        ),
        Fs::Xfs => sh("mkfs.xfs", &["-q", "-f", "-K", node]),
        Fs::Btrfs => sh("mkfs.btrfs", &["-q", "-f", "--nodiscard", node]),
    };
}

fn fs_type_name(fs_kind: Fs) -> &'static str {
    match fs_kind {
        Fs::Ext4 => "ext4",
        Fs::Xfs => "xfs",
        Fs::Btrfs => "btrfs",
    }
}

impl LoopDisk {
    /// `disk_mib` MiB disk, partition 1 from 1 MiB to 1 MiB before the end.
    pub fn new(dir: &Path, fs_kind: Fs, disk_mib: u64) -> LoopDisk {
        LoopDisk::with_partitions(dir, disk_mib, &[(fs_kind, 1, disk_mib - 2)])
    }

    /// `disk_mib` MiB disk with GPT partitions `(fs, start MiB, size MiB)`,
    /// numbered in order, each formatted and mounted; the first is the
    /// disk's `part`, the others are in `others`. Bytes outside them stay
    /// unallocated.
    pub fn with_partitions(dir: &Path, disk_mib: u64, parts: &[(Fs, u64, u64)]) -> LoopDisk {
        LoopDisk::with_table(dir, disk_mib, parts, false)
    }

    /// As [`LoopDisk::with_partitions`], with an MBR (`mbr`, primary
    /// partitions, disk signature 0x1234abcd) instead of a GPT.
    pub fn with_table(dir: &Path, disk_mib: u64, parts: &[(Fs, u64, u64)], mbr: bool) -> LoopDisk {
        require_root();
        fs::create_dir_all(dir).unwrap();
        let file = dir.join("disk.img");
        let mut f = fs::File::create(&file).unwrap();
        let mut w = std::io::BufWriter::with_capacity(4 << 20, &mut f);
        for n in 0..disk_mib * MIB / SECTOR {
            w.write_all(&pattern_sector(n)).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        f.sync_all().unwrap();
        if mbr {
            let mut script = String::from("label: dos\nlabel-id: 0x1234abcd\n");
            for &(_, start, size) in parts {
                script.push_str(&format!(
                    "start={}, size={}, type=83\n",
                    start * MIB / SECTOR,
                    size * MIB / SECTOR
                ));
            }
            let mut child = Command::new("sfdisk")
                .args(["-q", file.to_str().unwrap()])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "sfdisk failed");
        }
        for (i, &(_, start, size)) in parts.iter().enumerate().filter(|_| !mbr) {
            sh(
                "sgdisk",
                &[
                    "-n",
                    &format!(
                        "{}:{}:{}",
                        i + 1,
                        start * MIB / SECTOR,
                        (start + size) * MIB / SECTOR - 1
                    ),
                    "-t",
                    &format!("{}:8300", i + 1),
                    file.to_str().unwrap(),
                ],
            );
        }
        let dev = sh("losetup", &["-f", "--show", file.to_str().unwrap()])
            .trim()
            .to_string();
        let (fs_kind, start, size) = parts[0];
        let mut disk = LoopDisk {
            part: format!("{dev}p1"),
            dev,
            file,
            fs: fs_kind,
            part_start: start * MIB,
            part_size: size * MIB,
            mnt: dir.join("mnt"),
            mount: None,
            attached: true,
            others: Vec::new(),
        };
        // Make the kernel's partitions match the table: without udev, a
        // partition (or node) can be left over from an earlier user of loopN.
        sh("partx", &["-u", &disk.dev]);
        for i in 1..=parts.len() {
            let node = format!("{}p{i}", disk.dev);
            assert!(
                fs::metadata(&node).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_block_device()
                }),
                "{node} is not a block device (a stray file left in /dev?)"
            );
        }
        mkfs(fs_kind, &disk.part);
        disk.mount();
        for (i, &(fs_kind, start, size)) in parts.iter().enumerate().skip(1) {
            let node = format!("{}p{}", disk.dev, i + 1);
            mkfs(fs_kind, &node);
            let mnt = dir.join(format!("mnt{}", i + 1));
            let mount = Some(Mount::new(&node, &mnt, fs_type_name(fs_kind), ""));
            disk.others.push(Partition {
                node,
                fs: fs_kind,
                start: start * MIB,
                size: size * MIB,
                mnt,
                mount,
            });
        }
        disk
    }

    pub fn fs_name(&self) -> &'static str {
        fs_type_name(self.fs)
    }

    pub fn mount(&mut self) {
        if self.mount.is_none() {
            self.mount = Some(Mount::new(
                &self.part,
                &self.mnt.clone(),
                self.fs_name(),
                "",
            ));
        }
    }

    pub fn unmount(&mut self) {
        if let Some(mut m) = self.mount.take() {
            m.unmount();
        }
    }

    /// Read-only filesystem check of the unmounted filesystem.
    pub fn fsck_clean(&self) -> bool {
        assert!(self.mount.is_none(), "unmount before fsck");
        let status = match self.fs {
            Fs::Ext4 => Command::new("e2fsck")
                .args(["-f", "-n", &self.part])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
            Fs::Xfs => Command::new("xfs_repair")
                .args(["-n", &self.part])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
            Fs::Btrfs => Command::new("btrfs")
                .args(["check", "--readonly", &self.part])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        };
        status.unwrap().success()
    }

    /// Free space of the unmounted filesystem, as whole-disk byte ranges.
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        assert!(self.mount.is_none(), "unmount before reading free space");
        match self.fs {
            Fs::Ext4 => {
                let out = sh("dumpe2fs", &[&self.part]);
                let bs: u64 = out
                    .lines()
                    .find_map(|l| l.strip_prefix("Block size:"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let mut ranges = Vec::new();
                // group lines are indented; the unindented summary line is a count
                for line in out
                    .lines()
                    .filter_map(|l| l.strip_prefix("  Free blocks: "))
                {
                    for r in line.split(", ").filter(|r| !r.is_empty()) {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                        ranges.push((self.part_start + a * bs, self.part_start + (b + 1) * bs));
                    }
                }
                ranges
            }
            Fs::Xfs => {
                let geo = sh(
                    "xfs_db",
                    &["-r", "-c", "sb 0", "-c", "p agblocks blocksize", &self.part],
                );
                let val = |k: &str| -> u64 {
                    geo.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k} = ")))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                };
                let (agblocks, bs) = (val("agblocks"), val("blocksize"));
                let out = sh("xfs_db", &["-r", "-c", "freesp -d", &self.part]);
                out.lines()
                    .filter_map(|l| {
                        let v: Vec<u64> = l
                            .split_whitespace()
                            .map(|x| x.parse().ok())
                            .collect::<Option<_>>()?;
                        (v.len() == 3).then(|| {
                            let start = self.part_start + (v[0] * agblocks + v[1]) * bs;
                            (start, start + v[2] * bs)
                        })
                    })
                    .collect()
            }
            Fs::Btrfs => unimplemented!("not needed"),
        }
    }

    /// Which sectors of the disk still hold their own pattern.
    pub fn pattern_sectors(&self) -> Vec<bool> {
        let data = fs::read(&self.file).unwrap();
        data.chunks_exact(SECTOR as usize)
            .enumerate()
            .map(|(n, s)| s == pattern_sector(n as u64))
            .collect()
    }

    pub fn read_at(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = fs::File::open(&self.file).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// Overwrite bytes of the disk (through its backing file).
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let f = fs::OpenOptions::new().write(true).open(&self.file).unwrap();
        f.write_all_at(bytes, offset).unwrap();
        f.sync_all().unwrap();
    }
}

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    pub dev: String,
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

impl LoopDisk {
    /// The same disk under another name, as after a reboot that renamed
    /// it (sda and sdb swapped): unmounted, detached, its old name taken
    /// by a blank 1 MiB disk in `dir` (returned: it holds the name until
    /// dropped), attached again under a new name and mounted again.
    pub fn reattach_renamed(&mut self, dir: &Path) -> LoopDevice {
        assert!(self.others.is_empty(), "one partition only");
        self.unmount();
        sh("partx", &["-d", &self.dev]);
        sh("losetup", &["-d", &self.dev]);
        self.attached = false;
        let blank = dir.join("blank.img");
        fs::File::create(&blank).unwrap().set_len(MIB).unwrap();
        sh("losetup", &[&self.dev, blank.to_str().unwrap()]);
        let placeholder = LoopDevice {
            dev: self.dev.clone(),
        };
        let dev = sh("losetup", &["-f", "--show", self.file.to_str().unwrap()])
            .trim()
            .to_string();
        assert_ne!(dev, placeholder.dev);
        self.dev = dev;
        self.part = format!("{}p1", self.dev);
        self.attached = true;
        sh("partx", &["-u", &self.dev]);
        self.mount();
        placeholder
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        self.mount.take();
        self.others.clear();
        if self.attached {
            let _ = Command::new("partx")
                .args(["-d", &self.dev])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("losetup").args(["-d", &self.dev]).status();
            self.attached = false;
        }
    }
}

/// Content hashes of every regular file under `root`.
pub fn tree_hashes(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                if p.file_name().unwrap() != "lost+found" {
                    stack.push(p);
                }
            } else if ft.is_file() && !p.to_string_lossy().ends_with(".liverestore") {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    sha256_hex(&fs::read(&p).unwrap()),
                );
            }
        }
    }
    out
}

/// An ext4 filesystem image of `size_mib` MiB at `dir/name`, built without
/// mounting (`mkfs.ext4 -d`) from files a user would have ([`populate`])
/// plus `extra` (path, contents).
pub fn ext4_image(dir: &Path, name: &str, size_mib: u64, extra: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    populate(&tree);
    for (path, contents) in extra {
        let p = tree.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
    let img = dir.join(name);
    mkfs_ext4_from(&tree, &img, size_mib);
    img
}

/// `mkfs.ext4 -d tree` into a new `mib` MiB image file at `img`.
pub fn mkfs_ext4_from(tree: &Path, img: &Path, mib: u64) {
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            img.to_str().unwrap(),
            &format!("{mib}M"),
        ],
    );
}

/// A sparse disk image file of `mib` MiB at `path` with a fresh GPT and
/// partitions `(start MiB, size MiB, sgdisk type code)`, numbered in
/// order (nothing formatted). Returns `path`.
pub fn gpt_disk_file(path: &Path, mib: u64, parts: &[(u64, u64, &str)]) -> PathBuf {
    fs::File::create(path).unwrap().set_len(mib * MIB).unwrap();
    let mut args = vec!["-o".to_string()];
    let s = MIB / SECTOR;
    for (i, (start, size, code)) in parts.iter().enumerate() {
        let n = i + 1;
        args.push("-n".into());
        args.push(format!("{n}:{}:{}", start * s, (start + size) * s - 1));
        args.push("-t".into());
        args.push(format!("{n}:{code}"));
    }
    args.push(path.to_str().unwrap().into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("sgdisk", &args);
    path.to_path_buf()
}

/// Populate a filesystem with files a user would have.
pub fn populate(root: &Path) {
    for d in ["etc", "home/alice", "var/log"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (i, size) in [100usize, 4096, 65536, 1 << 20, 3 << 20, 5 << 20, 12345]
        .iter()
        .enumerate()
    {
        let sub = ["etc", "home/alice", "var/log"][i % 3];
        fs::write(
            root.join(sub).join(format!("file{i}")),
            random_bytes(*size, i as u64 + 100),
        )
        .unwrap();
    }
    sh("sync", &[]);
}

/// The liverestore binary with a private state directory.
pub struct Cli {
    pub state_dir: PathBuf,
}

impl Cli {
    pub fn new(dir: &Path) -> Cli {
        Cli {
            state_dir: dir.join("state"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_liverestore"));
        c.env("LIVERESTORE_STATE_DIR", &self.state_dir);
        // `activate --standby`'s unit: never into this machine's systemd
        c.env("LIVERESTORE_UNIT_DIR", self.unit_dir());
        c
    }

    /// Where `activate --standby` puts its unit (beside the state
    /// directory).
    pub fn unit_dir(&self) -> PathBuf {
        self.state_dir.with_file_name("units")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Run and assert the exit code; returns stdout.
    pub fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "liverestore {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `stage IMAGE --name NAME --dir DIR`, which must succeed; its stdout.
    pub fn stage(&self, image: &Path, name: &str, dir: &Path) -> String {
        self.expect(
            0,
            &[
                "stage",
                image.to_str().unwrap(),
                "--name",
                name,
                "--dir",
                dir.to_str().unwrap(),
            ],
        )
    }

    /// Run and assert the exit code; returns stderr (where errors go).
    pub fn expect_err(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "liverestore {args:?}: {err}");
        err
    }

    /// Start `stage - --size SIZE --name NAME --dir DIR [extra…]` reading
    /// the image from a pipe the caller writes to (stdin is piped).
    pub fn spawn_stdin_stage(
        &self,
        size: u64,
        name: &str,
        dir: &Path,
        extra: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> ChildGuard {
        ChildGuard(Some(
            self.cmd()
                .args([
                    "stage",
                    "-",
                    "--size",
                    &size.to_string(),
                    "--name",
                    name,
                    "--dir",
                    dir.to_str().unwrap(),
                ])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        ))
    }

    /// Run with success expected and parse the last JSON line (the result;
    /// earlier lines are progress events). Every line is checked against
    /// the schema of the JSON envelope (docs/json-output.schema.json).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.expect(0, args);
        let lines = json_lines(args, &out);
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("no output from {args:?}"));
        assert_eq!(last["event"], "result", "{args:?}: {last}");
        assert_eq!(last["ok"], true, "{args:?}: {last}");
        last.clone()
    }

    /// Run with `code` expected (non-zero) and `--json` among `args`:
    /// the last line, which must be a result with "ok": false or an
    /// error object whose exit_code is `code`.
    pub fn json_failure(&self, code: i32, args: &[&str]) -> serde_json::Value {
        let out = self.expect(code, args);
        let lines = json_lines(args, &out);
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("no output from {args:?}"));
        assert_eq!(last["ok"], false, "{args:?}: {last}");
        if last["event"] == "error" {
            assert_eq!(last["exit_code"], code, "{args:?}: {last}");
        }
        last.clone()
    }
}

/// The JSON envelope's schema, read once.
fn json_schema() -> &'static serde_json::Value {
    static SCHEMA: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json-output.schema.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// Every line of `out` parsed and checked against the envelope's schema:
/// events, then exactly one result or error, last.
pub fn json_lines(args: &[&str], out: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: not JSON: {l}: {e}")))
        .collect();
    for (i, v) in lines.iter().enumerate() {
        let errors = schema::errors(json_schema(), v);
        assert!(
            errors.is_empty(),
            "{args:?}: {v}\ndoes not match docs/json-output.schema.json: {errors:#?}"
        );
        let last = i + 1 == lines.len();
        let ends = v["event"] == "result" || v["event"] == "error";
        assert_eq!(ends, last, "{args:?}: one result or error, last: {out}");
    }
    lines
}

/// Check that `image` lies on the disk at exactly the places `map --json` names.
pub fn assert_image_on_disk(disk: &LoopDisk, map: &serde_json::Value, image: &[u8]) {
    assert_eq!(map["image_size"].as_u64().unwrap(), image.len() as u64);
    let mut covered = 0;
    for e in map["extents"].as_array().unwrap() {
        let (io, d, l) = (
            e["image_offset"].as_u64().unwrap(),
            e["disk_offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
        );
        assert_eq!(io, covered, "extents in image order without gaps");
        assert!(
            disk.read_at(d, l as usize) == image[io as usize..(io + l) as usize],
            "disk bytes at {d} differ from image bytes at {io}"
        );
        covered += l;
    }
    assert_eq!(covered, image.len() as u64);
}

pub fn containers_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".liverestore"))
        .collect()
}

pub fn recorded_written(cli: &Cli, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(cli.state_dir.join(format!("images/{name}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["record"]["image"]["written"].as_u64()
}

/// Start staging `image` from stdin as `name`, feed it `feed` bytes, and
/// SIGKILL it as soon as the staging `watch` (`name`, or a partition of
/// it) has a checkpoint past `at_least` bytes on record.
pub fn stage_and_kill(
    cli: &Cli,
    disk: &LoopDisk,
    name: &str,
    watch: &str,
    image: &[u8],
    feed: usize,
    at_least: u64,
) {
    let mut child = cli.spawn_stdin_stage(
        image.len() as u64,
        name,
        &disk.mnt,
        &[],
        Stdio::null(),
        Stdio::null(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let part = image[..feed].to_vec();
    // The feeder blocks once the pipe is full and fails with EPIPE after the
    // kill; either is fine. Its end of the pipe stays open, so the stager is
    // still waiting for data (not at EOF) when it is killed.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&part);
        std::thread::sleep(Duration::from_secs(60));
    });
    let start = Instant::now();
    while recorded_written(cli, watch).unwrap_or(0) < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint past {at_least} bytes"
        );
        assert!(child.try_wait().unwrap().is_none(), "stage exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(feeder); // detached; it only sleeps
}

/// Disk byte ranges `[start, end)` of a staging's whole container (header
/// included), from `info`.
pub fn container_ranges(cli: &Cli, name: &str) -> Vec<(u64, u64)> {
    let info = cli.json(&["info", name, "--json"]);
    info["record"]["map"]["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let d = e["disk"].as_u64().unwrap();
            (d, d + e["length"].as_u64().unwrap())
        })
        .collect()
}
