//! Pull-mode management: `liverestore ddi` is a client of Eclipse
//! hawkBit's Direct Device Integration API (hawkBit itself, goosebit). It
//! polls the server; a deployment whose artifact is a disk image (raw,
//! compressed, qcow2, VHD(X), or the raw image of an SWUpdate `.swu`) is
//! streamed from the server into a staging (a dropped transfer resumes
//! with ranges), with `proceeding` feedback and its progress while it
//! runs; the staging is then activated as a trial and, when the
//! deployment's maintenance window allows, the machine reboots into it.
//!
//! How the action ends is told from where it ends:
//! - the restored system, once it has committed (`liverestore commit`
//!   sends `closed`/`success` itself: the record in its on-disk header
//!   says which server and action; `ddi` in the restored system sends it
//!   again if `commit` could not reach the server);
//! - the old system, when the trial ended without a commit (the watchdog,
//!   a failed boot, `rollback`): `closed`/`failure`;
//! - any failure before that (a bad image, no room, a refused
//!   activation): `closed`/`failure` with the message, exit code and
//!   error kind in `details`, and nothing left half-done (a failed stage
//!   removes what it made; an activation that failed changed nothing);
//! - a cancellation (hawkBit's `cancelAction`): what the action left is
//!   taken back (an activation not yet booted into rolled back, the
//!   staging discarded) and the cancellation confirmed; the restored
//!   system, running its trial, refuses it (`rejected`).
//!
//! Owns: the DDI conversation and the action's bookkeeping (`ddi.json`
//! in the state directory). May not: stage, activate or reboot other than
//! through [`crate::stage`], [`crate::boot::activate`] and
//! [`crate::sys::power`].

pub mod protocol;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::activate::{self, ActivateOptions};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::space::allocate::SpaceRequest;
use crate::store::record::DeploymentRef;
use crate::store::state_dir::{StateDir, StateLock};
use protocol::Execution;
use server::DdiServer;

/// The action under way on this system, between polls (and reboots).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAction {
    pub action: String,
    /// The staging it became (the whole-disk name for a disk image).
    pub name: String,
    pub version: Option<String>,
    /// Activated for a trial (false: staged, waiting for its window).
    pub activated: bool,
}

/// What `ddi` needs besides the server.
pub struct DdiOptions<'a> {
    /// Where stagings go.
    pub space: &'a SpaceRequest,
    /// The device's attributes, sent when the server asks (`configData`).
    pub attributes: &'a BTreeMap<String, String>,
    /// How to activate.
    pub activation: ActivateOptions<'a>,
    /// Reboot into the trial once armed (in the maintenance window).
    pub reboot: bool,
}

/// What one poll cycle did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cycle {
    /// The attributes were sent (the server asked for them).
    pub registered: bool,
    /// The action handled, if any.
    pub action: Option<String>,
    /// The staging it made.
    pub staged: Option<String>,
    pub activated: bool,
    /// `closed` feedback sent: "success" or "failure".
    pub closed: Option<&'static str>,
    /// Why it failed, as sent to the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The machine reboots into the trial now.
    pub rebooting: bool,
    /// When the server wants the next poll.
    pub sleep_secs: u64,
    /// A cancellation the server asked for: what this device did about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancelled>,
}

/// How a cancellation went: `cancelled` (what the action left here is
/// taken back: activation rolled back, staging discarded), `nothing`
/// (nothing of the action is here), `refused` (the restored system is
/// running its trial: its commit or rollback ends the action) or
/// `failed` (taking it back failed: the message).
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    /// The action the server stops.
    pub action: String,
    pub outcome: CancelOutcome,
    pub message: String,
}

/// What a cancellation did (see [`Cancelled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelOutcome {
    Cancelled,
    Nothing,
    Refused,
    Failed,
}

impl CancelOutcome {
    /// As the cancellation's feedback says it.
    fn execution(self) -> Execution {
        match self {
            CancelOutcome::Cancelled | CancelOutcome::Nothing => Execution::Success,
            CancelOutcome::Refused => Execution::Rejected,
            CancelOutcome::Failed => Execution::Failure,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Cancelled => "cancelled",
            CancelOutcome::Nothing => "nothing",
            CancelOutcome::Refused => "refused",
            CancelOutcome::Failed => "failed",
        }
    }
}

fn pending_path(state: &StateDir) -> PathBuf {
    state.root().join("ddi.json")
}

/// The action `ddi` is in the middle of, if any.
pub fn pending(state: &StateDir) -> Result<Option<PendingAction>> {
    state.read_state(&pending_path(state))
}

