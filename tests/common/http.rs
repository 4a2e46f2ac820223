//! A small HTTP/1.1 file server for the tests: HEAD and GET with `Range`,
//! on an address the test picks (127.0.0.1, or the root namespace's side
//! of the test hosts' network), with the faults the tests need: the first
//! GET cut off after `drop_after` bytes, `lie` bytes added to the length,
//! and a rate limit per connection (so a staging lasts long enough to be
//! watched). Threads end with the test process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default)]
pub struct Faults {
    pub drop_after: usize,
    pub lie: usize,
    /// Bytes per second per connection; 0: as fast as it goes.
    pub rate: usize,
}

pub struct Server {
    pub port: u16,
    pub gets: Arc<AtomicUsize>,
}

/// Serve `files` (URL path → bytes) on `bind` (`"127.0.0.1"`), any port.
pub fn serve(bind: &str, files: HashMap<String, Arc<Vec<u8>>>, faults: Faults) -> Server {
    let listener = TcpListener::bind((bind, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&gets);
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (files, counter) = (Arc::clone(&files), Arc::clone(&counter));
            std::thread::spawn(move || handle(conn, &files, faults, &counter));
        }
    });
    Server { port, gets }
}

/// One file as `/disk.img` on 127.0.0.1.
pub fn serve_one(data: Arc<Vec<u8>>, faults: Faults) -> Server {
    serve(
        "127.0.0.1",
        HashMap::from([("/disk.img".to_string(), data)]),
        faults,
    )
}

fn handle(
    mut conn: TcpStream,
    files: &HashMap<String, Arc<Vec<u8>>>,
    faults: Faults,
    gets: &AtomicUsize,
) {
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
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                range = Some(v.trim().to_string());
            }
        }
        let Some(data) = files.get(&path) else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let (a, b) = match &range {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let b: usize = if b.is_empty() {
                    data.len() - 1
                } else {
                    b.parse().unwrap()
                };
                (a.parse().unwrap(), b + 1)
            }
            None => (0, data.len()),
        };
        let status = if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\n\r\n",
            b - a + faults.lie
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" {
            continue;
        }
        let n = gets.fetch_add(1, Ordering::SeqCst);
        if n == 0 && faults.drop_after > 0 {
            let _ = conn.write_all(&data[a..a + faults.drop_after]);
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        if send(&mut conn, &data[a..b], faults.rate).is_err() {
            return;
        }
        if faults.lie > 0 {
            return;
        }
    }
}

/// Write `bytes`, at most `rate` bytes a second (0: no limit).
fn send(conn: &mut TcpStream, bytes: &[u8], rate: usize) -> std::io::Result<()> {
    if rate == 0 {
        return conn.write_all(bytes);
    }
    let start = Instant::now();
    let piece = (rate / 20).max(4096);
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        conn.write_all(chunk)?;
        let due = Duration::from_secs_f64(((i + 1) * piece) as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}
