//! Signed images, with keys and signatures made here by Debian's GnuPG and
//! minisign: a zstd-compressed image with its OpenPGP `.sig` next to it,
//! and a raw image over HTTP with its `.minisig` next to the URL, stage
//! complete with the verification in the record; each bad signature is
//! refused with exit 26 (bytes it does not cover: the staging is kept,
//! marked failed; an unknown, expired or revoked key, a truncated
//! signature, an image passed as the signature: refused before anything is
//! written). Then the policy: `require_signature = true` makes `activate`
//! refuse an unsigned staging (exit 27) and take a signed one, also after
//! `customize`, which keeps the verification and lists its changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::http::{Faults, serve};
use crate::common::*;

/// A GnuPG home with keys made for the test, and a minisign key pair; the
/// gpg-agent gpg starts is stopped when it goes out of scope.
struct Signers {
    home: PathBuf,
    dir: PathBuf,
}

impl Signers {
    fn new(dir: &Path) -> Signers {
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let s = Signers {
            home,
            dir: dir.to_path_buf(),
        };
        s.gpg(&[
            "--quick-gen-key",
            "Builder <builder@example.org>",
            "ed25519",
            "sign",
            "never",
        ]);
        s.gpg(&[
            "--quick-gen-key",
            "Stranger <stranger@example.org>",
            "ed25519",
            "sign",
            "never",
        ]);
        s.gpg(&[
            "--quick-gen-key",
            "Revoked <revoked@example.org>",
            "ed25519",
            "sign",
            "never",
        ]);
        // made in 2020, valid for a day, then renewed without an end
        s.gpg(&[
            "--faked-system-time",
            "20200101T000000!",
            "--quick-gen-key",
            "Renewed <renewed@example.org>",
            "ed25519",
            "sign",
            "1d",
        ]);
        let renewed = s.fingerprint("renewed@example.org");
        s.gpg(&[
            "--faked-system-time",
            "20200101T120000!",
            "--quick-set-expire",
            &renewed,
            "never",
        ]);
        // made in 2020, valid for a day
        s.gpg(&[
            "--faked-system-time",
            "20200101T000000!",
            "--quick-gen-key",
            "Expired <expired@example.org>",
            "ed25519",
            "sign",
            "1d",
        ]);
        sh(
            "minisign",
            &[
                "-G",
                "-W",
                "-p",
                dir.join("m.pub").to_str().unwrap(),
                "-s",
                dir.join("m.sec").to_str().unwrap(),
            ],
        );
        s
    }

    fn gpg(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn fingerprint(&self, email: &str) -> String {
        let out = String::from_utf8(self.gpg(&["--with-colons", "--fingerprint", email])).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .unwrap()
            .trim_matches(':')
            .to_string()
    }

    /// The public key of `email`, as `gpg --armor --export` writes it.
    fn export(&self, email: &str, to: &Path) {
        std::fs::write(to, self.gpg(&["--armor", "--export", email])).unwrap();
    }

    /// Revoke `email`'s key with the revocation certificate gpg made.
    fn revoke(&self, email: &str) {
        let fpr = self.fingerprint(email);
        let cert = self.home.join(format!("openpgp-revocs.d/{fpr}.rev"));
        // gpg puts a ':' before the armor so that it is not imported by accident
        let text = std::fs::read_to_string(&cert).unwrap().replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let rev = self.dir.join("rev.asc");
        std::fs::write(&rev, text).unwrap();
        self.gpg(&["--import", rev.to_str().unwrap()]);
    }

    /// A detached signature of `file` by `email` (binary, or armored).
    fn sign(
        &self,
        email: &str,
        file: impl AsRef<Path>,
        out: impl AsRef<Path>,
        armor: bool,
        extra: &[&str],
    ) {
        let (file, out) = (file.as_ref(), out.as_ref());
        let mut args = extra.to_vec();
        args.extend(["--local-user", email, "--detach-sign", "--output"]);
        args.push(out.to_str().unwrap());
        if armor {
            args.push("--armor");
        }
        args.push(file.to_str().unwrap());
        self.gpg(&args);
    }

    fn minisign(&self, file: &Path, out: &Path) {
        sh(
            "minisign",
            &[
                "-S",
                "-s",
                self.dir.join("m.sec").to_str().unwrap(),
                "-m",
                file.to_str().unwrap(),
                "-x",
                out.to_str().unwrap(),
            ],
        );
    }

    fn minisign_key_id(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("m.pub")).unwrap();
        text.lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    }
}

