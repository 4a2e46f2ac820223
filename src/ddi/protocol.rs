//! Eclipse hawkBit's Direct Device Integration (DDI) API, the messages a
//! device exchanges with its update server (hawkBit, goosebit): the poll
//! answer, a deployment, and the feedback sent back. Pure: JSON in, values
//! out, and the other way round; unit-tested and fuzzed.
//!
//! The resources, under `{server}/{tenant}/controller/v1/{controller id}`:
//! `GET` it (the poll: how long to sleep, and links to what is waiting),
//! `PUT …/configData` (the device's attributes: registration),
//! `GET …/deploymentBase/{action}` (what to install),
//! `POST …/deploymentBase/{action}/feedback` (how it goes), and, when an
//! administrator cancels an action, `GET …/cancelAction/{id}` (which
//! action to stop) and `POST …/cancelAction/{id}/feedback` (stopped, or
//! refused).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, ErrorKind, Result};

fn bad(what: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("the DDI server's answer: {}", what.into()),
    )
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(rename = "deploymentBase")]
    deployment_base: Option<Link>,
    #[serde(rename = "configData")]
    config_data: Option<Link>,
    #[serde(rename = "cancelAction")]
    cancel_action: Option<Link>,
}

#[derive(Deserialize)]
struct PollJson {
    config: Option<serde_json::Value>,
    #[serde(rename = "_links", default)]
    links: Links,
}

/// What a poll said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollAnswer {
    /// How long to wait before the next poll (None: the server said not).
    pub sleep: Option<Duration>,
    /// A deployment waiting: its `deploymentBase` link.
    pub deployment: Option<String>,
    /// The server wants the device's attributes (registration).
    pub config_data: Option<String>,
    /// The server cancels an action.
    pub cancel: Option<String>,
}

/// `HH:MM:SS`, as DDI writes the polling interval.
pub fn parse_sleep(text: &str) -> Option<Duration> {
    let mut parts = text.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let n = |v: &str| v.parse::<u64>().ok();
    let (h, m, s) = (n(h)?, n(m)?, n(s)?);
    (m < 60 && s < 60).then(|| Duration::from_secs(h * 3600 + m * 60 + s))
}

/// Parse the poll answer.
pub fn parse_poll(json: &[u8]) -> Result<PollAnswer> {
    let p: PollJson = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let sleep = p
        .config
        .as_ref()
        .and_then(|c| c["polling"]["sleep"].as_str())
        .and_then(parse_sleep);
    Ok(PollAnswer {
        sleep,
        deployment: p.links.deployment_base.map(|l| l.href),
        config_data: p.links.config_data.map(|l| l.href),
        cancel: p.links.cancel_action.map(|l| l.href),
    })
}

/// One artifact of a deployment: a file to download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub filename: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub href: String,
}

/// What a deployment asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    /// The action's id, echoed in every feedback.
    pub id: String,
    /// `forced`, `attempt` or `skip` (`skip`: download only, install
    /// nothing).
    pub update: String,
    /// `available` or `unavailable` (None: no window, any time is fine).
    pub maintenance_window: Option<String>,
    /// The version of its (first) software module.
    pub version: Option<String>,
    pub artifacts: Vec<Artifact>,
}

#[derive(Deserialize)]
struct ArtifactJson {
    filename: String,
    size: Option<u64>,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
    #[serde(rename = "_links", default)]
    links: std::collections::BTreeMap<String, Link>,
}

#[derive(Deserialize)]
struct ChunkJson {
    version: Option<String>,
    #[serde(default)]
    artifacts: Vec<ArtifactJson>,
}

#[derive(Deserialize)]
struct DeploymentInner {
    update: Option<String>,
    #[serde(rename = "maintenanceWindow")]
    maintenance_window: Option<String>,
    #[serde(default)]
    chunks: Vec<ChunkJson>,
}

#[derive(Deserialize)]
struct DeploymentJson {
    id: serde_json::Value,
    deployment: DeploymentInner,
}

/// An action id as DDI writes it: text, or a number (hawkBit).
fn action_id(v: serde_json::Value, what: &str) -> Result<String> {
    match v {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(format!("{what} is neither text nor a number"))),
    }
}

