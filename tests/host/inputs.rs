//! Staging real image formats onto a loop disk: a qcow2 and an Android
//! sparse image land on the disk as the raw bytes, with the zero runs
//! zeroed rather than written; an image served over HTTP by a server that
//! drops the connection half-way is fetched with range requests and
//! staged; 404 and a wrong length are clean errors; a --sha256 mismatch
//! leaves a "failed" staging that verify refuses.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::common::http::{Faults, serve_one};
use crate::common::*;

/// An image with data, zeros and a pattern, 40 MiB.
fn image() -> Vec<u8> {
    let mut v = random_bytes(40 * MIB as usize, 11);
    v[8 * MIB as usize..30 * MIB as usize].fill(0);
    v
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn qcow2_and_sparse_images_land_as_raw_bytes() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let data = image();
    let raw = t.path().join("src.img");
    std::fs::write(&raw, &data).unwrap();
    let qcow = t.path().join("src.qcow2");
    let (raw_s, qcow_s) = (raw.to_str().unwrap(), qcow.to_str().unwrap());
    sh(
        "qemu-img",
        &["convert", "-q", "-c", "-O", "qcow2", raw_s, qcow_s],
    );
    let simg = t.path().join("src.simg");
    sh("img2simg", &[raw_s, simg.to_str().unwrap()]);
    for (name, path, kind) in [("q", &qcow, "qcow2"), ("s", &simg, "android-sparse")] {
        let out = cli.json(&[
            "--json",
            "stage",
            path.to_str().unwrap(),
            "--name",
            name,
            "--dir",
            disk.mnt.to_str().unwrap(),
        ]);
        assert_eq!(out["stagings"][0]["kind"], kind, "{out}");
        assert_eq!(out["stagings"][0]["image_size"], data.len() as u64);
        // 22 MiB of zeros are zeroed, not written
        assert!(
            out["stagings"][0]["disk_zeroed"].as_u64().unwrap() >= 20 * MIB,
            "{out}"
        );
        assert!(
            out["stagings"][0]["disk_written"].as_u64().unwrap() <= 20 * MIB,
            "{out}"
        );
        assert_image_on_disk(&disk, &cli.json(&["map", name, "--json"]), &data);
        let v = cli.json(&["verify", name, "--json"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    cli.expect(0, &["discard", "q"]);
    cli.expect(0, &["discard", "s"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn http_with_a_dropped_connection_404_and_wrong_length() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();
    let data = Arc::new(image());
    let expected = sha256_hex(&data);

    let server = serve_one(
        Arc::clone(&data),
        Faults {
            drop_after: 13 * MIB as usize + 12345,
            ..Faults::default()
        },
    );
    let url = format!("http://127.0.0.1:{}/disk.img", server.port);
    let out = cli.json(&[
        "--json", "stage", &url, "--name", "web", "--dir", dir, "--sha256", &expected,
    ]);
    assert_eq!(out["stagings"][0]["sha256"], expected, "{out}");
    assert!(
        server.gets.load(Ordering::SeqCst) >= 2,
        "the drop forced a range request"
    );
    assert_image_on_disk(&disk, &cli.json(&["map", "web", "--json"]), &data);
    cli.expect(0, &["discard", "web"]);

    let missing = format!("http://127.0.0.1:{}/nope.img", server.port);
    let err = cli.expect_err(14, &["stage", &missing, "--name", "x", "--dir", dir]);
    assert!(err.contains("404"), "{err}");

    let liar = serve_one(
        Arc::clone(&data),
        Faults {
            lie: 5000,
            ..Faults::default()
        },
    );
    let url = format!("http://127.0.0.1:{}/disk.img", liar.port);
    let err = cli.expect_err(14, &["stage", &url, "--name", "x", "--dir", dir]);
    assert!(err.contains("bytes where"), "{err}");
    assert!(!Path::new(dir).join("x.liverestore").exists());

    // a wrong --sha256: the staging is kept as "failed", verify refuses it
    let wrong = "0".repeat(64);
    let err = cli.expect_err(
        20,
        &[
            "stage",
            &url.replace(&liar.port.to_string(), &server.port.to_string()),
            "--name",
            "bad",
            "--dir",
            dir,
            "--sha256",
            &wrong,
        ],
    );
    assert!(err.contains("marked failed"), "{err}");
    let list = cli.expect(0, &["list"]);
    assert!(list.contains("failed"), "{list}");
    let err = cli.expect_err(20, &["verify", "bad"]);
    assert!(err.contains("failed"), "{err}");
    cli.expect(0, &["discard", "bad"]);
}
