//! `liverestore ddi`: take deployments from a hawkBit DDI server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::cli::args::SpaceArgs;
use crate::cli::boot::TrialArgs;
use crate::cli::{Context, Report};
use crate::ddi::server::DdiServer;
use crate::ddi::{self, Cycle, DdiOptions};
use crate::error::{Error, ErrorKind, Result};

/// Take deployments from an update server that speaks Eclipse hawkBit's
/// Direct Device Integration API (hawkBit, goosebit).
///
/// Polls the server at the interval it asks for. A deployment whose
/// artifact is a disk or partition image (raw, compressed, qcow2, VHD,
/// VHDX, or the raw image of an SWUpdate .swu archive, checked against
/// its sw-description) is streamed into a staging `ddi-ACTION` in the
/// --dir space, with `proceeding` feedback and its progress; then
/// activated as a trial (the activation options are `activate`'s), and,
/// with --reboot and when the deployment's maintenance window allows,
/// the machine reboots into it. The restored system's `liverestore
/// commit` tells the server `closed`/`success`; a trial that ends without
/// a commit is reported `closed`/`failure` by the next poll on the old
/// system, and so is every failure before (message, exit code and error
/// kind in the details), with nothing left half-done. An unreachable
/// server, a dropped connection or an HTTP 5xx answer is retried with
/// backoff. A deployment with `update: skip` is staged only. An action
/// the server cancels (hawkBit's cancelAction) is taken back: an
/// activation not yet booted into rolled back, its staging discarded;
/// the restored system, running its trial, refuses (its commit or
/// rollback ends the action).
///
///   liverestore ddi --server http://updates.example:60053 --dir /var/lib/liverestore-space --reboot
///   liverestore ddi --once --server … --attribute hw_boardname=kiosk-v2 --dir /srv
///
/// packaging/systemd/liverestore-ddi.service runs it as a service, with
/// its settings in /etc/default/liverestore-ddi.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DdiArgs {
    /// The server's URL (http(s)://HOST:PORT).
    #[arg(long, env = "LIVERESTORE_DDI_SERVER", value_name = "URL")]
    server: String,
    /// The tenant (hawkBit's, goosebit's default: DEFAULT).
    #[arg(long, env = "LIVERESTORE_DDI_TENANT", default_value = "DEFAULT")]
    tenant: String,
    /// This device's id on the server [default: the hostname].
    #[arg(long, env = "LIVERESTORE_DDI_CONTROLLER_ID", value_name = "ID")]
    controller_id: Option<String>,
    /// The device's target token, if the server wants one (sent as
    /// `Authorization: TargetToken …`).
    #[arg(long, env = "LIVERESTORE_DDI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An attribute sent when the server asks for them (registration):
    /// goosebit matches `hw_boardname` and `hw_revision` with an
    /// image's compatibility. Repeat it.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    trial: TrialArgs,
    /// Reboot into the trial once it is armed (when the deployment's
    /// maintenance window is open).
    #[arg(long)]
    reboot: bool,
    /// One poll cycle, then exit (a timer, a test, a first look); by
    /// default it polls for ever.
    #[arg(long)]
    once: bool,
}

fn parse_attribute(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?}: KEY=VALUE")),
    }
}

#[derive(Debug, Serialize)]
pub struct DdiReport {
    /// The device's resource on the server.
    pub device: String,
    /// What the (last) poll cycle did.
    pub cycle: Cycle,
}

impl DdiArgs {
    pub fn run(self, cx: &Context) -> Result<DdiReport> {
        let controller = match self.controller_id {
            Some(id) => id,
            None => rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        };
        let server = DdiServer::new(&self.server, &self.tenant, &controller, self.token)?;
        if self.space.dir.is_empty() {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "give at least one --dir: deployments are staged there",
            ));
        }
        let space = self.space.request();
        let attributes: BTreeMap<String, String> = self.attributes.into_iter().collect();
        let opts = DdiOptions {
            space: &space,
            attributes: &attributes,
            activation: self.trial.options(),
            reboot: self.reboot,
        };
        let progress = cx.progress.as_ref();
        loop {
            let cycle = {
                let lock = cx.lock()?;
                ddi::cycle(&lock, &server, &opts, progress)
            };
            let cycle = match cycle {
                Ok(c) => c,
                // polling for ever: a server away for longer than the
                // retries is waited for, not fatal
                Err(e) if !self.once && e.kind() == ErrorKind::Io => {
                    progress.note(&format!("{e}; polling again in 60 s"));
                    std::thread::sleep(Duration::from_secs(60));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.once || cycle.rebooting {
                return Ok(DdiReport {
                    device: server.base().to_string(),
                    cycle,
                });
            }
            if cycle.action.is_some() || cycle.registered {
                progress.note(&format!(
                    "{}; next poll in {} s",
                    describe(&cycle),
                    cycle.sleep_secs
                ));
            }
            std::thread::sleep(Duration::from_secs(cycle.sleep_secs.max(1)));
        }
    }
}

fn describe(c: &Cycle) -> String {
    let mut out = Vec::new();
    if c.registered {
        out.push("registered".to_string());
    }
    if let Some(a) = &c.action {
        out.push(format!("action {a}"));
    }
    if let Some(s) = &c.staged {
        out.push(format!("staged as '{s}'"));
    }
    if c.activated {
        out.push("activated for a trial".into());
    }
    if let Some(r) = c.closed {
        out.push(format!("reported {r}"));
    }
    if let Some(x) = &c.cancelled {
        out.push(format!(
            "cancellation {}: {}",
            x.outcome.as_str(),
            x.message
        ));
    }
    if let Some(f) = &c.failure {
        out.push(format!("({f})"));
    }
    if c.rebooting {
        out.push("rebooting".into());
    }
    if out.is_empty() {
        out.push("nothing to do".into());
    }
    out.join(", ")
}

impl Report for DdiReport {
    fn print_text(&self) {
        println!("{}: {}", self.device, describe(&self.cycle));
    }

    fn exit_code(&self) -> u8 {
        // a deployment that failed here is this run's failure too, and
        // so is a cancellation that could not take back what it left
        if self.cycle.closed == Some("failure")
            || self
                .cycle
                .cancelled
                .as_ref()
                .is_some_and(|c| c.outcome == ddi::CancelOutcome::Failed)
        {
            1
        } else {
            0
        }
    }

    fn after_render(&self) -> Result<()> {
        if self.cycle.rebooting {
            crate::sys::power::reboot()?;
        }
        Ok(())
    }
}
