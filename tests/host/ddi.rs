//! `liverestore ddi` against a real DDI server: goosebit (from PyPI, in
//! the virtualenv `scripts/goosebit-env.sh` makes) on 127.0.0.1, with its
//! own database and artifacts in the test's directory. Deployments are
//! SWUpdate `.swu` archives (what goosebit serves), uploaded through its
//! API and assigned to devices.
//!
//! - A `.swu` whose image differs from its sw-description's SHA-256:
//!   `closed`/`failure` with the message, exit code (14) and error kind,
//!   and nothing left staged; goosebit shows the device in error.
//! - Through a proxy that answers HTTP 500 twice and drops the download
//!   after 1 MiB: the client retries with backoff and resumes the
//!   transfer; the image is staged from the archive, `proceeding`
//!   feedback with progress, then activated for a trial (GRUB, in a
//!   scratch `/boot/grub` on the loop disk: never this machine's boot).
//! - A poll while the trial is armed changes nothing; after `rollback`
//!   the next poll reports the action `closed`/`failure`.
//! - hawkBit's cancellation (`cancelAction`; goosebit has none, so the
//!   proxy links one into goosebit's poll answers and takes the device's
//!   feedback, as hawkBit does): an action that never reached the device
//!   is confirmed with nothing touched; one activated, not yet rebooted
//!   into, is rolled back and discarded, then confirmed.
//!
//! The restored system's own report (`commit` sends `closed`/`success`)
//! needs a boot into it: a guest.

use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::activate_grub::{grub_dir_with_env, helper, system_image};
use crate::common::goosebit::{Goosebit, Server, swu};
use crate::common::*;

/// A proxy in front of the server that answers its first two requests
/// with HTTP 500 and drops the first whole download after 1 MiB. And
/// hawkBit's cancellation, which goosebit does not have: while the file
/// `argv[2]` names an action, polls link a `cancelAction` that stops it,
/// as hawkBit's would; the device's feedback on it is kept beside that
/// file (`.feedback`), which goes.
const FAULTY_PROXY: &str = r#"
import http.client, http.server, json, os, re, socket, sys, threading
upstream = int(sys.argv[1])
cancel_file = sys.argv[2]
state = {"requests": 0, "dropped": False}
lock = threading.Lock()

def cancel_wanted():
    try:
        with open(cancel_file) as f:
            return f.read().strip()
    except OSError:
        return None

