//! Staging real image formats onto a loop disk: a qcow2 and an Android
//! sparse image land on the disk as the raw bytes, with the zero runs
//! zeroed rather than written; an image served over HTTP by a server that
//! drops the connection half-way is fetched with range requests and
//! staged; 404 and a wrong length are clean errors; a --sha256 mismatch
//! leaves a "failed" staging that verify refuses.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;

/// An image with data, zeros and a pattern, 40 MiB.
fn image() -> Vec<u8> {
    let mut v = random_bytes(40 * MIB as usize, 11);
    v[8 * MIB as usize..30 * MIB as usize].fill(0);
    v
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn qcow2_and_sparse_images_land_as_raw_bytes() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let data = image();
    let raw = t.path().join("src.img");
    std::fs::write(&raw, &data).unwrap();
    let qcow = t.path().join("src.qcow2");
    let (raw_s, qcow_s) = (raw.to_str().unwrap(), qcow.to_str().unwrap());
    sh(
        "qemu-img",
        &["convert", "-q", "-c", "-O", "qcow2", raw_s, qcow_s],
    );
    let simg = t.path().join("src.simg");
    sh("img2simg", &[raw_s, simg.to_str().unwrap()]);
    for (name, path, kind) in [("q", &qcow, "qcow2"), ("s", &simg, "android-sparse")] {
        let out = cli.json(&[
            "--json",
            "stage",
            path.to_str().unwrap(),
            "--name",
            name,
            "--dir",
            disk.mnt.to_str().unwrap(),
        ]);
        assert_eq!(out["stagings"][0]["kind"], kind, "{out}");
        assert_eq!(out["stagings"][0]["image_size"], data.len() as u64);
        // 22 MiB of zeros are zeroed, not written
        assert!(
            out["stagings"][0]["disk_zeroed"].as_u64().unwrap() >= 20 * MIB,
            "{out}"
        );
        assert!(
            out["stagings"][0]["disk_written"].as_u64().unwrap() <= 20 * MIB,
            "{out}"
        );
        assert_image_on_disk(&disk, &cli.json(&["map", name, "--json"]), &data);
        let v = cli.json(&["verify", name, "--json"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    cli.expect(0, &["discard", "q"]);
    cli.expect(0, &["discard", "s"]);
}

/// A one-file HTTP/1.1 server: HEAD and GET with `Range`. The first GET
/// is cut off after `drop_after` bytes; `lie` adds bytes to the length.
struct Server {
    port: u16,
    gets: Arc<AtomicUsize>,
}

fn serve(data: Arc<Vec<u8>>, drop_after: usize, lie: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&gets);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (data, counter) = (Arc::clone(&data), Arc::clone(&counter));
            std::thread::spawn(move || handle(conn, &data, drop_after, lie, &counter));
        }
    });
    Server { port, gets }
}

fn handle(mut conn: TcpStream, data: &[u8], drop_after: usize, lie: usize, gets: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (method, path) = {
            let mut w = line.split_whitespace();
            (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            )
        };
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    data.len() - 1
                } else {
                    b.parse().unwrap()
                };
                range = Some((a, b + 1));
            }
        }
        if path != "/disk.img" {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let (a, b) = range.unwrap_or((0, data.len()));
        let status = if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\n\r\n",
            b - a + lie
        );
        conn.write_all(head.as_bytes()).unwrap();
        if method == "HEAD" {
            continue;
        }
        let n = gets.fetch_add(1, Ordering::SeqCst);
        if n == 0 && drop_after > 0 {
            let _ = conn.write_all(&data[a..a + drop_after]);
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        if conn.write_all(&data[a..b]).is_err() {
            return;
        }
        if lie > 0 {
            return;
        }
    }
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn http_with_a_dropped_connection_404_and_wrong_length() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 256);
    let cli = Cli::new(t.path());
    let dir = disk.mnt.to_str().unwrap();
    let data = Arc::new(image());
    let expected = sha256_hex(&data);

    let server = serve(Arc::clone(&data), 13 * MIB as usize + 12345, 0);
    let url = format!("http://127.0.0.1:{}/disk.img", server.port);
    let out = cli.json(&[
        "--json", "stage", &url, "--name", "web", "--dir", dir, "--sha256", &expected,
    ]);
    assert_eq!(out["stagings"][0]["sha256"], expected, "{out}");
    assert!(
        server.gets.load(Ordering::SeqCst) >= 2,
        "the drop forced a range request"
    );
    assert_image_on_disk(&disk, &cli.json(&["map", "web", "--json"]), &data);
    cli.expect(0, &["discard", "web"]);

    let missing = format!("http://127.0.0.1:{}/nope.img", server.port);
    let err = cli.expect_err(14, &["stage", &missing, "--name", "x", "--dir", dir]);
    assert!(err.contains("404"), "{err}");

    let liar = serve(Arc::clone(&data), 0, 5000);
    let url = format!("http://127.0.0.1:{}/disk.img", liar.port);
    let err = cli.expect_err(14, &["stage", &url, "--name", "x", "--dir", dir]);
    assert!(err.contains("bytes where"), "{err}");
    assert!(!Path::new(dir).join("x.liverestore").exists());

    // a wrong --sha256: the staging is kept as "failed", verify refuses it
    let wrong = "0".repeat(64);
    let err = cli.expect_err(
        20,
        &[
            "stage",
            &url.replace(&liar.port.to_string(), &server.port.to_string()),
            "--name",
            "bad",
            "--dir",
            dir,
            "--sha256",
            &wrong,
        ],
    );
    assert!(err.contains("marked failed"), "{err}");
    let list = cli.expect(0, &["list"]);
    assert!(list.contains("failed"), "{list}");
    let err = cli.expect_err(20, &["verify", "bad"]);
    assert!(err.contains("failed"), "{err}");
    cli.expect(0, &["discard", "bad"]);
}
