//! Every input format, built by the real tool that makes it (qemu-img,
//! img2simg, bmaptool, gzip/xz/zstd), decodes to exactly the raw image.
//! No root needed: this reads images, it stages nothing.

use std::path::Path;
use std::process::Command;

use liverestore::input::{Fill, Format, Image, OpenOptions};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 24 MiB raw image: data, holes (sparse), explicit zeros, more data.
fn raw_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let size = 24usize << 20;
    let mut data = vec![0u8; size];
    for (i, b) in data[..3 << 20].iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    for (i, b) in data[(10 << 20) + 4096..(11 << 20) + 512]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8 + 1;
    }
    data[size - 1] = 0x5a;
    let p = dir.join("disk.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size as u64).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data[..3 << 20], 0).unwrap();
    f.write_all_at(&data[10 << 20..12 << 20], 10 << 20).unwrap();
    f.write_all_at(&data[size - 4096..], (size - 4096) as u64)
        .unwrap();
    (p, data)
}

/// Read the whole logical image in 4 MiB chunks.
fn decode(spec: &str, opts: &OpenOptions) -> (Image, Vec<u8>, usize) {
    let mut img = Image::open(spec, opts).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let size = img.size() as usize;
    let mut out = vec![0u8; size];
    let mut zero_chunks = 0;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(4 << 20);
        match img.read_chunk(off as u64, &mut out[off..off + n]).unwrap() {
            Fill::Zero => {
                out[off..off + n].fill(0);
                zero_chunks += 1;
            }
            Fill::Data => {}
        }
        off += n;
    }
    img.finish().unwrap();
    (img, out, zero_chunks)
}

fn check(spec: &Path, expect: Format, data: &[u8], opts: &OpenOptions) -> usize {
    let (img, out, zeros) = decode(spec.to_str().unwrap(), opts);
    assert_eq!(img.format, expect, "{}", spec.display());
    assert_eq!(out.len(), data.len(), "{}: size", spec.display());
    assert!(out == data, "{}: decoded bytes differ", spec.display());
    zeros
}

/// Options that ignore an `IMAGE.bmap` next to the image.
fn no_bmap() -> OpenOptions {
    OpenOptions {
        no_bmap: true,
        ..Default::default()
    }
}

#[test]
fn every_format_decodes_to_the_raw_image() {
    let t = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(t.path());
    let d = |n: &str| t.path().join(n);
    let none = no_bmap();
    assert!(
        check(&raw, Format::Raw, &data, &none) >= 2,
        "holes give zero chunks"
    );

    for (fmt, opts, expect) in [
        ("qcow2", vec![], Format::Qcow2),
        ("qcow2", vec!["-c"], Format::Qcow2),
        ("vpc", vec!["-o", "force_size=on"], Format::VhdDynamic),
        (
            "vpc",
            vec!["-o", "subformat=fixed,force_size=on"],
            Format::VhdFixed,
        ),
        ("vhdx", vec!["-o", "block_size=1M"], Format::Vhdx),
    ] {
        let out = d(&format!("disk-{fmt}-{}.{fmt}", opts.len()));
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", fmt])
            .args(&opts)
            .arg(&raw)
            .arg(&out));
        let zeros = check(&out, expect, &data, &none);
        if expect != Format::VhdFixed {
            assert!(zeros >= 2, "{fmt}: unallocated blocks give zero chunks");
        }
    }

    run(Command::new("img2simg").arg(&raw).arg(d("disk.simg")));
    check(&d("disk.simg"), Format::AndroidSparse, &data, &none);

    for (tool, ext) in [("gzip", "gz"), ("xz", "xz"), ("zstd", "zst")] {
        let out = d(&format!("disk.img.{ext}"));
        let f = std::fs::File::create(&out).unwrap();
        run(Command::new(tool)
            .args(
                ["-c", "-T2"]
                    .iter()
                    .filter(|a| tool != "gzip" || **a == "-c"),
            )
            .arg(&raw)
            .stdout(f));
        let (img, out_data, _) = decode(out.to_str().unwrap(), &none);
        assert_eq!(img.format, Format::Raw);
        assert!(out_data == data, "{tool}: decoded bytes differ");
    }
    // a sparse image inside zstd
    let f = std::fs::File::create(d("disk.simg.zst")).unwrap();
    run(Command::new("zstd").arg("-c").arg(d("disk.simg")).stdout(f));
    check(&d("disk.simg.zst"), Format::AndroidSparse, &data, &none);

    // bmap: picked up next to the image, and via --bmap
    run(Command::new("bmaptool")
        .args(["-q", "create", "-o"])
        .arg(d("disk.img.bmap"))
        .arg(&raw));
    check(&raw, Format::Bmap, &data, &OpenOptions::default());
}