/// The details of a failure, as feedback: the message, then its exit
/// code and kind.
fn failure_details(e: &Error) -> Vec<String> {
    vec![
        e.to_string(),
        format!("exit code {}", e.kind().exit_code()),
        format!("error kind {}", e.kind().as_str()),
    ]
}

/// Feedback while staging: at most every few seconds, as `Downloaded N%`
/// lines too (what goosebit shows as the device's progress), on top of
/// the user's own progress display.
struct Reporter<'a> {
    inner: &'a dyn Progress,
    server: &'a DdiServer,
    action: &'a str,
    total: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<(std::time::Instant, u64)>,
}

const FEEDBACK_EVERY: Duration = Duration::from_secs(3);

/// Says nothing (a progress feedback's own retries are not news).
struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &str, _: u64) {}
    fn update(&self, _: u64) {}
    fn end(&self) {}
    fn note(&self, _: &str) {}
}

impl Progress for Reporter<'_> {
    fn begin(&self, phase: &str, total: u64) {
        self.inner.begin(phase, total);
        if phase == "stage" {
            self.total
                .store(total, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn update(&self, done: u64) {
        self.inner.update(done);
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        if total == 0 {
            return;
        }
        let percent = (done.min(total) * 100 / total).min(99);
        let mut last = self.last.lock().expect("not poisoned");
        if last.0.elapsed() < FEEDBACK_EVERY || percent == last.1 {
            return;
        }
        *last = (std::time::Instant::now(), percent);
        drop(last);
        // progress is news, not a duty: a lost one is not retried for long
        let _ = self.server.feedback(
            self.action,
            Execution::Proceeding {
                progress: Some((percent, 100)),
            },
            &[format!("Downloaded {percent}%")],
            &Quiet,
        );
    }

    fn end(&self) {
        self.inner.end();
    }

    fn note(&self, message: &str) {
        self.inner.note(message);
    }
}

/// One poll cycle: report how a pending action ended, register when
/// asked, take a new deployment (stage, activate, reboot).
pub fn cycle(
    state: &StateLock<'_>,
    server: &DdiServer,
    opts: &DdiOptions<'_>,
    progress: &dyn Progress,
) -> Result<Cycle> {
    let mut out = Cycle::default();
    // In a restored system: its commit's report, if the commit could not
    // send it.
    report_committed(state, server, progress, &mut out)?;
    // In the old system: how the trial of a pending action ended.
    let mut pending = pending(state)?;
    if let Some(p) = pending.clone()
        && p.activated
    {
        let s = activate::status(state)?;
        let ours = s.activation.as_ref().is_some_and(|a| a.name == p.name);
        if !s.booted_restored && (!ours || s.trial_ended) {
            let why = if ours {
                format!(
                    "the restored system '{}' did not commit within its trial: this machine is back on its old system",
                    p.name
                )
            } else {
                format!(
                    "the activation of '{}' was rolled back before it was committed",
                    p.name
                )
            };
            progress.note(&why);
            server.feedback(
                &p.action,
                Execution::Failure,
                std::slice::from_ref(&why),
                progress,
            )?;
            state.remove_state(&pending_path(state))?;
            out.action = Some(p.action);
            out.closed = Some("failure");
            out.failure = Some(why);
            pending = None;
        }
    }
    let mut answer = server.poll(progress)?;
    if let Some(href) = &answer.config_data {
        server.send_attributes(href, opts.attributes, progress)?;
        out.registered = true;
        // registered: ask again at once for what is waiting
        answer = server.poll(progress)?;
    }
    out.sleep_secs = answer.sleep.unwrap_or(Duration::from_secs(60)).as_secs();
    if let Some(href) = &answer.cancel {
        // the server asks again until it hears back: one cancellation a
        // cycle, before anything else
        let request = server.cancel_request(href, progress)?;
        let c = cancel(state, pending.as_ref(), &request.stop_id, progress);
        progress.note(&format!(
            "cancellation of action {}: {}",
            c.action, c.message
        ));
        server.answer_cancel(&request, c.outcome.execution(), &c.message, progress)?;
        out.action = Some(c.action.clone());
        out.cancelled = Some(c);
        return Ok(out);
    }
    let Some(href) = answer.deployment else {
        return Ok(out);
    };
    let deployment = server.deployment(&href, progress)?;
    out.action = Some(deployment.id.clone());
    match &pending {
        // under way: its trial, or its window
        Some(p) if p.action == deployment.id && p.activated => return Ok(out),
        Some(p) if p.action == deployment.id => {
            if deployment.window_open() {
                activate_and_reboot(
                    state,
                    server,
                    opts,
                    &deployment,
                    p.clone(),
                    progress,
                    &mut out,
                )?;
            }
            return Ok(out);
        }
        _ => {}
    }
    match stage(state, server, opts, &deployment, progress) {
        Ok(p) => {
            out.staged = Some(p.name.clone());
            if deployment.update == "skip" {
                // download only: the staging stays for a later deployment
                server.feedback(
                    &deployment.id,
                    Execution::Success,
                    &[format!("staged as '{}' (download only)", p.name)],
                    progress,
                )?;
                out.closed = Some("success");
                return Ok(out);
            }
            state.write_state(&pending_path(state), &p)?;
            if deployment.window_open() {
                activate_and_reboot(state, server, opts, &deployment, p, progress, &mut out)?;
            } else {
                server.feedback(
                    &deployment.id,
                    Execution::Proceeding { progress: None },
                    &[format!(
                        "staged as '{}'; waiting for the maintenance window",
                        p.name
                    )],
                    progress,
                )?;
            }
        }
        Err(e) => fail(server, &deployment.id, &e, progress, &mut out)?,
    }
    Ok(out)
}

/// Take back what action `stop` left here (`pending`: the action under
/// way): its activation rolled back, its staging discarded. Refused in a
/// restored system running its trial (its commit or rollback ends it).
fn cancel(
    state: &StateLock<'_>,
    pending: Option<&PendingAction>,
    stop: &str,
    progress: &dyn Progress,
) -> Cancelled {
    let done = |outcome, message: String| Cancelled {
        action: stop.to_string(),
        outcome,
        message,
    };
    if activate::booted_restored() {
        return done(
            CancelOutcome::Refused,
            "this is the restored system, running its trial: its commit or rollback ends the action"
                .into(),
        );
    }
    let Some(p) = pending.filter(|p| p.action == stop) else {
        return done(
            CancelOutcome::Nothing,
            "nothing of it is here (not staged, or already over)".into(),
        );
    };
    let taken_back = (|| -> Result<String> {
        let mut what = Vec::new();
        if p.activated {
            let s = activate::status(state)?;
            if s.activation.as_ref().is_some_and(|a| a.name == p.name) {
                activate::rollback(state)?;
                what.push(format!("the activation of '{}' rolled back", p.name));
            }
        }
        match crate::stage::staged::discard_named(state, &p.name, false) {
            Ok(_) => what.push(format!("'{}' discarded", p.name)),
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        state.remove_state(&pending_path(state))?;
        if what.is_empty() {
            what.push("nothing was left".into());
        }
        Ok(what.join(", "))
    })();
    match taken_back {
        Ok(m) => {
            progress.note(&m);
            done(CancelOutcome::Cancelled, m)
        }
        Err(e) => done(CancelOutcome::Failed, e.to_string()),
    }
}

/// Send `closed`/`failure` for `e`.
fn fail(
    server: &DdiServer,
    action: &str,
    e: &Error,
    progress: &dyn Progress,
    out: &mut Cycle,
) -> Result<()> {
    progress.note(&format!("deployment {action} failed: {e}"));
    server.feedback(action, Execution::Failure, &failure_details(e), progress)?;
    out.closed = Some("failure");
    out.failure = Some(e.to_string());
    Ok(())
}

/// Stage the deployment's artifact; its staging, recorded with the
/// deployment.
fn stage(
    state: &StateLock<'_>,
    server: &DdiServer,
    opts: &DdiOptions<'_>,
    deployment: &protocol::Deployment,
    progress: &dyn Progress,
) -> Result<PendingAction> {
    let artifact = deployment.artifact()?;
    let name = format!("ddi-{}", deployment.id);
    server.feedback(
        &deployment.id,
        Execution::Proceeding {
            progress: Some((0, 100)),
        },
        &[format!(
            "staging {} ({}) as '{name}'",
            artifact.filename,
            artifact
                .size
                .map_or("size not given".to_string(), |s| format!("{s} bytes"))
        )],
        progress,
    )?;
    crate::boot::activate::clean_up_ended_trial(state, progress)?;
    // a staging of an earlier try of this action: what it left goes first
    if state.exists(&name) {
        crate::stage::staged::discard_named(state, &name, false)?;
    }
    let reporter = Reporter {
        inner: progress,
        server,
        action: &deployment.id,
        total: 0.into(),
        last: std::sync::Mutex::new((std::time::Instant::now(), 0)),
    };
    let req = crate::stage::StageRequest {
        name: &name,
        space: opts.space,
        image: &artifact.href,
        open: crate::input::OpenOptions::default(),
        sha256: None,
        split: crate::input::split::Split::default(),
        signature: crate::stage::signature::SignatureRequest::default(),
    };
    let recs = crate::stage::stage(state, &req, &reporter)?;
    let deployment_ref = DeploymentRef {
        resource: server.base().to_string(),
        action: deployment.id.clone(),
        version: deployment.version.clone(),
    };
    for mut rec in recs {
        rec.deployment = Some(deployment_ref.clone());
        state.save(&rec)?;
    }
    Ok(PendingAction {
        action: deployment.id.clone(),
        name,
        version: deployment.version.clone(),
        activated: false,
    })
}

fn activate_and_reboot(
    state: &StateLock<'_>,
    server: &DdiServer,
    opts: &DdiOptions<'_>,
    deployment: &protocol::Deployment,
    mut p: PendingAction,
    progress: &dyn Progress,
    out: &mut Cycle,
) -> Result<()> {
    let activated = crate::boot::activate::clean_up_ended_trial(state, progress)
        .and_then(|_| activate::activate(state, &p.name, &opts.activation, progress));
    let a = match activated {
        Ok(a) => a,
        Err(e) => {
            // not activated: nothing armed; the staging stays for a retry
            state.remove_state(&pending_path(state))?;
            return fail(server, &deployment.id, &e, progress, out);
        }
    };
    p.activated = true;
    state.write_state(&pending_path(state), &p)?;
    out.activated = true;
    server.feedback(
        &deployment.id,
        Execution::Proceeding {
            progress: Some((100, 100)),
        },
        &[format!(
            "'{}' activated for a trial ({}); {}",
            p.name,
            a.entry(),
            if opts.reboot {
                "rebooting into it"
            } else {
                "it starts at the next reboot"
            }
        )],
        progress,
    )?;
    if opts.reboot {
        out.rebooting = true;
    }
    Ok(())
}

/// In a restored system that was committed and came from a deployment:
/// send `closed`/`success` (again: the server takes it twice).
fn report_committed(
    state: &StateLock<'_>,
    server: &DdiServer,
    progress: &dyn Progress,
    out: &mut Cycle,
) -> Result<()> {
    if !activate::booted_restored() {
        return Ok(());
    }
    let Some(rec) = activate::restored_record()? else {
        return Ok(());
    };
    let Some(d) = rec.deployment else {
        return Ok(());
    };
    if d.resource != server.base() {
        return Ok(());
    }
    // told once (a rollout counts each success it hears)
    if reported(state)?.as_deref() == Some(d.action.as_str()) {
        return Ok(());
    }
    let s = activate::status(state)?;
    if !s.committed {
        return Ok(());
    }
    send_success(server, &d, &rec.name, progress)?;
    note_reported(state, &d.action, progress);
    out.action = Some(d.action);
    out.closed = Some("success");
    Ok(())
}

fn send_success(
    server: &DdiServer,
    d: &DeploymentRef,
    name: &str,
    progress: &dyn Progress,
) -> Result<()> {
    server.feedback(
        &d.action,
        Execution::Success,
        &[format!(
            "'{name}'{} runs and is committed",
            d.version
                .as_ref()
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        )],
        progress,
    )
}

fn reported_path(state: &StateDir) -> PathBuf {
    state.root().join("ddi-reported.json")
}

/// Remember that the success of `action` was told (a state directory that
/// cannot be written: said; `ddi` may then tell it again).
fn note_reported(state: &StateLock<'_>, action: &str, progress: &dyn Progress) {
    let written = std::fs::create_dir_all(state.root())
        .map_err(|e| Error::io("create the state directory", e).with_path(state.root()))
        .and_then(|()| state.write_state(&reported_path(state), &action));
    if let Err(e) = written {
        progress.note(&format!(
            "the server was told, but that it was cannot be kept ({e}): a `liverestore ddi` here tells it again"
        ));
    }
}

/// The action whose success this (restored) system has told its server.
fn reported(state: &StateDir) -> Result<Option<String>> {
    state.read_state(&reported_path(state))
}

/// After `commit` in a restored system: tell the server of the deployment
/// it came from, if any (two tries: a server that is away does not hold
/// the commit up; `liverestore ddi` tells it later). Whether it was told
/// (None: no deployment).
pub fn report_commit(state: &StateLock<'_>, progress: &dyn Progress) -> Option<bool> {
    let rec = activate::restored_record().ok().flatten()?;
    let d = rec.deployment?;
    let (server, controller) = d.resource.split_once("/controller/v1/")?;
    let (server, tenant) = server.rsplit_once('/')?;
    let told = DdiServer::new(server, tenant, controller, None)
        .map(|s| s.with_tries(2))
        .and_then(|s| send_success(&s, &d, &rec.name, progress));
    match told {
        Ok(()) => {
            note_reported(state, &d.action, progress);
            Some(true)
        }
        Err(e) => {
            progress.note(&format!(
                "the update server was not told of the commit ({e}): `liverestore ddi` tells it"
            ));
            Some(false)
        }
    }
}
