//! `customize` on this host (no device-mapper: the image is attached
//! writable through the FUSE fallback, whose writes go through the
//! `DiskWriter`): a staged system gets a new identity, a hostname, the
//! source system's network configuration and preserved files; `verify`
//! passes on the new bytes; inside the image everything is as asked and
//! nothing else moved; on the disk, nothing outside the map was written
//! and the host filesystem is clean with every file unchanged. Then the
//! faults: corrupt staged bytes are refused before anything changes, an
//! interrupted customize is refused by `verify` and finished by running
//! it again, and bad options are refused up front.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::common::*;

/// The "restored system": a small root filesystem with an identity, a
/// systemd-networkd configuration, and links that point at absolute paths
/// (meaningful inside the image only).
fn system_image(dir: &Path) -> PathBuf {
    let tree = dir.join("system.tree");
    let w = |p: &str, data: &str| {
        let p = tree.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w("etc/hostname", "image-host\n");
    w("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\timage-host\n");
    w("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    w("etc/ssh/ssh_host_ed25519_key", "OLD PRIVATE KEY\n");
    w(
        "etc/ssh/ssh_host_ed25519_key.pub",
        "ssh-ed25519 OLD root@image-host\n",
    );
    w("etc/ssh/sshd_config", "PermitRootLogin no\n");
    w(
        "etc/systemd/network/10-image.network",
        "[Match]\nName=en*\n[Network]\nDHCP=yes\n",
    );
    w("srv/data/unrelated", "stays\n");
    // The source machine's ESP and swap, by identities this machine does
    // not have; the root line is the image's own (liverestore provides it).
    w(
        "etc/fstab",
        "LABEL=imgroot / ext4 defaults 0 1\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\nUUID=2222bbbb-0000-0000-0000-000000000002 none swap sw 0 0\ntmpfs /tmp tmpfs defaults 0 0\n",
    );
    std::fs::create_dir_all(tree.join("var/lib/dbus")).unwrap();
    symlink("/etc/machine-id", tree.join("var/lib/dbus/machine-id")).unwrap();
    // /etc/motd -> /etc/hostname: writing "through" it from the host
    // would hit the host's file.
    symlink("/etc/hostname", tree.join("etc/motd")).unwrap();
    let img = dir.join("system.ext4");
    mkfs_ext4_from(&tree, &img, 48);
    img
}

/// The "running system" whose files are carried over (`--source-root`):
/// networkd configuration, resolv.conf, and a tree to keep.
fn source_system(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("source");
    let w = |p: &str, data: &str, mode: u32| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    w(
        "etc/systemd/network/20-wired.network",
        "[Match]\nName=enp1s0\n[Network]\nAddress=192.0.2.7/24\nGateway=192.0.2.1\n",
        0o644,
    );
    w("etc/resolv.conf", "nameserver 192.0.2.53\n", 0o644);
    w("opt/site/secret.key", "site secret\n", 0o600);
    w("opt/site/conf/app.ini", "[app]\nmode=prod\n", 0o640);
    symlink("conf/app.ini", root.join("opt/site/current")).unwrap();
    root
}

/// Run `script` against the staged image mounted read-only (test-restore);
/// its output lines `key=value`.
fn look_inside(cli: &Cli, name: &str, script: &str) -> std::collections::BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cmd = format!(
        "cd \"$LIVERESTORE_ROOT\" && ( {script} ) > {}",
        out.display()
    );
    let r = cli.json(&["--json", "test-restore", name, "--run", &cmd]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["report"]["fsck_clean"], true, "{r}");
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const LOOK: &str = r#"
echo "hostname=$(cat etc/hostname)"
echo "hosts=$(grep 127.0.1.1 etc/hosts | tr '\t' ' ')"
echo "machine_id_bytes=$(stat -c %s etc/machine-id)"
echo "dbus_link=$(readlink var/lib/dbus/machine-id)"
echo "motd_link=$(readlink etc/motd)"
echo "key_head=$(head -c 35 etc/ssh/ssh_host_ed25519_key)"
echo "key_mode=$(stat -c %a etc/ssh/ssh_host_ed25519_key)"
echo "pub_tail=$(awk '{print $3}' etc/ssh/ssh_host_ed25519_key.pub)"
echo "sshd_config=$(cat etc/ssh/sshd_config)"
echo "networks=$(ls etc/systemd/network | tr '\n' ' ')"
echo "resolv=$(cat etc/resolv.conf)"
echo "secret=$(cat opt/site/secret.key) $(stat -c %a opt/site/secret.key)"
echo "app_mode=$(stat -c %a opt/site/conf/app.ini)"
echo "current=$(readlink opt/site/current)"
echo "unrelated=$(cat srv/data/unrelated)"
echo "fstab=$(tr '\n' '|' < etc/fstab)"
"#;

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn customize_changes_the_staged_system_and_nothing_else() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(t.path(), Fs::Ext4, 200);
    populate(&disk.mnt);
    let img = system_image(t.path());
    let source = source_system(t.path());
    // A host file that an escaping link inside the image would hit.
    std::fs::write(disk.mnt.join("hostname"), "host file\n").unwrap();
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap().to_string();
    // plan reads the fstab in the image itself (its ext4, unmounted)
    let plan = cli.json(&[
        "--json",
        "plan",
        img.to_str().unwrap(),
        "--name",
        "cust",
        "--dir",
        &dir,
    ]);
    let w = plan["fstab_warning"].as_str().unwrap_or_default();
    assert!(
        w.contains("/boot/efi (UUID=ABCD-1234, line 2)")
            && w.contains("none (UUID=2222bbbb-0000-0000-0000-000000000002, line 3)")
            && !w.contains("line 1")
            && w.contains("customize cust --fix-fstab"),
        "{plan}"
    );
    // a compressed image is read once staged: plan says why not now
    let zst = t.path().join("system.ext4.zst");
    sh(
        "zstd",
        &[
            "-q",
            "-1",
            img.to_str().unwrap(),
            "-o",
            zst.to_str().unwrap(),
        ],
    );
    let plan = cli.json(&["--json", "plan", zst.to_str().unwrap(), "--dir", &dir]);
    assert!(plan["fstab_warning"].is_null(), "{plan}");
    assert!(
        plan["fstab_not_checked"]
            .as_str()
            .unwrap_or_default()
            .contains("compressed"),
        "{plan}"
    );
    let out = cli.run(&[
        "stage",
        img.to_str().unwrap(),
        "--name",
        "cust",
        "--dir",
        &dir,
    ]);
    // stage warns too about the fstab entries activate would
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "/etc/fstab names devices it will not find at boot: /boot/efi (UUID=ABCD-1234, line 2)"
        ) && err.contains("customize cust --fix-fstab"),
        "{err}"
    );
    let staged_sha = sha256_hex(&std::fs::read(&img).unwrap());

    disk.unmount();
    let pattern_before = disk.pattern_sectors();
    disk.mount();
    let files_before = tree_hashes(&disk.mnt);

    let out = cli.json(&[
        "--json",
        "customize",
        "cust",
        "--new-identity",
        "--hostname",
        "web-7.example.org",
        "--carry-network",
        "--fix-fstab",
        "--preserve",
        "/opt/site",
        "--source-root",
        source.to_str().unwrap(),
    ]);
    assert_eq!(out["ok"], true, "{out}");
    let r = &out["customized"];
    println!("{}", serde_json::to_string_pretty(r).unwrap());
    assert_eq!(r["backend"], "fuse", "no device-mapper here: the FUSE path");
    assert_eq!(r["filesystem"], "ext4");
    assert_eq!(r["resumed"], false);
    assert_eq!(r["sha256_before"], staged_sha.as_str());
    assert_ne!(r["sha256"], staged_sha.as_str());
    let whats: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        whats,
        [
            "machine-id",
            "ssh-host-key",
            "hostname",
            "hostname",
            "network",
            "network",
            "fstab",
            "preserved"
        ],
        "{r}"
    );

    // The new bytes are what is recorded: verify passes, and the record
    // and the on-disk header both say what changed.
    let v = cli.json(&["--json", "verify", "cust"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sha256"], r["sha256"]);
    let info = cli.json(&["info", "cust", "--json"]);
    let c = &info["record"]["image"]["customized"][0];
    assert_eq!(c["sha256_before"], staged_sha.as_str(), "{info}");
    assert_eq!(c["change_count"], 8);
    let fstab_change = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "fstab")
        .unwrap();
    assert_eq!(
        fstab_change["detail"],
        "nofail: /boot/efi (UUID=ABCD-1234, line 2), none (UUID=2222bbbb-0000-0000-0000-000000000002, line 3)"
    );
    assert!(info["record"]["image"].get("customizing").is_none());
    let found = cli.json(&["--json", "scan", &disk.dev]);
    assert_eq!(found["headers"][0]["valid"], true, "{found}");

    // Inside the image.
    let got = look_inside(&cli, "cust", LOOK);
    let expect = [
        ("hostname", "web-7.example.org"),
        ("hosts", "127.0.1.1 web-7.example.org web-7"),
        ("machine_id_bytes", "0"),
        ("dbus_link", "/etc/machine-id"),
        ("motd_link", "/etc/hostname"),
        ("key_head", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("key_mode", "600"),
        ("pub_tail", "root@web-7.example.org"),
        ("sshd_config", "PermitRootLogin no"),
        ("networks", "10-image.network 20-wired.network "),
        ("resolv", "nameserver 192.0.2.53"),
        ("secret", "site secret 600"),
        ("app_mode", "640"),
        ("current", "conf/app.ini"),
        ("unrelated", "stays"),
        (
            "fstab",
            "LABEL=imgroot / ext4 defaults 0 1|UUID=ABCD-1234 /boot/efi vfat umask=0077,nofail 0 1|UUID=2222bbbb-0000-0000-0000-000000000002 none swap sw,nofail 0 0|tmpfs /tmp tmpfs defaults 0 0|",
        ),
    ];
    for (k, v) in expect {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}: {got:?}");
    }

    // The host: its files unchanged (the one an escaping link would have
    // hit included), fsck-clean, and every free sector that held its
    // pattern still holds it, except inside the container.
    assert_eq!(tree_hashes(&disk.mnt), files_before);
    assert_eq!(
        std::fs::read_to_string(disk.mnt.join("hostname")).unwrap(),
        "host file\n"
    );
    let ranges = container_ranges(&cli, "cust");
    disk.unmount();
    assert!(disk.fsck_clean());
    let pattern_after = disk.pattern_sectors();
    let stray: Vec<usize> = (0..pattern_before.len())
        .filter(|&n| pattern_before[n] && !pattern_after[n])
        .filter(|&n| {
            let b = n as u64 * 512;
            !ranges.iter().any(|&(s, e)| b >= s && b < e)
        })
        .collect();
    // ext4 rewrites its superblock and journal on mount/unmount; those
    // sectors never held the pattern. Anything else is a stray write.
    assert!(
        stray.is_empty(),
        "{} sectors outside the map were written, first {:?}",
        stray.len(),
        &stray[..stray.len().min(8)]
    );
    assert_no_leftovers(&cli, "cust");
}

