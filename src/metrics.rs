//! `--metrics-file PATH` (or `LIVERESTORE_METRICS_FILE`): the Prometheus
//! text format that node_exporter's textfile collector reads, written
//! atomically — a temporary file in the same directory, renamed over the
//! old one, so the collector never reads half a file — when a command
//! starts, at most every [`INTERVAL`] while it works, and when it ends.
//!
//! One file holds the series of every staging and operation written to
//! it: those of other (name, operation) pairs already in the file are
//! kept, so a node's file shows its last `stage`, `activate` and `commit`
//! together. Labels: `name` (the staging; empty for `commit`/`rollback`,
//! which act on the running system) and `operation` (the command).
//!
//! Written here, not with a Prometheus client crate: those keep a
//! registry to serve over HTTP from a long-running process; this is a
//! short-lived command rewriting a few lines of text. [`encode`] and
//! [`decode`] work on text in memory (unit-tested, fuzzed); [`MetricsFile`]
//! does the I/O.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::progress::Progress;

/// The shortest time between two writes while a command works.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    pub const ALL: [RunState; 3] = [RunState::Running, RunState::Succeeded, RunState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }
}

/// The series of one (staging name, operation).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub operation: String,
    /// 0..1 of the current phase (1 once it succeeded).
    pub progress_ratio: f64,
    /// Image bytes written to the disk by this run.
    pub bytes_written: u64,
    pub state: RunState,
    /// Unix time of the last run that succeeded.
    pub last_success: Option<u64>,
    /// The exit code of the last run that ended.
    pub last_exit_code: Option<u8>,
}

impl Series {
    fn new(name: &str, operation: &str) -> Series {
        Series {
            name: name.to_string(),
            operation: operation.to_string(),
            progress_ratio: 0.0,
            bytes_written: 0,
            state: RunState::Running,
            last_success: None,
            last_exit_code: None,
        }
    }

    fn key(&self) -> (&str, &str) {
        (&self.name, &self.operation)
    }
}

/// (metric, help, type) of every metric written.
const METRICS: [(&str, &str, &str); 5] = [
    (
        "liverestore_progress_ratio",
        "Fraction of the operation's current phase done (1 once it succeeded).",
        "gauge",
    ),
    (
        "liverestore_bytes_written_total",
        "Image bytes the operation wrote to the disk.",
        "counter",
    ),
    (
        "liverestore_state",
        "The operation's state: 1 for the state it is in, 0 for the others.",
        "gauge",
    ),
    (
        "liverestore_last_success_timestamp_seconds",
        "Unix time the operation last succeeded.",
        "gauge",
    ),
    (
        "liverestore_last_exit_code",
        "Exit code of the operation's last run (see liverestore --help).",
        "gauge",
    ),
];

/// A label value as the text format writes it: `\`, `"` and newlines
/// escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text of `series`, sorted by (name, operation).
pub fn encode(series: &[Series]) -> String {
    let mut sorted: Vec<&Series> = series.iter().collect();
    sorted.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut out = String::new();
    for (metric, help, kind) in METRICS {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for s in &sorted {
            let labels = format!(
                "name=\"{}\",operation=\"{}\"",
                escape(&s.name),
                escape(&s.operation)
            );
            match metric {
                "liverestore_progress_ratio" => {
                    out.push_str(&format!("{metric}{{{labels}}} {}\n", s.progress_ratio));
                }
                "liverestore_bytes_written_total" => {
                    out.push_str(&format!("{metric}{{{labels}}} {}\n", s.bytes_written));
                }
                "liverestore_state" => {
                    for st in RunState::ALL {
                        out.push_str(&format!(
                            "{metric}{{{labels},state=\"{}\"}} {}\n",
                            st.as_str(),
                            u8::from(st == s.state)
                        ));
                    }
                }
                "liverestore_last_success_timestamp_seconds" => {
                    if let Some(t) = s.last_success {
                        out.push_str(&format!("{metric}{{{labels}}} {t}\n"));
                    }
                }
                _ => {
                    if let Some(c) = s.last_exit_code {
                        out.push_str(&format!("{metric}{{{labels}}} {c}\n"));
                    }
                }
            }
        }
    }
    out
}

/// One sample line of the text format.
struct Sample<'a> {
    metric: &'a str,
    labels: Vec<(String, String)>,
    value: &'a str,
}

