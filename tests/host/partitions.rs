//! Whole-disk images: a GPT image with an ext4 root and a data partition is
//! staged as one container per partition (`NAME-p1`, `NAME-p2`), from a
//! file and from a zstd stream on stdin; the table (types, GUIDs, labels,
//! attributes) is recorded; `--partition N` picks one; `--whole-disk` keeps
//! the image as it is; `--sha256` covers the whole image; `discard NAME`
//! removes the whole set. An MBR image is split the same way.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

const ROOT_GUID: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
const ROOT_UUID: &str = "11111111-2222-4333-8444-555555555555";
const DATA_TYPE: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"; // 8302 /home
const DISK_GUID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

/// A 64 MiB GPT disk image: p1 "root" (ext4, 20 MiB, legacy-BIOS-bootable
/// attribute) at 1 MiB, p2 "data" (random bytes, 30 MiB) after it.
/// Returns the image and the two partitions' (offset, size).
fn gpt_image(dir: &Path) -> (Vec<u8>, [(u64, u64); 2]) {
    let img = dir.join("whole.img");
    std::fs::write(&img, vec![0u8; 64 * MIB as usize]).unwrap();
    let img_s = img.to_str().unwrap();
    sh(
        "sgdisk",
        &[
            "-U",
            DISK_GUID,
            "-n",
            "1:2048:+20M",
            "-t",
            "1:8300",
            "-c",
            "1:root",
            "-u",
            &format!("1:{ROOT_UUID}"),
            "-A",
            "1:set:2",
            "-n",
            "2:0:+30M",
            "-t",
            "2:8302",
            "-c",
            "2:data",
            img_s,
        ],
    );
    let parts = [(MIB, 20 * MIB), (21 * MIB, 30 * MIB)];
    // The root filesystem, built from a directory without mounting.
    let fs_img = ext4_image(dir, "root.ext4", parts[0].1 / MIB, &[]);
    let mut data = std::fs::read(&img).unwrap();
    let root = std::fs::read(&fs_img).unwrap();
    data[parts[0].0 as usize..(parts[0].0 + parts[0].1) as usize].copy_from_slice(&root);
    let random = random_bytes(parts[1].1 as usize, 42);
    data[parts[1].0 as usize..(parts[1].0 + parts[1].1) as usize].copy_from_slice(&random);
    std::fs::write(&img, &data).unwrap();
    (data, parts)
}

