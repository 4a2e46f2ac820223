//! A volume group's free extents as a segment source (`--lvm-free VG`):
//! each staging gets a new linear logical volume, `lr-NAME`, that holds its
//! image whole (its header stays in a container file of the first `--dir`).
//!
//! LVM's own tools do what only they may do: report the group's free
//! space (their JSON reports, `--reportformat json`), and create and
//! remove a volume, which changes LVM's on-disk metadata. Where the
//! volume's bytes are is never taken from them: it is read from the
//! kernel's device-mapper tables and composed down to the disk, as for a
//! `--dir` on a volume ([`SysBlock`]), and re-read before every use.
//!
//! A volume liverestore made carries the tag `liverestore`; `discard`
//! removes only a volume with that tag, that name and the device-mapper
//! UUID on record.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::map::device_layout::LayoutPiece;
use crate::space::hostfs::SysBlock;

/// The tag of every volume liverestore creates.
pub const TAG: &str = "liverestore";

/// What must not happen to a volume `--lvm-free` made, and how it is
/// caught (`plan`'s and `activate`'s cautions).
pub const CAUTION: &str = "LVM: while a staging is in its volume lr-NAME, run no `pvmove`, `lvconvert`, `lvreduce`, `lvremove` or snapshot of it (an `lvextend` is fine): liverestore re-reads where the volume is from the kernel's device-mapper tables before every use and refuses a staging whose volume moved, changed or is gone (exit 18); `liverestore discard` removes the volume";

/// The logical volume that holds staging `name`'s image.
pub fn volume_name(name: &str) -> String {
    format!("lr-{name}")
}

/// Device-mapper's name for volume `lv` of group `vg` (LVM doubles the
/// dashes of each and joins them with one).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// One physical volume of a `pvs` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    pub name: String,
    pub vg: String,
    pub free: u64,
    pub extent_size: u64,
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<std::collections::BTreeMap<String, Vec<T>>>,
}

#[derive(Deserialize)]
struct PvRow {
    pv_name: String,
    vg_name: String,
    pv_free: String,
    vg_extent_size: String,
}

#[derive(Deserialize)]
struct LvRow {
    lv_name: String,
    #[serde(default)]
    lv_tags: String,
}

fn bad_report(what: &str) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("LVM's report cannot be read: {what}"),
    )
}

/// Parse `lvm pvs --reportformat json --units b --nosuffix -o
/// pv_name,vg_name,pv_free,vg_extent_size`.
pub fn parse_pvs(json: &[u8]) -> Result<Vec<PhysicalVolume>> {
    let r: Report<PvRow> = serde_json::from_slice(json).map_err(|e| bad_report(&e.to_string()))?;
    let number = |v: &str, what: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| bad_report(&format!("{what} '{v}'")))
    };
    let mut out = Vec::new();
    for rows in r.report.iter().filter_map(|m| m.get("pv")) {
        for row in rows {
            out.push(PhysicalVolume {
                name: row.pv_name.clone(),
                vg: row.vg_name.clone(),
                free: number(&row.pv_free, "pv_free")?,
                extent_size: number(&row.vg_extent_size, "vg_extent_size")?,
            });
        }
    }
    Ok(out)
}

/// Parse `lvm lvs --reportformat json -o lv_name,lv_tags`: each volume's
/// name and tags.
pub fn parse_lvs(json: &[u8]) -> Result<Vec<(String, Vec<String>)>> {
    let r: Report<LvRow> = serde_json::from_slice(json).map_err(|e| bad_report(&e.to_string()))?;
    Ok(r.report
        .iter()
        .filter_map(|m| m.get("lv"))
        .flatten()
        .map(|row| {
            let tags = row
                .lv_tags
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            (row.lv_name.clone(), tags)
        })
        .collect())
}

/// Run `lvm ARGS…`; its standard output.
fn lvm(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("lvm")
        .args(args)
        .env("LC_ALL", "C")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::UnsupportedDevice,
                    "--lvm-free needs LVM's tools (the lvm2 package): `lvm` was not found",
                )
            } else {
                Error::io("run lvm", e)
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "`lvm {}` failed: {}",
                args.join(" "),
                err.trim().lines().last().unwrap_or("no message")
            ),
        ));
    }
    Ok(out.stdout)
}

