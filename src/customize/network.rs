//! `--carry-network`: bring the running system's network configuration
//! into the restored system, so a remote machine comes back online after
//! the trial boot.
//!
//! Four configuration stacks are known. Which one a system uses is read
//! off its tree ([`stacks_in`]); the source's configuration files of every
//! stack the restored system also uses are copied. Configurations are not
//! translated between stacks: when the two systems share none, that is an
//! error that says what each side uses, and nothing is copied.
//! `/etc/resolv.conf` comes along when it is a plain file on both sides
//! (not a link to a resolver daemon's file).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Change;
use super::copy;
use crate::attach::root_dir::{Kind, RootDir};
use crate::error::{Error, ErrorKind, Result};

/// A network configuration stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    Netplan,
    NetworkManager,
    SystemdNetworkd,
    Ifupdown,
}

impl Stack {
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Netplan => "netplan",
            Stack::NetworkManager => "NetworkManager",
            Stack::SystemdNetworkd => "systemd-networkd",
            Stack::Ifupdown => "ifupdown",
        }
    }

    /// Directories whose files are this stack's configuration, with the
    /// file name suffixes that count (empty: every file).
    fn config_dirs(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Stack::Netplan => &[("/etc/netplan", &[".yaml", ".yml"])],
            Stack::NetworkManager => &[
                ("/etc/NetworkManager/system-connections", &[]),
                ("/etc/NetworkManager/conf.d", &[".conf"]),
            ],
            Stack::SystemdNetworkd => {
                &[("/etc/systemd/network", &[".network", ".netdev", ".link"])]
            }
            Stack::Ifupdown => &[("/etc/network/interfaces.d", &[])],
        }
    }

    /// Single configuration files of this stack.
    fn config_files(self) -> &'static [&'static str] {
        match self {
            Stack::Ifupdown => &["/etc/network/interfaces"],
            _ => &[],
        }
    }
}

/// What [`stacks_in`] needs of a system's tree.
pub trait Tree {
    fn exists(&self, path: &Path) -> bool;
    /// File names in a directory, sorted; empty when there is none.
    fn list(&self, path: &Path) -> Vec<String>;
}

impl Tree for RootDir {
    fn exists(&self, path: &Path) -> bool {
        RootDir::exists(self, path)
    }
    fn list(&self, path: &Path) -> Vec<String> {
        RootDir::list(self, path)
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }
}

/// A system's tree as this system sees it, at `root` (`/` for the running
/// system itself).
pub struct HostTree(pub PathBuf);

