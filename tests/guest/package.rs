//! The Debian package as an administrator installs it: `scripts/package.sh`
//! builds it, a guest (Debian's kernel, no liverestore of the harness's)
//! installs it with `dpkg -i`, and the installed program stages an image
//! onto the guest's own mounted disk and verifies it; its man pages,
//! completions and state directory are where Debian puts them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::vm::{EXT4, Guest, VIRTIO_BLK};
use crate::common::*;

/// `scripts/package.sh`: the path of the package it built, of the test
/// build's own (static) liverestore, so that no second build is needed.
fn build_package() -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("scripts/package.sh"))
        .env("LIVERESTORE_BIN", env!("CARGO_BIN_EXE_liverestore"))
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/package.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    repo.join(stdout.lines().last().unwrap().trim())
}

const SCENARIO: &str = r#"
rm -f /usr/bin/liverestore
mkdir -p /var/lib/dpkg/info /var/lib/dpkg/updates /var/lib/dpkg/triggers /usr/sbin
touch /var/lib/dpkg/status /var/lib/dpkg/available
dpkg --force-depends -i /liverestore.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
echo "LR installed=$(dpkg-query -W -f='${Status} ${Version}' liverestore)"
echo "LR which=$(command -v liverestore)"
echo "LR version=$(liverestore --version)"
echo "LR state_dir=$(stat -c %a /var/lib/liverestore)"
echo "LR man_pages=$(ls /usr/share/man/man8 | grep -c '^liverestore.*\.8\.gz$')"
zcat /usr/share/man/man8/liverestore-stage.8.gz | grep -q 'resume' && echo "LR man_stage=ok"
grep -q test-restore /usr/share/bash-completion/completions/liverestore && echo "LR bash=ok"
test -s /usr/share/zsh/vendor-completions/_liverestore && echo "LR zsh=ok"
test -s /usr/share/fish/vendor_completions.d/liverestore.fish && echo "LR fish=ok"
mkdir -p /mnt/host
mount -t ext4 /dev/vda1 /mnt/host
liverestore --json stage /dev/vdb --name web --dir /mnt/host | tail -1 | grep -q '"ok":true' && echo "LR stage=ok"
liverestore verify web >/dev/null 2>&1 && echo "LR verify=ok"
liverestore discard web >/dev/null && echo "LR discard=ok"
umount /mnt/host
"#;

#[test]
#[ignore = "needs root and QEMU: scratch disks and guests (scripts/test.sh runs it)"]
fn the_debian_package_installs_and_runs_in_a_guest() {
    require_root();
    let deb = build_package();
    let listing = sh("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    for path in [
        "./usr/sbin/liverestore",
        "./usr/share/man/man8/liverestore-activate.8.gz",
        "./usr/share/man/man8/liverestore-ddi.8.gz",
        "./lib/systemd/system/liverestore-ddi.service",
        "./usr/share/bash-completion/completions/liverestore",
        "./var/lib/liverestore/",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("host-disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(200 * MIB)
        .unwrap();
    let d = disk.to_str().unwrap();
    sh("sgdisk", &["-o", "-n", "1:2048:0", "-t", "1:8300", d]);
    sh(
        "mkfs.ext4",
        &["-q", "-F", "-E", "offset=1048576,nodiscard", d, "198M"],
    );
    let image = ext4_image(t.path(), "image.ext4", 24, &[]);
    let guest = Guest {
        modules: [VIRTIO_BLK, EXT4].concat(),
        binaries: vec!["dpkg", "dpkg-deb", "dpkg-query", "/sbin/ldconfig"],
        files: vec![("/liverestore.deb".into(), std::fs::read(&deb).unwrap())],
        disks: vec![disk, image],
        scenario: SCENARIO.into(),
        timeout: Duration::from_secs(300),
        ..Guest::default()
    };
    let run = guest.run_ok(&t.path().join("vm"));
    let version = format!("liverestore {}", env!("CARGO_PKG_VERSION"));
    run.assert_values(&[
        (
            "installed",
            &format!("install ok installed {}", env!("CARGO_PKG_VERSION")),
        ),
        ("which", "/usr/sbin/liverestore"),
        ("version", &version),
        ("state_dir", "700"),
        ("man_stage", "ok"),
        ("bash", "ok"),
        ("zsh", "ok"),
        ("fish", "ok"),
        ("stage", "ok"),
        ("verify", "ok"),
        ("discard", "ok"),
    ]);
    let pages: usize = run.get("man_pages").parse().unwrap();
    assert!(pages >= 18, "{pages} man pages");
}
