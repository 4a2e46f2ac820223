//! Every error a user can cause gets a one-line message, its own exit code,
//! and leaves nothing behind.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

fn staged_names(cli: &Cli) -> Vec<String> {
    cli.json(&["list", "--json"])["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// Assert `args` exits with `code`, prints a one-line error on stderr (a
/// `plan` prints its refusals as its report, on stdout), and names `word`.
fn refused(cli: &Cli, code: i32, args: &[&str], word: &str) {
    let out = cli.run(args);
    let err = String::from_utf8_lossy(if args[0] == "plan" {
        &out.stdout
    } else {
        &out.stderr
    });
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    if args[0] != "plan" {
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one-line error expected: {err}"
        );
    }
    assert!(
        err.to_lowercase().contains(&word.to_lowercase()),
        "{args:?}: '{word}' not in: {err}"
    );
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn unsupported_filesystems_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let cli = Cli::new(t.path());
    let img = t.path().join("small.img");
    std::fs::write(&img, random_bytes(MIB as usize, 1)).unwrap();
    let img = img.to_str().unwrap();

    // (btrfs hosts of one device and single data: tests/host/btrfs.rs)
    let tmp = Mount::new("tmpfs", &t.path().join("tmpfs"), "tmpfs", "size=64m");
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir(tmp.path.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        tmp.path.display()
    );
    let ovl = Mount::new("overlay", &t.path().join("ovl"), "overlay", &opts);

    refused(
        &cli,
        11,
        &["plan", img, "--dir", tmp.path.to_str().unwrap()],
        "tmpfs",
    );
    // (directory, what the message must name)
    for (dir, word) in [(&tmp.path, "tmpfs"), (&ovl.path, "overlay")] {
        refused(
            &cli,
            11,
            &["stage", img, "--name", "x", "--dir", dir.to_str().unwrap()],
            word,
        );
        assert!(containers_in(dir).is_empty());
    }
    assert!(staged_names(&cli).is_empty());

    // The plan lists the refusal in JSON too.
    let out = cli.run(&["plan", img, "--dir", tmp.path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(11));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["ok"], false);
    assert_eq!(plan["refusals"][0]["kind"], "unsupported_filesystem");
    drop(ovl);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn not_root_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 128);
    let img = disk.mnt.join("img");
    std::fs::write(&img, random_bytes(MIB as usize, 2)).unwrap();
    let cli = Cli::new(t.path());
    let as_nobody = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_liverestore"),
        ]);
        c.args(args)
            .env("LIVERESTORE_STATE_DIR", &cli.state_dir)
            .output()
            .unwrap()
    };
    // The temp dir is private to root; a directory nobody may read is fine
    // for the test: the root check comes first.
    let out = as_nobody(&[
        "stage",
        img.to_str().unwrap(),
        "--name",
        "x",
        "--dir",
        disk.mnt.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
    let out = as_nobody(&["discard", "x"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(containers_in(&disk.mnt).is_empty());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn bad_images_names_space_and_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();
    let small = t.path().join("small.img");
    std::fs::write(&small, random_bytes((8 * MIB) as usize, 3)).unwrap();
    let small = small.to_str().unwrap();

    let missing = t.path().join("nope.img");
    refused(
        &cli,
        14,
        &[
            "stage",
            missing.to_str().unwrap(),
            "--name",
            "a",
            "--dir",
            dir,
        ],
        "not found",
    );
    refused(
        &cli,
        14,
        &[
            "stage",
            t.path().to_str().unwrap(),
            "--name",
            "a",
            "--dir",
            dir,
        ],
        "not a regular file",
    );
    refused(
        &cli,
        14,
        &["stage", "-", "--name", "a", "--dir", dir],
        "--size",
    );
    refused(
        &cli,
        14,
        &[
            "stage", small, "--size", "4096", "--name", "a", "--dir", dir,
        ],
        "does not match",
    );

    // Larger than the free space: refused before anything is written.
    let huge = t.path().join("huge.img");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    refused(
        &cli,
        13,
        &["plan", huge.to_str().unwrap(), "--dir", dir],
        "not enough space",
    );
    refused(
        &cli,
        13,
        &["stage", huge.to_str().unwrap(), "--name", "a", "--dir", dir],
        "not enough space",
    );

    for bad in ["a/b", "..", "../etc", ".hidden", ""] {
        refused(
            &cli,
            15,
            &["stage", small, "--name", bad, "--dir", dir],
            "invalid name",
        );
    }
    assert!(containers_in(&disk.mnt).is_empty());
    assert!(staged_names(&cli).is_empty());

    // stdin shorter or longer than announced: nothing left behind.
    for (announced, given) in [(10 * MIB, 3 * MIB), (MIB, 2 * MIB)] {
        let mut child = cli.spawn_stdin_stage(
            announced,
            "piped",
            &disk.mnt,
            &[],
            Stdio::null(),
            Stdio::piped(),
        );
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&random_bytes(given as usize, 4));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(14), "{err}");
        assert!(
            err.contains("ended after") || err.contains("longer than"),
            "{err}"
        );
        assert!(containers_in(&disk.mnt).is_empty(), "container left behind");
        assert!(staged_names(&cli).is_empty(), "record left behind");
    }

    cli.expect(0, &["stage", small, "--name", "one", "--dir", dir]);
    refused(
        &cli,
        16,
        &["stage", small, "--name", "one", "--dir", dir],
        "already exists",
    );
    refused(&cli, 17, &["verify", "nobody"], "no staged image");
    refused(&cli, 17, &["discard", "nobody"], "no staged image");

    // The lock: a staging waiting on stdin holds it; a second one is busy.
    let mut holder = cli.spawn_stdin_stage(
        4 * MIB,
        "holder",
        &disk.mnt,
        &[],
        Stdio::null(),
        Stdio::null(),
    );
    // The image's first MiB is read to recognize its format; give it two
    // and keep stdin open, so the staging holds the lock waiting for more.
    let mut holder_stdin = holder.stdin.take().unwrap();
    holder_stdin
        .write_all(&random_bytes(2 * MIB as usize, 5))
        .unwrap();
    let start = Instant::now();
    while !cli.state_dir.join("images/holder.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "holder never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(
        &cli,
        21,
        &["stage", small, "--name", "two", "--dir", dir],
        "another liverestore",
    );
    refused(&cli, 21, &["discard", "one"], "another liverestore");
    // Read-only commands still work while it runs.
    cli.expect(0, &["list"]);
    drop(holder_stdin);
    assert_eq!(holder.wait().unwrap().code(), Some(14));
    assert_eq!(staged_names(&cli), vec!["one".to_string()]);
    assert_eq!(
        containers_in(&disk.mnt),
        vec!["one.liverestore".to_string()]
    );
    cli.expect(0, &["discard", "one"]);
}

/// Changes made by the image's own trial boot, which the early-boot step
/// notes on the disk before it maps the image, are accepted (re-hashed as
/// the new baseline) by `verify`; without a note that counts a boot not
/// accepted yet, the same change is corruption. The note is written here
/// as `/lr/init` writes it (the guest tests boot the real thing).
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn changes_of_its_own_boot_are_accepted_and_corruption_is_not() {
    use liverestore::store::boot_note::{self, NoteArea};
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let image = random_bytes((20 * MIB) as usize, 6);
    let img = t.path().join("a.img");
    std::fs::write(&img, &image).unwrap();
    let dir = disk.mnt.to_str().unwrap();
    cli.expect(
        0,
        &["stage", img.to_str().unwrap(), "--name", "a", "--dir", dir],
    );
    let record = |cli: &Cli| -> liverestore::store::record::StagingRecord {
        serde_json::from_value(cli.json(&["info", "a", "--json"])["record"].clone()).unwrap()
    };
    let rec = record(&cli);
    let note_at = rec.boot_note_disk_offset().unwrap().unwrap();
    // never booted: whatever the disk held there (the header area's
    // tail is never written while staging) is not a note
    assert!(!matches!(
        boot_note::decode(&disk.read_at(note_at, 4096)),
        NoteArea::Note(_)
    ));
    let map = cli.json(&["map", "a", "--json"]);
    let data_at = map["extents"][0]["disk_offset"].as_u64().unwrap();
    let flip = |at: u64| disk.poke(at, &[disk.read_at(at, 1)[0] ^ 0x5a]);
    let note = |id, boots: u32| {
        let mut n = boot_note::next(
            NoteArea::Blank,
            id,
            boots - 1,
            1_790_000_000,
            uuid::Uuid::from_u128(3),
        );
        n.first_unix -= 60;
        disk.poke(note_at, &boot_note::encode(&n));
    };
    // verify's result, checked against the schema: exit 20 (differences
    // not explained), or 0
    let refused = |cli: &Cli| cli.json_failure(20, &["verify", "a", "--json"]);
    let passed = |cli: &Cli| cli.json(&["verify", "a", "--json"]);

    // Changed, no note: corruption.
    flip(data_at + 100);
    let report = refused(&cli);
    assert!(report.get("changed_by_boot").is_none(), "{report}");
    // A note of another staging, or a damaged one, explains nothing.
    note(uuid::Uuid::from_u128(99), 1);
    refused(&cli);
    note(rec.id, 1);
    disk.poke(note_at + 30, &[0xee]);
    refused(&cli);

    // Its own first boot: accepted, re-hashed, said.
    note(rec.id, 1);
    let out = cli.run(&["verify", "a"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("changed by its own boot; re-hashed"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the new baseline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = record(&cli);
    assert_eq!(after.image.boots_accepted, 1);
    let entry = after.image.customized.last().unwrap();
    assert_eq!(entry.changes[0].what, "trial-boot");
    assert_eq!(entry.sha256_before, rec.image.sha256);
    assert_ne!(after.image.chunk_blake3[0], rec.image.chunk_blake3[0]);
    assert_eq!(after.image.chunk_blake3[1..], rec.image.chunk_blake3[1..]);
    let report = passed(&cli);
    assert_eq!(report["rehashed"], serde_json::Value::Null, "{report}");

    // A later change with no new boot: corruption again.
    flip(data_at + 5 * MIB);
    let report = refused(&cli);
    assert_eq!(report["bad_chunks"], serde_json::json!([1]));
    // A second boot explains it (JSON: what was accepted).
    note(rec.id, 2);
    let report = passed(&cli);
    assert_eq!(report["rehashed"], true);
    assert_eq!(report["changed_by_boot"]["boots"], 2);
    assert_eq!(report["changed_by_boot"]["accepted_before"], 1);
    assert_eq!(record(&cli).image.boots_accepted, 2);
    cli.expect(0, &["discard", "a"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn changed_maps_and_corruption_are_detected() {
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();
    let image = random_bytes((20 * MIB) as usize, 5);
    let img = t.path().join("a.img");
    std::fs::write(&img, &image).unwrap();
    cli.expect(
        0,
        &["stage", img.to_str().unwrap(), "--name", "a", "--dir", dir],
    );
    let map = cli.json(&["map", "a", "--json"]);
    let info = cli.json(&["info", "a", "--json"]);

    // Data changed on disk behind our back: verify fails with its code.
    let data_at = map["extents"][0]["disk_offset"].as_u64().unwrap() + 5000;
    let original = disk.read_at(data_at, 1);
    disk.poke(data_at, &[original[0] ^ 0xff]);
    let out = cli.run(&["verify", "a", "--json"]);
    assert_eq!(out.status.code(), Some(20));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(report["bad_chunks"], serde_json::json!([0]));
    disk.poke(data_at, &original);
    cli.expect(0, &["verify", "a"]);

    // A damaged on-disk header: verify says corrupt, scan says damaged.
    let header_at = info["record"]["map"]["extents"][0]["disk"]
        .as_u64()
        .unwrap()
        + 4096
        + 20;
    let original = disk.read_at(header_at, 1);
    disk.poke(header_at, &[original[0] ^ 0x01]);
    refused(&cli, 19, &["verify", "a"], "header");
    let scan = cli.json(&["scan", &disk.dev, "--json"]);
    assert_eq!(scan["headers"][0]["valid"], false, "{scan}");
    disk.poke(header_at, &original);
    cli.expect(0, &["verify", "a"]);

    // A damaged state file.
    let state_file = cli.state_dir.join("images/a.json");
    let good = std::fs::read(&state_file).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let bad = text.replacen("\"written\":", "\"written\":1", 1);
    assert_ne!(bad, text);
    std::fs::write(&state_file, &bad).unwrap();
    refused(&cli, 19, &["info", "a"], "checksum");
    refused(&cli, 19, &["verify", "a"], "checksum");
    refused(&cli, 19, &["discard", "a"], "--force");
    assert_eq!(
        cli.json(&["list", "--json"])["images"][0]["map_valid"],
        false
    );
    std::fs::write(&state_file, &good).unwrap();
    cli.expect(0, &["verify", "a"]);

    // Unpinned, then replaced by another file of the same size and name.
    let container = disk.mnt.join("a.liverestore");
    sh("chattr", &["-i", container.to_str().unwrap()]);
    refused(&cli, 18, &["verify", "a"], "no longer pinned");
    std::fs::remove_file(&container).unwrap();
    sh(
        "fallocate",
        &[
            "-l",
            &info["record"]["container"]["size"].to_string(),
            container.to_str().unwrap(),
        ],
    );
    refused(&cli, 18, &["verify", "a"], "replaced");
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"][0]["map_valid"], false);
    // Discard forgets it but does not delete a file that is not ours.
    cli.expect(0, &["discard", "a"]);
    assert!(
        container.exists(),
        "discard deleted a file it did not create"
    );
    assert!(staged_names(&cli).is_empty());
}
