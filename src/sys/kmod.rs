//! Kernel modules, for the early-boot step: which drivers the disk needs
//! (from sysfs, on the running system), in which order their files load
//! (from `modules.dep`, pure), and loading them (`finit_module`).
//!
//! Written here rather than calling `modprobe`: at early boot inside a
//! foreign initramfs there may be no kmod tools, and the few steps needed
//! (resolve dependencies, skip built-in and loaded modules, load) are small.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// A module name as the kernel knows it (`dm-mod` and `dm_mod` alike).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a `modules.dep` path (`kernel/drivers/md/dm-mod.ko.xz`
/// → `dm_mod`).
fn stem(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.split(".ko").next().unwrap_or(file))
}

/// The files to load, dependencies first, for modules `names`, from the
/// text of `modules.dep` and `modules.builtin` (built-in modules need
/// nothing). An unknown module is [`ErrorKind::KernelLacks`].
pub fn load_order(
    modules_dep: &str,
    modules_builtin: &str,
    names: &[String],
) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        if let Some((m, rest)) = line.split_once(':') {
            deps.insert(
                stem(m),
                (
                    m.to_string(),
                    rest.split_whitespace().map(str::to_string).collect(),
                ),
            );
        }
    }
    let builtin: Vec<String> = modules_builtin.lines().map(stem).collect();
    let mut order = Vec::new();
    // Iterative depth-first walk; `visiting` guards against a cyclic file.
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> Result<()> {
        let Some((path, ds)) = deps.get(name) else {
            return Err(Error::new(
                ErrorKind::KernelLacks,
                format!("module {name} is neither built in nor in modules.dep"),
            ));
        };
        if order.contains(path) || visiting.iter().any(|v| v == name) {
            return Ok(());
        }
        visiting.push(name.to_string());
        for d in ds {
            visit(&stem(d), deps, order, visiting)?;
        }
        visiting.pop();
        order.push(path.clone());
        Ok(())
    }
    for n in names {
        let n = normalize(n);
        if builtin.contains(&n) {
            continue;
        }
        visit(&n, &deps, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

/// The modules of the drivers between the disk `disk_name` and the root
/// of the device tree (e.g. `virtio_pci`, `virtio_blk`), outermost first,
/// read from sysfs. Built-in drivers have no module and are left out.
pub fn disk_driver_modules(sys: &Path, disk_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut dev) = std::fs::canonicalize(sys.join("block").join(disk_name).join("device"))
    else {
        return out;
    };
    loop {
        if let Ok(module) = std::fs::read_link(dev.join("driver/module"))
            && let Some(name) = module.file_name().and_then(|n| n.to_str())
        {
            let name = normalize(name);
            if !out.contains(&name) {
                out.insert(0, name);
            }
        }
        if !dev.pop() || dev == sys.join("devices") || dev.as_os_str().len() <= 1 {
            break;
        }
    }
    out
}

/// Load `names` and their dependencies from the module tree `dir`
/// (`/lib/modules/$(uname -r)`), skipping loaded and built-in ones.
/// Returns the files loaded.
pub fn load(dir: &Path, names: &[String]) -> Result<Vec<String>> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let dep = read("modules.dep")
        .map_err(|e| Error::io("read modules.dep", e).with_path(dir.join("modules.dep")))?;
    let builtin = read("modules.builtin").unwrap_or_default();
    let wanted: Vec<String> = names
        .iter()
        .filter(|n| !Path::new("/sys/module").join(normalize(n)).exists())
        .cloned()
        .collect();
    let mut loaded = Vec::new();
    for file in load_order(&dep, &builtin, &wanted)? {
        if Path::new("/sys/module").join(stem(&file)).exists() {
            continue;
        }
        let path = dir.join(&file);
        if load_file(&path)? {
            loaded.push(file);
        }
    }
    Ok(loaded)
}

/// Load the module file `path` (`.ko`, or compressed: the kernel
/// decompresses it, 5.17+). False: it was loaded already.
pub fn load_file(path: &Path) -> Result<bool> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io("open a kernel module", e).with_path(path))?;
    let flags = if path.extension().is_some_and(|e| e == "ko") {
        0
    } else {
        4 /* MODULE_INIT_COMPRESSED_FILE */
    };
    match rustix::system::finit_module(&f, c"", flags) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(Error::from(e)
            .with_kind(ErrorKind::KernelLacks)
            .with_path(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/md/dm-mod.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
";

    #[test]
    fn dependencies_first_once_each_builtins_skipped() {
        let names = ["virtio_pci", "virtio-blk", "dm_mod"].map(String::from);
        let order = load_order(DEP, "", &names).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/md/dm-mod.ko",
            ]
        );
        let order = load_order(DEP, "kernel/drivers/md/dm-mod.ko\n", &["dm-mod".into()]).unwrap();
        assert!(order.is_empty());
        assert_eq!(
            load_order(DEP, "", &["ext4".into()]).unwrap(),
            ["kernel/fs/jbd2/jbd2.ko.xz", "kernel/fs/ext4/ext4.ko.xz"]
        );
    }

    #[test]
    fn unknown_modules_and_cycles() {
        let e = load_order(DEP, "", &["nvme".into()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KernelLacks);
        let cyclic = "a.ko: b.ko\nb.ko: a.ko\n";
        assert_eq!(
            load_order(cyclic, "", &["a".into()]).unwrap(),
            ["b.ko", "a.ko"]
        );
    }

    #[test]
    fn disk_drivers_from_a_sysfs_tree() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let pci = sys.join("devices/pci0000:00/0000:00:04.0");
        let virtio = pci.join("virtio2");
        std::fs::create_dir_all(virtio.join("block/vda")).unwrap();
        std::fs::create_dir_all(sys.join("block")).unwrap();
        std::fs::create_dir_all(sys.join("module/virtio_blk")).unwrap();
        std::fs::create_dir_all(sys.join("module/virtio_pci")).unwrap();
        std::fs::create_dir_all(sys.join("bus/virtio/drivers/virtio_blk")).unwrap();
        std::fs::create_dir_all(sys.join("bus/pci/drivers/virtio-pci")).unwrap();
        let link = std::os::unix::fs::symlink;
        link(
            sys.join("module/virtio_blk"),
            sys.join("bus/virtio/drivers/virtio_blk/module"),
        )
        .unwrap();
        link(
            sys.join("module/virtio_pci"),
            sys.join("bus/pci/drivers/virtio-pci/module"),
        )
        .unwrap();
        link(
            sys.join("bus/virtio/drivers/virtio_blk"),
            virtio.join("driver"),
        )
        .unwrap();
        link(sys.join("bus/pci/drivers/virtio-pci"), pci.join("driver")).unwrap();
        link(virtio.join("block/vda"), sys.join("block/vda")).unwrap();
        link(virtio.clone(), virtio.join("block/vda/device")).unwrap();
        assert_eq!(
            disk_driver_modules(sys, "vda"),
            ["virtio_pci", "virtio_blk"]
        );
        assert!(disk_driver_modules(sys, "loop0").is_empty());
    }
}
