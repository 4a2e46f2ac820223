//! goosebit, a real hawkBit DDI server (from PyPI, in the virtualenv
//! `scripts/goosebit-env.sh` makes), on 127.0.0.1 with its own database
//! and artifacts in the test's directory; an administrator's API client
//! to upload software and assign it to devices; `.swu` archives as
//! goosebit serves them.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A program of goosebit's virtualenv, which `scripts/goosebit-env.sh`
/// makes on first use (or waits for, while scripts/test.sh makes it).
pub fn venv_bin(tool: &str) -> PathBuf {
    static MADE: std::sync::Once = std::sync::Once::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    MADE.call_once(|| {
        let out = Command::new("bash")
            .arg(repo.join("scripts/goosebit-env.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/goosebit-env.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    repo.join("target/goosebit/venv/bin").join(tool)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing listens on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process this test started, ended (by its pid) when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// goosebit on 127.0.0.1, with an administrator's token for its API.
pub struct Goosebit {
    pub url: String,
    pub port: u16,
    token: String,
    _server: Server,
}

impl Goosebit {
    pub fn start(dir: &Path) -> Goosebit {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let env = |c: &mut Command| {
            c.current_dir(dir)
                .env(
                    "GOOSEBIT_DB_URI",
                    format!("sqlite:///{}", dir.join("db.sqlite3").display()),
                )
                .env("GOOSEBIT_ARTIFACTS_DIR", dir.join("artifacts"))
                .env("GOOSEBIT_POLL_TIME", "00:00:02");
        };
        // (the virtualenv, made if it is not there yet)
        let aerich = venv_bin("aerich");
        let migrations = std::fs::read_dir(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/goosebit/venv/lib"),
        )
        .unwrap()
        .flatten()
        .map(|p| p.path().join("site-packages/goosebit/db/migrations"))
        .find(|p| p.exists())
        .expect("goosebit's migrations");
        for args in [
            vec![
                "init",
                "-t",
                "goosebit.db.config.TORTOISE_CONF",
                "--location",
                migrations.to_str().unwrap(),
            ],
            vec!["upgrade"],
        ] {
            let mut c = Command::new(&aerich);
            env(&mut c);
            let out = c.args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "aerich {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = dir.join("server.log");
        let mut c = Command::new(venv_bin("uvicorn"));
        env(&mut c);
        let mut child = c
            .args([
                "goosebit:app",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("server.err")).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, &dir.join("server.err"));
        let server = Server(child);
        let url = format!("http://127.0.0.1:{port}");
        let token = python(&format!(
            "import httpx\nr = httpx.post('{url}/setup', data={{'username': 'admin@example.com', 'password': 'liverestore-test'}})\nr.raise_for_status()\nprint(r.json()['access_token'])"
        ));
        Goosebit {
            url,
            port,
            token: token.trim().to_string(),
            _server: server,
        }
    }

    /// Run `code` with `c`, an API client logged in; its JSON output.
    pub fn api(&self, code: &str) -> serde_json::Value {
        let out = python(&format!(
            "import httpx, json\nc = httpx.Client(base_url='{}', headers={{'Authorization': 'Bearer {}'}}, timeout=120)\n{code}",
            self.url, self.token
        ));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Upload a `.swu`; its software id.
    pub fn upload(&self, swu: &Path) -> u64 {
        self.api(&format!(
            "r = c.put('/api/v1/software', files={{'file': open('{}', 'rb')}})\nr.raise_for_status()\nprint(json.dumps(r.json()))",
            swu.display()
        ))["id"]
            .as_u64()
            .unwrap()
    }

    /// Make device `id` (if new) and assign it software `software`.
    pub fn assign(&self, id: &str, software: u64) {
        self.api(&format!(
            "r = c.put('/api/v1/devices', json={{'devices': ['{id}'], 'software': '{software}'}})\nr.raise_for_status()\nprint(json.dumps(r.json()))"
        ));
    }

    /// The device as goosebit shows it, with its log.
    pub fn device(&self, id: &str) -> (serde_json::Value, String) {
        let d = self.api(&format!(
            "r = c.get('/api/v1/devices')\nr.raise_for_status()\nd = [d for d in r.json()['devices'] if d['id'] == '{id}'][0]\nl = c.get('/api/v1/devices/{id}/log')\nl.raise_for_status()\nd['log'] = l.json()['log']\nprint(json.dumps(d))"
        ));
        let log = d["log"].as_str().unwrap_or_default().to_string();
        (d, log)
    }
}

pub fn python(code: &str) -> String {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(code)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}\n{code}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `.swu` of `image` whose sw-description says `sha256`.
pub fn swu(path: &Path, image: &[u8], version: &str, sha256: &str) {
    let desc = format!(
        "software =\n{{\n  version = \"{version}\";\n  # the root filesystem\n  images: (\n    {{\n      filename = \"root.ext4\";\n      type = \"raw\";\n      sha256 = \"{sha256}\";\n      device = \"/dev/sda2\";\n    }}\n  );\n}};\n"
    );
    let archive = liverestore::input::swu::build(&[
        ("sw-description", desc.as_bytes()),
        ("root.ext4", image),
    ]);
    std::fs::File::create(path)
        .unwrap()
        .write_all(&archive)
        .unwrap();
}
