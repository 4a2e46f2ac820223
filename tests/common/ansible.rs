//! Ansible as the tests run it: ansible-core from PyPI in the virtualenv
//! `scripts/ansible-env.sh` makes (on first use, or waited for while
//! scripts/test.sh makes it), the collection copied where Ansible looks for
//! it, and an inventory, HOME, temp and control directories of the test's
//! own. The host tests drive network-namespace hosts with it
//! (`tests/host/ansible.rs`), the real Debian guest run a QEMU guest over
//! SSH (`tests/guest/debian.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::sh;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program of the virtualenv, which `scripts/ansible-env.sh` makes on
/// first use (or waits for, while scripts/test.sh makes it).
pub fn venv_bin(tool: &str) -> PathBuf {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        let out = run(Command::new("bash").arg(repo().join("scripts/ansible-env.sh")));
        assert!(
            out.status.success(),
            "scripts/ansible-env.sh: {}",
            text(&out)
        );
    });
    repo().join("target/ansible/venv/bin").join(tool)
}

/// The collection where Ansible looks for it:
/// `DIR/ansible_collections/liverestore/liverestore`, a copy of `ansible/`.
pub fn collection_copy(dir: &Path) -> PathBuf {
    let dest = dir.join("ansible_collections/liverestore/liverestore");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    sh(
        "cp",
        &[
            "-a",
            repo().join("ansible").to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
    );
    dest
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Ansible, as an administrator runs it: the inventory, the collection,
/// and a HOME, temp and control directories of the test's own.
pub struct Ansible {
    pub dir: PathBuf,
    pub inventory: PathBuf,
}

impl Ansible {
    /// In `DIR/ansible`, with a copy of the collection; the inventory is
    /// the caller's to write.
    pub fn new(t: &Path) -> Ansible {
        let ans = Ansible {
            dir: t.join("ansible"),
            inventory: t.join("ansible/hosts.yml"),
        };
        for sub in ["collections", "home"] {
            std::fs::create_dir_all(ans.dir.join(sub)).unwrap();
        }
        collection_copy(&ans.dir.join("collections"));
        ans
    }

    pub fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(venv_bin(tool));
        c.arg("-i")
            .arg(&self.inventory)
            .env("HOME", self.dir.join("home"))
            .env("ANSIBLE_COLLECTIONS_PATH", self.dir.join("collections"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_FORKS", "8")
            .env("ANSIBLE_REMOTE_TMP", self.dir.join("remote-tmp"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("local-tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.dir.join("cp"))
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            // one SSH command a module, not four (as a fleet's ansible.cfg
            // has it: sudo without requiretty is the norm)
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_VERBOSITY", "0")
            // the SSH masters end soon after the play (the hosts go away)
            .env(
                "ANSIBLE_SSH_ARGS",
                "-o ControlMaster=auto -o ControlPersist=5s",
            )
            .stdin(Stdio::null());
        c
    }

    /// An ad-hoc module run on `host`: its JSON result and whether it
    /// failed.
    pub fn module(
        &self,
        host: &str,
        module: &str,
        args: &str,
        extra: &[&str],
    ) -> (bool, serde_json::Value) {
        let (failed, v, _) = self.module_out(host, module, args, extra);
        (failed, v)
    }

    /// The same, and all it printed (`--diff` shows the diff there).
    pub fn module_out(
        &self,
        host: &str,
        module: &str,
        args: &str,
        extra: &[&str],
    ) -> (bool, serde_json::Value, String) {
        let out = run(self
            .cmd("ansible")
            .args([
                host,
                "-m",
                &format!("liverestore.liverestore.{module}"),
                "-a",
                args,
            ])
            .args(extra));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // the diff (with --diff), then `HOST | STATUS => {` and the JSON
        let at = stdout
            .find(&format!("{host} | "))
            .unwrap_or_else(|| panic!("no result: {}", text(&out)));
        let (head, json) = stdout[at..].split_once(" => ").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        (head.contains("FAILED"), v, stdout[..at].to_string())
    }
}
