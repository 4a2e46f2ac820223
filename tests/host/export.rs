//! `export`: a staging streamed out of the map into raw+zstd and qcow2
//! archives (and a pipe) that decompress (zstd, qemu-img) to exactly the
//! image, that `stage` takes back with the SHA-256 file written beside
//! them and `verify` accepts; a staging whose bytes on the disk were
//! changed behind its back is refused, with nothing left behind.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// 40 MiB and a bit: data, a long zero run, data at the end.
fn image() -> Vec<u8> {
    let mut image = vec![0u8; (40 * MIB + 4096 + 77) as usize];
    let head = random_bytes((6 * MIB) as usize, 11);
    image[..head.len()].copy_from_slice(&head);
    let tail = random_bytes((MIB + 4096 + 77) as usize, 12);
    let at = image.len() - tail.len();
    image[at..].copy_from_slice(&tail);
    image
}

fn output_of(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root: loop devices, raw disk reads"]
fn export_round_trips_through_stage_and_verify() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 384);
    let image = image();
    let img = t.path().join("root.img");
    std::fs::write(&img, &image).unwrap();
    let sha = sha256_hex(&image);
    let cli = Cli::new(t.path());
    cli.stage(&img, "sys", &disk.mnt);
    let arch = t.path().join("archive");
    std::fs::create_dir(&arch).unwrap();
    let zst = arch.join("sys.img.zst");

    // raw + zstd, in the idle I/O class
    let r = cli.json(&["export", "sys", "--output", zst.to_str().unwrap(), "--json"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["format"], "raw-zstd");
    assert_eq!(r["sha256"], sha.as_str());
    assert_eq!(r["io_priority"], "idle");
    assert_eq!(r["image_size"], image.len() as u64);
    assert_eq!(r["zero_bytes"], 33 * MIB, "{r}");
    let zst_len = std::fs::metadata(&zst).unwrap().len();
    assert_eq!(r["bytes_out"], zst_len);
    assert!(zst_len < 8 * MIB, "zeros compressed away: {zst_len}");
    let sums = std::fs::read_to_string(arch.join("sys.img.zst.sha256")).unwrap();
    assert_eq!(sums, format!("{sha}  sys.img\n"));
    assert_eq!(
        r["sha256_file"],
        arch.join("sys.img.zst.sha256").to_str().unwrap()
    );
    assert!(output_of(Command::new("zstd").args(["-dc"]).arg(&zst)) == image);
    // nothing else beside it (no temporary file left)
    assert_eq!(files_in(&arch), ["sys.img.zst", "sys.img.zst.sha256"]);

    // qcow2: zero clusters unallocated, clean by qemu-img's own check
    let q = arch.join("sys.qcow2");
    let r = cli.json(&[
        "export",
        "sys",
        "--output",
        q.to_str().unwrap(),
        "--format",
        "qcow2",
        "--io-priority",
        "normal",
        "--json",
    ]);
    assert_eq!(r["ok"], true, "{r}");
    assert_ne!(r["io_priority"], "idle", "{r}");
    // QEMU takes a qcow2 size in whole sectors: padded with zeros to one
    let mut padded = image.clone();
    padded.resize(image.len().next_multiple_of(512), 0);
    let padded_sha = sha256_hex(&padded);
    assert_eq!(r["padding"], (padded.len() - image.len()) as u64);
    assert_eq!(r["sha256"], padded_sha.as_str());
    assert!(std::fs::metadata(&q).unwrap().len() < 12 * MIB);
    output_of(Command::new("qemu-img").args(["check", "-q"]).arg(&q));
    let raw_back = t.path().join("back.raw");
    output_of(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(&q)
            .arg(&raw_back),
    );
    assert!(std::fs::read(&raw_back).unwrap() == padded);

    // to a pipe; the report goes to stderr
    let piped = Command::new(env!("CARGO_BIN_EXE_liverestore"))
        .env("LIVERESTORE_STATE_DIR", &cli.state_dir)
        .args(["export", "sys", "--output", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(String::from_utf8_lossy(&piped.stderr).contains(&sha));
    assert!(zstd::decode_all(&piped.stdout[..]).unwrap() == image);

    // stage takes both back (and checks the SHA-256 file), verify accepts
    for (file, name, sha) in [(&zst, "sys2", &sha), (&q, "sys3", &padded_sha)] {
        cli.stage(file, name, &disk.mnt);
        let info = cli.json(&["info", name, "--json"]);
        assert_eq!(
            info["record"]["image"]["expected_sha256"],
            sha.as_str(),
            "{info}"
        );
        let v = cli.json(&["verify", name, "--json"]);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["sha256"], sha.as_str());
    }

    // refused: an existing file, qcow2 to a pipe, --json with a pipe
    let e = cli.json_failure(
        22,
        &["export", "sys", "--output", zst.to_str().unwrap(), "--json"],
    );
    assert!(e["message"].as_str().unwrap().contains("exists"), "{e}");
    cli.expect_err(22, &["export", "sys", "--output", "-", "--format", "qcow2"]);
    cli.expect_err(22, &["export", "sys", "--output", "-", "--json"]);
    cli.expect_err(17, &["export", "nosuch", "--output", "x.zst"]);

    // A byte of the staged image changed on the raw disk: refused, and
    // nothing left behind.
    let map = cli.json(&["map", "sys", "--json"]);
    let e0 = &map["extents"][0];
    let at = e0["disk_offset"].as_u64().unwrap() + 4096;
    let mut b = disk.read_at(at, 1);
    b[0] ^= 0xff;
    disk.poke(at, &b);
    let out = arch.join("bad.img.zst");
    let e = cli.json_failure(
        20,
        &["export", "sys", "--output", out.to_str().unwrap(), "--json"],
    );
    assert_eq!(e["kind"], "verify_failed", "{e}");
    assert!(e["message"].as_str().unwrap().contains("chunk 0"), "{e}");
    assert_eq!(
        files_in(&arch),
        [
            "sys.img.zst",
            "sys.img.zst.sha256",
            "sys.qcow2",
            "sys.qcow2.sha256"
        ]
    );
}
