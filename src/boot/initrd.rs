//! The early-boot initramfs: a small newc cpio archive, appended to the
//! restored system's own initrd (the kernel unpacks concatenated archives
//! one after the other), holding `/lr/init` — a static liverestore, which
//! runs as the early-boot step when started under that name (kernel
//! argument `rdinit=/lr/init`) — and `/lr/boot.json`, its [`BootPlan`].
//! `/lr/init` assembles the staged image as a device-mapper device (a
//! native boot's needs none: it only notes the boot and arms the trial's
//! deadline) and hands over to the restored initrd's `/init` (see
//! [`crate::boot::early_boot`]).

use std::io::Write;
use std::path::Path;

use crate::boot::plan::BootPlan;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::store::record::StagingRecord;

/// Where the early-boot program and its plan live in the initramfs.
pub const INIT_PATH: &str = "/lr/init";
pub const PLAN_PATH: &str = "/lr/boot.json";
/// A udev rule the archive adds to the restored initrd (see [`UDEV_RULE`]).
pub const UDEV_RULE_PATH: &str = "/etc/udev/rules.d/09-liverestore-dm.rules";

/// `/lr/init` creates its device-mapper devices before udev runs, so no
/// uevent with libdevmapper's cookie reaches udev; at coldplug the
/// device-mapper rules (`10-dm.rules`, Debian's `55-dm.rules`) then take
/// them for devices nobody prepared, and disable them: no
/// `/dev/disk/by-uuid` links, and systemd never sees the device
/// (`SYSTEMD_READY=0`: a dracut initrd waits for `root=` forever). This
/// rule, run before those, sets the flag libdevmapper's cookie would set
/// (`DM_UDEV_PRIMARY_SOURCE_FLAG`), so they are processed like any other
/// device-mapper device; `db_persist` keeps that in udev's database across
/// the switch to the real root, whose own coldplug reads it from there.
pub const UDEV_RULE: &str = r#"# liverestore: the devices its early-boot step (/lr/init) created before
# udev ran are processed like any other device-mapper device.
SUBSYSTEM=="block", KERNEL=="dm-[0-9]*", ACTION=="add|change", ATTR{dm/uuid}=="liverestore-boot-*", ENV{DM_UDEV_PRIMARY_SOURCE_FLAG}="1", OPTIONS+="db_persist"
"#;

/// Whether `elf` is a statically linked executable (no `PT_INTERP`
/// program header): only such a program can run inside a foreign
/// initramfs.
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // 64-bit little-endian ELF executables only (ELFCLASS64, ELFDATA2LSB).
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..u64::from(phnum)).all(|i| {
        let at = phoff + i * u64::from(phentsize);
        usize::try_from(at)
            .ok()
            .and_then(u32_at)
            .is_some_and(|p_type| p_type != PT_INTERP)
    })
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| Error::io("build the early-boot initramfs", e);
    let mut w = cpio::NewcBuilder::new(name)
        .ino(ino)
        .mode(mode)
        .nlink(1)
        .write(&mut *out, data.len() as u32);
    w.write_all(data).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

/// The archive: `/lr` with `init` (the static `helper` executable),
/// `boot.json` (`plan`) and `extra` files (`(name in /lr, contents)`:
/// the restored kernel's watchdog and efivarfs modules), and [`UDEV_RULE`].
pub fn early_boot_cpio(
    plan: &BootPlan,
    helper: &[u8],
    extra: &[(String, Vec<u8>)],
) -> Result<Vec<u8>> {
    if !is_static_elf(helper) {
        return Err(Error::new(
            ErrorKind::InvalidState,
            "the early-boot helper must be a statically linked x86-64 liverestore (build one with RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu, and pass it with --helper)",
        ));
    }
    let mut out = Vec::new();
    entry(&mut out, 1, "lr", 0o040755, &[])?;
    entry(&mut out, 2, &INIT_PATH[1..], 0o100755, helper)?;
    entry(&mut out, 3, &PLAN_PATH[1..], 0o100644, &plan.encode())?;
    let mut ino = 4;
    let mut dirs: Vec<&str> = Vec::new();
    for (name, data) in extra {
        if let Some((dir, _)) = name.rsplit_once('/')
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
            entry(&mut out, ino, &format!("lr/{dir}"), 0o040755, &[])?;
            ino += 1;
        }
        entry(&mut out, ino, &format!("lr/{name}"), 0o100644, data)?;
        ino += 1;
    }
    // directories that exist already keep what they hold
    let rule_dir = UDEV_RULE_PATH[1..].rsplit_once('/').map_or("", |(d, _)| d);
    let mut dir = String::new();
    for part in rule_dir.split('/') {
        if !dir.is_empty() {
            dir.push('/');
        }
        dir.push_str(part);
        entry(&mut out, ino, &dir, 0o040755, &[])?;
        ino += 1;
    }
    entry(
        &mut out,
        ino,
        &UDEV_RULE_PATH[1..],
        0o100644,
        UDEV_RULE.as_bytes(),
    )?;
    cpio::newc::trailer(out).map_err(|e| Error::io("build the early-boot initramfs", e))
}

