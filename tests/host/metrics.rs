//! `--metrics-file` read by a real node_exporter: Debian's
//! `prometheus-node-exporter` (installed by `scripts/install-deps.sh`),
//! started here on 127.0.0.1 with only its textfile collector, pointed at
//! the test's directory, and scraped over HTTP as Prometheus would.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// node_exporter on a free port of 127.0.0.1, reading `dir`'s `*.prom`.
fn node_exporter(dir: &Path) -> (ChildGuard, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("prometheus-node-exporter")
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.textfile",
            &format!("--collector.textfile.directory={}", dir.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (scripts/install-deps.sh installs it)");
    (ChildGuard::from(child), port)
}

/// node_exporter's /metrics, once it answers.
fn scrape(port: u16) -> String {
    let start = Instant::now();
    loop {
        match ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call() {
            Ok(mut r) => return r.body_mut().read_to_string().unwrap(),
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("node_exporter does not answer: {e}"),
        }
    }
}

/// The value of the sample `series` (metric and labels as written), as
/// node_exporter renders it again (`1.00663296e+08`): a number.
fn value(scraped: &str, series: &str) -> Option<f64> {
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn node_exporter_reads_the_metrics_file_while_and_after_staging() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(t.path(), Fs::Ext4, 400);
    let img = t.path().join("web.img");
    std::fs::write(&img, random_bytes(96 << 20, 7)).unwrap();
    let textfile = t.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let prom = textfile.join("liverestore.prom");
    let (_exporter, port) = node_exporter(&textfile);
    let cli = Cli::new(t.path());
    let mut stage = cli.cmd();
    stage
        .env("LIVERESTORE_METRICS_FILE", &prom)
        .args(["stage", img.to_str().unwrap(), "--name", "web", "--dir"])
        .arg(&disk.mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::from(stage.spawn().unwrap());
    // while it runs: the file says running (written as it starts)
    let mut seen_running = false;
    while matches!(child.try_wait(), Ok(None)) {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        seen_running |= text
            .contains("liverestore_state{name=\"web\",operation=\"stage\",state=\"running\"} 1");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen_running, "the file said running while staging");
    // a failing operation on another name: its own series, the exit code
    let out = cli
        .cmd()
        .args(["--metrics-file", prom.to_str().unwrap(), "verify", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(17));
    // a command that changes nothing writes nothing
    let before = std::fs::read_to_string(&prom).unwrap();
    cli.cmd()
        .args(["--metrics-file", prom.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert_eq!(std::fs::read_to_string(&prom).unwrap(), before);

    let scraped = scrape(port);
    assert_eq!(
        value(&scraped, "node_textfile_scrape_error"),
        Some(0.0),
        "node_exporter read the file without error:\n{scraped}"
    );
    let web = |metric: &str, extra: &str| {
        value(
            &scraped,
            &format!("{metric}{{name=\"web\",operation=\"stage\"{extra}}}"),
        )
    };
    assert_eq!(web("liverestore_progress_ratio", ""), Some(1.0));
    assert_eq!(
        web("liverestore_bytes_written_total", ""),
        Some((96u64 << 20) as f64)
    );
    assert_eq!(web("liverestore_state", ",state=\"succeeded\""), Some(1.0));
    assert_eq!(web("liverestore_state", ",state=\"running\""), Some(0.0));
    assert_eq!(web("liverestore_last_exit_code", ""), Some(0.0));
    let when = web("liverestore_last_success_timestamp_seconds", "").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - when).abs() < 120.0, "{when} vs {now}");
    let nosuch = |metric: &str, extra: &str| {
        value(
            &scraped,
            &format!("{metric}{{name=\"nosuch\",operation=\"verify\"{extra}}}"),
        )
    };
    assert_eq!(nosuch("liverestore_last_exit_code", ""), Some(17.0));
    assert_eq!(nosuch("liverestore_state", ",state=\"failed\""), Some(1.0));
    assert_eq!(
        nosuch("liverestore_last_success_timestamp_seconds", ""),
        None
    );
    // the HELP and TYPE lines went through: a counter and gauges
    assert!(
        scraped.contains("# TYPE liverestore_bytes_written_total counter"),
        "{scraped}"
    );

    // a metrics file that cannot be written (its directory is a file):
    // said once, and the work goes on
    let blocked = t.path().join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let out = cli
        .cmd()
        .args(["--metrics-file"])
        .arg(blocked.join("liverestore.prom"))
        .args(["stage", img.to_str().unwrap(), "--name", "web2", "--dir"])
        .arg(&disk.mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("warning: the metrics file").count(), 1, "{err}");
    assert_eq!(cli.json(&["verify", "web2", "--json"])["ok"], true);
}