/// The room a volume group has for new volumes on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpace {
    pub vg: String,
    pub extent_size: u64,
    /// Its physical volumes on the disk (new volumes are kept to them).
    pub pvs: Vec<String>,
    /// Their free bytes.
    pub free: u64,
}

/// Of group `vg`'s physical volumes `pvs`, those on the disk `disk`
/// (major, minor) (`on_disk` says where each is), and their free space.
/// A group without physical volumes on that disk is refused.
pub fn space_on_disk(
    vg: &str,
    pvs: &[PhysicalVolume],
    disk: &str,
    on_disk: &mut dyn FnMut(&str) -> Result<bool>,
) -> Result<GroupSpace> {
    let mine: Vec<&PhysicalVolume> = pvs.iter().filter(|p| p.vg == vg).collect();
    let Some(first) = mine.first() else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("--lvm-free: there is no volume group '{vg}' (see `vgs`)"),
        ));
    };
    let mut space = GroupSpace {
        vg: vg.to_string(),
        extent_size: first.extent_size,
        pvs: Vec::new(),
        free: 0,
    };
    let mut elsewhere = Vec::new();
    for p in mine {
        if on_disk(&p.name)? {
            space.pvs.push(p.name.clone());
            space.free += p.free;
        } else {
            elsewhere.push(p.name.as_str());
        }
    }
    if space.pvs.is_empty() {
        return Err(Error::new(
            ErrorKind::UnsupportedDevice,
            format!(
                "--lvm-free: volume group '{vg}' has no physical volume on {disk} (its are {}): a staging lives on one disk",
                elsewhere.join(", ")
            ),
        ));
    }
    Ok(space)
}

/// Group `vg`'s free space on the disk `disk_name` (`disk`: its major and
/// minor numbers), from LVM's report and sysfs.
pub fn group_space(vg: &str, disk_name: &str, disk: (u32, u32)) -> Result<GroupSpace> {
    let json = lvm(&[
        "pvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "pv_name,vg_name,pv_free,vg_extent_size",
    ])?;
    let pvs = parse_pvs(&json)?;
    space_on_disk(vg, &pvs, disk_name, &mut |pv| {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(pv)
            .map_err(|e| Error::io("stat the physical volume", e).with_path(pv))?
            .rdev();
        let b = SysBlock::resolve(
            Path::new("/sys"),
            rustix::fs::major(rdev),
            rustix::fs::minor(rdev),
        )?;
        Ok((b.disk_major, b.disk_minor) == disk)
    })
}

/// Create the linear volume `lv` of `size` bytes (a multiple of the
/// extent size) in `space`'s physical volumes, tagged [`TAG`]. Its bytes
/// are neither zeroed nor wiped: the image overwrites them.
pub fn create(space: &GroupSpace, lv: &str, size: u64) -> Result<()> {
    let size = format!("{size}b");
    let mut args = vec![
        "lvcreate",
        "--yes",
        "--quiet",
        "--type",
        "linear",
        "--wipesignatures",
        "n",
        "--zero",
        "n",
        "--addtag",
        TAG,
        "--size",
        &size,
        "--name",
        lv,
        &space.vg,
    ];
    args.extend(space.pvs.iter().map(String::as_str));
    lvm(&args).map(drop)
}

/// Where a volume is, as the kernel says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOnDisk {
    /// Device-mapper's UUID of the volume (LVM's group and volume UUIDs).
    pub dm_uuid: String,
    pub disk_major: u32,
    pub disk_minor: u32,
    /// Its bytes on the disk, in volume order.
    pub pieces: Vec<LayoutPiece>,
}

/// The active volume `lv` of `vg`, composed down to its disk; None when
/// no such device is active.
pub fn locate(vg: &str, lv: &str) -> Result<Option<VolumeOnDisk>> {
    let Some(info) = crate::sys::dm::status(&dm_name(vg, lv))? else {
        return Ok(None);
    };
    let b = SysBlock::resolve(Path::new("/sys"), info.major, info.minor)?;
    Ok(Some(VolumeOnDisk {
        dm_uuid: info.uuid,
        disk_major: b.disk_major,
        disk_minor: b.disk_minor,
        pieces: b.layout.pieces().to_vec(),
    }))
}