/// What the kernel would unpack `initrd` as: its first archive's format
/// after any zero bytes (the kernel skips them, `unpack_to_rootfs`):
/// a `newc` cpio archive (an early-microcode one comes first, uncompressed)
/// or one of the compressions the kernel decompresses. None: not an
/// initramfs; the kernel would panic ("invalid magic") on it.
pub fn initrd_format(initrd: &[u8]) -> Option<&'static str> {
    let start = initrd.iter().position(|&b| b != 0)?;
    let head = &initrd[start..];
    const FORMATS: &[(&[u8], &str)] = &[
        (b"070701", "cpio"),
        (b"070702", "cpio"),
        (&[0x1f, 0x8b], "gzip"),
        (&[0x1f, 0x9e], "gzip"),
        (b"BZh", "bzip2"),
        (&[0x5d, 0x00, 0x00], "lzma"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x89, b'L', b'Z', b'O'], "lzo"),
        (&[0x02, 0x21, 0x4c, 0x18], "lz4"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    ];
    FORMATS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|&(_, name)| name)
}

/// Whether an archive of `initrd` holds a member whose path (without a
/// leading `/`) `wanted` accepts, read as the kernel unpacks it: `newc`
/// archives one after another (an early-microcode one first), zero bytes
/// between them skipped, then one compressed archive (gzip, xz or zstd),
/// read through its decoder as a stream — what distributions make.
/// `Ok(None)`: a compression liverestore does not decode (lz4, lzo,
/// bzip2, lzma), so the answer is unknown.
pub fn initrd_holds(initrd: &[u8], wanted: impl Fn(&str) -> bool) -> Result<Option<bool>> {
    use crate::input::compression::Compression;
    /// Whether the `newc` archive read from `r` holds a wanted member;
    /// `r` is left after its trailer.
    fn archive_holds<R: std::io::Read>(
        r: &mut R,
        wanted: &impl Fn(&str) -> bool,
    ) -> std::io::Result<bool> {
        loop {
            let entry = cpio::NewcReader::new(&mut *r)?;
            if entry.entry().is_trailer() {
                entry.finish()?;
                return Ok(false);
            }
            if wanted(entry.entry().name().trim_start_matches('/')) {
                return Ok(true);
            }
            entry.finish()?;
        }
    }
    let bad = |e: std::io::Error| Error::io("read the restored initrd's archives", e);
    let mut at = 0;
    loop {
        let Some(skip) = initrd[at..].iter().position(|&b| b != 0) else {
            return Ok(Some(false));
        };
        at += skip;
        let rest = &initrd[at..];
        if rest.starts_with(b"07070") {
            let mut cursor = std::io::Cursor::new(rest);
            if archive_holds(&mut cursor, &wanted).map_err(bad)? {
                return Ok(Some(true));
            }
            let read = usize::try_from(cursor.position()).unwrap_or(rest.len());
            at += read.max(1);
            continue;
        }
        let compression = Compression::detect(rest);
        if compression == Compression::None {
            return Ok(None);
        }
        let mut decoded = compression.decoder(Box::new(std::io::Cursor::new(rest.to_vec())))?;
        return archive_holds(&mut decoded, &wanted).map(Some).map_err(bad);
    }
}

