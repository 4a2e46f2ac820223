//! The restored system's `/etc/fstab`: entries that name a device which
//! will not exist when it boots here.
//!
//! An image comes from another machine: its fstab names that machine's
//! ESP, swap or data disks by `UUID=`, `LABEL=`, `PARTUUID=` or
//! `PARTLABEL=` (or their `/dev/disk/by-*` links). Booted on this machine,
//! systemd waits for such a device, gives up and stops in emergency mode,
//! and a remote machine is lost until the trial falls back. An entry is at
//! risk when it names a device by such an identity that none of the
//! image's own filesystems or partitions has, and is neither the root
//! (`/`: liverestore provides it), `noauto` nor `nofail`. The fix makes
//! those entries `nofail` (systemd then boots without them), changing
//! nothing else in the file, byte for byte.
//!
//! Pure text: the identities of the image come from the caller.

use std::path::Path;

use serde::Serialize;

/// What identifies the image's own filesystems and partitions (what its
/// fstab may name and find at boot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageIds {
    /// Filesystem UUIDs (`UUID=`), lowercase; vfat's as `ABCD-1234`.
    pub uuids: Vec<String>,
    /// Filesystem labels (`LABEL=`).
    pub labels: Vec<String>,
    /// Partition GUIDs (`PARTUUID=`), lowercase.
    pub partuuids: Vec<String>,
    /// Partition names (`PARTLABEL=`).
    pub partlabels: Vec<String>,
}

/// The filesystem UUID and label in the first 4 KiB of a filesystem
/// (ext4, xfs or vfat; what `blkid` reports as UUID and LABEL).
pub fn ids_of_head(head: &[u8]) -> (Option<String>, Option<String>) {
    use crate::space::hostfs::{FsKind, fs_uuid};
    let text = |b: Option<&[u8]>| {
        let b = b?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let t = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
        (!t.is_empty() && t != "NO NAME").then_some(t)
    };
    match crate::attach::test_restore::detect_filesystem(head) {
        Some("ext4") => (
            fs_uuid(FsKind::Ext4, head),
            text(head.get(1024 + 0x78..1024 + 0x88)),
        ),
        Some("xfs") => (fs_uuid(FsKind::Xfs, head), text(head.get(108..120))),
        Some("vfat") => {
            let fat32 = head.get(22..24) == Some(&[0, 0]);
            let at = if fat32 { 71 } else { 43 };
            (fs_uuid(FsKind::Vfat, head), text(head.get(at..at + 11)))
        }
        _ => (None, None),
    }
}

/// An fstab entry whose device will not exist at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AtRisk {
    /// 1-based line number.
    pub line: usize,
    pub device: String,
    pub mount_point: String,
}

impl std::fmt::Display for AtRisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, line {})",
            self.mount_point, self.device, self.line
        )
    }
}

/// The device identity `spec` names, as (kind, value): `UUID=x` and
/// `/dev/disk/by-uuid/x` are both ("uuid", "x"). None: a plain device
/// path, `tmpfs`, a network share…, which liverestore cannot judge.
fn identity(spec: &str) -> Option<(&'static str, String)> {
    let unquote = |v: &str| v.trim_matches('"').to_string();
    for (prefix, kind) in [
        ("UUID=", "uuid"),
        ("LABEL=", "label"),
        ("PARTUUID=", "partuuid"),
        ("PARTLABEL=", "partlabel"),
        ("/dev/disk/by-uuid/", "uuid"),
        ("/dev/disk/by-label/", "label"),
        ("/dev/disk/by-partuuid/", "partuuid"),
        ("/dev/disk/by-partlabel/", "partlabel"),
    ] {
        if let Some(v) = spec.strip_prefix(prefix) {
            return Some((kind, unquote(v)));
        }
    }
    None
}

impl ImageIds {
    fn has(&self, kind: &str, value: &str) -> bool {
        let list = match kind {
            "uuid" => &self.uuids,
            "label" => &self.labels,
            "partuuid" => &self.partuuids,
            _ => &self.partlabels,
        };
        list.iter().any(|v| match kind {
            "uuid" | "partuuid" => v.eq_ignore_ascii_case(value),
            _ => v == value,
        })
    }
}

