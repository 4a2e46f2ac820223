//! `--make-room`: an image larger than the free space is staged after
//! deleting just enough of the files the user listed, least critical
//! first; `plan` shows the same list and deletes nothing; files not
//! listed, hard-linked files and files on other filesystems stay; a list
//! that cannot free enough deletes nothing.

use crate::common::*;

fn write_file(path: &std::path::Path, mib: u64, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, random_bytes((mib * MIB) as usize, seed)).unwrap();
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn make_room_deletes_just_enough_listed_files() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 240);
    let m = disk.mnt.clone();
    write_file(&m.join("cache/a.deb"), 30, 1);
    write_file(&m.join("cache/b.deb"), 30, 2);
    write_file(&m.join("cache/c.deb"), 30, 3);
    write_file(&m.join("downloads/big.iso"), 40, 4);
    write_file(&m.join("home/important"), 20, 5);
    std::fs::hard_link(m.join("downloads/big.iso"), m.join("home/big-link")).unwrap();
    sh("sync", &[]);
    let cli = Cli::new(t.path());
    let dir = m.to_str().unwrap().to_string();

    // An image 45 MiB larger than the free space.
    let probe = t.path().join("probe.img");
    std::fs::write(&probe, vec![1u8; MIB as usize]).unwrap();
    let p = cli.json(&["plan", probe.to_str().unwrap(), "--dir", &dir, "--json"]);
    let free = p["free_bytes"].as_u64().unwrap();
    let size = (free / MIB + 45) * MIB;
    let image = random_bytes(size as usize, 9);
    let img = t.path().join("big.img");
    std::fs::write(&img, &image).unwrap();
    let img = img.to_str().unwrap().to_string();

    let list = t.path().join("expendable.txt");
    std::fs::write(
        &list,
        format!(
            "# least critical first\n{m}/cache/*.deb\n{m}/downloads/*   # the hard-linked ISO frees nothing\n{m}/home/*\n",
            m = m.display()
        ),
    )
    .unwrap();
    let list = list.to_str().unwrap().to_string();

    // Without the list: not enough space.
    cli.expect_err(13, &["stage", &img, "--name", "big", "--dir", &dir]);
    // plan with it: the first two .deb files go, nothing is deleted yet.
    let p = cli.json(&["plan", &img, "--dir", &dir, "--make-room", &list, "--json"]);
    assert_eq!(p["ok"], true, "{p}");
    let planned: Vec<String> = p["make_room"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    let cache = |f: &str| m.join("cache").join(f).display().to_string();
    assert_eq!(planned, [cache("a.deb"), cache("b.deb")], "{p}");
    assert!(m.join("cache/a.deb").exists(), "plan deletes nothing");
    let text = cli.expect(0, &["plan", &img, "--dir", &dir, "--make-room", &list]);
    assert!(text.contains("delete 2 files"), "{text}");

    let keep = tree_hashes(&m.join("home"));
    cli.expect(
        0,
        &[
            "stage",
            &img,
            "--name",
            "big",
            "--dir",
            &dir,
            "--make-room",
            &list,
        ],
    );
    assert!(!m.join("cache/a.deb").exists());
    assert!(!m.join("cache/b.deb").exists());
    assert!(m.join("cache/c.deb").exists(), "no more than needed");
    assert!(m.join("downloads/big.iso").exists());
    assert_eq!(tree_hashes(&m.join("home")), keep);
    assert_eq!(cli.json(&["--json", "verify", "big"])["ok"], true);
    let map = cli.json(&["map", "big", "--json"]);
    assert_image_on_disk(&disk, &map, &image);

    // A list that cannot free enough deletes nothing.
    let small = t.path().join("small.txt");
    std::fs::write(&small, format!("{}/home/important\n", m.display())).unwrap();
    let e = cli.expect_err(
        13,
        &[
            "stage",
            &img,
            "--name",
            "big2",
            "--dir",
            &dir,
            "--make-room",
            small.to_str().unwrap(),
        ],
    );
    assert!(e.contains("even deleting all 1 files"), "{e}");
    assert!(m.join("home/important").exists());
    // A list with a relative pattern is refused, needed or not.
    std::fs::write(&small, "cache/*\n").unwrap();
    let e = cli.expect_err(
        22,
        &[
            "stage",
            probe.to_str().unwrap(),
            "--name",
            "p",
            "--dir",
            &dir,
            "--make-room",
            small.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("line 1") && e.contains("not an absolute path pattern"),
        "{e}"
    );
    cli.expect(0, &["discard", "big"]);
    drop(disk);
}