/// One sample line. None for comments and anything that is not a
/// well-formed sample with labels.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let open = line.find('{')?;
    let metric = &line[..open];
    let mut labels = Vec::new();
    let mut rest = line[open + 1..].chars();
    loop {
        let mut key = String::new();
        for c in rest.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if rest.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match rest.next()? {
                '\\' => match rest.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), value));
        match rest.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    Some(Sample {
        metric,
        labels,
        value: rest.as_str().trim(),
    })
}

/// The series in a file [`encode`] wrote (anything else in it is
/// ignored: a file damaged or written by hand loses only what cannot be
/// read).
pub fn decode(text: &str) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(Sample {
            metric,
            labels,
            value,
        }) = parse_sample(line)
        else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let (Some(name), Some(operation)) = (label("name"), label("operation")) else {
            continue;
        };
        let at = match out.iter().position(|s| s.key() == (name, operation)) {
            Some(i) => i,
            None => {
                out.push(Series::new(name, operation));
                out.len() - 1
            }
        };
        let s = &mut out[at];
        match metric {
            "liverestore_progress_ratio" => {
                if let Ok(v) = value.parse::<f64>()
                    && (0.0..=1.0).contains(&v)
                {
                    s.progress_ratio = v;
                }
            }
            "liverestore_bytes_written_total" => {
                if let Ok(v) = value.parse() {
                    s.bytes_written = v;
                }
            }
            "liverestore_state" => {
                if value == "1"
                    && let Some(st) = RunState::ALL
                        .into_iter()
                        .find(|st| label("state") == Some(st.as_str()))
                {
                    s.state = st;
                }
            }
            "liverestore_last_success_timestamp_seconds" => {
                s.last_success = value.parse().ok();
            }
            "liverestore_last_exit_code" => {
                s.last_exit_code = value.parse().ok();
            }
            _ => {}
        }
    }
    out
}

/// The series of one command's run, kept in the metrics file at `path`.
pub struct MetricsFile {
    path: PathBuf,
    state: Mutex<Run>,
}

struct Run {
    series: Series,
    /// Bytes written by the phases that ended.
    written_before: u64,
    /// The current phase writes image bytes (`stage`).
    writing: bool,
    total: u64,
    last_write: Option<Instant>,
    /// A write failed: said once, not again.
    failed: bool,
}

impl MetricsFile {
    /// Start the run of `operation` on staging `name` (empty when none):
    /// its series say `running`.
    pub fn start(path: &Path, name: &str, operation: &str) -> MetricsFile {
        let series = Series::new(name, operation);
        // keep what the file said of this pair's earlier runs
        let earlier = std::fs::read_to_string(path)
            .map(|t| decode(&t))
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.key() == series.key());
        let series = Series {
            last_success: earlier.as_ref().and_then(|e| e.last_success),
            last_exit_code: earlier.and_then(|e| e.last_exit_code),
            ..series
        };
        let m = MetricsFile {
            path: path.to_path_buf(),
            state: Mutex::new(Run {
                series,
                written_before: 0,
                writing: false,
                total: 0,
                last_write: None,
                failed: false,
            }),
        };
        m.write(&mut m.state.lock().expect("metrics lock"));
        m
    }

    /// The run ended with `exit_code`.
    pub fn finish(&self, exit_code: u8) {
        let mut run = self.state.lock().expect("metrics lock");
        let s = &mut run.series;
        s.last_exit_code = Some(exit_code);
        if exit_code == 0 {
            s.state = RunState::Succeeded;
            s.progress_ratio = 1.0;
            s.last_success = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        } else {
            s.state = RunState::Failed;
        }
        self.write(&mut run);
    }

    /// Write the file: the other pairs' series as they are, this run's as
    /// it is now. A failure is said once on stderr; the command goes on.
    fn write(&self, run: &mut Run) {
        run.last_write = Some(Instant::now());
        let mut all: Vec<Series> = std::fs::read_to_string(&self.path)
            .map(|t| decode(&t))
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.key() != run.series.key())
            .collect();
        all.push(run.series.clone());
        if let Err(e) = write_atomically(&self.path, encode(&all).as_bytes())
            && !run.failed
        {
            run.failed = true;
            eprintln!(
                "liverestore: warning: the metrics file {} cannot be written: {e}",
                self.path.display()
            );
        }
    }

    fn done(&self, done: u64, end: bool) {
        let mut run = self.state.lock().expect("metrics lock");
        let done = if end { run.total } else { done.min(run.total) };
        if run.total > 0 {
            run.series.progress_ratio = done as f64 / run.total as f64;
        }
        if run.writing {
            run.series.bytes_written = run.written_before + done;
        }
        if end {
            run.written_before = run.series.bytes_written;
            run.writing = false;
        }
        if end || run.last_write.is_none_or(|t| t.elapsed() >= INTERVAL) {
            self.write(&mut run);
        }
    }
}

