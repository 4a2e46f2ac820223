//! Every command's `--json` output has the one envelope of
//! docs/json-output.md: events, then one result or error object with
//! "ok", each line valid against docs/json-output.schema.json (checked by
//! `Cli::json`, `Cli::json_failure` and `json_lines`). `activate` and
//! `rollback` are checked the same way in `activate_grub.rs`.
//! Needs root: a scratch loop disk.

use crate::common::*;

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn every_command_prints_the_one_json_envelope() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 200);
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();
    let img = ext4_image(t.path(), "sys.ext4", 32, &[("etc/hostname", "before\n")]);
    let img = img.to_str().unwrap();

    let p = cli.json(&["--json", "plan", img, "--dir", dir, "--name", "sys"]);
    assert_eq!(p["command"], "plan");
    assert_eq!(p["image_size"], 32 * MIB, "{p}");
    let big = t.path().join("big.raw");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4096 * MIB)
        .unwrap();
    let refused = cli.json_failure(13, &["--json", "plan", big.to_str().unwrap(), "--dir", dir]);
    assert_eq!(
        refused["event"], "result",
        "a refused plan is a result: {refused}"
    );
    assert_eq!(refused["refusals"][0]["kind"], "no_space", "{refused}");

    // stage prints progress events before its result
    let out = cli.expect(0, &["--json", "stage", img, "--name", "sys", "--dir", dir]);
    let lines = json_lines(&["stage"], &out);
    assert!(lines.len() > 1, "progress before the result: {out}");
    assert!(lines.iter().any(|l| l["event"] == "progress"), "{out}");
    let staged = lines.last().unwrap();
    assert_eq!(staged["stagings"][0]["name"], "sys", "{staged}");
    let e = cli.json_failure(16, &["--json", "stage", img, "--name", "sys", "--dir", dir]);
    assert_eq!(e["kind"], "name_in_use", "{e}");

    let l = cli.json(&["--json", "list"]);
    assert_eq!(l["images"][0]["name"], "sys", "{l}");
    let i = cli.json(&["--json", "info", "sys"]);
    assert_eq!(i["map_valid"], true, "{i}");
    let e = cli.json_failure(17, &["--json", "info", "nothing"]);
    assert_eq!(e["kind"], "not_found", "{e}");
    let v = cli.json(&["--json", "verify", "sys"]);
    assert_eq!(v["bytes_checked"], 32 * MIB, "{v}");
    let m = cli.json(&["--json", "map", "sys"]);
    assert_eq!(m["disk"], disk.dev, "{m}");
    let s = cli.json(&["--json", "scan", &disk.dev]);
    assert_eq!(s["headers"][0]["name"], "sys", "{s}");

    let tr = cli.json(&[
        "--json",
        "test-restore",
        "sys",
        "--run",
        "grep -q before etc/hostname",
    ]);
    assert_eq!(tr["report"]["passed"], true, "{tr}");
    let failed = cli.json_failure(20, &["--json", "test-restore", "sys", "--run", "false"]);
    assert_eq!(failed["event"], "result", "{failed}");
    assert_eq!(failed["report"]["passed"], false, "{failed}");

    let c = cli.json(&["--json", "customize", "sys", "--hostname", "after"]);
    assert_eq!(c["customized"]["changes"][0]["what"], "hostname", "{c}");

    {
        let _guard = Detach(&cli, "sys");
        let a = cli.json(&["--json", "attach", "sys"]);
        assert_eq!(a["attachment"]["mode"], "read_only", "{a}");
        let d = cli.json(&["--json", "detach", "sys"]);
        assert_eq!(d["detached"]["name"], "sys", "{d}");
    }

    let helper = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vm/busybox");
    let out_cpio = t.path().join("lr.cpio");
    let ir = cli.json(&[
        "--json",
        "initrd",
        "sys",
        "--output",
        out_cpio.to_str().unwrap(),
        "--helper",
        helper.to_str().unwrap(),
    ]);
    assert_eq!(
        ir["bytes"],
        std::fs::metadata(&out_cpio).unwrap().len(),
        "{ir}"
    );

    let st = cli.json(&["--json", "status"]);
    assert_eq!(st["booted_restored"], false, "{st}");
    let e = cli.json_failure(22, &["--json", "commit"]);
    assert_eq!(e["command"], "commit", "{e}");

    let d = cli.json(&["--json", "discard", "sys"]);
    assert_eq!(d["discarded"][0]["name"], "sys", "{d}");
}
