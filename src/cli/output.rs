//! The one renderer: every command returns a typed, `Serialize` report;
//! this prints it as text for people or, with `--json`, as the last line
//! of the JSON envelope every command shares (`docs/json-output.md`,
//! schema `docs/json-output.schema.json`):
//!
//! - `{"event":"progress","phase":…,"done":…,"total":…}` and
//!   `{"event":"note","message":…}` lines while it works (any number);
//! - then exactly one `{"event":"result","ok":…,"command":…, …}` with the
//!   report's fields at the top level, or one
//!   `{"event":"error","ok":false,"command":…,"kind":…,"exit_code":…,"message":…}`.

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{Error, ErrorKind};
use crate::progress::emit_json;

/// What a command hands the renderer.
pub trait Report: Serialize {
    /// The text a person reads (stdout; notes about how it went to stderr).
    fn print_text(&self);

    /// The exit code of a command that ran to its end: 0, unless what it
    /// checked failed (a refused plan, a failed verification or test).
    fn exit_code(&self) -> u8 {
        0
    }

    /// What the command does once its report is out (`activate --reboot`
    /// reboots): the report is printed first, so a script or a log sees
    /// it. An error here goes to stderr, and sets the exit code.
    fn after_render(&self) -> crate::error::Result<()> {
        Ok(())
    }
}

/// The `--json` result line for `report` of `command`.
/// `event`, `ok` and `command` first, then the report's fields in the
/// order the report declares them.
pub fn result_line(command: &str, report: &impl Report) -> Value {
    let fields = match serde_json::to_value(report) {
        Ok(Value::Object(map)) => map,
        Ok(other) => [("result".to_string(), other)].into_iter().collect(),
        Err(e) => {
            let e = Error::new(ErrorKind::Io, format!("encode the result as JSON: {e}"));
            return error_line(command, &e);
        }
    };
    let mut line = serde_json::Map::new();
    line.insert("event".into(), json!("result"));
    line.insert("ok".into(), json!(report.exit_code() == 0));
    line.insert("command".into(), json!(command));
    for (k, v) in fields {
        if !line.contains_key(&k) {
            line.insert(k, v);
        }
    }
    Value::Object(line)
}

/// The `--json` error line for `e` from `command`.
pub fn error_line(command: &str, e: &Error) -> Value {
    json!({
        "event": "error", "ok": false, "command": command, "kind": e.kind().as_str(),
        "exit_code": e.kind().exit_code(), "message": e.to_string(),
    })
}

/// Print `report` of `command` as JSON or text; its exit code.
pub fn render(command: &str, json: bool, report: &impl Report) -> u8 {
    if json {
        emit_json(&result_line(command, report));
    } else {
        report.print_text();
    }
    report.exit_code()
}

/// Print `e` from `command` (to stderr; also as the JSON error line); its
/// exit code.
pub fn render_error(command: &str, json: bool, e: &Error) -> u8 {
    if json {
        emit_json(&error_line(command, e));
    }
    eprintln!("liverestore: error: {e}");
    e.kind().exit_code() as u8
}
