//! The HTTP side of DDI: one device's resources on its update server,
//! every request retried with backoff while the server is unreachable,
//! drops the connection or answers 5xx (an update server restarting, a
//! proxy in between), never past a bounded number of tries.

use std::time::Duration;

use serde_json::Value;

use crate::ddi::protocol::{self, CancelRequest, Deployment, Execution, PollAnswer};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;

/// Tries of one request before it fails.
const TRIES: u32 = 8;
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One device (`controller id`) on its DDI server.
pub struct DdiServer {
    agent: ureq::Agent,
    /// `{server}/{tenant}/controller/v1/{controller id}`.
    base: String,
    token: Option<String>,
    /// The first wait between tries (doubled each time).
    first_backoff: Duration,
    /// Tries of one request.
    tries: u32,
}

/// What DDI allows in a controller id.
pub fn valid_controller_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

impl DdiServer {
    /// The device `controller_id` of tenant `tenant` on `server` (an
    /// http(s) URL); `token`: its target token, if the server wants one.
    pub fn new(
        server: &str,
        tenant: &str,
        controller_id: &str,
        token: Option<String>,
    ) -> Result<DdiServer> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::InvalidName,
                format!("--server '{server}' is not an http(s) URL"),
            ));
        }
        if !valid_controller_id(controller_id) {
            return Err(Error::new(
                ErrorKind::InvalidName,
                format!(
                    "'{controller_id}' cannot be a controller id (letters, digits, '.', '_', '-', ':')"
                ),
            ));
        }
        if tenant.is_empty() || tenant.contains('/') {
            return Err(Error::new(
                ErrorKind::InvalidName,
                format!("'{tenant}' cannot be a tenant"),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(DdiServer {
            agent,
            base: format!(
                "{}/{tenant}/controller/v1/{controller_id}",
                server.trim_end_matches('/')
            ),
            token,
            first_backoff: Duration::from_secs(1),
            tries: TRIES,
        })
    }

    /// The device's resource (what the record keeps of a deployment).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// With `first` as the first wait between tries (tests).
    pub fn with_backoff(mut self, first: Duration) -> DdiServer {
        self.first_backoff = first;
        self
    }

    /// With `tries` tries of each request (at least one).
    pub fn with_tries(mut self, tries: u32) -> DdiServer {
        self.tries = tries.max(1);
        self
    }

    /// `method` `url` with a JSON `body`; the answer's body. Retried with
    /// backoff (noted on `progress`) while the server cannot be reached or
    /// answers 5xx; any other answer but 2xx fails at once.
    fn call(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>> {
        let mut wait = self.first_backoff;
        let mut last = String::new();
        let tries = self.tries;
        for attempt in 1..=tries {
            if attempt > 1 {
                progress.note(&format!(
                    "the DDI server: {last}; trying again in {} s ({attempt}/{tries})",
                    wait.as_secs_f32()
                ));
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            let auth = self.token.as_ref().map(|t| format!("TargetToken {t}"));
            let sent = match (method, body) {
                ("GET", _) => {
                    let mut r = self.agent.get(url).header("Accept", "application/hal+json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.call()
                }
                (_, body) => {
                    let text = body.map(Value::to_string).unwrap_or_default();
                    let mut r = if method == "PUT" {
                        self.agent.put(url)
                    } else {
                        self.agent.post(url)
                    }
                    .header("Content-Type", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.send(text.as_bytes())
                }
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{method} {url}: {e}");
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            let read = std::io::Read::read_to_end(&mut resp.into_body().into_reader(), &mut body);
            if status >= 500 {
                last = format!("{method} {url} answered HTTP {status}");
                continue;
            }
            if let Err(e) = read {
                last = format!("{method} {url}: the answer was cut off ({e})");
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{method} {url}: the DDI server answered HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    ),
                ));
            }
            return Ok(body);
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("{last} ({tries} tries): the DDI server cannot be reached"),
        ))
    }

    /// Poll: what is waiting, and how long to sleep.
    pub fn poll(&self, progress: &dyn Progress) -> Result<PollAnswer> {
        protocol::parse_poll(&self.call("GET", &self.base, None, progress)?)
    }

    /// Send the device's attributes to `href` (a poll's `configData`).
    pub fn send_attributes(
        &self,
        href: &str,
        attributes: &std::collections::BTreeMap<String, String>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let body = protocol::config_data(attributes);
        self.call("PUT", href, Some(&body), progress).map(drop)
    }

    /// The deployment at `href` (a poll's `deploymentBase`).
    pub fn deployment(&self, href: &str, progress: &dyn Progress) -> Result<Deployment> {
        protocol::parse_deployment(&self.call("GET", href, None, progress)?)
    }

    /// The cancellation at `href` (a poll's `cancelAction`).
    pub fn cancel_request(&self, href: &str, progress: &dyn Progress) -> Result<CancelRequest> {
        protocol::parse_cancel(&self.call("GET", href, None, progress)?)
    }

    /// Answer cancellation `c`: done, refused or failed, and why.
    pub fn answer_cancel(
        &self,
        c: &CancelRequest,
        execution: Execution,
        why: &str,
        progress: &dyn Progress,
    ) -> Result<()> {
        let body = protocol::feedback(&c.id, execution, &[why.to_string()]);
        let url = format!("{}/cancelAction/{}/feedback", self.base, c.id);
        self.call("POST", &url, Some(&body), progress).map(drop)
    }

    /// Tell the server how action `id` goes.
    pub fn feedback(
        &self,
        id: &str,
        execution: Execution,
        details: &[String],
        progress: &dyn Progress,
    ) -> Result<()> {
        let url = format!("{}/deploymentBase/{id}/feedback", self.base);
        let body = protocol::feedback(id, execution, details);
        self.call("POST", &url, Some(&body), progress).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_ids_and_urls() {
        assert!(valid_controller_id("lab-pc.1:a_b"));
        for bad in ["", "a/b", "a b", "ä"] {
            assert!(!valid_controller_id(bad), "{bad}");
        }
        let s = DdiServer::new("http://127.0.0.1:60053/", "DEFAULT", "lab1", None).unwrap();
        assert_eq!(
            s.base(),
            "http://127.0.0.1:60053/DEFAULT/controller/v1/lab1"
        );
        assert!(DdiServer::new("ftp://x", "DEFAULT", "lab1", None).is_err());
        assert!(DdiServer::new("http://x", "a/b", "lab1", None).is_err());
    }

    #[test]
    fn an_unreachable_server_fails_after_its_tries() {
        // a port nobody listens on (bound, then closed)
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = DdiServer::new(&format!("http://127.0.0.1:{port}"), "DEFAULT", "x", None)
            .unwrap()
            .with_backoff(Duration::from_millis(1));
        let e = s.poll(&crate::progress::NoProgress).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("8 tries"), "{e}");
    }
}
