//! A staging killed with SIGKILL (as good as a power loss for the host
//! filesystem: the kernel keeps its own writes, ours stop mid-stream) leaves
//! the host filesystem intact and the staging resumable or discardable.

use crate::common::*;

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn killed_staging_is_discardable_or_resumable_and_the_host_survives() {
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(t.path(), Fs::Ext4, 640);
    populate(&disk.mnt);
    let files = tree_hashes(&disk.mnt);
    let cli = Cli::new(t.path());
    let image = random_bytes((200 * MIB) as usize, 11);
    let img = t.path().join("image.raw");
    std::fs::write(&img, &image).unwrap();

    // 1. Killed, then discarded.
    stage_and_kill(
        &cli,
        &disk,
        "first",
        "first",
        &image,
        (100 * MIB) as usize,
        64 * MIB,
    );
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"][0]["state"], "staging");
    disk.unmount();
    assert!(
        disk.fsck_clean(),
        "host filesystem damaged by a killed staging"
    );
    disk.mount();
    cli.expect(0, &["discard", "first"]);
    assert!(!disk.mnt.join("first.liverestore").exists());

    // 2. Killed, then resumed.
    stage_and_kill(
        &cli,
        &disk,
        "second",
        "second",
        &image,
        (150 * MIB) as usize,
        64 * MIB,
    );
    let written = recorded_written(&cli, "second").unwrap();
    assert!(
        written >= 64 * MIB && written < image.len() as u64,
        "written {written}"
    );
    disk.unmount();
    assert!(
        disk.fsck_clean(),
        "host filesystem damaged by a killed staging"
    );
    disk.mount();
    assert_eq!(tree_hashes(&disk.mnt), files);

    // verify refuses an incomplete staging; a stdin staging needs the image again.
    cli.expect(22, &["verify", "second"]);
    cli.expect(14, &["stage", "--resume", "second"]);
    // Another image is recognised as such, and the staging stays resumable.
    let other = t.path().join("other.raw");
    std::fs::write(&other, random_bytes(image.len(), 12)).unwrap();
    cli.expect(
        14,
        &["stage", other.to_str().unwrap(), "--resume", "second"],
    );
    assert_eq!(recorded_written(&cli, "second"), Some(written));

    let out = cli.expect(0, &["stage", img.to_str().unwrap(), "--resume", "second"]);
    assert!(out.contains("staged 'second'"), "{out}");
    cli.expect(22, &["stage", img.to_str().unwrap(), "--resume", "second"]);
    assert_eq!(cli.json(&["verify", "second", "--json"])["ok"], true);
    assert_image_on_disk(&disk, &cli.json(&["map", "second", "--json"]), &image);
    assert_eq!(tree_hashes(&disk.mnt), files);
    disk.unmount();
    assert!(disk.fsck_clean());
}

/// A crash between creating the container and recording its map leaves a
/// record in state `allocating`; `discard` removes it and its file, and
/// resume refuses it with advice.
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn crash_while_allocating_is_discardable() {
    use sha2::Digest;
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 128);
    let cli = Cli::new(t.path());
    let img = t.path().join("a.img");
    std::fs::write(&img, random_bytes((4 * MIB) as usize, 1)).unwrap();
    cli.stage(&img, "a", &disk.mnt);
    let mut rec = cli.json(&["info", "a", "--json"])["record"].clone();
    cli.expect(0, &["discard", "a"]);

    // Rebuild the state a crash mid-allocation leaves: record first, then a
    // preallocated, pinned file, no map.
    rec["state"] = "allocating".into();
    rec["map"] = serde_json::Value::Null;
    let body = serde_json::to_string(&rec).unwrap();
    let envelope = format!(
        r#"{{"format":"liverestore-state-v1","sha256":"{}","record":{body}}}"#,
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    std::fs::create_dir_all(cli.state_dir.join("images")).unwrap();
    std::fs::write(cli.state_dir.join("images/a.json"), envelope).unwrap();
    let container = disk.mnt.join("a.liverestore");
    sh("fallocate", &["-l", "8M", container.to_str().unwrap()]);
    sh("chattr", &["+i", container.to_str().unwrap()]);

    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"][0]["state"], "allocating");
    cli.expect(22, &["stage", "--resume", "a"]);
    cli.expect(0, &["discard", "a"]);
    assert!(!container.exists());
    assert_eq!(
        cli.json(&["list", "--json"])["images"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