/// `initrd` with the early-boot archive `early` appended, as the kernel
/// unpacks it: after a compressed archive the kernel takes a cpio header
/// only at an offset that is a multiple of 4 (`unpack_to_rootfs` in
/// `init/initramfs.c`), and skips zero bytes between archives. A
/// compressed initrd ends wherever its stream ends (Debian 12's was
/// 30715354 bytes), so zeros pad it to the next multiple of 4 first;
/// without them the kernel reports "invalid magic at start of compressed
/// archive" and cannot mount the root.
pub fn append_early_boot(initrd: &mut Vec<u8>, early: &[u8]) {
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(early);
}

/// The early-boot initramfs of the complete staging `rec`: its plan (with
/// the driver modules of the staging's disk, read from sysfs) and the
/// archive, whose `/lr/init` is `helper` (default: this program).
pub fn for_staging(rec: &StagingRecord, helper: Option<&Path>) -> Result<(BootPlan, Vec<u8>)> {
    for_set(rec, &[], helper, &[], false)
}

/// As [`for_staging`], with `others` (partitions of the same whole-disk
/// image) mapped alongside `root`, and `extra` files in `/lr`; `native`:
/// nothing is mapped, they boot as their own partitions
/// ([`BootPlan::native`]).
pub fn for_set(
    root: &StagingRecord,
    others: &[StagingRecord],
    helper: Option<&Path>,
    extra: &[(String, Vec<u8>)],
    native: bool,
) -> Result<(BootPlan, Vec<u8>)> {
    // The disk's drivers, found in sysfs under the name it has now (found
    // by its identity when the map is derived again).
    let disk = crate::stage::staged::revalidate(root)?.target.disk_path;
    let disk_name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let modules = crate::sys::kmod::disk_driver_modules(Path::new("/sys"), &disk_name);
    let plan = BootPlan {
        native,
        ..BootPlan::for_set(root, others, modules)?
    };
    let helper = match helper {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| Error::io("find this program", e))?,
    };
    let bytes = std::fs::read(&helper)
        .op(|| "read the early-boot helper".into())
        .map_err(|e| e.with_path(&helper))?;
    let archive = early_boot_cpio(&plan, &bytes, extra)?;
    Ok((plan, archive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(interp: bool) -> Vec<u8> {
        let mut e = vec![0u8; 0x40 + 2 * 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let second = if interp { 3u32 } else { 6 }; // PT_INTERP or PT_PHDR
        e[0x40 + 56..0x40 + 60].copy_from_slice(&second.to_le_bytes());
        e
    }

    #[test]
    fn static_executables_are_told_apart() {
        assert!(is_static_elf(&elf(false)));
        assert!(!is_static_elf(&elf(true)));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(&elf(false)[..0x50]), "truncated headers");
    }

    #[test]
    fn archive_holds_init_and_plan() {
        let mut rec = crate::store::record::tests::sample_record();
        rec.state = crate::store::record::StagingState::Complete;
        let plan = BootPlan::for_staging(&rec, vec!["dm_mod".into()]).unwrap();
        assert!(early_boot_cpio(&plan, &elf(true), &[]).is_err());
        let helper = elf(false);
        let softdog = vec![(
            "modules/00-softdog.ko".to_string(),
            b"\x7fELF module".to_vec(),
        )];
        let bytes = early_boot_cpio(&plan, &helper, &softdog).unwrap();
        assert_eq!(bytes.len() % 4, 0, "concatenable");
        let mut rest: &[u8] = &bytes;
        let mut seen = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut data).unwrap();
            match name.as_str() {
                "lr/init" => assert_eq!(data, helper),
                "lr/boot.json" => assert_eq!(BootPlan::decode(&data).unwrap(), plan),
                "lr/modules/00-softdog.ko" => assert_eq!(data, softdog[0].1),
                "etc/udev/rules.d/09-liverestore-dm.rules" => {
                    assert_eq!(data, UDEV_RULE.as_bytes());
                    let uuid = format!(
                        "ATTR{{dm/uuid}}==\"{}*\"",
                        crate::boot::plan::DM_UUID_PREFIX
                    );
                    assert!(
                        UDEV_RULE.contains(&uuid),
                        "the rule matches the devices /lr/init makes"
                    );
                }
                _ => {}
            }
            seen.push((name, mode & 0o777));
            rest = r.finish().unwrap();
        }
        assert_eq!(
            seen,
            [
                ("lr".into(), 0o755),
                ("lr/init".into(), 0o755),
                ("lr/boot.json".into(), 0o644),
                ("lr/modules".into(), 0o755),
                ("lr/modules/00-softdog.ko".into(), 0o644),
                ("etc".into(), 0o755),
                ("etc/udev".into(), 0o755),
                ("etc/udev/rules.d".into(), 0o755),
                ("etc/udev/rules.d/09-liverestore-dm.rules".into(), 0o644)
            ]
        );
    }

    /// What the kernel's `unpack_to_rootfs` (init/initramfs.c) makes of
    /// `buf`: the names of every file it unpacks, or its error message.
    /// A newc header is taken only at an offset that is a multiple of 4;
    /// zero bytes between archives are skipped; anything else must be a
    /// compressed archive, which is decompressed whole (its content is
    /// cpio) and followed again at the offset where its stream ended.
    fn unpack_like_the_kernel(buf: &[u8]) -> std::result::Result<Vec<String>, String> {
        use std::io::Read;
        fn cpio_names(
            mut rest: &[u8],
            names: &mut Vec<String>,
        ) -> std::result::Result<usize, String> {
            let start = rest.len();
            loop {
                let r = cpio::NewcReader::new(rest).map_err(|e| e.to_string())?;
                if r.entry().is_trailer() {
                    rest = r.finish().map_err(|e| e.to_string())?;
                    return Ok(start - rest.len());
                }
                names.push(r.entry().name().to_string());
                rest = r.finish().map_err(|e| e.to_string())?;
            }
        }
        let mut names = Vec::new();
        let mut at = 0usize;
        while at < buf.len() {
            let rest = &buf[at..];
            if rest[0] == b'0' && at.is_multiple_of(4) {
                at += cpio_names(rest, &mut names)?;
            } else if rest[0] == 0 {
                at += 1;
            } else {
                let mut input: &[u8] = rest;
                let mut out = Vec::new();
                let read = if rest.starts_with(&[0x1f, 0x8b]) {
                    flate2::bufread::GzDecoder::new(&mut input).read_to_end(&mut out)
                } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    zstd::stream::read::Decoder::with_buffer(&mut input)
                        .map(|d| d.single_frame())
                        .and_then(|mut d| d.read_to_end(&mut out))
                } else if rest.starts_with(b"\xfd7zXZ\0") {
                    liblzma::bufread::XzDecoder::new(&mut input).read_to_end(&mut out)
                } else {
                    return Err(format!(
                        "invalid magic at start of compressed archive (offset {at})"
                    ));
                };
                read.map_err(|e| format!("decompressor failed: {e}"))?;
                cpio_names(&out, &mut names)?;
                at += rest.len() - input.len();
            }
        }
        Ok(names)
    }

    /// A newc archive of `files`.
    fn cpio_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (name, data)) in files.iter().enumerate() {
            entry(&mut out, i as u32 + 1, name, 0o100644, data).unwrap();
        }
        cpio::newc::trailer(out).unwrap()
    }

    /// Restored initrds as distributions make them: uncompressed, gzip,
    /// zstd, xz, and an uncompressed early-microcode archive in front of
    /// a compressed one; the compressed ones in every length modulo 4
    /// (gzip's optional file name field shifts the length byte by byte).
    fn restored_initrds() -> Vec<(String, Vec<u8>)> {
        use std::io::Write;
        let main = cpio_of(&[("init", b"#!/bin/sh\n"), ("etc/fstab", &[7u8; 1000])]);
        let micro = cpio_of(&[("kernel/x86/microcode/GenuineIntel.bin", &[1u8; 37])]);
        let mut all = vec![("uncompressed".to_string(), main.clone())];
        for pad in 0..4 {
            let mut gz = flate2::GzBuilder::new()
                .filename("i".repeat(pad + 1))
                .write(Vec::new(), flate2::Compression::default());
            gz.write_all(&main).unwrap();
            let gz = gz.finish().unwrap();
            all.push((format!("gzip, {} bytes", gz.len()), gz.clone()));
            let mut both = micro.clone();
            both.extend_from_slice(&gz);
            all.push((format!("microcode + gzip, {} bytes", both.len()), both));
        }
        let zst = zstd::encode_all(&main[..], 19).unwrap();
        all.push((format!("zstd, {} bytes", zst.len()), zst));
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&main).unwrap();
        let xz = xz.finish().unwrap();
        all.push((format!("xz, {} bytes", xz.len()), xz));
        all
    }

    #[test]
    fn a_member_is_found_in_any_archive_of_an_initrd() {
        for (what, initrd) in restored_initrds() {
            assert_eq!(
                initrd_holds(&initrd, |p| p == "etc/fstab").unwrap(),
                Some(true),
                "{what}"
            );
            assert_eq!(
                initrd_holds(&initrd, |p| p == "usr/sbin/lvm").unwrap(),
                Some(false),
                "{what}"
            );
            // the early archive appended after it is read too when the
            // initrd is uncompressed; a compressed one ends the search
            let mut with_early = initrd.clone();
            append_early_boot(&mut with_early, &cpio_of(&[("lr/init", b"x")]));
            assert_eq!(
                initrd_holds(&with_early, |p| p == "lr/init").unwrap(),
                Some(what == "uncompressed"),
                "{what}"
            );
        }
        let micro = cpio_of(&[("kernel/x86/microcode/GenuineIntel.bin", &[1u8; 37])]);
        assert_eq!(
            initrd_holds(&micro, |p| p.starts_with("kernel/")).unwrap(),
            Some(true),
            "the early archive itself"
        );
        let mut lz4 = micro.clone();
        lz4.extend_from_slice(&[0x02, 0x21, 0x4c, 0x18, 0, 0, 0, 0]);
        assert_eq!(
            initrd_holds(&lz4, |p| p == "init").unwrap(),
            None,
            "lz4: unknown"
        );
        assert!(initrd_holds(b"070701 not a header", |_| true).is_err());
        assert_eq!(initrd_holds(&[0u8; 64], |_| true).unwrap(), Some(false));
    }

    #[test]
    fn initrd_formats_are_known_by_their_magic() {
        for (what, initrd) in restored_initrds() {
            let want = what.split([',', ' ']).next().unwrap();
            let want = if want == "microcode" || want == "uncompressed" {
                "cpio"
            } else {
                want
            };
            assert_eq!(initrd_format(&initrd), Some(want), "{what}");
        }
        let mut padded = vec![0u8; 4];
        padded.extend_from_slice(&zstd::encode_all(&b"x"[..], 1).unwrap());
        assert_eq!(initrd_format(&padded), Some("zstd"));
        assert_eq!(initrd_format(b"INITRD"), None);
        assert_eq!(initrd_format(b"\x7fELF..."), None);
        assert_eq!(initrd_format(&[0u8; 64]), None);
        assert_eq!(initrd_format(b""), None);
    }

    #[test]
    fn the_early_boot_archive_unpacks_after_every_kind_of_initrd() {
        let early = cpio_of(&[
            ("lr", b""),
            ("lr/init", b"\x7fELF"),
            ("lr/boot.json", b"{}"),
        ]);
        let residues: std::collections::BTreeSet<usize> = restored_initrds()
            .iter()
            .map(|(_, i)| i.len() % 4)
            .collect();
        assert_eq!(residues.len(), 4, "every length modulo 4 is tried");
        for (what, initrd) in restored_initrds() {
            let alone = unpack_like_the_kernel(&initrd).unwrap();
            let mut joined = initrd.clone();
            append_early_boot(&mut joined, &early);
            assert_eq!(joined.len() % 4, 0, "{what}");
            let names = unpack_like_the_kernel(&joined)
                .unwrap_or_else(|e| panic!("{what} + early boot: {e}"));
            assert_eq!(names[..alone.len()], alone[..], "{what}");
            assert_eq!(
                names[alone.len()..],
                ["lr", "lr/init", "lr/boot.json"],
                "{what}"
            );
            // Plain concatenation is what broke Debian 12's boot.
            let plain = [&initrd[..], &early[..]].concat();
            if initrd.len() % 4 != 0 {
                let e = unpack_like_the_kernel(&plain).unwrap_err();
                assert!(e.contains("invalid magic"), "{what}: {e}");
            }
        }
    }
}