/// No attachment, FUSE mount or customize mount of `name` is left.
fn assert_no_leftovers(cli: &Cli, name: &str) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&format!("fuse-{name}")), "{mounts}");
    assert!(!mounts.contains(&format!("customize-{name}")), "{mounts}");
    assert!(!sh("losetup", &["-a"]).contains(&format!("fuse-{name}")));
    cli.expect_err(22, &["detach", name]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn corrupt_bytes_are_refused_and_an_interrupted_customize_finishes() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 160);
    let img = system_image(t.path());
    let source = source_system(t.path());
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap().to_string();
    let src = source.to_str().unwrap().to_string();
    cli.expect(
        0,
        &[
            "stage",
            img.to_str().unwrap(),
            "--name",
            "cust2",
            "--dir",
            &dir,
        ],
    );

    // Options that cannot work are refused before anything happens.
    let e = cli.expect_err(22, &["customize", "cust2"]);
    assert!(e.contains("nothing to do"), "{e}");
    let e = cli.expect_err(22, &["customize", "cust2", "--hostname", "bad_name"]);
    assert!(e.contains("not a valid host name"), "{e}");
    let e = cli.expect_err(
        17,
        &[
            "customize",
            "cust2",
            "--preserve",
            "/no/such/file",
            "--source-root",
            &src,
        ],
    );
    assert!(e.contains("no such file"), "{e}");
    let e = cli.expect_err(22, &["customize", "cust2", "--preserve", "relative/path"]);
    assert!(e.contains("absolute"), "{e}");
    cli.expect_err(17, &["customize", "nosuch", "--new-identity"]);
    // --auto-commit puts a liverestore into the image: a static one only;
    // and it needs systemd there: without, nothing is changed at all.
    let e = cli.expect_err(
        22,
        &[
            "customize",
            "cust2",
            "--auto-commit",
            "--helper",
            "/bin/true",
        ],
    );
    assert!(e.contains("statically linked"), "{e}");
    let sha =
        |cli: &Cli| cli.json(&["info", "cust2", "--json"])["record"]["image"]["sha256"].clone();
    let before = sha(&cli);
    let e = cli.expect_err(22, &["customize", "cust2", "--auto-commit"]);
    assert!(e.contains("needs systemd in the image"), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    assert_no_leftovers(&cli, "cust2");
    assert_eq!(sha(&cli), before);
    cli.expect(0, &["verify", "cust2"]);

    // --carry-network that cannot be done (the source uses ifupdown, the
    // image systemd-networkd) is refused before anything changes.
    let other = t.path().join("ifupdown-source");
    for (p, data) in [
        ("sbin/ifup", ""),
        (
            "etc/network/interfaces",
            "auto eth0\niface eth0 inet dhcp\n",
        ),
    ] {
        let p = other.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let e = cli.expect_err(
        22,
        &[
            "customize",
            "cust2",
            "--hostname",
            "half",
            "--carry-network",
            "--source-root",
            other.to_str().unwrap(),
        ],
    );
    assert!(
        e.contains("configured with ifupdown, the restored system uses systemd-networkd"),
        "{e}"
    );
    assert!(!e.contains("marked as being customized"), "{e}");
    assert_no_leftovers(&cli, "cust2");
    assert_eq!(sha(&cli), before);
    cli.expect(0, &["verify", "cust2"]);

    // An interruption after the bytes started to change: an image whose
    // /etc/fstab is a directory (preserved so from another tree) stops
    // --fix-fstab after --hostname changed the image.
    let odd = t.path().join("odd-source");
    std::fs::create_dir_all(odd.join("etc/fstab")).unwrap();
    std::fs::write(odd.join("etc/fstab/x"), "").unwrap();
    cli.expect(
        0,
        &[
            "customize",
            "cust2",
            "--preserve",
            "/etc/fstab",
            "--source-root",
            odd.to_str().unwrap(),
        ],
    );
    let e = cli.expect_err(
        14,
        &["customize", "cust2", "--hostname", "half", "--fix-fstab"],
    );
    assert!(e.contains("is not a regular file"), "{e}");
    assert!(e.contains("run `liverestore customize cust2` again"), "{e}");
    assert_no_leftovers(&cli, "cust2");
    let e = cli.expect_err(22, &["verify", "cust2"]);
    assert!(e.contains("was interrupted"), "{e}");
    let e = cli.expect_err(
        22,
        &[
            "initrd",
            "cust2",
            "--output",
            t.path().join("x.cpio").to_str().unwrap(),
        ],
    );
    assert!(e.contains("was interrupted"), "{e}");
    // Run again (fixed): finishes, and verify passes again.
    let out = cli.json(&[
        "--json",
        "customize",
        "cust2",
        "--hostname",
        "whole",
        "--carry-network",
        "--source-root",
        &src,
    ]);
    assert_eq!(out["customized"]["resumed"], true, "{out}");
    assert_eq!(out["customized"]["sha256_before"], serde_json::Value::Null);
    assert_eq!(cli.json(&["--json", "verify", "cust2"])["ok"], true);
    let got = look_inside(&cli, "cust2", "echo \"hostname=$(cat etc/hostname)\"");
    assert_eq!(got["hostname"], "whole");

    // Corrupt staged bytes: refused before anything changes (the record
    // is not marked, verify still reports the corruption itself).
    let map = cli.json(&["map", "cust2", "--json"]);
    let e0 = &map["extents"][0];
    let at = e0["disk_offset"].as_u64().unwrap() + 8192;
    disk.poke(at, b"CORRUPTION");
    let e = cli.expect_err(20, &["customize", "cust2", "--new-identity"]);
    assert!(e.contains("do not match their hashes"), "{e}");
    let v = cli.run(&["--json", "verify", "cust2"]);
    assert_eq!(v.status.code(), Some(20), "{v:?}");
    assert_no_leftovers(&cli, "cust2");
    cli.expect(0, &["discard", "cust2"]);
}

/// `--auto-commit` on a system with systemd: the unit, enabled for
/// multi-user.target, its settings and a static liverestore go in, and
/// the record says so. (The unit committing a real trial boot is shown by
/// the real Debian guest test.)
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn auto_commit_goes_into_a_system_with_systemd() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 160);
    let tree = t.path().join("tree");
    for dir in ["usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::write(tree.join("usr/lib/systemd/systemd"), "").unwrap();
    std::fs::write(tree.join("etc/hostname"), "kiosk\n").unwrap();
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();

    // No room in the image for the static helper: refused before anything
    // changes, so no customize is left half-done.
    let small = t.path().join("small.ext4");
    mkfs_ext4_from(&tree, &small, 16);
    let small = small.to_str().unwrap();
    cli.expect(0, &["stage", small, "--name", "small", "--dir", dir]);
    let e = cli.expect_err(
        13,
        &["customize", "small", "--auto-commit", "--health", "true"],
    );
    assert!(
        e.contains("MiB free: nothing was changed; grow the image's root filesystem"),
        "{e}"
    );
    // (verify refuses an image marked as being customized)
    cli.expect(0, &["verify", "small"]);
    cli.expect(0, &["discard", "small"]);

    // (a debug build's static helper is 40 MB)
    let img = t.path().join("kiosk.ext4");
    mkfs_ext4_from(&tree, &img, 96);
    cli.expect(
        0,
        &[
            "stage",
            img.to_str().unwrap(),
            "--name",
            "kiosk",
            "--dir",
            dir,
        ],
    );
    let out = cli.json(&[
        "--json",
        "customize",
        "kiosk",
        "--auto-commit",
        "--health",
        "test -e /run/app-ready",
        "--commit-within",
        "2min",
    ]);
    let changes = &out["customized"]["changes"];
    assert_eq!(changes[0]["what"], "auto-commit", "{out}");
    assert_eq!(
        changes[0]["path"],
        "/etc/systemd/system/liverestore-auto-commit.service"
    );
    cli.expect(0, &["verify", "kiosk"]);
    let got = look_inside(
        &cli,
        "kiosk",
        r#"
echo "exec=$(grep ExecStart etc/systemd/system/liverestore-auto-commit.service)"
echo "wants=$(readlink etc/systemd/system/multi-user.target.wants/liverestore-auto-commit.service)"
echo "settings=$(tr -d ' \n' < usr/local/lib/liverestore/auto-commit.json)"
echo "binary=$(stat -c '%a %s' usr/local/lib/liverestore/liverestore)"
"#,
    );
    assert_eq!(
        got["exec"],
        "ExecStart=/usr/local/lib/liverestore/liverestore auto-commit"
    );
    assert_eq!(got["wants"], "../liverestore-auto-commit.service");
    assert_eq!(
        got["settings"],
        r#"{"health":"test-e/run/app-ready","within_secs":120}"#
    );
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_liverestore"))
        .unwrap()
        .len();
    assert_eq!(got["binary"], format!("755 {size}"));
    cli.expect(0, &["discard", "kiosk"]);
}
