//! Warm standbys: `snapshot` of a prepared system tree (on its own
//! loop-backed ext4, given as `--source-root`) with hard links, a sparse
//! file, ACLs, extended attributes, a file capability, numeric owners,
//! device nodes and a file that keeps changing while it is copied. The
//! copy is compared with the source attribute by attribute (rsync's own
//! itemized comparison, run by `test-restore --run` on the mounted
//! standby), its fstab names its own filesystem, and `verify`, `list` and
//! `export` take it; hooks and bad sources keep nothing; `--refresh`
//! copies only what changed, `--keep` prunes, and `adopt` re-creates a
//! lost record from the header on the raw disk after checking its data.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;

/// A small system tree at `root` with every kind of file a system has.
fn system_tree(root: &Path, uuid: &str) {
    let p = |rel: &str| root.join(rel);
    for d in ["etc", "usr/bin", "var/log", "dev", "home/user", "boot"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    std::fs::write(
        p("etc/fstab"),
        format!("# the source's\nUUID={uuid} / ext4 errors=remount-ro 0 1\n"),
    )
    .unwrap();
    std::fs::write(p("etc/hostname"), "primary\n").unwrap();
    std::fs::write(p("boot/vmlinuz-6.1.0-test"), random_bytes(300_000, 3)).unwrap();
    std::fs::write(p("usr/bin/tool-a"), random_bytes(100_000, 4)).unwrap();
    std::fs::write(p("usr/bin/big"), random_bytes((24 * MIB) as usize, 5)).unwrap();
    std::fs::hard_link(p("usr/bin/tool-a"), p("usr/bin/tool-b")).unwrap();
    std::fs::copy("/bin/true", p("usr/bin/ping-like")).unwrap();
    sh(
        "setcap",
        &["cap_net_raw+ep", p("usr/bin/ping-like").to_str().unwrap()],
    );
    // 64 MiB apparent, 4 KiB of data in the middle
    let sparse = std::fs::File::create(p("var/sparse.img")).unwrap();
    sparse.set_len(64 * MIB).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(&[7u8; 4096], 32 * MIB).unwrap();
    std::fs::write(p("home/user/notes"), "acl and xattr\n").unwrap();
    let notes = p("home/user/notes");
    sh("setfacl", &["-m", "u:1234:rw", notes.to_str().unwrap()]);
    sh(
        "setfattr",
        &[
            "-n",
            "user.origin",
            "-v",
            "primary",
            notes.to_str().unwrap(),
        ],
    );
    sh(
        "setfattr",
        &["-n", "trusted.label", "-v", "t1", notes.to_str().unwrap()],
    );
    sh(
        "chown",
        &["-R", "1234:5678", p("home/user").to_str().unwrap()],
    );
    sh("mknod", &[p("dev/null").to_str().unwrap(), "c", "1", "3"]);
    sh("mknod", &[p("dev/sda").to_str().unwrap(), "b", "8", "0"]);
    sh("mkfifo", &[p("var/fifo").to_str().unwrap()]);
    std::os::unix::fs::symlink("/usr/bin/tool-a", p("usr/bin/tool-link")).unwrap();
}

#[test]
#[ignore = "needs root: loop devices, mounts, raw disk writes"]
fn a_snapshot_copies_every_attribute_and_is_a_staging_like_any_other() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("src")).unwrap();
    std::fs::create_dir_all(t.path().join("stg")).unwrap();
    let src = LoopDisk::new(&t.path().join("src"), Fs::Ext4, 256);
    let src_uuid = sh("findmnt", &["-n", "-o", "UUID", src.mnt.to_str().unwrap()])
        .trim()
        .to_string();
    system_tree(&src.mnt, &src_uuid);
    let stg = LoopDisk::new(&t.path().join("stg"), Fs::Ext4, 768);
    let cli = Cli::new(t.path());

    // A log that grows all through the copy.
    let busy = src.mnt.join("var/log/busy.log");
    std::fs::write(&busy, "start\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, busy) = (stop.clone(), busy.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&busy)
                    .unwrap();
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let r = cli.json(&[
        "snapshot",
        "--name",
        "sb",
        "--dir",
        stg.mnt.to_str().unwrap(),
        "--source-root",
        src.mnt.to_str().unwrap(),
        "--size",
        "200M",
        "--exclude",
        "/var/cache/***",
        "--json",
    ]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(r["ok"], true, "{r}");
    println!("snapshot: {r}");
    assert_eq!(r["kind"], "standby");
    let sb = &r["standby"];
    assert_eq!(sb["consistency"], "per-file");
    assert_eq!(sb["fs_type"], "ext4");
    assert_eq!(sb["source_fs_uuid"], src_uuid.as_str());
    let new_uuid = sb["fs_uuid"].as_str().unwrap().to_string();
    assert_ne!(new_uuid, src_uuid);
    assert!(
        sb["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "var/log/busy.log"),
        "the growing log was copied again: {r}"
    );
    assert!(sb["changed_during_copy"].as_u64().unwrap() >= 1);

    let list = cli.json(&["list", "--json"]);
    let item = &list["images"][0];
    assert_eq!(item["kind"], "standby", "{list}");
    assert_eq!(item["state"], "complete");
    assert!(item["copied_unix"].as_u64().unwrap() > 0);
    let v = cli.json(&["verify", "sb", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sha256"], r["sha256"]);

    // Attribute by attribute: rsync's itemized dry run from the source to
    // the mounted copy lists every difference (content, times, modes,
    // owners, hard links, ACLs, xattrs — capabilities among them —,
    // devices); the copy's own fstab and the log that kept growing are
    // the only ones allowed.
    let out = t.path().join("compare.txt");
    let cmd = format!(
        "rsync -aHAXS --numeric-ids --dry-run --itemize-changes --exclude=/lost+found {}/ \"$LIVERESTORE_ROOT\"/ > {out} 2>&1; \
         echo \"fstab $(cat \"$LIVERESTORE_ROOT\"/etc/fstab | grep -v '^#')\" >> {out}; \
         echo \"blocks $(stat -c %b \"$LIVERESTORE_ROOT\"/var/sparse.img)\" >> {out}; \
         echo \"links $(stat -c %h \"$LIVERESTORE_ROOT\"/usr/bin/tool-a)\" >> {out}; \
         echo \"cap $(getcap \"$LIVERESTORE_ROOT\"/usr/bin/ping-like | cut -d' ' -f2)\" >> {out}; \
         echo \"dev $(stat -c '%F %t:%T' \"$LIVERESTORE_ROOT\"/dev/sda)\" >> {out}; \
         echo \"acl $(getfacl -cp \"$LIVERESTORE_ROOT\"/home/user/notes | grep '^user:1234')\" >> {out}",
        src.mnt.display(),
        out = out.display()
    );
    let tr = cli.json(&["test-restore", "sb", "--run", &cmd, "--json"]);
    assert_eq!(tr["ok"], true, "{tr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let differences: Vec<&str> = text
        .lines()
        .filter(|l| {
            let path = l.get(12..).unwrap_or("");
            !(l.starts_with("fstab ")
                || l.starts_with("blocks ")
                || l.starts_with("links ")
                || l.starts_with("cap ")
                || l.starts_with("dev ")
                || l.starts_with("acl ")
                || matches!(
                    path,
                    "etc/fstab" | "etc/" | "var/log/busy.log" | "var/log/" | "./"
                )
                || l.trim().is_empty())
        })
        .collect();
    assert!(differences.is_empty(), "the copy differs:\n{text}");
    assert!(
        text.contains(&format!(
            "fstab UUID={new_uuid} / ext4 errors=remount-ro 0 1"
        )),
        "{text}"
    );
    let blocks: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("blocks "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        blocks <= 64,
        "the sparse file stayed sparse: {blocks} blocks"
    );
    assert!(text.contains("links 2"), "{text}");
    assert!(text.contains("cap cap_net_raw=ep"), "{text}");
    assert!(text.contains("dev block special file 8:0"), "{text}");
    assert!(text.contains("acl user:1234:rw-"), "{text}");

    // export takes it like any staging
    let arch = t.path().join("sb.img.zst");
    let e = cli.json(&["export", "sb", "--output", arch.to_str().unwrap(), "--json"]);
    assert_eq!(e["ok"], true, "{e}");
    assert_eq!(e["sha256"], r["sha256"]);

    // Refusals keep nothing.
    let snap = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "snapshot",
            "--name",
            name,
            "--dir",
            stg.mnt.to_str().unwrap(),
            "--source-root",
            src.mnt.to_str().unwrap(),
        ];
        a.extend(extra);
        a.push("--json");
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |code: i32, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.json_failure(code, &args)
    };
    let e = run(22, snap("x1", &["--pre", "exit 3"]));
    assert!(e["message"].as_str().unwrap().contains("--pre"), "{e}");
    let e = run(22, snap("x2", &["--size", "200M", "--post", "false"]));
    assert!(e["message"].as_str().unwrap().contains("--post"), "{e}");
    // --post runs even when the copy fails (it resumes what --pre paused)
    let ran = t.path().join("post-ran");
    let post = format!("touch {}", ran.display());
    let big = src.mnt.join("var/big-after-the-check");
    let pre = format!("head -c 40M /dev/urandom > {}", big.display());
    let e = run(
        23,
        snap("x5", &["--size", "48M", "--pre", &pre, "--post", &post]),
    );
    assert!(
        e["message"].as_str().unwrap().contains("nothing kept"),
        "{e}"
    );
    assert!(ran.exists(), "--post ran after the failed copy");
    std::fs::remove_file(&big).unwrap();
    let e = run(13, snap("x3", &["--size", "16M"]));
    assert!(e["message"].as_str().unwrap().contains("too small"), "{e}");
    let e = run(16, snap("sb", &[]));
    assert_eq!(e["kind"], "name_in_use");
    let names: Vec<String> = cli.json(&["list", "--json"])["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["sb"]);
    assert_eq!(containers_in(&stg.mnt), ["sb.liverestore"]);

    // Refresh: one file changed and one added in the source; only they
    // are copied, few chunks change, and the copy has them.
    std::fs::write(src.mnt.join("etc/hostname"), "primary-2\n").unwrap();
    std::fs::write(src.mnt.join("etc/added"), random_bytes(50_000, 9)).unwrap();
    let rf = cli.json(&["snapshot", "--refresh", "sb", "--json"]);
    assert_eq!(rf["ok"], true, "{rf}");
    assert_eq!(rf["refreshed"], true);
    println!("refresh: {rf}");
    let copied = rf["bytes_copied"].as_u64().unwrap();
    assert!(
        (50_000..2 * MIB).contains(&copied),
        "only what changed: {copied} bytes"
    );
    let (changed, chunks) = (
        rf["chunks_changed"].as_u64().unwrap(),
        rf["chunks"].as_u64().unwrap(),
    );
    assert!(
        changed >= 1 && changed * 4 < chunks,
        "{changed} of {chunks} chunks"
    );
    assert_ne!(rf["sha256"], r["sha256"]);
    let v = cli.json(&["verify", "sb", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    let seen = t.path().join("hostname.txt");
    let tr = cli.json(&[
        "test-restore",
        "sb",
        "--run",
        &format!(
            "cat \"$LIVERESTORE_ROOT\"/etc/hostname > {}",
            seen.display()
        ),
        "--json",
    ]);
    assert_eq!(tr["ok"], true, "{tr}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "primary-2\n");
    cli.json_failure(17, &["snapshot", "--refresh", "nosuch", "--json"]);

    // --keep 1: a newer standby of the same tree replaces the older one.
    let args = snap("sb2", &["--size", "200M", "--keep", "1"]);
    let k = cli.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(k["pruned"], serde_json::json!(["sb"]), "{k}");
    assert_eq!(containers_in(&stg.mnt), ["sb2.liverestore"]);

    // Disaster: the state directory is lost; `adopt` finds the standby's
    // header on the raw disk, checks every chunk and records it again.
    let map = cli.json(&["map", "sb2", "--json"]);
    let lost = t.path().join("state-lost");
    std::fs::rename(&cli.state_dir, &lost).unwrap();
    assert_eq!(
        cli.json(&["list", "--json"])["images"],
        serde_json::json!([])
    );
    let a = cli.json(&["adopt", &stg.dev, "--json"]);
    assert_eq!(a["adopted"], 1, "{a}");
    let h = a["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "sb2")
        .unwrap()
        .clone();
    assert_eq!(h["outcome"], "adopted", "{a}");
    assert_eq!(h["kind"], "standby");
    let v = cli.json(&["verify", "sb2", "--json"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        cli.json(&["list", "--json"])["images"][0]["kind"],
        "standby"
    );
    let again = cli.json(&["adopt", &stg.dev, "--json"]);
    assert_eq!(again["adopted"], 0, "{again}");
    assert!(
        again["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "sb2" && h["outcome"] == "known"),
        "{again}"
    );
    // Lost again, and a byte of its data changed behind its back: not
    // adopted (exit 20), said why.
    std::fs::remove_dir_all(&cli.state_dir).unwrap();
    let at = map["extents"][0]["disk_offset"].as_u64().unwrap() + 8192;
    let mut b = stg.read_at(at, 1);
    b[0] ^= 0x5a;
    stg.poke(at, &b);
    let bad = cli.json_failure(20, &["adopt", &stg.dev, "--json"]);
    assert_eq!(bad["adopted"], 0, "{bad}");
    assert!(
        bad["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "sb2" && h["data_mismatch"] == true),
        "{bad}"
    );
    assert_eq!(
        cli.json(&["list", "--json"])["images"],
        serde_json::json!([])
    );

    // A root on a filesystem the copy cannot recreate: said which.
    std::fs::create_dir_all(t.path().join("btrfs")).unwrap();
    let b = LoopDisk::new(&t.path().join("btrfs"), Fs::Btrfs, 256);
    let mut a = snap("x4", &[]);
    a[6] = b.mnt.to_str().unwrap().to_string();
    let e = run(11, a);
    assert!(e["message"].as_str().unwrap().contains("btrfs"), "{e}");
}
