//! On this host (no device-mapper): `attach` falls back to a FUSE file
//! served from the map with a read-only loop device on it; its bytes equal
//! the image, writes are refused, a writable attach is refused with exit
//! 24, and `detach` leaves no loop device, mount or server process behind;
//! test-restore runs read-only on it.
//! (With device-mapper, attach is tested inside a guest: tests/guest/attach.rs.)

use crate::common::*;

/// A scratch disk and a CLI, on a kernel where attach uses the fallback;
/// None (the test has nothing to check) where device-mapper exists.
fn fallback_fixture() -> Option<(tempfile::TempDir, LoopDisk, Cli)> {
    require_root();
    if liverestore::sys::dm::available() {
        eprintln!("this kernel has device-mapper: the fallback is not used here");
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 200);
    let cli = Cli::new(t.path());
    Some((t, disk, cli))
}

fn loop_backed_by(file: &str) -> bool {
    sh("losetup", &["-a"]).contains(file)
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn read_only_attach_without_device_mapper_uses_fuse() {
    let Some((t, disk, cli)) = fallback_fixture() else {
        return;
    };
    let mut image = random_bytes(24 * MIB as usize, 3);
    image[4 * MIB as usize..9 * MIB as usize].fill(0);
    let img = t.path().join("image.raw");
    std::fs::write(&img, &image).unwrap();
    cli.stage(&img, "ro", &disk.mnt);

    let _guard = Detach(&cli, "ro");
    let out = cli.json(&["--json", "attach", "ro"]);
    let a = &out["attachment"];
    assert_eq!(a["backend"], "fuse", "{out}");
    let dev = a["device"].as_str().unwrap().to_string();
    assert!(dev.starts_with("/dev/loop"), "{out}");
    let mnt = a["fuse_mount"].as_str().unwrap().to_string();
    let pid = a["fuse_pid"].as_u64().unwrap();

    // The device shows exactly the image.
    assert_eq!(std::fs::read(&dev).unwrap(), image);
    // Read-only all the way down.
    let refused = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        })
        .is_err();
    assert!(refused, "the attached device must refuse writes");

    // Attached twice, or writable without device-mapper: refused.
    cli.expect_err(22, &["attach", "ro"]);
    // While someone holds the device, detach refuses (busy) rather than
    // leave the FUSE server running behind a lazy unmount; once they let
    // go, it takes everything down.
    let holder = std::fs::File::open(&dev).unwrap();
    let err = cli.expect_err(21, &["detach", "ro"]);
    assert!(err.contains("still in use"), "{err}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(
        !stat.contains(") Z"),
        "the server must still serve the holder"
    );
    drop(holder);
    cli.expect(0, &["detach", "ro"]);
    let err = cli.expect_err(24, &["attach", "ro", "--rw"]);
    assert!(err.contains("device-mapper"), "{err}");

    // Nothing left behind.
    assert!(!loop_backed_by(&format!("{mnt}/image")));
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&mnt)
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "the FUSE server is still running: {stat}"
    );
    cli.expect_err(22, &["detach", "ro"]);
    assert_eq!(cli.json(&["verify", "ro", "--json"])["ok"], true);
    cli.expect(0, &["discard", "ro"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn test_restore_without_device_mapper_runs_read_only() {
    let Some((t, disk, cli)) = fallback_fixture() else {
        return;
    };
    let img = ext4_image(t.path(), "fs.ext4", 32, &[("hostname", "restored\n")]);
    let dir = disk.mnt.to_str().unwrap();
    cli.expect(
        0,
        &["stage", img.to_str().unwrap(), "--name", "fs", "--dir", dir],
    );
    let _guard = Detach(&cli, "fs");
    let out = cli.json(&[
        "--json",
        "test-restore",
        "fs",
        "--run",
        "grep -q restored \"$LIVERESTORE_ROOT/hostname\"",
    ]);
    let r = &out["report"];
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(r["read_only"], true);
    assert_eq!(r["filesystem"], "ext4");
    assert_eq!(r["fsck_clean"], true);
    assert_eq!(r["command_status"], 0);
    // A command that fails, fails the test (exit 20); nothing stays attached.
    cli.expect_err(
        20,
        &[
            "test-restore",
            "fs",
            "--run",
            "touch \"$LIVERESTORE_ROOT/x\"",
        ],
    );
    cli.expect_err(22, &["detach", "fs"]);
    assert_eq!(cli.json(&["verify", "fs", "--json"])["ok"], true);
    cli.expect(0, &["discard", "fs"]);
}

/// Two state directories with a staging of the same name: their
/// attachments use different machine-wide names (mount points, device
/// names), so each attaches, and detaching one leaves the other serving.
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn same_name_in_two_state_directories() {
    let Some((t, disk, cli)) = fallback_fixture() else {
        return;
    };
    let other = Cli {
        state_dir: t.path().join("other-state"),
    };
    let a = random_bytes(8 * MIB as usize, 21);
    let b = random_bytes(8 * MIB as usize, 22);
    for (c, bytes, file) in [(&cli, &a, "a.raw"), (&other, &b, "b.raw")] {
        let img = t.path().join(file);
        std::fs::write(&img, bytes).unwrap();
        let dir = disk.mnt.join(file);
        std::fs::create_dir_all(&dir).unwrap();
        c.expect(
            0,
            &[
                "stage",
                img.to_str().unwrap(),
                "--name",
                "same",
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
    }
    let _g1 = Detach(&cli, "same");
    let _g2 = Detach(&other, "same");
    let dev_a = cli.json(&["--json", "attach", "same"])["attachment"]["device"]
        .as_str()
        .unwrap()
        .to_string();
    let dev_b = other.json(&["--json", "attach", "same"])["attachment"]["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(dev_a, dev_b);
    assert_eq!(std::fs::read(&dev_a).unwrap(), a);
    assert_eq!(std::fs::read(&dev_b).unwrap(), b);
    cli.expect(0, &["detach", "same"]);
    assert_eq!(
        std::fs::read(&dev_b).unwrap(),
        b,
        "the other one still serves"
    );
    other.expect(0, &["detach", "same"]);
    cli.expect(0, &["discard", "same"]);
    other.expect(0, &["discard", "same"]);
}
