//! Events in the systemd journal, with structured fields, so that a
//! machine's journal (and whatever forwards it to a central syslog) tells
//! what liverestore did without parsing text: where journald listens
//! ([`SOCKET`]), every command that changes something sends an entry when
//! it starts, at each tenth of its progress, for each note, and when it
//! ends. `SYSLOG_IDENTIFIER=liverestore`; `MESSAGE_ID` one per event kind
//! ([`Event`], for `journalctl MESSAGE_ID=…`); `LIVERESTORE_NAME` (the
//! staging), `LIVERESTORE_OPERATION` (the command), `LIVERESTORE_PERCENT`,
//! `LIVERESTORE_EXIT_CODE`. A journal that cannot be reached is skipped
//! quietly: the command's own output says everything too. Where stderr
//! already goes to the journal (a systemd service's, as `JOURNAL_STREAM`
//! says: the auto-commit unit), notes are not sent again.
//!
//! Sent in journald's native protocol (`KEY=VALUE` lines in one datagram,
//! a length-prefixed value where it holds a newline), written here:
//! `libsystemd` does the same but would add a second `nix`, a second
//! `sha2`, `nom` and `hmac` to the build for one datagram.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use crate::progress::Progress;

/// Where journald takes native messages.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The kinds of entries, each with its `MESSAGE_ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Progress,
    Note,
    Succeeded,
    Failed,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Started,
        Event::Progress,
        Event::Note,
        Event::Succeeded,
        Event::Failed,
    ];

    /// Its `MESSAGE_ID` (fixed: scripts and journal filters rely on it).
    pub fn message_id(self) -> &'static str {
        match self {
            Event::Started => "dcc0565dd3f94185a9473a69dcdbf99e",
            Event::Progress => "7ab0cfd737694f2ebc2631f7cd83ddbb",
            Event::Note => "0885471716fd47f3b81ec0cfdcc1b250",
            Event::Succeeded => "0a84ea21d2d349469243d591d815d555",
            Event::Failed => "3692d566236846b1b8bb62f40753f472",
        }
    }

    /// Its syslog priority: err, notice or info.
    fn priority(self) -> &'static str {
        match self {
            Event::Failed => "3",
            Event::Note => "5",
            _ => "6",
        }
    }
}

/// One entry in journald's native protocol: each field `KEY=VALUE\n`, or,
/// when the value holds a newline, `KEY\n`, its length (64-bit little
/// endian), the value and `\n`.
pub fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Whether stderr already goes to the journal: `JOURNAL_STREAM` (set by
/// systemd for a service) names its device and inode.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// One command's entries.
pub struct Journal {
    name: String,
    operation: String,
    /// Notes are sent (stderr, where they also go, is not the journal).
    notes: bool,
    sent: Mutex<Sent>,
}

/// The current phase, and the tenth of it last sent.
#[derive(Default)]
struct Sent {
    phase: String,
    total: u64,
    tenth: Option<u64>,
}

impl Journal {
    /// The journal of `operation` on staging `name` (empty when none),
    /// when journald listens here; its start is sent.
    pub fn start(name: &str, operation: &str) -> Option<Journal> {
        if !Path::new(SOCKET).exists() {
            return None;
        }
        let j = Journal {
            name: name.to_string(),
            operation: operation.to_string(),
            notes: !stderr_is_journal(),
            sent: Mutex::new(Sent::default()),
        };
        j.send(
            Event::Started,
            &format!("liverestore {operation} started"),
            &[],
        );
        Some(j)
    }

    /// The command ended with `exit_code`.
    pub fn finish(&self, exit_code: u8) {
        let code = exit_code.to_string();
        let (event, what) = match exit_code {
            0 => (Event::Succeeded, "succeeded".to_string()),
            c => (Event::Failed, format!("failed (exit code {c})")),
        };
        self.send(
            event,
            &format!("liverestore {} {what}", self.operation),
            &[("LIVERESTORE_EXIT_CODE", &code)],
        );
    }

    fn send(&self, event: Event, message: &str, extra: &[(&str, &str)]) {
        let message = match self.name.as_str() {
            "" => message.to_string(),
            name => format!("{message} ('{name}')"),
        };
        // far below the datagram limit; a longer note is cut
        let message: String = message.chars().take(8192).collect();
        let mut fields = vec![
            ("MESSAGE", message.as_str()),
            ("PRIORITY", event.priority()),
            ("MESSAGE_ID", event.message_id()),
            ("SYSLOG_IDENTIFIER", "liverestore"),
            ("LIVERESTORE_OPERATION", self.operation.as_str()),
        ];
        if !self.name.is_empty() {
            fields.push(("LIVERESTORE_NAME", self.name.as_str()));
        }
        fields.extend_from_slice(extra);
        if let Ok(socket) = UnixDatagram::unbound() {
            let _ = socket.send_to(&encode(&fields), SOCKET);
        }
    }
}

/// Tenths of `total` that `done` reached.
fn tenth(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 10;
    }
    (u128::from(done.min(total)) * 10 / u128::from(total)) as u64
}

impl Journal {
    /// A progress entry, when `done` (or the end) reached a tenth not sent.
    fn progress(&self, done: u64, end: bool) {
        let mut sent = self.sent.lock().expect("journal lock");
        let t = if end { 10 } else { tenth(done, sent.total) };
        if sent.tenth == Some(t) {
            return;
        }
        sent.tenth = Some(t);
        let percent = (t * 10).to_string();
        let message = format!("liverestore {} {}: {percent}%", self.operation, sent.phase);
        self.send(
            Event::Progress,
            &message,
            &[
                ("LIVERESTORE_PHASE", sent.phase.as_str()),
                ("LIVERESTORE_PERCENT", &percent),
            ],
        );
    }
}

/// The journal follows the command's progress (the command's own display
/// gets it too: [`crate::progress::Tee`]).
impl Progress for Journal {
    fn begin(&self, phase: &str, total: u64) {
        *self.sent.lock().expect("journal lock") = Sent {
            phase: phase.to_string(),
            total,
            tenth: None,
        };
        self.progress(0, false);
    }
    fn update(&self, done: u64) {
        self.progress(done, false);
    }
    fn end(&self) {
        self.progress(0, true);
    }
    fn note(&self, message: &str) {
        if self.notes {
            self.send(Event::Note, message, &[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_128_bit_ids() {
        for (i, e) in Event::ALL.iter().enumerate() {
            let id = e.message_id();
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(Event::ALL[i + 1..].iter().all(|o| o.message_id() != id));
        }
    }

    #[test]
    fn entries_are_encoded_as_journald_reads_them() {
        let e = encode(&[("MESSAGE", "staged"), ("LIVERESTORE_PERCENT", "100")]);
        assert_eq!(e, b"MESSAGE=staged\nLIVERESTORE_PERCENT=100\n");
        let e = encode(&[("MESSAGE", "two\nlines")]);
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(e, want);
    }

    #[test]
    fn progress_is_sent_by_tenths() {
        assert_eq!(tenth(0, 1000), 0);
        assert_eq!(tenth(99, 1000), 0);
        assert_eq!(tenth(100, 1000), 1);
        assert_eq!(tenth(999, 1000), 9);
        assert_eq!(tenth(2000, 1000), 10);
        assert_eq!(tenth(5, 0), 10);
        assert_eq!(tenth(u64::MAX, u64::MAX), 10);
    }
}
