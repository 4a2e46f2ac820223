//! Segment sets and split containers on this host: one staging spread over
//! an ext4 and an xfs filesystem of the same disk and the disk's
//! unallocated space, containers split into several files, a second
//! staging that never shares a block with the first, resuming a killed
//! segment-set staging, and the refusals (a `--dir` on another disk,
//! `--unallocated` with nothing free, a partition created over staged
//! unallocated space).

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// 800 MiB disk: ext4 at 1..101 MiB, unallocated 101..201 MiB, xfs at
/// 201..521 MiB, unallocated after that.
fn segment_disk(dir: &std::path::Path) -> LoopDisk {
    let disk = LoopDisk::with_partitions(dir, 800, &[(Fs::Ext4, 1, 100), (Fs::Xfs, 201, 320)]);
    populate(&disk.mnt);
    populate(&disk.others[0].mnt);
    disk
}

/// Where each extent of `map` lies: 'e' (ext4 partition), 'x' (xfs
/// partition) or 'u' (outside both), in map order without repeats.
fn regions(disk: &LoopDisk, map: &serde_json::Value) -> String {
    let xfs = &disk.others[0];
    let mut out = String::new();
    for e in map["extents"].as_array().unwrap() {
        let (d, l) = (
            e["disk_offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
        );
        let inside = |start: u64, size: u64| d >= start && d + l <= start + size;
        let overlaps = |start: u64, size: u64| d < start + size && start < d + l;
        let c = if inside(disk.part_start, disk.part_size) {
            'e'
        } else if inside(xfs.start, xfs.size) {
            'x'
        } else {
            assert!(
                !overlaps(disk.part_start, disk.part_size) && !overlaps(xfs.start, xfs.size),
                "extent {d}+{l} straddles a partition boundary"
            );
            assert!(d >= MIB && d + l <= 799 * MIB, "extent {d}+{l} in a guard");
            'u'
        };
        if !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

fn disk_ranges(map: &serde_json::Value) -> Vec<(u64, u64)> {
    map["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let d = e["disk_offset"].as_u64().unwrap();
            (d, d + e["length"].as_u64().unwrap())
        })
        .collect()
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn segment_set_spans_ext4_xfs_and_unallocated_space() {
    let t = tempfile::tempdir().unwrap();
    let mut disk = segment_disk(&t.path().join("d"));
    let before = (tree_hashes(&disk.mnt), tree_hashes(&disk.others[0].mnt));
    let cli = Cli::new(t.path());
    let image = random_bytes(500 * MIB as usize, 7);
    let img = t.path().join("big.img");
    std::fs::write(&img, &image).unwrap();
    let (ext4, xfs) = (
        disk.mnt.to_str().unwrap().to_string(),
        disk.others[0].mnt.to_str().unwrap().to_string(),
    );
    let space = [
        "--dir",
        &ext4,
        "--dir",
        &xfs,
        "--unallocated",
        "--keep-free",
        "40M",
        "--max-file-size",
        "32M",
    ];

    // plan shows the sources and where the image would go
    let mut args = vec!["--json", "plan", img.to_str().unwrap(), "--name", "big"];
    args.extend(space);
    let plan = cli.json(&args);
    assert_eq!(plan["ok"], true, "{plan}");
    let kinds: Vec<&str> = plan["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["dir", "dir", "unallocated"]);

    let mut args = vec!["--json", "stage", img.to_str().unwrap(), "--name", "big"];
    args.extend(space);
    let staged = cli.json(&args);
    assert_eq!(staged["ok"], true);

    let info = cli.json(&["--json", "info", "big"]);
    assert_eq!(info["map_valid"], true, "{info}");
    let rec = &info["record"];
    let segments = rec["segments"].as_array().unwrap();
    let files: Vec<&str> = std::iter::once(&rec["container"])
        .chain(segments.iter().map(|s| &s["container"]))
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(
        files.len() >= 3,
        "ext4 split in 32 MiB files, then xfs: {files:?}"
    );
    assert!(files.iter().all(|f| !f.is_empty()));
    assert!(
        segments.iter().any(|s| s["kind"] == "unallocated"),
        "{segments:?}"
    );
    let map = cli.json(&["--json", "map", "big"]);
    assert_eq!(regions(&disk, &map), "exu", "filled in order");
    assert_image_on_disk(&disk, &map, &image);
    cli.expect(0, &["verify", "big"]);
    // Attached (through the FUSE fallback on this kernel), the segment set
    // reads back as the image.
    {
        let _guard = Detach(&cli, "big");
        let out = cli.json(&["--json", "attach", "big"]);
        let dev = out["attachment"]["device"].as_str().unwrap().to_string();
        assert!(
            std::fs::read(&dev).unwrap() == image,
            "attached bytes differ"
        );
    }
    let list = cli.json(&["--json", "list"]);
    assert_eq!(list["images"][0]["map_valid"], true, "{list}");

    // A second staging: the little room left on ext4, then unallocated
    // space, never any byte of the first.
    let small = random_bytes(24 * MIB as usize, 8);
    let small_img = t.path().join("small.img");
    std::fs::write(&small_img, &small).unwrap();
    cli.json(&[
        "--json",
        "stage",
        small_img.to_str().unwrap(),
        "--name",
        "small",
        "--dir",
        &ext4,
        "--keep-free",
        "36M",
        "--unallocated",
    ]);
    let small_map = cli.json(&["--json", "map", "small"]);
    assert_eq!(regions(&disk, &small_map), "eu");
    assert_image_on_disk(&disk, &small_map, &small);
    for (a, b) in disk_ranges(&small_map) {
        for (c, d) in disk_ranges(&map) {
            assert!(b <= c || d <= a, "{a}..{b} overlaps {c}..{d} of 'big'");
        }
    }
    cli.expect(0, &["verify", "big"]);

    // Unknown means occupied: with the record of 'small' cut in half, its
    // unallocated ranges are not known to be taken, so planning and
    // staging into unallocated space refuse (naming the record) instead
    // of placing a new staging over them.
    let record = cli.state_dir.join("images/small.json");
    let whole = std::fs::read(&record).unwrap();
    std::fs::write(&record, &whole[..whole.len() / 2]).unwrap();
    let third = t.path().join("third.img");
    std::fs::write(&third, random_bytes(8 * MIB as usize, 5)).unwrap();
    let args = [
        third.to_str().unwrap(),
        "--name",
        "third",
        "--dir",
        &ext4,
        "--unallocated",
        "--contiguous",
    ];
    for cmd in ["plan", "stage"] {
        // plan lists its refusals on stdout, stage's error is on stderr
        let out = cli.run(&[&[cmd][..], &args[..]].concat());
        let err = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
        assert_eq!(out.status.code(), Some(19), "{cmd}: {err}");
        assert!(
            err.contains("record of staging 'small' cannot be read")
                && err.contains("discard small --force"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(
        cli.json(&["--json", "list"])["images"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A lost state directory neither: with no record of 'small' at all,
    // its header (in its container file) is found on the disk, and the
    // new staging is placed clear of its ranges, said so.
    std::fs::remove_file(&record).unwrap();
    let plan = cli.json(&[&["--json", "plan"][..], &args[..]].concat());
    assert_eq!(plan["unknown_stagings"][0]["name"], "small", "{plan}");
    let out = cli.run(&[&["stage"][..], &args[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("staging 'small'") && err.contains("the state directory does not know it"),
        "{err}"
    );
    let third_map = cli.json(&["--json", "map", "third"]);
    for (a, b) in disk_ranges(&third_map) {
        for (c, d) in disk_ranges(&small_map).into_iter().chain(disk_ranges(&map)) {
            assert!(b <= c || d <= a, "{a}..{b} overlaps {c}..{d}");
        }
    }
    cli.expect(0, &["discard", "third"]);
    std::fs::write(&record, &whole).unwrap();
    cli.expect(0, &["verify", "small"]);

    // A partition created over the staged unallocated space invalidates
    // the map; removing it again makes it valid.
    let dev = disk.dev.clone();
    let (at, _) = *disk_ranges(&small_map).last().unwrap();
    sh(
        "sgdisk",
        &["-n", &format!("3:{}:+8M", at / 512), "-t", "3:8300", &dev],
    );
    sh("partx", &["-a", "--nr", "3", &dev]);
    let list = cli.json(&["--json", "list"]);
    let small_row = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "small")
        .unwrap();
    assert_eq!(small_row["map_valid"], false, "{list}");
    assert!(
        small_row["problem"].as_str().unwrap().contains("partition"),
        "{list}"
    );
    let err = cli.expect_err(18, &["verify", "small"]);
    assert!(err.contains("now covers"), "{err}");
    // A filesystem made there and staged into: its container's blocks are
    // staged bytes of 'small', so staging refuses (and mkfs has damaged
    // 'small', which verify reports once the partition is gone).
    let p3 = format!("{dev}p3");
    sh("mkfs.ext4", &["-q", "-F", "-b", "4096", &p3]);
    {
        let p3_mnt = t.path().join("p3");
        let _mount = Mount::new(&p3, &p3_mnt, "ext4", "");
        let one = t.path().join("one.img");
        std::fs::write(&one, random_bytes(MIB as usize, 4)).unwrap();
        let err = cli.expect_err(
            18,
            &[
                "stage",
                one.to_str().unwrap(),
                "--name",
                "third",
                "--dir",
                p3_mnt.to_str().unwrap(),
            ],
        );
        assert!(err.contains("also in the map of 'small'"), "{err}");
        assert!(containers_in(&p3_mnt).is_empty(), "nothing left behind");
    }
    sh("partx", &["-d", "--nr", "3", &dev]);
    sh("sgdisk", &["-d", "3", &dev]);
    cli.expect_err(20, &["verify", "small"]);

    // discard removes every file of both
    cli.expect(0, &["discard", "big"]);
    cli.expect(0, &["discard", "small"]);
    assert!(containers_in(&disk.mnt).is_empty());
    assert!(containers_in(&disk.others[0].mnt).is_empty());
    assert_eq!(
        (tree_hashes(&disk.mnt), tree_hashes(&disk.others[0].mnt)),
        before
    );
    disk.unmount();
    assert!(disk.fsck_clean(), "ext4 not clean");
    let xfs_part = disk.others[0].node.clone();
    disk.others[0].mount.take();
    assert!(
        std::process::Command::new("xfs_repair")
            .args(["-n", &xfs_part])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "xfs not clean"
    );
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn killed_segment_set_staging_resumes() {
    let t = tempfile::tempdir().unwrap();
    let disk = segment_disk(&t.path().join("d"));
    let cli = Cli::new(t.path());
    let image = random_bytes(300 * MIB as usize, 9);
    let (ext4, xfs) = (
        disk.mnt.to_str().unwrap().to_string(),
        disk.others[0].mnt.to_str().unwrap().to_string(),
    );
    // ext4 keeps all but ~20 MiB, xfs all but ~200 MiB: the rest goes to
    // the unallocated space, and the kill lands in the xfs part.
    let extra = ["--dir", xfs.as_str(), "--keep-free", "70M", "--unallocated"];
    let mut child = cli.spawn_stdin_stage(
        image.len() as u64,
        "set",
        std::path::Path::new(&ext4),
        &extra,
        Stdio::null(),
        Stdio::null(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let part = image[..200 * MIB as usize].to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&part);
        std::thread::sleep(Duration::from_secs(60));
    });
    let start = Instant::now();
    while recorded_written(&cli, "set").unwrap_or(0) < 100 * MIB {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "stage exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(feeder);

    let info = cli.json(&["--json", "info", "set"]);
    assert_eq!(info["record"]["state"], "staging");
    assert!(!info["record"]["segments"].as_array().unwrap().is_empty());
    let mut resume = cli
        .cmd()
        .args(["stage", "--resume", "set", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    resume.stdin.take().unwrap().write_all(&image).unwrap();
    let out = resume.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let map = cli.json(&["--json", "map", "set"]);
    assert_eq!(regions(&disk, &map), "exu");
    assert_image_on_disk(&disk, &map, &image);
    cli.expect(0, &["verify", "set"]);
    cli.expect(0, &["discard", "set"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn segment_set_refusals() {
    let t = tempfile::tempdir().unwrap();
    // a disk whose one partition fills it: no unallocated space
    let full = LoopDisk::new(&t.path().join("full"), Fs::Ext4, 64);
    let other = segment_disk(&t.path().join("other"));
    let cli = Cli::new(t.path());
    let img = t.path().join("i.img");
    std::fs::write(&img, random_bytes(4 * MIB as usize, 1)).unwrap();
    let full_dir = full.mnt.to_str().unwrap();
    let refused = |code: i32, space: &[&str], why: &str| {
        let mut args = vec!["stage", img.to_str().unwrap(), "--name", "x"];
        args.extend_from_slice(space);
        let err = cli.expect_err(code, &args);
        assert!(err.contains(why), "{space:?}: {err}");
    };
    let other_dir = other.mnt.to_str().unwrap();
    refused(12, &["--dir", full_dir, "--dir", other_dir], "one disk");
    refused(
        13,
        &["--dir", full_dir, "--unallocated"],
        "no free space outside its partitions",
    );
    refused(
        11,
        &["--dir", full_dir, "--dir", full_dir],
        "same filesystem",
    );
    // more than every source can give
    refused(
        13,
        &["--dir", full_dir, "--keep-free", "1T"],
        "not enough space",
    );
    // nothing was left behind by any of them
    assert!(containers_in(&full.mnt).is_empty());
    let list = cli.json(&["--json", "list"]);
    assert!(list["images"].as_array().unwrap().is_empty(), "{list}");
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn container_split_into_files_of_max_file_size() {
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 128);
    let cli = Cli::new(t.path());
    // 30 MiB + a bit, plus the 1 MiB header: four files of at most 8 MiB
    let image = random_bytes(30 * MIB as usize + 4096 * 3 + 100, 3);
    let img = t.path().join("odd.img");
    std::fs::write(&img, &image).unwrap();
    cli.json(&[
        "--json",
        "stage",
        img.to_str().unwrap(),
        "--name",
        "odd",
        "--dir",
        disk.mnt.to_str().unwrap(),
        "--max-file-size",
        "8M",
    ]);
    let mut names = containers_in(&disk.mnt);
    names.sort();
    assert_eq!(
        names,
        [
            "odd+2.liverestore",
            "odd+3.liverestore",
            "odd+4.liverestore",
            "odd.liverestore"
        ]
    );
    for n in &names {
        let len = std::fs::metadata(disk.mnt.join(n)).unwrap().len();
        // whole blocks (this small ext4 has 1 KiB blocks)
        assert!(len <= 8 * MIB && len.is_multiple_of(1024), "{n}: {len}");
    }
    let map = cli.json(&["--json", "map", "odd"]);
    assert_image_on_disk(&disk, &map, &image);
    cli.expect(0, &["verify", "odd"]);
    cli.expect(0, &["discard", "odd"]);
    assert!(containers_in(&disk.mnt).is_empty());
}