/// Parse a `deploymentBase` answer.
pub fn parse_deployment(json: &[u8]) -> Result<Deployment> {
    let d: DeploymentJson = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let id = action_id(d.id, "the deployment's id")?;
    let mut artifacts = Vec::new();
    for a in d.deployment.chunks.iter().flat_map(|c| &c.artifacts) {
        // HTTPS first, as DDI's clients prefer it
        let href = ["download", "download-http"]
            .iter()
            .find_map(|k| a.links.get(*k))
            .map(|l| l.href.clone())
            .ok_or_else(|| bad(format!("artifact '{}' has no download link", a.filename)))?;
        artifacts.push(Artifact {
            filename: a.filename.clone(),
            size: a.size,
            sha256: a.hashes.get("sha256").map(|h| h.to_ascii_lowercase()),
            href,
        });
    }
    Ok(Deployment {
        id,
        update: d.deployment.update.unwrap_or_else(|| "forced".into()),
        maintenance_window: d.deployment.maintenance_window,
        version: d.deployment.chunks.iter().find_map(|c| c.version.clone()),
        artifacts,
    })
}

impl Deployment {
    /// The one artifact to stage: a deployment of one image.
    pub fn artifact(&self) -> Result<&Artifact> {
        match self.artifacts.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::new(
                ErrorKind::BadImage,
                format!("deployment {} has no artifact", self.id),
            )),
            several => Err(Error::new(
                ErrorKind::BadImage,
                format!(
                    "deployment {} has {} artifacts ({}); liverestore stages one disk or partition image",
                    self.id,
                    several.len(),
                    several
                        .iter()
                        .map(|a| a.filename.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Whether it may be installed now (no window, or one that is open).
    pub fn window_open(&self) -> bool {
        self.maintenance_window.as_deref() != Some("unavailable")
    }
}

/// What a `cancelAction` answer asks: stop action `stop_id`; the
/// feedback goes to the cancel action `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub id: String,
    pub stop_id: String,
}

#[derive(Deserialize)]
struct StopJson {
    #[serde(rename = "stopId")]
    stop_id: serde_json::Value,
}

#[derive(Deserialize)]
struct CancelJson {
    id: serde_json::Value,
    #[serde(rename = "cancelAction")]
    cancel_action: StopJson,
}

/// Parse a `cancelAction` answer.
pub fn parse_cancel(json: &[u8]) -> Result<CancelRequest> {
    let c: CancelJson = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    Ok(CancelRequest {
        id: action_id(c.id, "the cancel action's id")?,
        stop_id: action_id(c.cancel_action.stop_id, "the action to stop")?,
    })
}

/// How an action stands, as feedback says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// Under way: `progress` is `(cnt, of)`.
    Proceeding { progress: Option<(u64, u64)> },
    /// Over, well.
    Success,
    /// Over, badly.
    Failure,
    /// Refused (a cancellation the device will not carry out).
    Rejected,
}

/// The body of a feedback `POST` for action `id`.
pub fn feedback(id: &str, execution: Execution, details: &[String]) -> serde_json::Value {
    let (exec, finished, progress) = match execution {
        Execution::Proceeding { progress } => ("proceeding", "none", progress),
        Execution::Success => ("closed", "success", None),
        Execution::Failure => ("closed", "failure", None),
        Execution::Rejected => ("rejected", "none", None),
    };
    let mut result = json!({ "finished": finished });
    if let Some((cnt, of)) = progress {
        result["progress"] = json!({ "cnt": cnt, "of": of });
    }
    json!({
        "id": id,
        "status": {
            "execution": exec,
            "result": result,
            "details": details,
        }
    })
}

/// The body of a `configData` `PUT`: the device's attributes.
pub fn config_data(attributes: &std::collections::BTreeMap<String, String>) -> serde_json::Value {
    json!({ "mode": "merge", "data": attributes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_as_hawkbit_and_goosebit_answer() {
        let p = parse_poll(br#"{"config":{"polling":{"sleep":"00:00:10"}},"_links":{"configData":{"href":"http://s/DEFAULT/controller/v1/lab1/configData"}}}"#).unwrap();
        assert_eq!(p.sleep, Some(Duration::from_secs(10)));
        assert!(p.config_data.unwrap().ends_with("/configData"));
        assert_eq!(p.deployment, None);
        let p = parse_poll(br#"{"config":{"polling":{"sleep":"12:00:05"}},"_links":{"deploymentBase":{"href":"http://s/x/deploymentBase/7?c=-1"}}}"#).unwrap();
        assert_eq!(p.sleep, Some(Duration::from_secs(12 * 3600 + 5)));
        assert_eq!(
            p.deployment.as_deref(),
            Some("http://s/x/deploymentBase/7?c=-1")
        );
        let p = parse_poll(br#"{"config":{}}"#).unwrap();
        assert_eq!(
            p,
            PollAnswer {
                sleep: None,
                deployment: None,
                config_data: None,
                cancel: None
            }
        );
        for bad in ["", "[]", "{\"_links\":{\"deploymentBase\":{}}}"] {
            assert!(parse_poll(bad.as_bytes()).is_err(), "{bad}");
        }
        for bad in ["1:2", "00:60:00", "a:b:c", "1:2:3:4", ""] {
            assert_eq!(parse_sleep(bad), None, "{bad}");
        }
    }

    #[test]
    fn deployments() {
        let d = parse_deployment(br#"{"id":"1","deployment":{"download":"forced","update":"forced","chunks":[{"part":"os","version":"1.0.0","name":"update.swu","artifacts":[{"filename":"update.swu","hashes":{"sha1":"f1"},"size":4194844,"_links":{"download":{"href":"http://127.0.0.1/d"}}}]}]}}"#).unwrap();
        assert_eq!(d.id, "1");
        assert_eq!(d.version.as_deref(), Some("1.0.0"));
        assert!(d.window_open());
        let a = d.artifact().unwrap();
        assert_eq!(
            (a.filename.as_str(), a.size, a.href.as_str()),
            ("update.swu", Some(4194844), "http://127.0.0.1/d")
        );
        assert_eq!(a.sha256, None);
        // hawkBit's own: a numeric id elsewhere, a window, sha256, download-http only
        let d = parse_deployment(br#"{"id":8,"deployment":{"update":"skip","maintenanceWindow":"unavailable","chunks":[{"version":"2","artifacts":[{"filename":"a.img","hashes":{"sha256":"AB"},"_links":{"download-http":{"href":"http://h/a"}}}]},{"artifacts":[{"filename":"b","_links":{"download":{"href":"x"}}}]}]}}"#).unwrap();
        assert_eq!(d.id, "8");
        assert_eq!(d.update, "skip");
        assert!(!d.window_open());
        assert_eq!(d.artifacts[0].sha256.as_deref(), Some("ab"));
        let e = d.artifact().unwrap_err();
        assert!(e.to_string().contains("2 artifacts (a.img, b)"), "{e}");
        assert!(
            parse_deployment(
                br#"{"id":"1","deployment":{"chunks":[{"artifacts":[{"filename":"a"}]}]}}"#
            )
            .is_err()
        );
        assert!(parse_deployment(br#"{"id":[],"deployment":{}}"#).is_err());
        let none = parse_deployment(br#"{"id":"3","deployment":{}}"#).unwrap();
        assert!(none.artifact().is_err());
    }

    #[test]
    fn cancellations() {
        let p = parse_poll(br#"{"config":{"polling":{"sleep":"00:05:00"}},"_links":{"cancelAction":{"href":"http://s/DEFAULT/controller/v1/lab1/cancelAction/12"}}}"#).unwrap();
        assert!(p.cancel.unwrap().ends_with("/cancelAction/12"));
        // hawkBit's example: numeric ids are text elsewhere
        let c = parse_cancel(br#"{"id":"12","cancelAction":{"stopId":"11"}}"#).unwrap();
        assert_eq!((c.id.as_str(), c.stop_id.as_str()), ("12", "11"));
        let c = parse_cancel(br#"{"id":12,"cancelAction":{"stopId":11}}"#).unwrap();
        assert_eq!((c.id.as_str(), c.stop_id.as_str()), ("12", "11"));
        for bad in [
            "",
            "{}",
            r#"{"id":"1"}"#,
            r#"{"id":"1","cancelAction":{}}"#,
            r#"{"id":true,"cancelAction":{"stopId":"1"}}"#,
            r#"{"id":"1","cancelAction":{"stopId":null}}"#,
        ] {
            assert!(parse_cancel(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn feedback_bodies() {
        let f = feedback(
            "7",
            Execution::Proceeding {
                progress: Some((40, 100)),
            },
            &["Downloaded 40%".into()],
        );
        assert_eq!(f["status"]["execution"], "proceeding");
        assert_eq!(f["status"]["result"]["finished"], "none");
        assert_eq!(f["status"]["result"]["progress"]["of"], 100);
        assert_eq!(f["status"]["details"][0], "Downloaded 40%");
        let f = feedback("7", Execution::Failure, &[]);
        assert_eq!(f["status"]["execution"], "closed");
        assert_eq!(f["status"]["result"]["finished"], "failure");
        assert!(f["status"]["result"].get("progress").is_none());
        assert_eq!(
            feedback("7", Execution::Success, &[])["status"]["result"]["finished"],
            "success"
        );
        let f = feedback("9", Execution::Rejected, &["running".into()]);
        assert_eq!(f["status"]["execution"], "rejected");
        assert_eq!(f["status"]["result"]["finished"], "none");
        let mut a = std::collections::BTreeMap::new();
        a.insert("hw_boardname".to_string(), "default".to_string());
        assert_eq!(config_data(&a)["data"]["hw_boardname"], "default");
    }
}
