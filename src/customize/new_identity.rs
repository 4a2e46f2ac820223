//! `--new-identity`: make the restored system a machine of its own when
//! the same image is restored onto many machines.
//!
//! - `/etc/machine-id` is emptied: systemd then makes a new one at first
//!   boot (and commits it); `/var/lib/dbus/machine-id`, when it is a file
//!   of its own rather than a link, is removed (D-Bus falls back to
//!   `/etc/machine-id`).
//! - SSH host keys are replaced by new ones, made now with `ssh-keygen`
//!   for the same key types (Debian's sshd does not make missing keys by
//!   itself, so removing them alone would leave a remote machine without
//!   SSH).
//! - With a hostname: `/etc/hostname` and the `127.0.1.1` line of
//!   `/etc/hosts`.

use std::path::Path;
use std::process::Command;

use super::Change;
use crate::attach::root_dir::{Meta, RootDir};
use crate::error::{Error, ErrorKind, Result};

/// Check a hostname: RFC 1123 labels (letters, digits, '-', not at either
/// end of a label), at most 253 characters.
pub fn check_hostname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidState,
            format!(
                "--hostname {name:?} is not a valid host name (letters, digits and '-', labels separated by '.')"
            ),
        ))
    }
}

/// `/etc/hosts` with the `127.0.1.1` line naming `hostname` (added after
/// the localhost line when there is none).
pub fn hosts_with(hosts: &str, hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let entry = if short == hostname {
        format!("127.0.1.1\t{hostname}")
    } else {
        format!("127.0.1.1\t{hostname}\t{short}")
    };
    let mut out = Vec::new();
    let mut replaced = false;
    for line in hosts.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !replaced {
                out.push(entry.clone());
                replaced = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    if !replaced {
        let at = out
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(out.len(), |i| i + 1);
        out.insert(at, entry);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The SSH host key types present in `names` (files of `/etc/ssh`):
/// `ssh_host_ed25519_key` → `ed25519`.
pub fn host_key_types(names: &[String]) -> Vec<String> {
    let mut types: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("ssh_host_")?.strip_suffix("_key"))
        .map(str::to_string)
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Apply the new identity to `root`.
pub fn apply(root: &RootDir, hostname: Option<&str>) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let machine_id = Path::new("/etc/machine-id");
    if root.kind(machine_id)?.is_some() {
        root.write(machine_id, b"", Meta::root(0o444))?;
        changes.push(Change::new(
            "machine-id",
            machine_id,
            "emptied: systemd makes a new one at first boot",
        ));
    }
    let dbus = Path::new("/var/lib/dbus/machine-id");
    if root.kind(dbus)? == Some(crate::attach::root_dir::Kind::File) {
        root.remove(dbus)?;
        changes.push(Change::new(
            "machine-id",
            dbus,
            "removed (D-Bus uses /etc/machine-id)",
        ));
    }
    changes.extend(ssh_host_keys(root, hostname)?);
    if let Some(h) = hostname {
        changes.extend(set_hostname(root, h)?);
    }
    Ok(changes)
}

/// Name the restored system `h`: `/etc/hostname` and `/etc/hosts`.
pub fn set_hostname(root: &RootDir, h: &str) -> Result<Vec<Change>> {
    check_hostname(h)?;
    root.write(
        Path::new("/etc/hostname"),
        format!("{h}\n").as_bytes(),
        Meta::root(0o644),
    )?;
    let hosts = Path::new("/etc/hosts");
    let old = root.read(hosts)?.unwrap_or_default();
    let new = hosts_with(&String::from_utf8_lossy(&old), h);
    root.write(hosts, new.as_bytes(), Meta::root(0o644))?;
    Ok(vec![
        Change::new("hostname", Path::new("/etc/hostname"), h),
        Change::new("hostname", hosts, &format!("127.0.1.1 is {h}")),
    ])
}

fn ssh_host_keys(root: &RootDir, hostname: Option<&str>) -> Result<Vec<Change>> {
    let dir = Path::new("/etc/ssh");
    let names: Vec<String> = root
        .list(dir)?
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let types = host_key_types(&names);
    if types.is_empty() {
        return Ok(Vec::new());
    }
    // Made outside the image, then copied in through `root` (ssh-keygen
    // would follow links inside the image from this system's `/`).
    let work = tempfile::tempdir().map_err(|e| Error::io("make a temporary directory", e))?;
    let comment = format!("root@{}", hostname.unwrap_or("restored"));
    let mut changes = Vec::new();
    for t in &types {
        let file = work.path().join(format!("ssh_host_{t}_key"));
        super::run_tool(
            Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-t", t, "-C", &comment, "-f"])
                .arg(&file),
            "openssh-client",
        )?;
        for (suffix, mode) in [("", 0o600), (".pub", 0o644)] {
            let name = format!("ssh_host_{t}_key{suffix}");
            let data = std::fs::read(work.path().join(&name))
                .map_err(|e| Error::io("read a new host key", e))?;
            let rel = dir.join(&name);
            root.write(&rel, &data, Meta::root(mode))?;
        }
        changes.push(Change::new(
            "ssh-host-key",
            &dir.join(format!("ssh_host_{t}_key")),
            &format!("new {t} key"),
        ));
    }
    // Keys of a type that has no private key any more (stray .pub files).
    for n in &names {
        if let Some(base) = n.strip_suffix(".pub")
            && n.starts_with("ssh_host_")
            && !types.iter().any(|t| base == format!("ssh_host_{t}_key"))
        {
            root.remove(&dir.join(n))?;
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web1", "web-1.example.org", "a"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", "web-", "a..b", "web_1", "wéb", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_lines() {
        assert_eq!(
            hosts_with(
                "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 ip6-localhost\n",
                "new"
            ),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n::1 ip6-localhost\n"
        );
        assert_eq!(
            hosts_with("127.0.0.1 localhost\n::1 localhost\n", "web.example.org"),
            "127.0.0.1 localhost\n127.0.1.1\tweb.example.org\tweb\n::1 localhost\n"
        );
        assert_eq!(hosts_with("", "h"), "127.0.1.1\th\n");
    }

    #[test]
    fn key_types() {
        let names: Vec<String> = [
            "sshd_config",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "moduli",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(host_key_types(&names), ["ed25519", "rsa"]);
    }

    #[test]
    #[ignore = "needs root: the files it makes are owned by root (scripts/test.sh runs it)"]
    fn identity_in_a_tree() {
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("no ssh-keygen here: skipped");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/dbus")).unwrap();
        std::fs::write(
            r.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        std::fs::write(r.join("var/lib/dbus/machine-id"), "0123\n").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "OLD").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key.pub"), "OLD").unwrap();
        std::fs::write(r.join("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 old\n").unwrap();
        let root = RootDir::open(r).unwrap();
        let changes = apply(&root, Some("fresh")).unwrap();
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(!r.join("var/lib/dbus/machine-id").exists());
        let key = std::fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key")).unwrap();
        assert!(key.contains("OPENSSH PRIVATE KEY"), "{key}");
        let public = std::fs::read_to_string(r.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 ") && public.trim_end().ends_with("root@fresh"));
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "fresh\n"
        );
        assert!(
            std::fs::read_to_string(r.join("etc/hosts"))
                .unwrap()
                .contains("127.0.1.1\tfresh")
        );
        let kinds: Vec<&str> = changes.iter().map(|c| c.what.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "machine-id",
                "machine-id",
                "ssh-host-key",
                "hostname",
                "hostname"
            ]
        );
    }
}
