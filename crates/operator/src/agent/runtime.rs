//! Agent runtime supervisor (spec §3.3), run only on the leader.
//!
//! In Push and GitOps modes (spec §5) it still loads the credentials — the batcher and
//! the heartbeat use them — but never starts the poller.
//!
//! Every tick (default 10 s): find the active `Cluster` (the oldest; others are flagged
//! `DuplicateCluster` by the Cluster controller and ignored), resolve its credentials
//! Secret (`status.credentialsSecretRef`, else the configured default), load it into the
//! credential store and keep one poller running while credentials are complete.
//!
//! Credential changes (rotation, re-registration, a hand-edited Secret) reach the poller
//! and the batcher through the store's watch channel immediately: the poller restarts its
//! long poll with the new token/URL (Target behaviour "restart on any credential
//! change") without a process restart.

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vworkspace_api::Cluster;

use super::Agent;
use super::credentials::{CredentialsError, SecretLocation};
use super::poller::Poller;

/// The Cluster the agent serves: the oldest (creation time, then name).
pub fn active_cluster(clusters: &[Cluster]) -> Option<&Cluster> {
    clusters.iter().min_by(|a, b| {
        let t = |c: &Cluster| {
            c.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(Timestamp::MAX)
        };
        t(a).cmp(&t(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    })
}

/// Where the credentials of `cluster` live.
pub fn secret_location(cluster: &Cluster, default: &SecretLocation) -> SecretLocation {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
        .filter(|r| !r.name.is_empty())
        .map(|r| SecretLocation {
            name: r.name.clone(),
            namespace: r
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| default.namespace.clone()),
        })
        .unwrap_or_else(|| default.clone())
}

struct Running {
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

pub async fn run(agent: Agent, cancel: CancellationToken) {
    let mut poller: Option<Running> = None;
    let mut last_report = String::new();
    let clusters: Api<Cluster> = Api::all(agent.kube().clone());
    // Registration publishes fresh credentials: start polling at once, not on the next tick.
    let mut credentials = agent.store().subscribe();
    loop {
        let want = evaluate(&agent, &clusters).await;
        crate::logging::set_cluster_id(agent.store().current().map(|c| c.cluster_id).as_deref());
        let report = match &want {
            Ok(()) => String::new(),
            Err(r) => r.clone(),
        };
        if report != last_report && !report.is_empty() {
            tracing::info!(reason = %report, "Pull-mode agent idle");
        }
        last_report = report;
        match want {
            // Push/GitOps: credentials are loaded for events and heartbeats; no jobs.
            Ok(()) if !agent.config().mode.polls_jobs() => {}
            Ok(()) => {
                if poller.as_ref().is_none_or(|p| p.task.is_finished()) {
                    let token = cancel.child_token();
                    let p = Poller::new(agent.clone());
                    let t2 = token.clone();
                    poller = Some(Running {
                        task: tokio::spawn(async move { p.run(t2).await }),
                        cancel: token,
                    });
                }
            }
            Err(_) => {
                if let Some(p) = poller.take() {
                    p.stop().await;
                }
                if agent.store().current().is_none() {
                    agent.metrics().set_connectivity(0);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(agent.config().runtime_tick) => {}
            _ = credentials.changed() => {}
        }
    }
    if let Some(p) = poller.take() {
        p.stop().await;
    }
}

/// `Ok` when a poller should run; `Err(why not)` otherwise.
async fn evaluate(agent: &Agent, clusters: &Api<Cluster>) -> Result<(), String> {
    let list = clusters
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list Cluster objects: {e}"))?
        .items;
    let Some(active) = active_cluster(&list) else {
        agent.set_active_cluster(None);
        agent.store().publish(None);
        return Err("no Cluster resource".into());
    };
    agent.set_active_cluster(Some(active.name_any()));
    if active.metadata.deletion_timestamp.is_some() {
        agent.store().publish(None);
        return Err(format!("Cluster {} is being deleted", active.name_any()));
    }
    let loc = secret_location(active, agent.store().default_location());
    agent.store().set_location(loc.clone());
    match agent.store().load().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "credentials Secret {}/{} not found (not registered yet)",
            loc.namespace, loc.name
        )),
        // Incomplete: keep whatever runs (the writer may be mid-update).
        Err(CredentialsError::Incomplete(why)) => {
            if agent.store().current().is_some() {
                Ok(())
            } else {
                Err(why)
            }
        }
        Err(e) => {
            if agent.store().current().is_some() {
                Ok(())
            } else {
                Err(e.to_string())
            }
        }
    }
}
