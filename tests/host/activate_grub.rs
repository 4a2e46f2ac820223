//! GRUB activation on this host (no efivarfs: `--loader auto` falls back
//! to GRUB): the files in `/boot/liverestore/NAME`, the `custom.cfg`
//! block next to the user's own entries, `next_entry` in `grubenv` as
//! GRUB's own `grub-editenv` reads it, and the disk address handed to the
//! restored system really holding `grubenv`'s block; `status`, a second
//! activation refused, `rollback` restoring every file as it was; the
//! refusals (exit 25): a `grub.cfg` that ignores `next_entry`, GRUB on
//! another disk, a `grubenv` GRUB could not rewrite in place. And the
//! native boot of an image staged whole in unallocated space: a GPT (or
//! MBR) entry in a free slot over exactly its bytes, known to the kernel at once
//! (BLKPG), `root=PARTUUID=…`, the image's initrd as it is; rollback takes
//! the entry out of the table and the kernel. Booting them is shown in
//! guests (`tests/guest/grub.rs`, `tests/guest/native.rs`).

use std::path::{Path, PathBuf};

use crate::common::*;

const VERSION: &str = "6.1.0-99-test";

/// The restored system's initrd: only its first bytes matter here (gzip's
/// magic: activate refuses what is no initramfs).
const INITRD: &[u8] = b"\x1f\x8b\x08INITRD";

/// A system image with a kernel and an initrd liverestore can find.
pub(crate) fn system_image(dir: &Path) -> PathBuf {
    system_image_with_payload(dir, 0, 32)
}

/// The same with `payload_mib` of random data in `/srv/payload` (staging
/// it takes a while), in an ext4 of `mib`.
pub(crate) fn system_image_with_payload(dir: &Path, payload_mib: usize, mib: u64) -> PathBuf {
    let tree = dir.join("system.tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join(format!("boot/vmlinuz-{VERSION}")), kernel()).unwrap();
    std::fs::write(tree.join(format!("boot/initrd.img-{VERSION}")), INITRD).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "restored\n").unwrap();
    // the source machine's ESP, which this machine has not got
    std::fs::write(
        tree.join("etc/fstab"),
        "UUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n",
    )
    .unwrap();
    if payload_mib > 0 {
        std::fs::create_dir_all(tree.join("srv")).unwrap();
        std::fs::write(
            tree.join("srv/payload"),
            random_bytes(payload_mib << 20, 12),
        )
        .unwrap();
    }
    let img = dir.join("system.ext4");
    mkfs_ext4_from(&tree, &img, mib);
    img
}

fn kernel() -> Vec<u8> {
    random_bytes(300_000, 11)
}

/// The static program `/lr/init` needs: the guest's static busybox stands
/// in (the initramfs is built, not booted, here).
pub(crate) fn helper() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vm/busybox");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-deps.sh",
        p.display()
    );
    p.display().to_string()
}

/// `--json activate sys --loader grub`: its result line.
fn activate_json(cli: &Cli, grub_dir: &str, helper: &str) -> serde_json::Value {
    cli.json(&[
        "--json",
        "activate",
        "sys",
        "--loader",
        "grub",
        "--grub-dir",
        grub_dir,
        "--helper",
        helper,
    ])
}

/// GRUB's directory on a scratch disk, with `grub.cfg` as update-grub
/// makes it and an empty `grubenv`.
pub(crate) fn grub_dir_with_env(mnt: &Path) -> PathBuf {
    let g = grub_dir(mnt);
    sh(
        "grub-editenv",
        &[g.join("grubenv").to_str().unwrap(), "create"],
    );
    g
}

fn grub_dir(mnt: &Path) -> PathBuf {
    let g = mnt.join("boot/grub");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::write(
        g.join("grub.cfg"),
        crate::common::vm::debian_grub_cfg("quiet"),
    )
    .unwrap();
    g
}