/// The fields of a non-comment line: device, mount point, type, options.
fn fields(line: &str) -> Option<[&str; 4]> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let mut f = t.split_whitespace();
    Some([
        f.next()?,
        f.next()?,
        f.next()?,
        f.next().unwrap_or("defaults"),
    ])
}

/// The entries of `fstab` whose device will not exist at boot.
pub fn at_risk(fstab: &str, ids: &ImageIds) -> Vec<AtRisk> {
    fstab
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let [device, mount_point, _, options] = fields(line)?;
            let opts: Vec<&str> = options.split(',').collect();
            if mount_point == "/" || opts.contains(&"nofail") || opts.contains(&"noauto") {
                return None;
            }
            let (kind, value) = identity(device)?;
            (!ids.has(kind, &value)).then(|| AtRisk {
                line: i + 1,
                device: device.to_string(),
                mount_point: mount_point.to_string(),
            })
        })
        .collect()
}

/// `fstab` with `nofail` added to the options of the entries at `lines`
/// (1-based); every other byte as it was. An entry without an options
/// field gets `defaults,nofail`.
pub fn with_nofail(fstab: &str, lines: &[usize]) -> String {
    let mut out = String::with_capacity(fstab.len() + 8 * lines.len());
    for (i, line) in fstab.split_inclusive('\n').enumerate() {
        if !lines.contains(&(i + 1)) {
            out.push_str(line);
            continue;
        }
        // Find the fourth field in place, keeping the spacing around it.
        let mut field = 0;
        let mut in_field = false;
        let mut insert_at = None;
        let mut fields_end = line.trim_end_matches(['\n', '\r']).len();
        for (at, c) in line.char_indices() {
            if at >= fields_end {
                break;
            }
            match (c.is_whitespace(), in_field) {
                (false, false) => {
                    in_field = true;
                    field += 1;
                }
                (true, true) => {
                    in_field = false;
                    if field == 4 {
                        insert_at = Some(at);
                        break;
                    }
                }
                _ => {}
            }
        }
        if insert_at.is_none() && field == 4 {
            insert_at = Some(fields_end);
        }
        match insert_at {
            Some(at) => {
                out.push_str(&line[..at]);
                out.push_str(",nofail");
                out.push_str(&line[at..]);
            }
            None => {
                // Three fields: add the options field.
                while line[..fields_end].ends_with([' ', '\t']) {
                    fields_end -= 1;
                }
                out.push_str(&line[..fields_end]);
                out.push_str(" defaults,nofail");
                out.push_str(&line[fields_end..]);
            }
        }
    }
    out
}

/// The entries of `fstab`: (device, mount point), in order.
pub fn entries(fstab: &str) -> Vec<(String, String)> {
    fstab
        .lines()
        .filter_map(|line| {
            let [device, mount_point, _, _] = fields(line)?;
            Some((device.to_string(), mount_point.to_string()))
        })
        .collect()
}

/// The `/dev` path of the block device an fstab entry names (`UUID=…` →
/// `/dev/disk/by-uuid/…`, `/dev/sda1` as it is); None for what names no
/// block device (`tmpfs`, `proc`, `host:/export`, `none`).
pub fn device_link(device: &str) -> Option<std::path::PathBuf> {
    let device = device.trim_matches('"');
    match identity(device) {
        Some((kind, v)) => (!v.is_empty() && !v.contains('/'))
            .then(|| Path::new("/dev/disk").join(format!("by-{kind}")).join(v)),
        None => device.starts_with("/dev/").then(|| device.into()),
    }
}

/// Why a copy's fstab entry for `mount_point` is commented out (the
/// comment, and the change as listed), if it is.
fn left_out_of_copy(
    mount_point: &str,
    merged: &[String],
    held: &[String],
) -> Option<(&'static str, &'static str)> {
    if merged.iter().any(|m| m == mount_point) {
        Some(("was copied into the root filesystem", "copied into /"))
    } else if held.iter().any(|m| m == mount_point) {
        Some((
            "is on the disk this copy boots mapped from, which device-mapper holds then",
            "on the disk the standby is mapped from",
        ))
    } else {
        None
    }
}