/// The names of group `vg`'s logical volumes.
pub fn volume_names(vg: &str) -> Result<Vec<String>> {
    let json = lvm(&["lvs", "--reportformat", "json", "-o", "lv_name,lv_tags", vg])?;
    Ok(parse_lvs(&json)?.into_iter().map(|(n, _)| n).collect())
}

/// Remove volume `lv` of `vg` if it is the one liverestore made: tagged
/// [`TAG`] and, when `dm_uuid` is given, with that device-mapper UUID.
/// Whether it was removed (false: it is not there, or not ours).
pub fn remove(vg: &str, lv: &str, dm_uuid: Option<&str>) -> Result<bool> {
    let path = format!("{vg}/{lv}");
    let json = match lvm(&[
        "lvs",
        "--reportformat",
        "json",
        "-o",
        "lv_name,lv_tags",
        &path,
    ]) {
        Ok(j) => j,
        // gone (or the group with it)
        Err(_) => return Ok(false),
    };
    let ours = parse_lvs(&json)?
        .iter()
        .any(|(name, tags)| name == lv && tags.iter().any(|t| t == TAG));
    if !ours {
        return Ok(false);
    }
    if let Some(uuid) = dm_uuid
        && let Some(now) = locate(vg, lv)?
        && now.dm_uuid != uuid
    {
        return Ok(false);
    }
    lvm(&["lvremove", "--yes", "--quiet", &path])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVS: &str = r#"  {
      "report": [
          {
              "pv": [
                  {"pv_name":"/dev/vda1", "vg_name":"vg", "pv_free":"62914560", "vg_extent_size":"4194304"},
                  {"pv_name":"/dev/vda2", "vg_name":"vg", "pv_free":"8388608", "vg_extent_size":"4194304"},
                  {"pv_name":"/dev/vdb", "vg_name":"vg", "pv_free":"4194304", "vg_extent_size":"4194304"},
                  {"pv_name":"/dev/vdc", "vg_name":"", "pv_free":"1048576", "vg_extent_size":"0"}
              ]
          }
      ]
  }"#;

    #[test]
    fn free_space_is_counted_on_the_disk_only() {
        let pvs = parse_pvs(PVS.as_bytes()).unwrap();
        assert_eq!(pvs.len(), 4);
        let on_vda = &mut |pv: &str| Ok(pv.starts_with("/dev/vda"));
        let s = space_on_disk("vg", &pvs, "/dev/vda", on_vda).unwrap();
        assert_eq!(s.pvs, ["/dev/vda1", "/dev/vda2"]);
        assert_eq!(s.free, 62914560 + 8388608);
        assert_eq!(s.extent_size, 4 << 20);
        let e = space_on_disk("nope", &pvs, "/dev/vda", on_vda).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = space_on_disk("vg", &pvs, "/dev/vdd", &mut |_| Ok(false)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedDevice);
        assert!(
            e.to_string().contains("/dev/vda1, /dev/vda2, /dev/vdb"),
            "{e}"
        );
    }

    #[test]
    fn reports_that_are_not_lvms_are_errors() {
        for bad in ["", "{}", r#"{"report":[{"pv":[{"pv_name":"x"}]}]}"#] {
            assert!(parse_pvs(bad.as_bytes()).is_err(), "{bad}");
        }
        let bad = r#"{"report":[{"pv":[{"pv_name":"x","vg_name":"v","pv_free":"-1","vg_extent_size":"1"}]}]}"#;
        assert!(parse_pvs(bad.as_bytes()).is_err());
    }

    #[test]
    fn tags_and_names() {
        let json = r#"{"report":[{"lv":[{"lv_name":"lr-a", "lv_tags":"liverestore,x"},{"lv_name":"root", "lv_tags":""}]}]}"#;
        let lvs = parse_lvs(json.as_bytes()).unwrap();
        assert_eq!(
            lvs[0],
            ("lr-a".to_string(), vec![TAG.to_string(), "x".into()])
        );
        assert!(lvs[1].1.is_empty());
        assert_eq!(dm_name("my-vg", "lr-a-b"), "my--vg-lr--a--b");
        assert_eq!(volume_name("web"), "lr-web");
    }
}