fn grubenv_list(g: &Path) -> String {
    sh(
        "grub-editenv",
        &[g.join("grubenv").to_str().unwrap(), "list"],
    )
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn grub_activation_on_a_live_ext4() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let mut disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 200);
    let cli = Cli::new(t.path());
    let img = system_image(t.path());
    let mnt = disk.mnt.clone();
    let g = grub_dir(&mnt);
    sh(
        "grub-editenv",
        &[g.join("grubenv").to_str().unwrap(), "create"],
    );
    sh(
        "grub-editenv",
        &[g.join("grubenv").to_str().unwrap(), "set", "saved_entry=0"],
    );
    let user_custom = "menuentry 'my own entry' { true }\n";
    std::fs::write(g.join("custom.cfg"), user_custom).unwrap();
    cli.stage(&img, "sys", &mnt);
    let before = tree_hashes(&mnt.join("boot"));

    let helper = helper();
    let g_str = g.to_str().unwrap();
    let out = cli.run(&[
        "activate",
        "sys",
        "--grub-dir",
        g_str,
        "--helper",
        &helper,
        "--append",
        "quiet",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    if !Path::new("/sys/firmware/efi").exists() {
        assert!(stderr.contains("falling back to GRUB"), "{stderr}");
    }
    assert!(
        stderr.contains(
            "/etc/fstab names devices it will not find at boot: /boot/efi (UUID=ABCD-1234, line 1)"
        ) && stderr.contains("customize sys --fix-fstab"),
        "{stderr}"
    );

    // The files, where GRUB reads them.
    let files = mnt.join("boot/liverestore/sys");
    assert_eq!(std::fs::read(files.join("vmlinuz")).unwrap(), kernel());
    let initrd = std::fs::read(files.join("initrd.img")).unwrap();
    assert!(initrd.starts_with(INITRD), "the image's own initrd first");
    assert!(initrd.len() > 1000, "then the early-boot initramfs");

    // custom.cfg: the user's entry, then ours.
    let custom = std::fs::read_to_string(g.join("custom.cfg")).unwrap();
    assert!(custom.starts_with(user_custom), "{custom}");
    let uuid = sh("blkid", &["-o", "value", "-s", "UUID", &disk.part])
        .trim()
        .to_string();
    assert!(
        custom.contains("menuentry 'liverestore sys (restored system)' --id liverestore-sys {"),
        "{custom}"
    );
    assert!(
        custom.contains(&format!("search --no-floppy --fs-uuid --set=root {uuid}")),
        "{custom}"
    );
    let linux = custom
        .lines()
        .find(|l| l.trim_start().starts_with("linux "))
        .unwrap()
        .trim()
        .to_string();
    // the trial deadline's default (30 min), for /lr/init
    assert!(linux.contains(" liverestore.deadline=1800 "), "{linux}");
    assert!(
        linux.starts_with(
            "linux '/boot/liverestore/sys/vmlinuz' rdinit=/lr/init root=/dev/dm-0 rw panic=30 liverestore.id="
        ),
        "{linux}"
    );
    assert!(linux.ends_with(" quiet"), "{linux}");
    assert!(custom.contains("initrd '/boot/liverestore/sys/initrd.img'"));

    // grubenv, as GRUB's own tool reads it.
    let env = grubenv_list(&g);
    assert!(env.contains("saved_entry=0"), "{env}");
    assert!(env.contains("next_entry=liverestore-sys"), "{env}");
    assert!(env.contains("liverestore_entry=liverestore-sys"), "{env}");

    // The disk address handed to the restored system holds that block.
    let offset: u64 = linux
        .split_whitespace()
        .find_map(|w| w.strip_prefix("liverestore.grubenv="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(offset >= disk.part_start && offset < disk.part_start + disk.part_size);
    let raw = disk.read_at(offset, 1024);
    assert_eq!(raw, std::fs::read(g.join("grubenv")).unwrap());

    // status; one activation at a time
    let s = cli.json(&["--json", "status"]);
    assert_eq!(s["loader"], "grub", "{s}");
    assert_eq!(s["next_boot"], "restored system (trial, once)", "{s}");
    assert_eq!(s["grub_next_entry"], "liverestore-sys", "{s}");
    assert_eq!(s["activation"]["grub"]["env_disk_offset"], offset, "{s}");
    cli.expect_err(
        22,
        &["activate", "sys", "--grub-dir", g_str, "--helper", &helper],
    );
    // the on-disk header says what the activation and the old system are
    let note = &cli.json(&["info", "sys", "--json"])["record"]["activation"];
    assert_eq!(note["loader"], "grub", "{note}");
    assert_eq!(note["grub_env_offset"], offset, "{note}");
    assert_eq!(note["old_system"]["boot_entry"], "GRUB's default entry");
    assert_eq!(
        note["old_system"]["kernel_release"],
        sh("uname", &["-r"]).trim()
    );
    let scanned = cli.json(&["--json", "scan", &disk.dev]);
    assert!(scanned.to_string().contains("\"valid\":true"), "{scanned}");
    assert!(linux.contains("liverestore.header="), "{linux}");
    // the next boot may start it: it cannot be discarded now
    let err = cli.expect_err(22, &["discard", "sys"]);
    assert!(err.contains("rollback"), "{err}");

    // rollback: every file of /boot as it was, grubenv without our names,
    // the header without the activation
    let out = cli.expect(0, &["rollback"]);
    assert!(cli.json(&["info", "sys", "--json"])["record"]["activation"].is_null());
    assert!(out.contains("GRUB entry 'liverestore-sys'"), "{out}");
    assert_eq!(tree_hashes(&mnt.join("boot")), before);
    assert!(!mnt.join("boot/liverestore").exists());
    let env = grubenv_list(&g);
    assert_eq!(env.trim(), "saved_entry=0");
    let s = cli.json(&["--json", "status"]);
    assert_eq!(s["next_boot"], "old system (nothing is activated)", "{s}");
    let e = cli.json_failure(22, &["--json", "rollback"]);
    assert_eq!(e["kind"], "invalid_state", "{e}");

    // One lock, for every command that changes state: while another
    // liverestore holds it, each of them stops at once (busy, 21) and
    // changes nothing.
    {
        let state = liverestore::store::state_dir::StateDir::new(&cli.state_dir);
        let _held = state.lock().unwrap();
        let activate = ["activate", "sys", "--grub-dir", g_str, "--helper", &helper];
        let img_str = img.to_str().unwrap();
        let mnt_str = mnt.to_str().unwrap();
        let stage = ["stage", img_str, "--name", "other", "--dir", mnt_str];
        let commands: [&[&str]; 9] = [
            &activate,
            &["rollback"],
            &["commit"],
            &["discard", "sys"],
            &["attach", "sys"],
            &["detach", "sys"],
            &["customize", "sys", "--hostname", "x"],
            &["test-restore", "sys"],
            &stage,
        ];
        for args in commands {
            let err = cli.expect_err(21, args);
            assert!(err.contains("another liverestore"), "{args:?}: {err}");
        }
        assert_eq!(tree_hashes(&mnt.join("boot")), before);
        assert!(!cli.state_dir.join("activation.json").exists());
    }
    // Two activations at once: exactly one succeeds.
    let spawn = || {
        cli.cmd()
            .args(["activate", "sys", "--grub-dir", g_str, "--helper", &helper])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // (Both busy means a third held the lock: a process another test
    // thread forked while the lock above was held keeps its descriptor
    // until it executes, which a loaded machine delays. They try again.)
    let (codes, said) = (0..10)
        .map(|_| {
            let (a, b) = (spawn(), spawn());
            let outs: Vec<std::process::Output> = [a, b]
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect();
            let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap()).collect();
            let said: Vec<String> = outs
                .iter()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .collect();
            if codes == [21, 21] {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            (codes, said)
        })
        .find(|(codes, _)| codes != &[21, 21])
        .expect("the lock stayed busy for 10 tries");
    assert_eq!(
        codes.iter().filter(|&&c| c == 0).count(),
        1,
        "exactly one activation: {codes:?} {said:?}"
    );
    assert!(
        codes.iter().all(|c| [0, 21, 22].contains(c)),
        "the other is busy or finds it activated: {codes:?}"
    );
    cli.expect(0, &["rollback"]);
    assert_eq!(tree_hashes(&mnt.join("boot")), before);

    // A trial that ended without a commit (GRUB cleared next_entry as it
    // started the entry, and the machine came back to the old system):
    // status says so, and the next activate cleans it up by itself.
    let unset_next_entry = || {
        sh(
            "grub-editenv",
            &[g.join("grubenv").to_str().unwrap(), "unset", "next_entry"],
        )
    };
    let args = ["activate", "sys", "--grub-dir", g_str, "--helper", &helper];
    cli.expect(0, &args);
    assert_eq!(cli.json(&["--json", "status"])["trial_ended"], false);
    unset_next_entry();
    let s = cli.json(&["--json", "status"]);
    assert_eq!(s["trial_ended"], true, "{s}");
    assert_eq!(s["next_boot"], "old system (GRUB's default entry)", "{s}");
    let text = cli.expect(0, &["status"]);
    assert!(text.contains("ended, not committed"), "{text}");
    let out = cli.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("ended without a commit"), "{err}");
    let s = cli.json(&["--json", "status"]);
    assert_eq!(s["trial_ended"], false, "{s}");
    assert_eq!(s["next_boot"], "restored system (trial, once)", "{s}");
    cli.expect(0, &["rollback"]);
    assert_eq!(tree_hashes(&mnt.join("boot")), before);

    // Without the user's custom.cfg, activation creates it and rollback
    // removes it again (and both say so in the JSON envelope).
    std::fs::remove_file(g.join("custom.cfg")).unwrap();
    let a = activate_json(&cli, g_str, &helper);
    assert_eq!(a["command"], "activate", "{a}");
    assert_eq!(
        a["activation"]["grub"]["entry_id"], "liverestore-sys",
        "{a}"
    );
    assert!(g.join("custom.cfg").exists());
    let r = cli.json(&["--json", "rollback"]);
    assert_eq!(r["rolled_back"]["files_removed"], true, "{r}");
    assert!(!g.join("custom.cfg").exists());

    // discard too cleans up a trial that ended (a note says so)
    cli.expect(0, &args);
    unset_next_entry();
    let lines = json_lines(&["discard"], &cli.expect(0, &["--json", "discard", "sys"]));
    assert!(
        lines.iter().any(|l| l["event"] == "note"
            && l["message"]
                .as_str()
                .unwrap()
                .contains("ended without a commit")),
        "{lines:?}"
    );
    let d = lines.last().unwrap();
    assert_eq!(d["discarded"][0]["name"], "sys", "{d}");
    assert!(!mnt.join("boot/liverestore").exists());
    disk.unmount();
    assert!(disk.fsck_clean());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn grub_activation_refusals() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 200);
    let other = LoopDisk::new(&t.path().join("o"), Fs::Xfs, 320);
    let cli = Cli::new(t.path());
    let img = system_image(t.path());
    let mnt = disk.mnt.clone();
    cli.stage(&img, "sys", &mnt);
    let helper = helper();
    let activate = |g: &Path| {
        cli.expect_err(
            25,
            &[
                "activate",
                "sys",
                "--loader",
                "grub",
                "--grub-dir",
                g.to_str().unwrap(),
                "--helper",
                &helper,
            ],
        )
    };

    // No GRUB at all.
    let err = activate(&mnt.join("boot/none"));
    assert!(err.contains("no GRUB configuration"), "{err}");

    // A grub.cfg that ignores next_entry and custom.cfg.
    let g = mnt.join("boot/grub");
    std::fs::create_dir_all(&g).unwrap();
    std::fs::write(g.join("grub.cfg"), "menuentry 'x' { linux /vmlinuz }\n").unwrap();
    let err = activate(&g);
    assert!(
        err.contains("next_entry") && err.contains("custom.cfg"),
        "{err}"
    );

    // A grubenv GRUB could not rewrite in place (not 1024 bytes).
    std::fs::write(g.join("grub.cfg"), crate::common::vm::debian_grub_cfg("")).unwrap();
    let mut env = b"# GRUB Environment Block\n".to_vec();
    env.resize(2048, b'#');
    std::fs::write(g.join("grubenv"), env).unwrap();
    let err = activate(&g);
    assert!(err.contains("not 1024"), "{err}");

    // GRUB on another disk than the staging.
    let og = other.mnt.join("boot/grub");
    std::fs::create_dir_all(&og).unwrap();
    std::fs::write(og.join("grub.cfg"), crate::common::vm::debian_grub_cfg("")).unwrap();
    let err = activate(&og);
    assert!(err.contains("its own disk"), "{err}");

    // An image without a kernel liverestore can find.
    let ok = mnt.join("boot/grub-ok");
    std::fs::create_dir_all(&ok).unwrap();
    std::fs::write(ok.join("grub.cfg"), crate::common::vm::debian_grub_cfg("")).unwrap();
    let bare = ext4_image(t.path(), "bare.ext4", 16, &[]);
    cli.stage(&bare, "bare", &mnt);
    let ok_str = ok.to_str().unwrap();
    let err = cli.expect_err(
        17,
        &[
            "activate",
            "bare",
            "--grub-dir",
            ok_str,
            "--helper",
            &helper,
        ],
    );
    assert!(err.contains("/boot/vmlinuz"), "{err}");

    // An initrd that is no initramfs: its kernel would panic on it.
    let junk = ext4_image(
        t.path(),
        "junk.ext4",
        16,
        &[
            (&format!("boot/vmlinuz-{VERSION}"), "a kernel"),
            (
                &format!("boot/initrd.img-{VERSION}"),
                "INITRD, not an archive",
            ),
        ],
    );
    cli.stage(&junk, "junk", &mnt);
    let err = cli.expect_err(
        14,
        &[
            "activate",
            "junk",
            "--grub-dir",
            ok_str,
            "--helper",
            &helper,
        ],
    );
    assert!(err.contains("is not an initramfs"), "{err}");

    // Staged bytes that changed since staging: refused before anything.
    let (start, end) = container_ranges(&cli, "sys")[0];
    let middle = (start + end) / 2 / 4096 * 4096;
    let byte = disk.read_at(middle, 1)[0];
    disk.poke(middle, &[!byte]);
    let err = cli.expect_err(
        20,
        &["activate", "sys", "--grub-dir", ok_str, "--helper", &helper],
    );
    assert!(err.contains("no longer reads back as staged"), "{err}");

    // Nothing was activated or left behind.
    let s = cli.json(&["--json", "status"]);
    assert!(s["activation"].is_null(), "{s}");
    assert!(!mnt.join("boot/liverestore").exists());
    assert!(!g.join("custom.cfg").exists());
    assert!(!og.join("custom.cfg").exists());
    assert!(!ok.join("custom.cfg").exists());
    assert!(!ok.join("grubenv").exists() || grubenv_list(&ok).trim().is_empty());
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn native_activation_adds_a_partition_over_exactly_the_image() {
    native_activation(false);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn native_activation_on_an_mbr_disk() {
    native_activation(true);
}

/// The partition table as text, to compare before and after.
fn table_text(dev: &str, mbr: bool) -> String {
    if mbr {
        sh("sfdisk", &["-d", dev])
    } else {
        sh("sgdisk", &["-p", dev])
    }
}

fn native_activation(mbr: bool) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    // ext4 at 1..151 MiB; the rest of the disk is unallocated
    let mut disk = LoopDisk::with_table(&t.path().join("d"), 300, &[(Fs::Ext4, 1, 150)], mbr);
    let cli = Cli::new(t.path());
    let img = system_image(t.path());
    let image = std::fs::read(&img).unwrap();
    let mnt = disk.mnt.clone();
    let g = grub_dir(&mnt);
    let g_str = g.to_str().unwrap();
    let stage = |extra: &[&str]| {
        let mut args = vec![
            "stage",
            img.to_str().unwrap(),
            "--name",
            "sys",
            "--dir",
            mnt.to_str().unwrap(),
        ];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // --contiguous needs --unallocated (a usage error)
    let a = stage(&["--contiguous"]);
    cli.expect_err(2, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let a = stage(&["--unallocated", "--contiguous"]);
    cli.expect(0, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let ranges = container_ranges(&cli, "sys");
    let image_run = ranges
        .iter()
        .find(|r| r.0 >= disk.part_start + disk.part_size)
        .copied()
        .expect("a run outside the ext4");
    assert_eq!(image_run.0 % MIB, 0, "starts on a MiB boundary");
    let helper = helper();
    let before = table_text(&disk.dev, mbr);
    let out = activate_json(&cli, g_str, &helper);
    let n = &out["activation"]["native"][0];
    assert_eq!(n["partition"]["number"], 2, "{out}");
    let guid = n["partition"]["partuuid"].as_str().unwrap().to_string();
    let start = n["partition"]["start"].as_u64().unwrap();
    assert_eq!(start, image_run.0);
    // in the table (other partitions as they were) and in the kernel
    let part = format!("{}p2", disk.dev);
    if mbr {
        assert_eq!(guid, "1234abcd-02", "the disk signature, the number");
        let table = table_text(&disk.dev, true);
        let line = format!(
            "{part} : start={}, size={}, type=83",
            start / 512,
            image.len() / 512
        );
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<String>()
                    == line.split_whitespace().collect::<String>()),
            "{line} not in\n{table}"
        );
    } else {
        let table = sh("sgdisk", &["-i", "2", &disk.dev]);
        assert!(table.to_lowercase().contains(&guid), "{table}");
        assert!(table.contains("liverestore sys"), "{table}");
        assert!(sh("sgdisk", &["-v", &disk.dev]).contains("No problems found"));
    }
    let sectors: u64 = std::fs::read_to_string(format!(
        "/sys/class/block/{}/size",
        Path::new(&part).file_name().unwrap().to_str().unwrap()
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(sectors * 512, image.len() as u64);
    assert_eq!(
        std::fs::read(&part).unwrap(),
        image,
        "the partition is the image"
    );
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "PARTUUID", &part]).trim(),
        guid
    );
    // root=PARTUUID, the image's own initrd with the early-boot archive
    // after it (native: it notes the boot, arms the deadline, maps nothing)
    let custom = std::fs::read_to_string(g.join("custom.cfg")).unwrap();
    assert!(
        custom.contains(&format!(
            "linux '/boot/liverestore/sys/vmlinuz' rdinit=/lr/init root=PARTUUID={guid} rw panic=30 liverestore.id="
        )),
        "{custom}"
    );
    let initrd = std::fs::read(mnt.join("boot/liverestore/sys/initrd.img")).unwrap();
    assert!(initrd.starts_with(INITRD), "the image's own initrd first");
    let plan = &initrd[initrd
        .windows(12)
        .position(|w| w == b"lr/boot.json")
        .expect("the early-boot plan")..];
    let start = plan.iter().position(|&b| b == b'{').unwrap();
    let plan: serde_json::Value = serde_json::Deserializer::from_slice(&plan[start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(plan["native"], true, "{plan}");
    // The disk is renamed before the rollback (as after a reboot that
    // swapped sda and sdb), its old name now another, blank disk's:
    // rollback finds it by its identity and leaves the other one alone.
    let old_dev = disk.dev.clone();
    let placeholder = disk.reattach_renamed(t.path());
    let part = format!("{}p2", disk.dev);
    assert!(Path::new(&part).exists(), "{part}: the entry, seen anew");
    let before = before.replace(&old_dev, &disk.dev);
    // rollback: out of the kernel and the table; the table as it was
    cli.expect(0, &["rollback"]);
    assert!(!Path::new(&part).exists(), "the kernel forgot {part}");
    assert_eq!(table_text(&disk.dev, mbr), before);
    assert!(
        std::fs::read(t.path().join("blank.img"))
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "nothing written to the disk that has the old name"
    );
    // --boot mapped on the same staging: no partition
    let out = cli.json(&[
        "--json",
        "activate",
        "sys",
        "--boot",
        "mapped",
        "--loader",
        "grub",
        "--grub-dir",
        g_str,
        "--helper",
        &helper,
    ]);
    assert!(out["activation"]["native"].is_null(), "{out}");
    assert_eq!(table_text(&disk.dev, mbr), before);
    cli.expect(0, &["rollback"]);
    cli.expect(0, &["discard", "sys"]);
    drop(placeholder);
    disk.unmount();
    assert!(disk.fsck_clean());
}

/// `activate --standby` on this host: the standby's `custom.cfg` block
/// (GRUB's own `grub-script-check` reads it), the count and the standby
/// in `grubenv` (no one-shot `next_entry`: nothing boots it now), the
/// healthy-boot unit enabled, `status`, `healthy-boot` putting a
/// counted-down count back, the standby's turn once none are left, and
/// `rollback` taking every piece back; the refusals. The failover itself
/// boots in a guest (`tests/guest/debian_standby.rs`).
#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_standby_armed_through_grub() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 200);
    let cli = Cli::new(t.path());
    let img = system_image(t.path());
    let mnt = disk.mnt.clone();
    let g = grub_dir_with_env(&mnt);
    let g_str = g.to_str().unwrap();
    cli.stage(&img, "sys", &mnt);
    let before = tree_hashes(&mnt.join("boot"));
    let helper = helper();
    let arm = |extra: &[&str]| {
        let mut args = vec![
            "activate",
            "sys",
            "--standby",
            "--grub-dir",
            g_str,
            "--helper",
            &helper,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };

    // the firmware route needs UEFI, which this host has not: refused
    // before anything changes (it boots in tests/guest/debian_standby.rs)
    let err = cli.expect_err(24, &as_strs(&arm(&["--loader", "uefi"])));
    assert!(err.contains("not booted with UEFI"), "{err}");
    cli.expect_err(2, &as_strs(&arm(&["--failed-boots", "0"])));
    cli.expect_err(2, &as_strs(&arm(&["--failed-boots", "10"])));
    cli.expect_err(2, &as_strs(&arm(&["--reboot"])));
    assert_eq!(tree_hashes(&mnt.join("boot")), before);

    let mut args = vec!["--json".to_string()];
    args.extend(arm(&["--failed-boots", "3"]));
    let a = cli.json(&as_strs(&args));
    let act = &a["activation"];
    assert_eq!(act["trial"], false, "{a}");
    assert!(act["deadline_secs"].is_null(), "a standby has none: {a}");
    assert_eq!(act["standby"]["after_failed_boots"], 3, "{a}");
    let unit = cli.unit_dir().join("liverestore-healthy-boot.service");
    assert_eq!(act["standby"]["unit"], unit.to_str().unwrap(), "{a}");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={} healthy-boot",
            env!("CARGO_BIN_EXE_liverestore")
        )),
        "{text}"
    );
    let link = cli
        .unit_dir()
        .join("multi-user.target.wants/liverestore-healthy-boot.service");
    assert_eq!(std::fs::read_link(&link).unwrap(), unit);

    let custom = g.join("custom.cfg");
    let block = std::fs::read_to_string(&custom).unwrap();
    assert!(
        block.contains("menuentry 'liverestore sys (standby)' --id liverestore-sys {"),
        "{block}"
    );
    assert!(!block.contains("liverestore.deadline="), "{block}");
    sh("grub-script-check", &[custom.to_str().unwrap()]);
    let env = grubenv_list(&g);
    assert!(env.contains("liverestore_standby=liverestore-sys"), "{env}");
    assert!(env.contains("liverestore_tries=3"), "{env}");
    assert!(!env.contains("next_entry"), "nothing boots it now: {env}");

    let s = cli.json(&["--json", "status"]);
    assert_eq!(s["next_boot"], "old system (GRUB's default entry)", "{s}");
    assert_eq!(s["standby"]["failed_boots_left"], 3, "{s}");
    assert_eq!(s["standby"]["after_failed_boots"], 3, "{s}");
    assert_eq!(s["standby"]["loader"], "grub", "{s}");
    assert_eq!(
        s["trial_ended"], false,
        "an armed standby is no ended trial: {s}"
    );
    let shown = cli.expect(0, &["status"]);
    assert!(shown.contains("after 3 more failed boot(s)"), "{shown}");

    // two failed boots counted (as GRUB's block does), then a healthy one
    let set = |v: &str| {
        sh(
            "grub-editenv",
            &[g.join("grubenv").to_str().unwrap(), "set", v],
        )
    };
    set("liverestore_tries=1");
    assert_eq!(
        cli.json(&["--json", "status"])["standby"]["failed_boots_left"],
        1
    );
    let h = cli.json(&["--json", "healthy-boot"]);
    assert_eq!(
        (
            &h["reset"],
            &h["failed_boots_left_before"],
            &h["failed_boots_left"]
        ),
        (&true.into(), &1.into(), &3.into()),
        "{h}"
    );
    assert!(grubenv_list(&g).contains("liverestore_tries=3"));
    let again = cli.json(&["--json", "healthy-boot"]);
    assert_eq!(again["reset"], false, "{again}");
    // the UEFI route's early count has nothing to do: GRUB counts
    let c = cli.json(&["--json", "count-boot"]);
    assert!(
        c["nothing_because"]
            .as_str()
            .is_some_and(|w| w.contains("through GRUB, which counts the boots itself")),
        "{c}"
    );
    assert!(grubenv_list(&g).contains("liverestore_tries=3"));
    // none left: GRUB's block starts the standby
    set("liverestore_tries=0");
    let s = cli.json(&["--json", "status"]);
    assert_eq!(
        s["next_boot"], "standby (the installed system failed its boots in a row)",
        "{s}"
    );
    // one activation at a time; an armed standby cannot be discarded
    cli.expect_err(22, &as_strs(&arm(&[])));
    cli.expect_err(22, &["discard", "sys"]);

    // rollback: the unit, the variables, the block, the files
    let out = cli.expect(0, &["rollback"]);
    assert!(out.contains("GRUB entry 'liverestore-sys'"), "{out}");
    assert!(!unit.exists() && link.symlink_metadata().is_err());
    assert_eq!(grubenv_list(&g).trim(), "");
    assert_eq!(tree_hashes(&mnt.join("boot")), before);
    let h = cli.json(&["--json", "healthy-boot"]);
    assert_eq!(h["nothing_because"], "nothing is activated", "{h}");
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
