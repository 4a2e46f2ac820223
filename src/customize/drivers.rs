//! `--inject-drivers`: give the restored system what this machine's
//! hardware needs and the image may lack (an image made on other
//! hardware, or a minimal one).
//!
//! - Firmware: every file that a module loaded here declares
//!   (`modinfo -F firmware`) and this system has under `/lib/firmware`
//!   (plain, `.xz` or `.zst`) is copied when the image has it in none of
//!   those forms.
//! - Modules, only when the image's kernel is this kernel's version
//!   (`/lib/modules/$(uname -r)` exists in the image): the files of every
//!   loaded module, with what they depend on, that the image lacks are
//!   copied, then `depmod -b` updates the image's module index. A module
//!   built for another kernel version would not load, so then only
//!   firmware is carried, and the report says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::Change;
use super::copy;
use crate::attach::root_dir::RootDir;
use crate::error::{Error, ErrorKind, Result};

/// Module names from the text of `/proc/modules`.
pub fn loaded_modules(proc_modules: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Firmware file names from `modinfo -F firmware` output.
pub fn firmware_names(modinfo: &str) -> Vec<String> {
    let mut names: Vec<String> = modinfo
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

const FIRMWARE_FORMS: [&str; 3] = ["", ".xz", ".zst"];

fn run(cmd: &mut Command) -> Result<String> {
    super::run_tool(cmd, "kmod")
}

/// Carry firmware and (same kernel version) modules from this system,
/// whose files are at `source_root`, into `root`.
pub fn inject(source_root: &Path, root: &RootDir) -> Result<Vec<Change>> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let proc_modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let loaded = loaded_modules(&proc_modules);
    let mut changes = Vec::new();
    if loaded.is_empty() {
        changes.push(Change::new(
            "drivers",
            Path::new("/proc/modules"),
            "no modules are loaded here: nothing to carry",
        ));
        return Ok(changes);
    }

    let modinfo = run(Command::new("modinfo")
        .args(["-F", "firmware", "-k", &release])
        .args(&loaded))
    .or_else(|e| match e.kind() {
        // A module that vanished between the two reads: ask one by one.
        ErrorKind::Io => Ok(loaded
            .iter()
            .filter_map(|m| {
                run(Command::new("modinfo").args(["-F", "firmware", "-k", &release, m])).ok()
            })
            .collect()),
        _ => Err(e),
    })?;
    for fw in firmware_names(&modinfo) {
        let in_image = FIRMWARE_FORMS
            .iter()
            .any(|s| root.exists(&Path::new("/lib/firmware").join(format!("{fw}{s}"))));
        if in_image {
            continue;
        }
        let on_host = FIRMWARE_FORMS.iter().find_map(|s| {
            let rel = PathBuf::from(format!("/lib/firmware/{fw}{s}"));
            source_root
                .join(rel.strip_prefix("/").expect("absolute"))
                .is_file()
                .then_some(rel)
        });
        if let Some(rel) = on_host {
            copy::preserve(source_root, &rel, root)?;
            changes.push(Change::new("firmware", &rel, "missing in the image"));
        }
    }

    let image_modules = PathBuf::from(format!("/lib/modules/{release}"));
    if !root.exists(&image_modules) {
        let has: Vec<String> = root
            .list(Path::new("/lib/modules"))?
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        changes.push(Change::new(
            "modules",
            &image_modules,
            &format!(
                "not carried: the image's kernel is {} and this one is {release}",
                if has.is_empty() {
                    "unknown".into()
                } else {
                    has.join(", ")
                }
            ),
        ));
        return Ok(changes);
    }
    let host_modules = source_root.join(format!("lib/modules/{release}"));
    let dep = std::fs::read_to_string(host_modules.join("modules.dep"))
        .map_err(|e| Error::io("read this system's modules.dep", e).with_path(&host_modules))?;
    let builtin = std::fs::read_to_string(host_modules.join("modules.builtin")).unwrap_or_default();
    let mut files: Vec<String> = Vec::new();
    for m in &loaded {
        // Out-of-tree modules not in modules.dep are left alone.
        if let Ok(order) = crate::sys::kmod::load_order(&dep, &builtin, std::slice::from_ref(m)) {
            files.extend(order);
        }
    }
    files.sort();
    files.dedup();
    let mut added = 0;
    for f in files {
        let rel = image_modules.join(&f);
        if !root.exists(&rel) {
            copy::preserve(source_root, &rel, root)?;
            changes.push(Change::new(
                "module",
                &rel,
                "loaded here, missing in the image",
            ));
            added += 1;
        }
    }
    if added > 0 {
        // depmod -b BASE wants BASE/lib/modules/VERSION: the real place of
        // the image's module tree, resolved inside the image.
        let real = root.real_dir(&image_modules)?;
        let base = real
            .ancestors()
            .nth(3)
            .filter(|b| b.join("lib/modules").join(&release) == real)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidState,
                    format!(
                        "the image's module tree {} is not at lib/modules/{release}",
                        real.display()
                    ),
                )
            })?;
        run(Command::new("depmod").arg("-b").arg(base).arg(&release))?;
        changes.push(Change::new(
            "module",
            &image_modules.join("modules.dep"),
            "rebuilt with depmod",
        ));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let proc = "virtio_blk 20480 3 - Live 0x0000000000000000\nfuse 139264 1 - Live 0x0\n";
        assert_eq!(loaded_modules(proc), ["fuse", "virtio_blk"]);
        let mi = "iwlwifi-9000-pu-b0-jf-b0-46.ucode\n\nrtl_nic/rtl8168h-2.fw\nrtl_nic/rtl8168h-2.fw\n../../etc/x\n";
        assert_eq!(
            firmware_names(mi),
            ["iwlwifi-9000-pu-b0-jf-b0-46.ucode", "rtl_nic/rtl8168h-2.fw"]
        );
    }
}
