//! Progress of long work (staging, verifying, scanning), reported to a
//! terminal bar, to JSON lines on stdout, or nowhere.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress; implementations decide how to show it.
pub trait Progress: Sync {
    /// A phase of `total` bytes starts (e.g. "write", "verify").
    fn begin(&self, phase: &str, total: u64);
    /// `done` of the current phase's bytes are finished.
    fn update(&self, done: u64);
    /// The current phase is over.
    fn end(&self);
    /// Something the user should know, not an error.
    fn note(&self, message: &str);
}

/// No progress bar (stderr is not a terminal: a script, a log, Ansible);
/// notes still go to stderr, one line each: they say something the user
/// must know (a fallback, a cleanup done on their behalf).
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn update(&self, _: u64) {}
    fn end(&self) {}
    fn note(&self, message: &str) {
        eprintln!("{message}");
    }
}

/// Progress shared with whoever else keeps it (the metrics file and
/// the journal are kept by the command line too, to tell them how the
/// command ended).
impl<P: Progress + Send> Progress for std::sync::Arc<P> {
    fn begin(&self, phase: &str, total: u64) {
        (**self).begin(phase, total);
    }
    fn update(&self, done: u64) {
        (**self).update(done);
    }
    fn end(&self) {
        (**self).end();
    }
    fn note(&self, message: &str) {
        (**self).note(message);
    }
}

/// Every event to each of several receivers, in order.
pub struct Tee(pub Vec<Box<dyn Progress>>);

impl Progress for Tee {
    fn begin(&self, phase: &str, total: u64) {
        self.0.iter().for_each(|p| p.begin(phase, total));
    }
    fn update(&self, done: u64) {
        self.0.iter().for_each(|p| p.update(done));
    }
    fn end(&self) {
        self.0.iter().for_each(|p| p.end());
    }
    fn note(&self, message: &str) {
        self.0.iter().for_each(|p| p.note(message));
    }
}

/// A progress bar on stderr.
#[derive(Default)]
pub struct TerminalProgress {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for TerminalProgress {
    fn begin(&self, phase: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(phase.to_string());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }
    fn update(&self, done: u64) {
        if let Some(b) = &*self.bar.lock().expect("progress lock") {
            b.set_position(done);
        }
    }
    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish();
        }
    }
    fn note(&self, message: &str) {
        match &*self.bar.lock().expect("progress lock") {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }
}

struct JsonState {
    phase: String,
    total: u64,
    last: Option<Instant>,
}

/// JSON lines on stdout: `{"event":"progress","phase":…,"done":…,"total":…}`
/// at most twice a second, plus the first and last of each phase.
pub struct JsonProgress {
    state: Mutex<JsonState>,
}

impl Default for JsonProgress {
    fn default() -> Self {
        JsonProgress {
            state: Mutex::new(JsonState {
                phase: String::new(),
                total: 0,
                last: None,
            }),
        }
    }
}

/// Print one JSON object as a line on stdout.
pub fn emit_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

impl JsonProgress {
    fn emit(state: &JsonState, done: u64) {
        emit_json(&serde_json::json!({
            "event": "progress", "phase": state.phase, "done": done, "total": state.total,
        }));
    }
}

impl Progress for JsonProgress {
    fn begin(&self, phase: &str, total: u64) {
        let mut s = self.state.lock().expect("progress lock");
        s.phase = phase.to_string();
        s.total = total;
        s.last = Some(Instant::now());
        Self::emit(&s, 0);
    }
    fn update(&self, done: u64) {
        let mut s = self.state.lock().expect("progress lock");
        if s.last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
        {
            s.last = Some(Instant::now());
            Self::emit(&s, done);
        }
    }
    fn end(&self) {
        let s = self.state.lock().expect("progress lock");
        Self::emit(&s, s.total);
    }
    fn note(&self, message: &str) {
        emit_json(&serde_json::json!({"event": "note", "message": message}));
    }
}

/// Now, in seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A Unix time as people read it: `2026-12-02T22:25:06Z`.
pub fn utc_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_progress_template_is_valid_and_phases_cycle() {
        let p = TerminalProgress::default();
        p.note("before any phase");
        for phase in ["stage", "verify"] {
            p.begin(phase, 100);
            p.update(50);
            p.note("in a phase");
            p.end();
        }
        assert!(p.bar.lock().unwrap().is_none());
    }

    #[test]
    fn json_progress_throttles_updates() {
        let p = JsonProgress::default();
        p.begin("stage", 10);
        let first = p.state.lock().unwrap().last;
        p.update(5); // within 500 ms of begin: not emitted, timestamp kept
        assert_eq!(p.state.lock().unwrap().last, first);
        p.end();
    }
}