#[test]
fn lying_and_corrupt_images_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let (raw, data) = raw_image(t.path());
    let d = |n: &str| t.path().join(n);
    let none = no_bmap();
    let bad = |p: &Path, opts: &OpenOptions| -> String {
        let r = Image::open(p.to_str().unwrap(), opts).and_then(|mut img| {
            let size = img.size() as usize;
            let mut buf = vec![0u8; 4 << 20];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(buf.len());
                img.read_chunk(off as u64, &mut buf[..n])?;
                off += n;
            }
            img.finish()
        });
        let e = r.expect_err(&format!("{} should be refused", p.display()));
        assert_eq!(e.kind(), liverestore::ErrorKind::BadImage, "{e}");
        e.to_string()
    };

    // truncated and corrupt compressed streams
    let zst = zstd::bulk::compress(&data, 1).unwrap();
    std::fs::write(d("cut.zst"), &zst[..zst.len() / 2]).unwrap();
    bad(&d("cut.zst"), &none);
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        e.write_all(&data).unwrap();
        e.finish().unwrap();
    }
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    std::fs::write(d("corrupt.gz"), &gz).unwrap();
    bad(
        &d("corrupt.gz"),
        &OpenOptions {
            size: Some(data.len() as u64),
            ..none.clone()
        },
    );

    // qcow2 with a backing file; qcow2 whose size field lies
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&raw)
        .arg(d("child.qcow2")));
    assert!(bad(&d("child.qcow2"), &none).contains("backing file"));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(d("lie.qcow2")));
    let mut q = std::fs::read(d("lie.qcow2")).unwrap();
    q[20..24].copy_from_slice(&30u32.to_be_bytes()); // cluster bits 30
    std::fs::write(d("lie.qcow2"), &q).unwrap();
    assert!(bad(&d("lie.qcow2"), &none).contains("cluster size"));
    let mut q = std::fs::read(d("lie.qcow2")).unwrap();
    q[20..24].copy_from_slice(&16u32.to_be_bytes());
    q[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes()); // L1 table far past the end
    std::fs::write(d("lie.qcow2"), &q).unwrap();
    bad(&d("lie.qcow2"), &none);

    // VHD and VHDX with broken tables
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "vpc", "-o", "force_size=on"])
        .arg(&raw)
        .arg(d("lie.vhd")));
    let mut v = std::fs::read(d("lie.vhd")).unwrap();
    v[100] ^= 1; // footer copy checksum
    std::fs::write(d("lie.vhd"), &v).unwrap();
    assert!(bad(&d("lie.vhd"), &none).contains("checksum"));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "vhdx"])
        .arg(&raw)
        .arg(d("lie.vhdx")));
    let mut v = std::fs::read(d("lie.vhdx")).unwrap();
    for at in [64 << 10, 128 << 10] {
        v[at + 200] ^= 1; // both headers
    }
    std::fs::write(d("lie.vhdx"), &v).unwrap();
    assert!(bad(&d("lie.vhdx"), &none).contains("header"));

    // sparse image that claims more chunks than it has
    run(Command::new("img2simg").arg(&raw).arg(d("lie.simg")));
    let s = std::fs::read(d("lie.simg")).unwrap();
    std::fs::write(d("lie.simg"), &s[..s.len() - 100]).unwrap();
    bad(&d("lie.simg"), &none);

    // a bmap whose range checksum fails: the image changed after bmaptool
    run(Command::new("bmaptool")
        .args(["-q", "create", "-o"])
        .arg(d("disk.img.bmap"))
        .arg(&raw));
    std::fs::copy(&raw, d("changed.img")).unwrap();
    std::fs::copy(d("disk.img.bmap"), d("changed.img.bmap")).unwrap();
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(d("changed.img"))
        .unwrap()
        .write_all_at(b"X", 100)
        .unwrap();
    assert!(bad(&d("changed.img"), &OpenOptions::default()).contains("bmap checksum"));
}
