//! Staging onto a live btrfs (one device, `single` data) of a loop-backed
//! GPT disk: the container is No-CoW, its FIEMAP addresses go through the
//! chunk tree to the device, and the image is on the raw disk at exactly
//! the mapped offsets; nothing else of the disk changes (btrfs's own
//! chunks aside: every byte outside them keeps its pattern), the host's
//! files are unchanged and `btrfs check` is clean. A balance relocates
//! the container: the re-derived map differs, and `verify`, `activate`
//! and `attach` refuse it. DUP data and a filesystem over two devices are
//! refused up front; a snapshot of the staging's subvolume (its blocks
//! shared) at the next use.

use crate::common::*;

/// The device ranges of the chunks of the unmounted btrfs on `part`
/// (`btrfs inspect-internal dump-tree -t chunk`): `(offset, length)` on
/// the partition, every stripe.
fn chunk_ranges(part: &str) -> Vec<(u64, u64)> {
    let out = sh(
        "btrfs",
        &["inspect-internal", "dump-tree", "-t", "chunk", part],
    );
    let mut ranges = Vec::new();
    let mut length = 0u64;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("length ") {
            length = rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        if line.starts_with("stripe ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "offset").unwrap();
            ranges.push((words[at + 1].parse().unwrap(), length));
        }
    }
    assert!(!ranges.is_empty(), "{out}");
    ranges
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn staging_on_btrfs_maps_through_the_chunk_tree_and_a_balance_is_refused() {
    let t = tempfile::tempdir().unwrap();
    // 560 MiB of btrfs, the rest of the disk unallocated
    let mut disk = LoopDisk::with_partitions(t.path(), 700, &[(Fs::Btrfs, 1, 560)]);
    // data first, so that logical addresses and device offsets differ
    populate(&disk.mnt);
    std::fs::write(disk.mnt.join("before"), random_bytes(40 << 20, 3)).unwrap();
    std::fs::create_dir(disk.mnt.join("staging")).unwrap();
    let files_before = tree_hashes(&disk.mnt);
    disk.unmount();
    let pattern_before = disk.pattern_sectors();
    disk.mount();

    let image = random_bytes((120 * MIB + 4096) as usize, 11);
    let img = t.path().join("root.img");
    std::fs::write(&img, &image).unwrap();
    let cli = Cli::new(t.path());
    let dir = disk.mnt.join("staging");
    let plan = cli.json(&[
        "plan",
        img.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(plan["ok"], true, "{plan}");
    assert_eq!(plan["fs_type"], "btrfs");
    assert_eq!(plan["disk"], disk.dev.as_str());
    let plan_text = cli.expect(
        0,
        &[
            "plan",
            img.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert!(plan_text.contains("balance"), "{plan_text}");

    cli.stage(&img, "sys", &dir);
    let container = dir.join(&containers_in(&dir)[0]);
    let attrs = sh("lsattr", &[container.to_str().unwrap()]);
    assert!(
        attrs.split_whitespace().next().unwrap().contains('C'),
        "No-CoW: {attrs}"
    );
    let map = cli.json(&["map", "sys", "--json"]);
    assert_eq!(map["disk"], disk.dev.as_str());
    assert_image_on_disk(&disk, &map, &image);
    let verify = cli.json(&["verify", "sys", "--sha256", "--json"]);
    assert_eq!(verify["sha256"], sha256_hex(&image), "{verify}");
    // through btrfs the file still reads as preallocated: zeros
    let through_fs = std::fs::read(&container).unwrap();
    assert!(through_fs.iter().all(|&b| b == 0));

    // nothing outside btrfs's own chunks (its metadata, its data, the
    // container) was written
    disk.unmount();
    assert!(disk.fsck_clean(), "btrfs check");
    let chunks: Vec<(u64, u64)> = chunk_ranges(&disk.part)
        .into_iter()
        .map(|(o, l)| (disk.part_start + o, l))
        .collect();
    let superblocks = [64 << 10, 64 << 20].map(|o: u64| (disk.part_start + o, 4096));
    let pattern_after = disk.pattern_sectors();
    let stray: Vec<u64> = (0..pattern_before.len() as u64)
        .filter(|&s| pattern_before[s as usize] && !pattern_after[s as usize])
        .map(|s| s * 512)
        .filter(|&at| {
            !chunks
                .iter()
                .chain(&superblocks)
                .any(|&(o, l)| (o..o + l).contains(&at))
        })
        .collect();
    assert!(
        stray.is_empty(),
        "written outside btrfs's chunks: {:?}",
        &stray[..stray.len().min(8)]
    );
    disk.mount();
    assert_eq!(tree_hashes(&disk.mnt), files_before, "the host's files");

    // GRUB cannot write grubenv on btrfs: a GRUB activation whose
    // /boot/grub is there is refused before anything changes
    let g = crate::activate_grub::grub_dir_with_env(&disk.mnt);
    let helper = crate::activate_grub::helper();
    let os = crate::activate_grub::system_image(t.path());
    cli.stage(&os, "os", &dir);
    let e = cli.expect_err(
        25,
        &[
            "activate",
            "os",
            "--loader",
            "grub",
            "--grub-dir",
            g.to_str().unwrap(),
            "--helper",
            &helper,
        ],
    );
    assert!(e.contains("is on btrfs, where GRUB cannot write"), "{e}");
    assert!(!g.join("custom.cfg").exists());
    cli.expect(0, &["discard", "os"]);

    // with the state directory lost, a staging into the unallocated
    // space finds this one's header through its container on btrfs and
    // keeps clear of it
    let lost = Cli::new(&t.path().join("lost"));
    let plan = lost.json(&[
        "--json",
        "plan",
        img.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--unallocated",
    ]);
    assert_eq!(plan["unknown_stagings"][0]["name"], "sys", "{plan}");

    // a balance moves every chunk: the map re-derived before each use
    // differs, and everything that would read or boot it refuses
    sh(
        "btrfs",
        &[
            "balance",
            "start",
            "--full-balance",
            disk.mnt.to_str().unwrap(),
        ],
    );
    let e = cli.json_failure(18, &["verify", "sys", "--json"]);
    assert_eq!(e["kind"], "map_changed", "{e}");
    let e = cli.expect_err(
        18,
        &[
            "activate",
            "sys",
            "--loader",
            "grub",
            "--grub-dir",
            t.path().to_str().unwrap(),
        ],
    );
    assert!(e.contains("moved") || e.contains("map"), "{e}");
    cli.expect(0, &["discard", "sys"]);
    assert!(containers_in(&dir).is_empty());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn btrfs_dup_data_two_devices_and_a_snapshot_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("small.img");
    std::fs::write(&img, random_bytes(8 << 20, 5)).unwrap();
    let cli = Cli::new(t.path());

    // DUP data: two copies, one place written
    let disk = LoopDisk::new(&t.path().join("dup"), Fs::Btrfs, 300);
    sh(
        "btrfs",
        &[
            "balance",
            "start",
            "-dconvert=dup",
            disk.mnt.to_str().unwrap(),
        ],
    );
    let e = cli.json_failure(
        11,
        &[
            "stage",
            img.to_str().unwrap(),
            "--name",
            "d",
            "--dir",
            disk.mnt.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(e["message"].as_str().unwrap().contains("DUP chunk"), "{e}");
    assert!(containers_in(&disk.mnt).is_empty(), "nothing left");

    // a snapshot of the staging's subvolume shares its blocks: refused
    // at the next use
    let snap = LoopDisk::new(&t.path().join("snap"), Fs::Btrfs, 300);
    let sv = snap.mnt.join("sv");
    sh("btrfs", &["subvolume", "create", sv.to_str().unwrap()]);
    cli.stage(&img, "s", &sv);
    cli.expect(0, &["verify", "s"]);
    sh(
        "btrfs",
        &[
            "subvolume",
            "snapshot",
            sv.to_str().unwrap(),
            snap.mnt.join("sv-snap").to_str().unwrap(),
        ],
    );
    let e = cli.json_failure(11, &["verify", "s", "--json"]);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("shared with a btrfs snapshot"),
        "{e}"
    );
    // gone (and dropped by btrfs's cleaner): the blocks are the staging's
    // alone again, it verifies and is discarded
    sh(
        "btrfs",
        &[
            "subvolume",
            "delete",
            "-C",
            snap.mnt.join("sv-snap").to_str().unwrap(),
        ],
    );
    sh("btrfs", &["subvolume", "sync", snap.mnt.to_str().unwrap()]);
    cli.expect(0, &["verify", "s"]);
    cli.expect(0, &["discard", "s"]);
    assert!(containers_in(&sv).is_empty());

    // two devices
    let a = LoopDisk::new(&t.path().join("a"), Fs::Btrfs, 300);
    let second = t.path().join("b.img");
    std::fs::File::create(&second)
        .unwrap()
        .set_len(300 * MIB)
        .unwrap();
    let b = LoopDevice {
        dev: sh("losetup", &["-f", "--show", second.to_str().unwrap()])
            .trim()
            .to_string(),
    };
    sh(
        "btrfs",
        &["device", "add", "-f", &b.dev, a.mnt.to_str().unwrap()],
    );
    let e = cli.json_failure(
        11,
        &[
            "plan",
            img.to_str().unwrap(),
            "--dir",
            a.mnt.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(e["ok"], false, "{e}");
    assert!(
        e["refusals"][0]["message"]
            .as_str()
            .unwrap()
            .contains("spans 2 devices"),
        "{e}"
    );
    sh(
        "btrfs",
        &["device", "remove", &b.dev, a.mnt.to_str().unwrap()],
    );
}