class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        with lock:
            state["requests"] += 1
            fail = state["requests"] <= 2
            drop = (self.command == "GET" and self.path.endswith("/download")
                    and "Range" not in self.headers and not state["dropped"])
            if drop:
                state["dropped"] = True
        if fail:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path.split("?")[0]
        stop = cancel_wanted()
        if stop and "/cancelAction/" in path:
            answer = b""
            if self.command == "GET":
                answer = json.dumps({"id": stop, "cancelAction": {"stopId": stop}}).encode()
            else:
                with open(cancel_file + ".feedback", "wb") as f:
                    f.write(body or b"")
                os.remove(cancel_file)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        c = http.client.HTTPConnection("127.0.0.1", upstream, timeout=120)
        c.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        r = c.getresponse()
        if stop and self.command == "GET" and re.search(r"/controller/v1/[^/]+$", path):
            poll = json.loads(r.read())
            poll.setdefault("_links", {})["cancelAction"] = {
                "href": "http://127.0.0.1:%d%s/cancelAction/%s" % (self.server.server_address[1], path, stop)}
            answer = json.dumps(poll).encode()
            self.send_response(r.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection"):
                self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        if drop:
            self.wfile.write(r.read(1 << 20))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        while True:
            chunk = r.read(1 << 16)
            if not chunk:
                break
            self.wfile.write(chunk)

    do_GET = do_HEAD = do_POST = do_PUT = forward

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
#[ignore = "needs root: loop devices and mounts (scripts/test.sh runs it)"]
fn deployments_from_goosebit_are_staged_activated_and_reported() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(&t.path().join("d"), Fs::Ext4, 200);
    let mnt = disk.mnt.clone();
    let g = grub_dir_with_env(&mnt);
    let helper = helper();
    let cli = Cli::new(t.path());
    let img = std::fs::read(system_image(t.path())).unwrap();
    let good = t.path().join("good.swu");
    swu(&good, &img, "2.0.0", &hex::encode(Sha256::digest(&img)));
    let bad = t.path().join("bad.swu");
    swu(&bad, &img, "1.0.0", &"ab".repeat(32));

    let gb = Goosebit::start(&t.path().join("goosebit"));
    let good_id = gb.upload(&good);
    let bad_id = gb.upload(&bad);
    gb.assign("lab-ok", good_id);
    gb.assign("lab-bad", bad_id);

    let ddi = |server: &str, device: &str| {
        vec![
            "--json".to_string(),
            "ddi".into(),
            "--once".into(),
            "--server".into(),
            server.to_string(),
            "--controller-id".into(),
            device.to_string(),
            "--attribute".into(),
            "hw_boardname=default".into(),
            "--dir".into(),
            mnt.display().to_string(),
            "--loader".into(),
            "grub".into(),
            "--grub-dir".into(),
            g.display().to_string(),
            "--helper".into(),
            helper.clone(),
        ]
    };

    // A corrupt image: reported as a failure, with its exit code; nothing
    // left behind.
    let v = ddi(&gb.url, "lab-bad");
    let out = cli.json_failure(1, &args(&v));
    let cycle = &out["cycle"];
    assert_eq!(cycle["registered"], true, "{out}");
    assert_eq!(cycle["closed"], "failure", "{out}");
    assert!(
        cycle["failure"]
            .as_str()
            .unwrap()
            .contains("but sw-description says"),
        "{out}"
    );
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"].as_array().unwrap().len(), 0, "{list}");
    let (device, log) = gb.device("lab-bad");
    assert_eq!(device["last_state"], "Error", "{device}");
    assert!(log.contains("exit code 14"), "{log}");
    assert!(log.contains("error kind bad_image"), "{log}");

    // Through a faulty proxy: retried, resumed, staged, activated.
    let cancel_file = t.path().join("cancel");
    let mut proxy = Command::new("python3")
        .arg("-c")
        .arg(FAULTY_PROXY)
        .arg(gb.url.rsplit(':').next().unwrap())
        .arg(&cancel_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(t.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let _proxy = Server(proxy);
    let via_proxy = format!("http://127.0.0.1:{}", port.trim());
    let v = ddi(&via_proxy, "lab-ok");
    let out = cli.run(&args(&v));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json_lines(&args(&v), &stdout).pop().unwrap();
    let cycle = &result["cycle"];
    let action = cycle["action"].as_str().unwrap().to_string();
    let name = format!("ddi-{action}");
    assert_eq!(cycle["staged"], name.as_str(), "{result}");
    assert_eq!(cycle["activated"], true, "{result}");
    assert!(cycle["closed"].is_null(), "{result}");
    // (the notes are JSON events on stdout)
    assert!(
        stdout.contains("answered HTTP 500; trying again"),
        "{stdout}"
    );
    let proxy_log = std::fs::read_to_string(t.path().join("proxy.log")).unwrap();
    assert!(
        proxy_log
            .lines()
            .filter(|l| l.ends_with("/download"))
            .count()
            >= 2,
        "the dropped download was picked up again: {proxy_log}"
    );
    // the image from the archive, staged and verified
    let verify = cli.json(&["verify", &name, "--sha256", "--json"]);
    assert_eq!(
        verify["sha256"],
        hex::encode(Sha256::digest(&img)),
        "{verify}"
    );
    let status = cli.json(&["status", "--json"]);
    assert_eq!(status["activation"]["name"], name.as_str(), "{status}");
    let (device, log) = gb.device("lab-ok");
    assert_eq!(device["last_state"], "Running", "{device}");
    assert!(log.contains("staging good.swu"), "{log}");
    assert!(log.contains("activated for a trial"), "{log}");

    // The trial armed: a poll changes nothing.
    let v = ddi(&gb.url, "lab-ok");
    let out = cli.json(&args(&v));
    assert_eq!(out["cycle"]["action"], action.as_str(), "{out}");
    assert_eq!(out["cycle"]["staged"], serde_json::Value::Null, "{out}");
    assert!(out["cycle"]["closed"].is_null(), "{out}");

    // An action cancelled that never reached this device: confirmed,
    // nothing touched.
    let feedback = t.path().join("cancel.feedback");
    std::fs::write(&cancel_file, "999").unwrap();
    let out = cli.json(&args(&ddi(&via_proxy, "lab-ok")));
    assert_eq!(out["cycle"]["cancelled"]["outcome"], "nothing", "{out}");
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&feedback).unwrap()).unwrap();
    assert_eq!(sent["status"]["execution"], "closed", "{sent}");
    assert_eq!(sent["status"]["result"]["finished"], "success", "{sent}");
    let status = cli.json(&["status", "--json"]);
    assert_eq!(status["activation"]["name"], name.as_str(), "{status}");

    // Rolled back before a commit: the next poll reports the failure.
    cli.expect(0, &["rollback"]);
    let out = cli.json_failure(1, &args(&v));
    assert_eq!(out["cycle"]["closed"], "failure", "{out}");
    assert!(
        out["cycle"]["failure"]
            .as_str()
            .unwrap()
            .contains("rolled back before it was committed"),
        "{out}"
    );
    let (device, log) = gb.device("lab-ok");
    assert_eq!(device["last_state"], "Error", "{device}");
    assert!(log.contains("rolled back"), "{log}");
    cli.expect(0, &["discard", &name]);

    // Cancelled while activated, before the reboot: the activation rolled
    // back, the staging discarded, the cancellation confirmed; /boot as
    // before the activation.
    gb.assign("lab-cancel", good_id);
    let grub_before = std::fs::read_to_string(g.join("grubenv")).unwrap();
    let out = cli.json(&args(&ddi(&via_proxy, "lab-cancel")));
    assert_eq!(out["cycle"]["activated"], true, "{out}");
    let action = out["cycle"]["action"].as_str().unwrap().to_string();
    std::fs::write(&cancel_file, &action).unwrap();
    let out = cli.json(&args(&ddi(&via_proxy, "lab-cancel")));
    let cancelled = &out["cycle"]["cancelled"];
    assert_eq!(cancelled["outcome"], "cancelled", "{out}");
    assert_eq!(cancelled["action"], action.as_str(), "{out}");
    let message = cancelled["message"].as_str().unwrap();
    assert!(
        message.contains("rolled back") && message.contains("discarded"),
        "{out}"
    );
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&feedback).unwrap()).unwrap();
    assert_eq!(sent["id"], action.as_str(), "{sent}");
    assert_eq!(sent["status"]["execution"], "closed", "{sent}");
    assert_eq!(sent["status"]["result"]["finished"], "success", "{sent}");
    assert!(!cancel_file.exists(), "the proxy heard the feedback");
    let status = cli.json(&["status", "--json"]);
    assert!(status["activation"].is_null(), "{status}");
    let list = cli.json(&["list", "--json"]);
    assert_eq!(list["images"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(
        std::fs::read_to_string(g.join("grubenv")).unwrap(),
        grub_before
    );
}