/// `data` into `path` through a temporary file in the same directory
/// (mode 0644, as the collector's user must read it), renamed over it.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".liverestore-metrics")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The metrics file follows the command's progress (the command's own
/// display gets it too: [`crate::progress::Tee`]).
impl Progress for MetricsFile {
    fn begin(&self, phase: &str, total: u64) {
        let mut run = self.state.lock().expect("metrics lock");
        run.writing = phase == "stage";
        run.total = total;
        run.series.progress_ratio = 0.0;
        self.write(&mut run);
    }
    fn update(&self, done: u64) {
        self.done(done, false);
    }
    fn end(&self) {
        self.done(0, true);
    }
    fn note(&self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Series> {
        vec![
            Series {
                name: "web".into(),
                operation: "stage".into(),
                progress_ratio: 0.25,
                bytes_written: 1 << 30,
                state: RunState::Running,
                last_success: Some(1_780_000_000),
                last_exit_code: Some(0),
            },
            Series {
                name: "odd \"name\"\\\n".into(),
                operation: "verify".into(),
                progress_ratio: 1.0,
                bytes_written: 0,
                state: RunState::Failed,
                last_success: None,
                last_exit_code: Some(20),
            },
        ]
    }

    #[test]
    fn series_round_trip_through_the_text_format() {
        let text = encode(&sample());
        assert!(
            text.contains(
                "liverestore_state{name=\"web\",operation=\"stage\",state=\"running\"} 1\n"
            )
        );
        assert!(text.contains(
            "liverestore_bytes_written_total{name=\"web\",operation=\"stage\"} 1073741824\n"
        ));
        assert!(text.contains("# TYPE liverestore_bytes_written_total counter\n"));
        assert!(text.contains(r#"name="odd \"name\"\\\n""#), "{text}");
        // no success yet: no timestamp series for it
        assert_eq!(
            text.matches("liverestore_last_success_timestamp_seconds{")
                .count(),
            1
        );
        let mut back = decode(&text);
        back.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut want = sample();
        want.sort_by(|a, b| a.key().cmp(&b.key()));
        assert_eq!(back, want);
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let text = "garbage\nliverestore_progress_ratio{name=\"a\" 0.5\nliverestore_progress_ratio{name=\"a\",operation=\"stage\"} 7\nliverestore_last_exit_code{name=\"a\",operation=\"stage\"} x\nliverestore_state{name=\"a\",operation=\"stage\",state=\"failed\"} 1\n";
        let s = decode(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].progress_ratio, 0.0, "out of range: ignored");
        assert_eq!(s[0].last_exit_code, None);
        assert_eq!(s[0].state, RunState::Failed);
    }

    #[test]
    fn the_file_keeps_other_runs_and_counts_written_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("liverestore.prom");
        std::fs::write(&path, encode(&sample()[1..])).unwrap();
        let m = MetricsFile::start(&path, "web", "stage");
        let p: &dyn Progress = &m;
        p.begin("stage", 1000);
        p.update(400);
        p.end();
        m.finish(0);
        let s = decode(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(s.len(), 2, "the other run kept");
        let web = s.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(
            (web.state, web.progress_ratio, web.bytes_written),
            (RunState::Succeeded, 1.0, 1000)
        );
        assert_eq!(web.last_exit_code, Some(0));
        assert!(web.last_success.is_some());
        // a later failed run keeps the last success
        let m = MetricsFile::start(&path, "web", "stage");
        m.finish(14);
        let s = decode(&std::fs::read_to_string(&path).unwrap());
        let web = s.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(
            (web.state, web.last_exit_code),
            (RunState::Failed, Some(14))
        );
        assert!(web.last_success.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