impl HostTree {
    fn at(&self, path: &Path) -> PathBuf {
        self.0.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl Tree for HostTree {
    fn exists(&self, path: &Path) -> bool {
        self.at(path).exists()
    }
    fn list(&self, path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.at(path))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn any_exists(t: &dyn Tree, paths: &[&str]) -> bool {
    paths.iter().any(|p| t.exists(Path::new(p)))
}

/// The configuration files of `stack` in `t`, as absolute paths.
pub fn config_files(t: &dyn Tree, stack: Stack) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in stack.config_files() {
        if t.exists(Path::new(f)) {
            out.push(PathBuf::from(f));
        }
    }
    for (dir, suffixes) in stack.config_dirs() {
        for n in t.list(Path::new(dir)) {
            if !n.starts_with('.')
                && (suffixes.is_empty() || suffixes.iter().any(|s| n.ends_with(s)))
            {
                out.push(Path::new(dir).join(n));
            }
        }
    }
    out
}

/// The stacks a system uses: netplan when it has netplan files;
/// NetworkManager when it is installed; systemd-networkd when it is
/// enabled or has `.network` files; ifupdown when `ifup` and
/// `/etc/network/interfaces` are there.
pub fn stacks_in(t: &dyn Tree) -> Vec<Stack> {
    let mut out = Vec::new();
    if !config_files(t, Stack::Netplan).is_empty() {
        out.push(Stack::Netplan);
    }
    if any_exists(t, &["/usr/sbin/NetworkManager", "/sbin/NetworkManager"]) {
        out.push(Stack::NetworkManager);
    }
    let networkd_enabled = t.exists(Path::new(
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    ));
    if networkd_enabled
        || t.list(Path::new("/etc/systemd/network"))
            .iter()
            .any(|n| n.ends_with(".network"))
    {
        out.push(Stack::SystemdNetworkd);
    }
    if any_exists(t, &["/sbin/ifup", "/usr/sbin/ifup"])
        && t.exists(Path::new("/etc/network/interfaces"))
    {
        out.push(Stack::Ifupdown);
    }
    out
}

fn names(stacks: &[Stack]) -> String {
    if stacks.is_empty() {
        return "none of netplan, NetworkManager, systemd-networkd, ifupdown".into();
    }
    stacks
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stacks to carry: those the source has configuration for and the
/// restored system uses. An error when there are none.
pub fn choose(source: &[Stack], restored: &[Stack]) -> Result<Vec<Stack>> {
    let common: Vec<Stack> = source
        .iter()
        .copied()
        .filter(|s| restored.contains(s))
        .collect();
    if !common.is_empty() {
        return Ok(common);
    }
    let why = if source.is_empty() {
        "this system has no network configuration liverestore knows (netplan, NetworkManager, systemd-networkd, ifupdown)".to_string()
    } else {
        format!(
            "this system's network is configured with {}, the restored system uses {}: liverestore does not translate between them; carry the files you need with --preserve",
            names(source),
            names(restored)
        )
    };
    Err(Error::new(
        ErrorKind::InvalidState,
        format!("--carry-network: {why}"),
    ))
}

/// The stacks `carry` would copy from `host` into `root`, or why none:
/// also asked before anything changes (on a read-only mount of the image).
pub fn stacks_to_carry(host: &HostTree, root: &RootDir) -> Result<Vec<Stack>> {
    let source: Vec<Stack> = stacks_in(host)
        .into_iter()
        .filter(|s| !config_files(host, *s).is_empty())
        .collect();
    choose(&source, &stacks_in(root))
}

/// `--carry-network` can be done: asked before the image is changed.
pub fn check(source_root: &Path, root: &RootDir) -> Result<()> {
    stacks_to_carry(&HostTree(source_root.to_path_buf()), root).map(|_| ())
}

/// Copy the network configuration from the system at `source_root` into
/// `root`.
pub fn carry(source_root: &Path, root: &RootDir) -> Result<Vec<Change>> {
    let host = HostTree(source_root.to_path_buf());
    let mut changes = Vec::new();
    for stack in stacks_to_carry(&host, root)? {
        for file in config_files(&host, stack) {
            copy::preserve(source_root, &file, root)?;
            changes.push(Change::new("network", &file, stack.as_str()));
        }
    }
    let resolv = Path::new("/etc/resolv.conf");
    let source_plain = std::fs::symlink_metadata(host.at(resolv)).is_ok_and(|m| m.is_file());
    if source_plain && matches!(root.kind(resolv)?, None | Some(Kind::File)) {
        copy::preserve(source_root, resolv, root)?;
        changes.push(Change::new("network", resolv, "name servers"));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> (tempfile::TempDir, HostTree) {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let p = t.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let h = HostTree(t.path().to_path_buf());
        (t, h)
    }

    #[test]
    fn stacks_are_told_from_the_tree() {
        let (_t, h) = tree(&["/etc/netplan/01-net.yaml", "/usr/sbin/NetworkManager"]);
        assert_eq!(stacks_in(&h), [Stack::Netplan, Stack::NetworkManager]);
        let (_t, h) = tree(&[
            "/etc/systemd/network/10-eth.network",
            "/etc/systemd/network/x.link",
        ]);
        assert_eq!(stacks_in(&h), [Stack::SystemdNetworkd]);
        assert_eq!(
            config_files(&h, Stack::SystemdNetworkd),
            [
                PathBuf::from("/etc/systemd/network/10-eth.network"),
                PathBuf::from("/etc/systemd/network/x.link")
            ]
        );
        let (_t, h) = tree(&[
            "/sbin/ifup",
            "/etc/network/interfaces",
            "/etc/network/interfaces.d/eth0",
        ]);
        assert_eq!(stacks_in(&h), [Stack::Ifupdown]);
        assert_eq!(config_files(&h, Stack::Ifupdown).len(), 2);
        // networkd installed but not enabled, no .network: not used.
        let (_t, h) = tree(&["/usr/lib/systemd/systemd-networkd", "/etc/netplan/README"]);
        assert_eq!(stacks_in(&h), []);
    }

    #[test]
    fn only_shared_stacks_are_carried() {
        use Stack::*;
        assert_eq!(
            choose(&[Netplan, NetworkManager], &[NetworkManager]).unwrap(),
            [NetworkManager]
        );
        let e = choose(&[Ifupdown], &[SystemdNetworkd]).unwrap_err();
        assert!(
            e.message()
                .contains("configured with ifupdown, the restored system uses systemd-networkd"),
            "{e}"
        );
        let e = choose(&[], &[Ifupdown]).unwrap_err();
        assert!(e.message().contains("no network configuration"), "{e}");
    }
}