fn slice(data: &[u8], (off, len): (u64, u64)) -> &[u8] {
    &data[off as usize..(off + len) as usize]
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_gpt_disk_image_becomes_one_staging_per_partition() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 320);
    let cli = Cli::new(t.path());
    let (data, parts) = gpt_image(t.path());
    let img = t.path().join("whole.img");
    let (img_s, dir) = (img.to_str().unwrap(), disk.mnt.to_str().unwrap());
    let whole_sha = sha256_hex(&data);

    // plan names both partitions and the space they need
    let plan = cli.json(&["--json", "plan", img_s, "--name", "sys", "--dir", dir]);
    assert_eq!(plan["ok"], true, "{plan}");
    let planned = plan["stagings"].as_array().expect("planned stagings");
    assert_eq!(planned.len(), 2, "{plan}");
    assert_eq!(planned[0]["name"], "sys-p1");
    assert_eq!(planned[1]["image_offset"], parts[1].0);

    // stage from the file, with the whole image's hash
    let out = cli.json(&[
        "--json", "stage", img_s, "--name", "sys", "--dir", dir, "--sha256", &whole_sha,
    ]);
    let st = out["stagings"].as_array().unwrap();
    assert_eq!(st.len(), 2, "{out}");
    for (i, s) in st.iter().enumerate() {
        let name = format!("sys-p{}", i + 1);
        assert_eq!(s["name"], name.as_str(), "{out}");
        assert_eq!(s["state"], "complete", "{out}");
        assert_eq!(s["partition"], i as u64 + 1);
        assert_eq!(s["image_offset"], parts[i].0);
        assert_eq!(s["image_size"], parts[i].1);
        assert_eq!(s["image_sha256"], whole_sha.as_str(), "{out}");
        assert_image_on_disk(
            &disk,
            &cli.json(&["map", &name, "--json"]),
            slice(&data, parts[i]),
        );
        // verify reads the partition back from the disk
        let v = cli.json(&["verify", &name, "--sha256", "--json"]);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["sha256"], sha256_hex(slice(&data, parts[i])));
    }

    // the table is recorded for activation
    let info = cli.json(&["info", "sys-p1", "--json"]);
    let table = &info["record"]["image"]["partition"]["table"];
    assert_eq!(table["kind"], "gpt", "{info}");
    assert_eq!(table["sector_size"], 512);
    assert_eq!(table["disk_guid"], DISK_GUID);
    let p = &table["partitions"];
    assert_eq!(p[0]["type_guid"], ROOT_GUID, "{table}");
    assert_eq!(p[0]["guid"], ROOT_UUID);
    assert_eq!(p[0]["label"], "root");
    assert_eq!(p[0]["attributes"], 4, "legacy BIOS bootable is bit 2");
    assert_eq!(p[0]["first_lba"], 2048);
    assert_eq!(p[1]["type_guid"], DATA_TYPE);
    assert_eq!(p[1]["label"], "data");
    assert_eq!(p[1]["attributes"], 0);

    // list shows the set; the root partition mounts and holds the files
    let list = cli.json(&["list", "--json"]);
    let imgs = list["images"].as_array().unwrap();
    assert!(
        imgs.iter()
            .all(|i| i["set"] == "sys" && i["partition"].is_u64()),
        "{list}"
    );

    // a name already taken by a member is refused; the set name too
    cli.expect_err(16, &["stage", img_s, "--name", "sys", "--dir", dir]);

    // discard by the set name removes both
    let d = cli.json(&["--json", "discard", "sys"]);
    assert_eq!(d["discarded"].as_array().unwrap().len(), 2, "{d}");
    assert!(
        cli.json(&["list", "--json"])["images"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(containers_in(&disk.mnt).is_empty());

    // --partition 2 from a zstd stream on stdin, with no --size: zstd
    // records the size
    let zst = t.path().join("whole.img.zst");
    sh("zstd", &["-q", "-3", img_s, "-o", zst.to_str().unwrap()]);
    let mut child = cli
        .cmd()
        .args(["--json", "stage", "-", "--name", "home", "--partition", "2"])
        .args(["--dir", dir])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&std::fs::read(&zst).unwrap()).unwrap();
    }
    let out = ChildGuard::from(child).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let res: serde_json::Value = serde_json::from_str(&last).unwrap();
    let st = res["stagings"].as_array().unwrap();
    assert_eq!(st.len(), 1, "{res}");
    assert_eq!(st[0]["name"], "home");
    assert_eq!(st[0]["partition"], 2);
    assert_image_on_disk(
        &disk,
        &cli.json(&["map", "home", "--json"]),
        slice(&data, parts[1]),
    );
    let info = cli.json(&["info", "home", "--json"]);
    assert_eq!(
        info["record"]["image"]["partition"]["table"]["partitions"][1]["label"],
        "data"
    );

    // a partition that is not there names the ones that are
    let err = cli.expect_err(
        14,
        &[
            "stage",
            img_s,
            "--name",
            "x",
            "--partition",
            "7",
            "--dir",
            dir,
        ],
    );
    assert!(err.contains("1, 2") || err.contains("1 2"), "{err}");

    // --whole-disk stages the image as it is
    let out = cli.json(&[
        "--json",
        "stage",
        img_s,
        "--name",
        "disk",
        "--whole-disk",
        "--dir",
        dir,
        "--sha256",
        &whole_sha,
    ]);
    assert_eq!(out["stagings"].as_array().unwrap().len(), 1);
    assert_eq!(out["stagings"][0]["sha256"], whole_sha.as_str());
    assert!(out["stagings"][0]["partition"].is_null(), "{out}");
    assert_image_on_disk(&disk, &cli.json(&["map", "disk", "--json"]), &data);

    cli.expect(0, &["discard", "home"]);
    cli.expect(0, &["discard", "disk"]);
    assert!(containers_in(&disk.mnt).is_empty());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_wrong_sha256_fails_every_member_of_the_set() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    gpt_image(t.path());
    let img = t.path().join("whole.img");
    let (img_s, dir) = (img.to_str().unwrap(), disk.mnt.to_str().unwrap());
    let wrong = "0".repeat(64);
    let err = cli.expect_err(
        20,
        &[
            "stage", img_s, "--name", "bad", "--dir", dir, "--sha256", &wrong,
        ],
    );
    assert!(err.contains("marked failed"), "{err}");
    let list = cli.json(&["list", "--json"]);
    let imgs = list["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2, "{list}");
    assert!(imgs.iter().all(|i| i["state"] == "failed"), "{list}");
    for n in ["bad-p1", "bad-p2"] {
        let out = cli.run(&["verify", n]);
        assert!(!out.status.success(), "verify must refuse a failed member");
    }
    cli.expect(0, &["discard", "bad"]);
    assert!(containers_in(&disk.mnt).is_empty());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn an_mbr_disk_image_is_split_too() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let img = t.path().join("mbr.img");
    let mut data = random_bytes(48 * MIB as usize, 7);
    data[..MIB as usize].fill(0);
    std::fs::write(&img, &data).unwrap();
    let img_s = img.to_str().unwrap();
    let mut sf = std::process::Command::new("sfdisk")
        .args(["-q", "--label", "dos", img_s])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"2048,20480,83,*\n22528,,83\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    let data = std::fs::read(&img).unwrap();
    let dir = disk.mnt.to_str().unwrap();
    let out = cli.json(&["--json", "stage", img_s, "--name", "m", "--dir", dir]);
    let st = out["stagings"].as_array().unwrap();
    assert_eq!(st.len(), 2, "{out}");
    let parts = [(MIB, 10 * MIB), (11 * MIB, 37 * MIB)];
    for (i, part) in parts.iter().enumerate() {
        let name = format!("m-p{}", i + 1);
        assert_image_on_disk(
            &disk,
            &cli.json(&["map", &name, "--json"]),
            slice(&data, *part),
        );
    }
    let info = cli.json(&["info", "m-p1", "--json"]);
    let table = &info["record"]["image"]["partition"]["table"];
    assert_eq!(table["kind"], "mbr", "{info}");
    assert_eq!(table["partitions"][0]["bootable"], true);
    assert_eq!(table["partitions"][0]["mbr_type"], 0x83);
    assert_eq!(table["partitions"][1]["bootable"], false);
    cli.expect(0, &["discard", "m"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_killed_set_resumes_from_where_each_partition_stopped() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(t.path(), Fs::Ext4, 400);
    let cli = Cli::new(t.path());
    // Partitions of 40 and 100 MiB of random data.
    let img = t.path().join("big.img");
    let mut image = random_bytes(142 * MIB as usize, 5);
    image[..MIB as usize].fill(0);
    std::fs::write(&img, &image).unwrap();
    let img_s = img.to_str().unwrap();
    sh(
        "sgdisk",
        &[
            "-n",
            "1:2048:+40M",
            "-n",
            "2:0:+100M",
            "-t",
            "2:8302",
            img_s,
        ],
    );
    let image = std::fs::read(&img).unwrap();
    let parts = [(MIB, 40 * MIB), (41 * MIB, 100 * MIB)];

    // Fed 120 MiB, then the source stalls: the writer checkpoints what it
    // has (p1 complete, 79 MiB of p2) and is killed.
    stage_and_kill(
        &cli,
        &disk,
        "set",
        "set-p2",
        &image,
        (120 * MIB) as usize,
        64 * MIB,
    );
    let list = cli.json(&["list", "--json"]);
    let states: Vec<_> = list["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["state"].clone()))
        .collect();
    assert_eq!(states.len(), 2, "{list}");
    assert_eq!(states[1].1, "staging", "{list}");
    let p2_written = recorded_written(&cli, "set-p2").unwrap();

    // Resumed by the set name: only the unfinished part is written again.
    let out = cli.json(&["--json", "stage", img_s, "--resume", "set"]);
    let st = out["stagings"].as_array().unwrap();
    assert_eq!(st.len(), 2, "{out}");
    assert!(st.iter().all(|s| s["state"] == "complete"), "{out}");
    for (i, part) in parts.iter().enumerate() {
        let name = format!("set-p{}", i + 1);
        assert_image_on_disk(
            &disk,
            &cli.json(&["map", &name, "--json"]),
            slice(&image, *part),
        );
        assert_eq!(cli.json(&["verify", &name, "--json"])["ok"], true);
    }
    assert!(p2_written >= 64 * MIB && p2_written < parts[1].1);
    cli.expect(0, &["discard", "set"]);
    disk.unmount();
    assert!(disk.fsck_clean());
}
