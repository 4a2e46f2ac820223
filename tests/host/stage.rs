//! Staging onto a live filesystem of a loop-backed GPT disk, and the proof
//! that nothing outside the container's map was written: the image is on
//! the disk at the mapped offsets, every host file is unchanged, the host
//! filesystem is fsck-clean, and every free block that held its pattern
//! before still holds it.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

fn stage_and_prove_nothing_stray(fs: Fs) {
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(t.path(), fs, 512);
    populate(&disk.mnt);
    std::fs::create_dir(disk.mnt.join("staging")).unwrap();
    let files_before = tree_hashes(&disk.mnt);
    disk.unmount();
    let pattern_before = disk.pattern_sectors();
    let disk_len = std::fs::metadata(&disk.file).unwrap().len();
    let part_end = disk.part_start + disk.part_size;
    let outside_before = (
        disk.read_at(0, disk.part_start as usize),
        disk.read_at(part_end, (disk_len - part_end) as usize),
    );
    disk.mount();

    // An odd size, so the last chunk is partial and padded.
    let image = random_bytes((150 * MIB + 12345) as usize, 7);
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
    assert_eq!(plan["fs_type"], disk.fs_name());
    assert_eq!(plan["disk"], disk.dev.as_str());
    assert_eq!(plan["partition_start"], disk.part_start);

    cli.stage(&img, "sys", &dir);
    let map = cli.json(&["map", "sys", "--json"]);
    assert_eq!(map["name"], "sys");
    assert_eq!(map["disk"], disk.dev.as_str());
    assert_eq!(map["logical_sector_size"], 512);
    assert_image_on_disk(&disk, &map, &image);
    let verify = cli.json(&["verify", "sys", "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    // no SHA-256 on record: the chunk hashes alone, unless asked
    assert!(verify["sha256"].is_null(), "{verify}");
    let verify = cli.json(&["verify", "sys", "--sha256", "--json"]);
    assert_eq!(verify["sha256"], sha256_hex(&image));
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"][0]["state"], "complete");
    assert_eq!(list["images"][0]["map_valid"], true);

    // Through the filesystem the container reads as zeros: the data went
    // only to the raw disk (no double write).
    let through_fs = std::fs::read(dir.join("sys.liverestore")).unwrap();
    assert!(
        through_fs.iter().all(|&b| b == 0),
        "container data visible through the filesystem"
    );
    assert_eq!(tree_hashes(&disk.mnt), files_before, "a host file changed");

    let container = container_ranges(&cli, "sys");
    disk.unmount();
    assert!(disk.fsck_clean(), "host filesystem not clean after staging");
    let free = disk.free_ranges();
    let pattern_after = disk.pattern_sectors();
    assert_eq!(
        disk.read_at(0, disk.part_start as usize),
        outside_before.0,
        "bytes before the partition changed"
    );
    assert_eq!(
        disk.read_at(part_end, (disk_len - part_end) as usize),
        outside_before.1,
        "bytes after the partition changed"
    );

    let in_container = |s: u64| {
        container
            .iter()
            .any(|&(a, b)| s * SECTOR >= a && s * SECTOR < b)
    };
    let mut free_checked = 0u64;
    for &(a, b) in &free {
        for s in a / SECTOR..b / SECTOR {
            if pattern_before[s as usize] {
                assert!(
                    pattern_after[s as usize],
                    "free sector {s} (disk byte {}) was written",
                    s * SECTOR
                );
                free_checked += 1;
            }
        }
    }
    // Sectors written outside the container can only be the filesystem's
    // own metadata for the new file (inode, extent tree, directory entry).
    let stray: Vec<u64> = (0..pattern_before.len() as u64)
        .filter(|&s| pattern_before[s as usize] && !pattern_after[s as usize] && !in_container(s))
        .collect();
    eprintln!(
        "{fs:?}: {} MiB of free pattern sectors unchanged; {} sectors written outside the container (filesystem metadata)",
        free_checked * SECTOR / MIB,
        stray.len()
    );
    assert!(
        free_checked * SECTOR > 100 * MIB,
        "too few free sectors checked: {free_checked}"
    );
    assert!(
        stray.len() < 2048,
        "{} sectors outside the container changed",
        stray.len()
    );

    // Discard gives everything back and leaves no header behind.
    disk.mount();
    cli.expect(0, &["discard", "sys"]);
    assert!(!dir.join("sys.liverestore").exists());
    assert_eq!(
        cli.json(&["list", "--json"])["images"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let scan = cli.expect(0, &["scan", &disk.dev, "--json"]);
    let scan: serde_json::Value = serde_json::from_str(scan.lines().last().unwrap()).unwrap();
    assert_eq!(scan["headers"].as_array().unwrap().len(), 0, "{scan}");
    assert_eq!(tree_hashes(&disk.mnt), files_before);
    disk.unmount();
    assert!(disk.fsck_clean(), "host filesystem not clean after discard");
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn stage_on_ext4_writes_only_through_the_map() {
    stage_and_prove_nothing_stray(Fs::Ext4);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn stage_on_xfs_writes_only_through_the_map() {
    stage_and_prove_nothing_stray(Fs::Xfs);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn stage_from_stdin_with_json_progress_and_raw_scan() {
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let image = random_bytes((80 * MIB) as usize, 3);
    let expected = sha256_hex(&image);
    let mut child = cli.spawn_stdin_stage(
        image.len() as u64,
        "piped",
        &disk.mnt,
        &["--json", "--sha256", &expected],
        Stdio::piped(),
        Stdio::inherit(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&image).map(|()| image));
    let out = child.wait_with_output().unwrap();
    let image = writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["phase"] == "stage")
    );
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result");
    assert_eq!(result["stagings"][0]["sha256"], sha256_hex(&image));
    assert_eq!(result["stagings"][0]["image_size"], image.len() as u64);
    assert_image_on_disk(&disk, &cli.json(&["map", "piped", "--json"]), &image);

    // The state directory is not needed to find it again: a raw scan of
    // the disk finds the header, with the same identity.
    let info = cli.json(&["info", "piped", "--json"]);
    let scan = cli.expect(0, &["scan", &disk.dev, "--json"]);
    let scan: serde_json::Value = serde_json::from_str(scan.lines().last().unwrap()).unwrap();
    let headers = scan["headers"].as_array().unwrap();
    assert_eq!(headers.len(), 1, "{scan}");
    assert_eq!(headers[0]["valid"], true);
    assert_eq!(headers[0]["name"], "piped");
    assert_eq!(headers[0]["state"], "complete");
    assert_eq!(headers[0]["id"], info["record"]["id"]);
    // The scan also works on the disk image file itself.
    let scan_file = cli.expect(0, &["scan", disk.file.to_str().unwrap()]);
    assert!(scan_file.contains("'piped' complete"), "{scan_file}");
    cli.expect(0, &["discard", "piped"]);
    assert!(Path::new(&disk.mnt).join("lost+found").exists());
}

/// Disks are known by identity, not by name: a staging made on one loop
/// device, the disk then attached again under another name and its old
/// name given to another (blank) disk. Every output names the disk it is
/// on now, everything that reads or writes finds it there, and nothing is
/// written to the disk that now has the old name.
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_staging_follows_its_disk_to_a_new_name() {
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 120);
    let cli = Cli::new(t.path());
    let image = random_bytes(8 * MIB as usize, 21);
    let img = t.path().join("moved.img");
    std::fs::write(&img, &image).unwrap();
    cli.stage(&img, "moved", &disk.mnt);
    let old_name = disk.dev.clone();
    assert_eq!(
        cli.json(&["--json", "map", "moved"])["disk"],
        old_name.as_str()
    );

    let placeholder = disk.reattach_renamed(t.path());
    assert_eq!(
        placeholder.dev, old_name,
        "the old name is another disk's now"
    );
    let new_name = disk.dev.clone();
    let map = cli.json(&["--json", "map", "moved"]);
    assert_eq!(map["disk"], new_name.as_str(), "{map}");
    assert_image_on_disk(&disk, &map, &image);
    let list = cli.json(&["--json", "list"]);
    assert_eq!(list["images"][0]["disk"], new_name.as_str(), "{list}");
    assert_eq!(list["images"][0]["map_valid"], true, "{list}");
    let info = cli.json(&["--json", "info", "moved"]);
    assert_eq!(info["disk"], new_name.as_str(), "{info}");
    assert_eq!(info["record"]["disk"]["path"], old_name.as_str(), "{info}");
    let text = cli.expect(0, &["info", "moved"]);
    assert!(
        text.contains(&format!("{new_name} (staged as {old_name})")),
        "{text}"
    );
    cli.expect(0, &["verify", "moved"]);
    // A second staging on the renamed disk, and the first one's bytes
    // still whole; then both go.
    let second = t.path().join("second.img");
    std::fs::write(&second, random_bytes(4 * MIB as usize, 22)).unwrap();
    cli.stage(&second, "second", &disk.mnt);
    cli.expect(0, &["verify", "moved"]);
    assert_eq!(
        cli.json(&["--json", "map", "second"])["disk"],
        new_name.as_str()
    );
    cli.expect(0, &["discard", "moved"]);
    cli.expect(0, &["discard", "second"]);
    let blank = std::fs::read(t.path().join("blank.img")).unwrap();
    assert!(
        blank.iter().all(|&b| b == 0),
        "nothing was written to the disk that has the old name"
    );
    drop(placeholder);
    disk.unmount();
    assert!(disk.fsck_clean());
}