impl Drop for Signers {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// A temp dir with a scratch ext4 disk, the CLI and the signers.
fn scratch() -> (tempfile::TempDir, LoopDisk, Cli, Signers) {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 200);
    let cli = Cli::new(t.path());
    let signers = Signers::new(t.path());
    (t, disk, cli, signers)
}

/// An image of `mib` with data and zeros, different for each `seed`.
fn image(mib: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(mib << 20, seed);
    v[(mib << 20) / 4..(mib << 20) / 2].fill(0);
    v
}

/// `[--json] stage IMAGE --name NAME --dir DIR --trusted-keys KEYS EXTRA…`
struct Stage<'a> {
    cli: &'a Cli,
    dir: &'a str,
    keys: &'a str,
}

impl Stage<'_> {
    fn args(&self, json: bool, image: &str, name: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = if json {
            vec!["--json".into()]
        } else {
            Vec::new()
        };
        a.extend(
            [
                "stage",
                image,
                "--name",
                name,
                "--dir",
                self.dir,
                "--trusted-keys",
                self.keys,
            ]
            .map(String::from),
        );
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }

    /// Staged: its result line.
    fn ok(&self, image: &str, name: &str, extra: &[&str]) -> serde_json::Value {
        let a = self.args(true, image, name, extra);
        self.cli
            .json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Refused with `code`: stderr.
    fn refused(&self, code: i32, image: &str, name: &str, extra: &[&str]) -> String {
        let a = self.args(false, image, name, extra);
        self.cli
            .expect_err(code, &a.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn signed_images_stage_only_when_a_trusted_key_signed_their_bytes() {
    let (t, disk, cli, signers) = scratch();
    let dir = disk.mnt.to_str().unwrap();
    let trusted = t.path().join("trusted.d");
    std::fs::create_dir_all(&trusted).unwrap();
    for who in ["builder", "expired"] {
        signers.export(
            &format!("{who}@example.org"),
            &trusted.join(format!("{who}.asc")),
        );
    }
    std::fs::copy(t.path().join("m.pub"), trusted.join("release.pub")).unwrap();
    let keys = trusted.to_str().unwrap();
    let stage = Stage {
        cli: &cli,
        dir,
        keys,
    };
    let p = |name: &str| t.path().join(name).to_str().unwrap().to_string();
    let builder = "builder@example.org";

    // A zstd-compressed image and its binary OpenPGP signature next to it:
    // found, checked over the compressed bytes as published.
    let data = image(24, 1);
    std::fs::write(p("sys.img"), &data).unwrap();
    sh(
        "zstd",
        &["-q", "-f", &p("sys.img"), "-o", &p("sys.img.zst")],
    );
    signers.sign(builder, p("sys.img.zst"), p("sys.img.zst.sig"), false, &[]);
    let out = stage.ok(&p("sys.img.zst"), "sys", &[]);
    let sig = &out["stagings"][0]["signature"];
    assert_eq!(sig["format"], "openpgp", "{out}");
    assert_eq!(sig["key"], signers.fingerprint(builder), "{out}");
    assert_eq!(sig["signer"], "Builder <builder@example.org>", "{out}");
    assert_eq!(sig["signature"], p("sys.img.zst.sig"), "{out}");
    assert_eq!(sig["key_file"], format!("{keys}/builder.asc"), "{out}");
    assert_image_on_disk(&disk, &cli.json(&["map", "sys", "--json"]), &data);
    let info = cli.json(&["info", "sys", "--json"]);
    assert_eq!(info["record"]["image"]["signature"], *sig, "{info}");
    let text = cli.expect(0, &["info", "sys"]);
    assert!(
        text.contains("signature:   good openpgp signature by key"),
        "{text}"
    );
    // the on-disk header holds the same verification: verify compares it
    // with the record
    cli.expect(0, &["verify", "sys"]);
    cli.expect(0, &["discard", "sys"]);

    // bmaptool's model: the image unsigned, its bmap signed (BMAP.asc);
    // every mapped range is checked against the bmap's SHA-256.
    std::fs::copy(p("sys.img"), p("sparse.img")).unwrap();
    sh("fallocate", &["--dig-holes", &p("sparse.img")]);
    sh(
        "bmaptool",
        &["create", "-o", &p("sparse.img.bmap"), &p("sparse.img")],
    );
    signers.sign(
        builder,
        p("sparse.img.bmap"),
        p("sparse.img.bmap.asc"),
        true,
        &[],
    );
    let out = stage.ok(&p("sparse.img"), "bm", &[]);
    let sig = &out["stagings"][0]["signature"];
    assert_eq!(sig["bmap"], p("sparse.img.bmap"), "{out}");
    assert_eq!(sig["signature"], p("sparse.img.bmap.asc"), "{out}");
    assert!(
        out["stagings"][0]["kind"]
            .as_str()
            .unwrap()
            .starts_with("bmap"),
        "{out}"
    );
    assert_image_on_disk(&disk, &cli.json(&["map", "bm", "--json"]), &data);
    cli.expect(0, &["discard", "bm"]);
    // signed by a key that is not trusted: refused before staging
    signers.sign(
        "stranger@example.org",
        p("sparse.img.bmap"),
        p("sparse.img.bmap.asc"),
        true,
        &[],
    );
    let err = stage.refused(26, &p("sparse.img"), "bm", &[]);
    assert!(err.contains("sparse.img.bmap.asc was made by"), "{err}");

    // A raw image over HTTP with its minisign signature next to the URL
    // (.sig and .asc are 404): one streamed read, checked as it comes.
    let raw = image(16, 2);
    std::fs::write(p("web.img"), &raw).unwrap();
    signers.minisign(Path::new(&p("web.img")), Path::new(&p("web.img.minisig")));
    let files = HashMap::from([
        ("/web.img".to_string(), Arc::new(raw.clone())),
        (
            "/web.img.minisig".to_string(),
            Arc::new(std::fs::read(p("web.img.minisig")).unwrap()),
        ),
    ]);
    let server = serve("127.0.0.1", files, Faults::default());
    let url = format!("http://127.0.0.1:{}/web.img", server.port);
    let out = stage.ok(&url, "web", &[]);
    let sig = &out["stagings"][0]["signature"];
    assert_eq!(sig["format"], "minisign", "{out}");
    assert_eq!(sig["key"], signers.minisign_key_id(), "{out}");
    assert_eq!(sig["signature"], format!("{url}.minisig"), "{out}");
    assert!(
        sig["trusted_comment"].as_str().unwrap().contains("web.img"),
        "{out}"
    );
    assert_image_on_disk(&disk, &cli.json(&["map", "web", "--json"]), &raw);
    cli.expect(0, &["discard", "web"]);

    // A signature over other bytes: only the end tells; the staging is
    // kept, marked failed, as a SHA-256 mismatch is.
    signers.sign(builder, p("web.img"), p("other.sig"), true, &[]);
    let err = stage.refused(
        26,
        &p("sys.img.zst"),
        "bad",
        &["--signature", &p("other.sig")],
    );
    assert!(err.contains("does not match the image's bytes"), "{err}");
    assert!(err.contains("marked failed: bad"), "{err}");
    let info = cli.json(&["info", "bad", "--json"]);
    assert_eq!(info["record"]["state"], "failed", "{info}");
    assert!(info["record"]["image"]["signature"].is_null(), "{info}");
    cli.expect_err(22, &["test-restore", "bad"]);
    cli.expect(0, &["discard", "bad"]);

    // Refused before anything is written.
    let refused = |signature: &str, expect: &str| {
        let err = stage.refused(26, &p("sys.img"), "x", &["--signature", signature]);
        assert!(err.contains(expect), "{expect}: {err}");
        assert!(containers_in(&disk.mnt).is_empty(), "{err}");
        assert!(!cli.state_dir.join("images/x.json").exists(), "{err}");
    };
    signers.sign(
        "stranger@example.org",
        p("sys.img"),
        p("stranger.sig"),
        false,
        &[],
    );
    refused(&p("stranger.sig"), "which is not among the trusted keys");
    let a = stage.args(
        true,
        &p("sys.img"),
        "x",
        &["--signature", &p("stranger.sig")],
    );
    let f = cli.json_failure(26, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(f["kind"], "signature_rejected", "{f}");
    let then = ["--faked-system-time", "20200101T010000!"];
    signers.sign(
        "expired@example.org",
        p("sys.img"),
        p("expired.sig"),
        false,
        &then,
    );
    refused(&p("expired.sig"), "expired on 2020-01-02");
    // a key whose newest self-signature lifted its expiry signs
    signers.export("renewed@example.org", &trusted.join("renewed.asc"));
    signers.sign(
        "renewed@example.org",
        p("sys.img"),
        p("renewed.sig"),
        false,
        &then,
    );
    let out = stage.ok(&p("sys.img"), "x", &["--signature", &p("renewed.sig")]);
    assert_eq!(
        out["stagings"][0]["signature"]["signer"], "Renewed <renewed@example.org>",
        "{out}"
    );
    cli.expect(0, &["discard", "x"]);
    signers.sign(
        "revoked@example.org",
        p("sys.img"),
        p("revoked.sig"),
        false,
        &[],
    );
    signers.revoke("revoked@example.org");
    signers.export("revoked@example.org", &trusted.join("revoked.asc"));
    refused(&p("revoked.sig"), "was revoked");
    signers.sign(builder, p("sys.img"), p("good.asc"), true, &[]);
    let armored = std::fs::read(p("good.asc")).unwrap();
    std::fs::write(p("truncated.asc"), &armored[..armored.len() / 2]).unwrap();
    refused(&p("truncated.asc"), "not a valid armored OpenPGP signature");
    refused(&p("sys.img"), "is it the image itself?");
    refused(&p("missing.sig"), "does not exist");
    // with no trusted key at all
    let none = Stage {
        keys: &p("nokeys"),
        ..stage
    };
    let err = none.refused(26, &p("sys.img"), "x", &["--signature", &p("good.asc")]);
    assert!(err.contains("no trusted keys"), "{err}");
    // The good one passes (armored, given explicitly).
    let out = stage.ok(&p("sys.img"), "x", &["--signature", &p("good.asc")]);
    assert_eq!(
        out["stagings"][0]["signature"]["format"], "openpgp",
        "{out}"
    );
    cli.expect(0, &["discard", "x"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn the_policy_lets_only_signed_stagings_become_bootable() {
    let (t, disk, cli, signers) = scratch();
    let mnt = disk.mnt.clone();
    // The machine's configuration: a trusted key and the rule.
    let config = t.path().join("etc");
    std::fs::create_dir_all(config.join("trusted.d")).unwrap();
    signers.export("builder@example.org", &config.join("trusted.d/builder.asc"));
    std::fs::write(config.join("policy.toml"), "require_signature = true\n").unwrap();
    // liverestore under that configuration, exiting `code`: its stderr
    let run = |code: i32, args: &[&str]| {
        let out = cli
            .cmd()
            .env("LIVERESTORE_CONFIG_DIR", &config)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        err
    };
    let img = crate::activate_grub::system_image(t.path());
    let g = crate::activate_grub::grub_dir_with_env(&mnt);
    let helper = crate::activate_grub::helper();
    let (img_s, mnt_s) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    let stage = ["stage", img_s, "--name", "sys", "--dir", mnt_s];
    let grub = g.to_str().unwrap();
    let activate = [
        "activate",
        "sys",
        "--loader",
        "grub",
        "--grub-dir",
        grub,
        "--helper",
        &helper,
    ];

    // Unsigned: staged (it can be tested), with a warning; not activated.
    let err = run(0, &stage);
    assert!(err.contains("`activate` will refuse it"), "{err}");
    let err = run(27, &activate);
    assert!(
        err.contains("requires it (require_signature = true)"),
        "{err}"
    );
    assert!(
        !mnt.join("boot/liverestore").exists(),
        "nothing of a boot entry"
    );
    cli.expect(0, &["discard", "sys"]);

    // Signed (the default trusted keys of the configuration directory, the
    // signature found next to the image), customized, then activated.
    let sig = PathBuf::from(format!("{}.asc", img.display()));
    signers.sign("builder@example.org", &img, &sig, true, &[]);
    run(0, &stage);
    run(0, &["customize", "sys", "--hostname", "signed-host"]);
    let info = cli.json(&["info", "sys", "--json"]);
    let image = &info["record"]["image"];
    let key = signers.fingerprint("builder@example.org");
    assert_eq!(image["signature"]["key"], key, "{info}");
    assert_eq!(
        image["customized"][0]["changes"][0]["what"], "hostname",
        "{info}"
    );
    let text = cli.expect(0, &["info", "sys"]);
    let note = "(of the image as staged; changed since by customize";
    assert!(text.contains(note), "{text}");
    run(0, &activate);
    assert!(mnt.join("boot/liverestore/sys/vmlinuz").exists());
    cli.expect(0, &["rollback"]);

    // A policy file with a rule this version does not know: refused, not
    // half-applied.
    std::fs::write(config.join("policy.toml"), "require_signatures = true\n").unwrap();
    let err = run(27, &activate);
    assert!(err.contains("require_signatures"), "{err}");
    cli.expect(0, &["discard", "sys"]);
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn a_signed_staging_cut_off_is_resumed_and_checked_whole() {
    let (t, disk, cli, signers) = scratch();
    let trusted = t.path().join("trusted.d");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(t.path().join("m.pub"), trusted.join("release.pub")).unwrap();
    let raw = image(48, 3);
    let img = t.path().join("slow.img");
    std::fs::write(&img, &raw).unwrap();
    let sig = t.path().join("slow.img.minisig");
    signers.minisign(&img, &sig);
    let files = HashMap::from([
        ("/slow.img".to_string(), Arc::new(raw.clone())),
        (
            "/slow.img.minisig".to_string(),
            Arc::new(std::fs::read(&sig).unwrap()),
        ),
    ]);
    // 6 MiB/s: the first checkpoint (5 s) comes well before the end.
    let server = serve(
        "127.0.0.1",
        files,
        Faults {
            rate: 6 << 20,
            ..Faults::default()
        },
    );
    let url = format!("http://127.0.0.1:{}/slow.img", server.port);
    let dir = disk.mnt.to_str().unwrap();
    let keys = trusted.to_str().unwrap();
    let mut child: ChildGuard = cli
        .cmd()
        .args([
            "stage",
            &url,
            "--name",
            "slow",
            "--dir",
            dir,
            "--trusted-keys",
            keys,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
        .into();
    let start = Instant::now();
    while recorded_written(&cli, "slow").unwrap_or(0) == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "stage ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let info = cli.json(&["info", "slow", "--json"]);
    let image = &info["record"]["image"];
    assert_eq!(info["record"]["state"], "staging", "{info}");
    assert!(
        image["signature"].is_null(),
        "not verified before the end: {info}"
    );
    assert_eq!(
        image["expected_signature"]["signature"],
        format!("{url}.minisig"),
        "{info}"
    );
    // Nothing usable meanwhile.
    cli.expect_err(22, &["test-restore", "slow"]);
    // The resume fetches the whole image again (the signature covers it
    // all), checks what is on the disk, and completes only once it held.
    let out = cli.json(&["--json", "stage", "--resume", "slow"]);
    assert_eq!(
        out["stagings"][0]["signature"]["format"], "minisign",
        "{out}"
    );
    assert_image_on_disk(&disk, &cli.json(&["map", "slow", "--json"]), &raw);
    cli.expect(0, &["discard", "slow"]);
}