/// `fstab` of a copy of a running system (`snapshot`) whose root is now
/// the filesystem `root_uuid` of type `fs_type`: the `/` entry names it
/// (options and pass kept); the entries of filesystems copied into the
/// root (`merged`, e.g. `/boot`) and those on the disk the copy boots
/// mapped from (`held`, e.g. `/boot/efi`: device-mapper holds that disk,
/// its partitions cannot be mounted beside it) are commented out, saying
/// why; every other line as it was. Also returns what changed, one line
/// each.
pub fn for_copy(
    fstab: &str,
    root_uuid: &str,
    fs_type: &str,
    merged: &[String],
    held: &[String],
) -> (String, Vec<String>) {
    let mut out = String::with_capacity(fstab.len() + 128);
    let mut changes = Vec::new();
    let mut root_seen = false;
    for line in fstab.split_inclusive('\n') {
        let Some([device, mount_point, _, _]) = fields(line) else {
            out.push_str(line);
            continue;
        };
        if mount_point == "/" && !root_seen {
            root_seen = true;
            let rest: Vec<&str> = line.split_whitespace().skip(3).collect();
            let rest = if rest.is_empty() {
                "defaults 0 1".to_string()
            } else {
                rest.join(" ")
            };
            out.push_str(&format!("UUID={root_uuid} / {fs_type} {rest}\n"));
            changes.push(format!("/ is now UUID={root_uuid} (was {device})"));
        } else if let Some((why, short)) = left_out_of_copy(mount_point, merged, held) {
            out.push_str(&format!(
                "# liverestore snapshot: {mount_point} {why}\n# {}",
                line.trim_start()
            ));
            if !line.ends_with('\n') {
                out.push('\n');
            }
            changes.push(format!("{mount_point} ({device}) commented out: {short}"));
        } else {
            out.push_str(line);
        }
    }
    if !root_seen {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("UUID={root_uuid} / {fs_type} defaults 0 1\n"));
        changes.push(format!("/ added as UUID={root_uuid}"));
    }
    (out, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSTAB: &str = "# /etc/fstab of another machine\n\
UUID=1111aaaa-0000-0000-0000-000000000001 / ext4 errors=remount-ro 0 1\n\
UUID=ABCD-1234  /boot/efi  vfat  umask=0077  0  1\n\
UUID=2222bbbb-0000-0000-0000-000000000002 none swap sw 0 0\n\
LABEL=data /data xfs defaults,nofail 0 2\n\
PARTUUID=\"c0ffee00-0000-0000-0000-000000000003\" /srv ext4 defaults 0 2\n\
/dev/disk/by-uuid/3333cccc-0000-0000-0000-000000000003 /home ext4 defaults 0 2\n\
LABEL=backup /backup ext4 noauto 0 0\n\
/dev/sdb1 /scratch ext4 defaults 0 2\n\
tmpfs /tmp tmpfs\n\
\tUUID=4444dddd-0000-0000-0000-000000000004\t/var\text4\n";

    fn ids() -> ImageIds {
        ImageIds {
            uuids: vec![
                "1111aaaa-0000-0000-0000-000000000001".into(),
                "3333CCCC-0000-0000-0000-000000000003".into(),
            ],
            ..ImageIds::default()
        }
    }

    #[test]
    fn finds_the_entries_that_would_stop_the_boot() {
        let risky = at_risk(FSTAB, &ids());
        let points: Vec<&str> = risky.iter().map(|r| r.mount_point.as_str()).collect();
        assert_eq!(points, ["/boot/efi", "none", "/srv", "/var"]);
        assert_eq!(risky[0].line, 3);
        assert_eq!(risky[0].to_string(), "/boot/efi (UUID=ABCD-1234, line 3)");
        // the image's own partitions count
        let mut own = ids();
        own.uuids.push("abcd-1234".into());
        own.partuuids
            .push("C0FFEE00-0000-0000-0000-000000000003".into());
        let points: Vec<String> = at_risk(FSTAB, &own)
            .into_iter()
            .map(|r| r.mount_point)
            .collect();
        assert_eq!(points, ["none", "/var"]);
        assert!(at_risk("", &ids()).is_empty());
        assert!(at_risk("garbage\n#\n  \n", &ids()).is_empty());
    }

    #[test]
    fn nofail_changes_those_entries_and_nothing_else() {
        let lines: Vec<usize> = at_risk(FSTAB, &ids()).iter().map(|r| r.line).collect();
        let fixed = with_nofail(FSTAB, &lines);
        assert!(at_risk(&fixed, &ids()).is_empty(), "{fixed}");
        let changed: Vec<(&str, &str)> = FSTAB
            .lines()
            .zip(fixed.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            [
                (
                    "UUID=ABCD-1234  /boot/efi  vfat  umask=0077  0  1",
                    "UUID=ABCD-1234  /boot/efi  vfat  umask=0077,nofail  0  1"
                ),
                (
                    "UUID=2222bbbb-0000-0000-0000-000000000002 none swap sw 0 0",
                    "UUID=2222bbbb-0000-0000-0000-000000000002 none swap sw,nofail 0 0"
                ),
                (
                    "PARTUUID=\"c0ffee00-0000-0000-0000-000000000003\" /srv ext4 defaults 0 2",
                    "PARTUUID=\"c0ffee00-0000-0000-0000-000000000003\" /srv ext4 defaults,nofail 0 2"
                ),
                (
                    "\tUUID=4444dddd-0000-0000-0000-000000000004\t/var\text4",
                    "\tUUID=4444dddd-0000-0000-0000-000000000004\t/var\text4 defaults,nofail"
                ),
            ]
        );
        assert_eq!(
            fixed.len(),
            FSTAB.len() + 3 * ",nofail".len() + " defaults,nofail".len()
        );
        // a file without a final newline keeps that too
        assert_eq!(
            with_nofail("UUID=x /a ext4 rw", &[1]),
            "UUID=x /a ext4 rw,nofail"
        );
        assert_eq!(with_nofail(FSTAB, &[]), FSTAB);
    }

    #[test]
    fn a_copy_names_its_own_root_and_drops_what_it_merged() {
        let fstab = "# /etc/fstab\nUUID=aaaa / ext4 errors=remount-ro 0 1\nUUID=bbbb /boot ext4 defaults 0 2\nUUID=1A2B-3C4D /boot/efi vfat umask=0077 0 1\n/swapfile none swap sw 0 0";
        let (out, changes) = for_copy(fstab, "cccc", "ext4", &["/boot".to_string()], &[]);
        assert_eq!(
            out,
            "# /etc/fstab\nUUID=cccc / ext4 errors=remount-ro 0 1\n# liverestore snapshot: /boot was copied into the root filesystem\n# UUID=bbbb /boot ext4 defaults 0 2\nUUID=1A2B-3C4D /boot/efi vfat umask=0077 0 1\n/swapfile none swap sw 0 0"
        );
        assert_eq!(changes.len(), 2);
        let (out, changes) = for_copy("", "cccc", "xfs", &[], &[]);
        assert_eq!(out, "UUID=cccc / xfs defaults 0 1\n");
        assert_eq!(changes, ["/ added as UUID=cccc"]);
        let (out, _) = for_copy("proc /proc proc defaults", "cccc", "xfs", &[], &[]);
        assert_eq!(
            out,
            "proc /proc proc defaults\nUUID=cccc / xfs defaults 0 1\n"
        );
        // the ESP on the disk the standby is mapped from
        let (out, changes) = for_copy(fstab, "cccc", "ext4", &[], &["/boot/efi".to_string()]);
        assert!(
            out.contains("from, which device-mapper holds then\n# UUID=1A2B-3C4D /boot/efi vfat")
        );
        assert!(out.contains("\nUUID=bbbb /boot ext4"));
        assert_eq!(
            changes[1],
            "/boot/efi (UUID=1A2B-3C4D) commented out: on the disk the standby is mapped from"
        );
    }

    #[test]
    fn devices_fstab_names() {
        let e = entries("# c\nUUID=a / ext4 rw 0 1\ntmpfs /tmp tmpfs rw\n");
        assert_eq!(
            e,
            [
                ("UUID=a".into(), "/".into()),
                ("tmpfs".into(), "/tmp".into())
            ]
        );
        assert_eq!(
            device_link("UUID=ab-12"),
            Some("/dev/disk/by-uuid/ab-12".into())
        );
        assert_eq!(
            device_link("PARTUUID=\"x\""),
            Some("/dev/disk/by-partuuid/x".into())
        );
        assert_eq!(
            device_link("LABEL=data"),
            Some("/dev/disk/by-label/data".into())
        );
        assert_eq!(device_link("/dev/vda1"), Some("/dev/vda1".into()));
        assert_eq!(device_link("UUID=../../sda"), None);
        assert_eq!(device_link("tmpfs"), None);
        assert_eq!(device_link("host:/export"), None);
    }
}
