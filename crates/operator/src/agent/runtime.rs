//! Agent runtime supervisor (spec §3.3), run only on the leader.
//!
//! In Push and GitOps modes (spec §5) it still loads the credentials — the batcher and
//! the heartbeat use them — but never starts the poller.
//!
//! Driven by watches, not by polling (issue 10: it used to list every Cluster and read
//! the Secret every 10 s, about half of an idle operator's API requests): a reflector
//! on Clusters finds the active one (the oldest; others are flagged `DuplicateCluster`
//! by the Cluster controller and ignored), and a watch of the one credentials Secret it
//! names (`status.credentialsSecretRef`, else the configured default; restarted when
//! the location changes) feeds the credential store. The supervisor re-evaluates on
//! those events, on credential-store changes and on a long safety resync
//! (`runtime_resync`), and keeps one poller running while credentials are complete.
//! Both watches re-list after a `410` ([`relisting`]), so they survive an API server
//! restart.
//!
//! Credential changes (rotation, re-registration, a hand-edited Secret) reach the poller
//! and the batcher through the store's watch channel immediately: the poller restarts its
//! long poll with the new token/URL (Target behaviour "restart on any credential
//! change") without a process restart.

use std::borrow::Borrow;

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vworkspace_api::Cluster;

use super::Agent;
use super::credentials::{CredentialsError, SecretLocation};
use super::poller::Poller;
use super::relist::relisting;

/// The Cluster the agent serves: the oldest (creation time, then name).
pub fn active_cluster<C: Borrow<Cluster>>(clusters: &[C]) -> Option<&Cluster> {
    clusters.iter().map(Borrow::borrow).min_by(|a, b| {
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

/// What the watched credentials Secret held when last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// The watch has not finished its first list yet.
    Unknown,
    Absent,
    Incomplete(String),
    Complete,
}

/// Whether a poller should run (`Ok`) or why not, from what the watches hold. Pure.
/// `have_credentials`: the credential store holds credentials (possibly from before a
/// location change or an incomplete write, which are kept rather than dropped).
pub fn verdict(
    loc: &SecretLocation,
    state: &SecretState,
    have_credentials: bool,
) -> Result<(), String> {
    match state {
        SecretState::Complete => Ok(()),
        // Unknown or incomplete: keep whatever runs (the writer may be mid-update).
        // Absent yet credentials held: they were published since the watch saw no
        // Secret (registration writes it, then publishes; its watch event follows).
        _ if have_credentials => Ok(()),
        SecretState::Absent => Err(format!(
            "credentials Secret {}/{} not found (not registered yet)",
            loc.namespace, loc.name
        )),
        SecretState::Unknown => Err(format!(
            "waiting for the credentials Secret {}/{}",
            loc.namespace, loc.name
        )),
        SecretState::Incomplete(why) => Err(why.clone()),
    }
}

type SecretEvents = BoxStream<'static, Result<Event<Secret>, watcher::Error>>;

/// A watch of the one Secret at `loc` (field selector on its name), with the list
/// in progress held back until it is complete.
struct SecretWatch {
    loc: SecretLocation,
    events: SecretEvents,
    listing: Option<Option<Secret>>,
    /// The Secret as last seen; `None` inside until the first list completes.
    seen: Option<Option<Secret>>,
    state: SecretState,
}

impl SecretWatch {
    fn new(client: &kube::Client, loc: SecretLocation) -> Self {
        let api: Api<Secret> = Api::namespaced(client.clone(), &loc.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", loc.name));
        SecretWatch {
            loc,
            events: relisting(api, cfg).boxed(),
            listing: None,
            seen: None,
            state: SecretState::Unknown,
        }
    }

    /// Takes one watch event in; `true` when the Secret as seen changed.
    fn take(&mut self, event: Event<Secret>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(None);
                return false;
            }
            Event::InitApply(s) => {
                self.listing = Some(Some(s));
                return false;
            }
            Event::InitDone => self.seen = Some(self.listing.take().flatten()),
            Event::Apply(s) => self.seen = Some(Some(s)),
            Event::Delete(_) => self.seen = Some(None),
        }
        true
    }
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
    let (clusters, writer) = reflector::store::<Cluster>();
    // Only metadata, status and creation time are read: drop managedFields.
    let mut cluster_events = relisting(
        Api::<Cluster>::all(agent.kube().clone()),
        watcher::Config::default(),
    )
    .modify(|c| c.managed_fields_mut().clear())
    .reflect(writer)
    .boxed();
    let mut secret: Option<SecretWatch> = None;
    // Registration publishes fresh credentials: start polling at once.
    let mut credentials = agent.store().subscribe();
    let mut evaluate_now = false;
    loop {
        if evaluate_now {
            let want = evaluate(&agent, &clusters, &mut secret);
            crate::logging::set_cluster_id(
                agent.store().current().map(|c| c.cluster_id).as_deref(),
            );
            let report = want.as_ref().err().cloned().unwrap_or_default();
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
        }
        let wake = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(agent.config().runtime_resync) => Wake::Resync,
            r = credentials.changed() => Wake::Credentials(r.is_ok()),
            ev = cluster_events.next() => match ev {
                // Mid-list objects are not in the store yet: wait for InitDone.
                Some(Ok(Event::Init | Event::InitApply(_))) => Wake::Nothing,
                Some(Ok(_)) => Wake::Clusters,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Cluster watch error (retrying)");
                    Wake::Nothing
                }
                None => break,
            },
            ev = next_secret_event(&mut secret) => Wake::Secret(Box::new(ev)),
        };
        evaluate_now = match wake {
            Wake::Resync => true,
            Wake::Credentials(open) => open,
            Wake::Clusters => true,
            Wake::Nothing => false,
            Wake::Secret(ev) => match *ev {
                Some(Ok(event)) => {
                    let changed = secret.as_mut().is_some_and(|w| w.take(event));
                    if changed {
                        apply_seen(&agent, secret.as_mut());
                    }
                    changed
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "credentials Secret watch error (retrying)");
                    false
                }
                None => {
                    // A watch stream does not end; start a new one if it does.
                    secret = None;
                    true
                }
            },
        };
    }
    if let Some(p) = poller.take() {
        p.stop().await;
    }
}

enum Wake {
    Resync,
    /// `false`: the credential store's channel closed.
    Credentials(bool),
    /// The Cluster store changed (an event or a completed list).
    Clusters,
    /// Nothing to re-evaluate (a list in progress, a watch error).
    Nothing,
    Secret(Box<Option<Result<Event<Secret>, watcher::Error>>>),
}

async fn next_secret_event(
    watch: &mut Option<SecretWatch>,
) -> Option<Result<Event<Secret>, watcher::Error>> {
    match watch {
        Some(w) => w.events.next().await,
        None => std::future::pending().await,
    }
}

/// Hands the Secret as the watch last saw it to the credential store.
fn apply_seen(agent: &Agent, watch: Option<&mut SecretWatch>) {
    let Some(w) = watch else { return };
    let Some(seen) = &w.seen else { return };
    // The store reads the Secret at its location; the watch follows that location.
    if agent.store().location() != w.loc {
        return;
    }
    w.state = match agent.store().apply_secret(seen.as_ref()) {
        Ok(Some(_)) => SecretState::Complete,
        Ok(None) => SecretState::Absent,
        Err(CredentialsError::Incomplete(why)) => SecretState::Incomplete(why),
        Err(e) => SecretState::Incomplete(e.to_string()),
    };
}

/// `Ok` when a poller should run; `Err(why not)` otherwise. Reads the stores only.
fn evaluate(
    agent: &Agent,
    clusters: &Store<Cluster>,
    secret: &mut Option<SecretWatch>,
) -> Result<(), String> {
    // Before the first list completes an empty store means nothing: decide nothing.
    if !store_ready(clusters) {
        return Err("waiting for the Cluster list".into());
    }
    let list = clusters.state();
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
    if secret.as_ref().is_none_or(|w| w.loc != loc) {
        *secret = Some(SecretWatch::new(agent.kube(), loc.clone()));
    }
    let Some(w) = secret.as_mut() else {
        return Err("credentials Secret watch not started".into());
    };
    // Credentials cleared while the Secret stayed (a Cluster deleted and re-created):
    // publish what the watch holds again.
    if w.state == SecretState::Complete && agent.store().current().is_none() {
        apply_seen(agent, Some(w));
    }
    verdict(&loc, &w.state, agent.store().current().is_some())
}

/// Whether the reflector has completed its first list (an empty store may mean either).
fn store_ready(clusters: &Store<Cluster>) -> bool {
    use futures::FutureExt;
    clusters
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> SecretLocation {
        SecretLocation {
            namespace: "ns".into(),
            name: "creds".into(),
        }
    }

    #[test]
    fn verdict_keeps_running_credentials_while_the_secret_is_unknown_or_incomplete() {
        let l = loc();
        assert_eq!(verdict(&l, &SecretState::Complete, false), Ok(()));
        assert!(verdict(&l, &SecretState::Absent, false).is_err_and(|e| e.contains("ns/creds")));
        assert_eq!(verdict(&l, &SecretState::Absent, true), Ok(()));
        assert_eq!(verdict(&l, &SecretState::Unknown, true), Ok(()));
        assert!(verdict(&l, &SecretState::Unknown, false).is_err_and(|e| e.contains("waiting")));
        let inc = SecretState::Incomplete("missing token".into());
        assert_eq!(verdict(&l, &inc, true), Ok(()));
        assert_eq!(verdict(&l, &inc, false), Err("missing token".into()));
    }

    fn named(name: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s
    }

    #[test]
    fn secret_watch_state_changes_only_when_a_list_completes_or_an_event_arrives() {
        let mut w = SecretWatch {
            loc: loc(),
            events: futures::stream::empty().boxed(),
            listing: None,
            seen: None,
            state: SecretState::Unknown,
        };
        assert!(!w.take(Event::Init));
        assert!(!w.take(Event::InitApply(named("creds"))));
        assert_eq!(w.seen, None);
        assert!(w.take(Event::InitDone));
        assert_eq!(w.seen, Some(Some(named("creds"))));
        // A re-list that finds nothing means the Secret is gone.
        assert!(!w.take(Event::Init));
        assert!(w.take(Event::InitDone));
        assert_eq!(w.seen, Some(None));
        assert!(w.take(Event::Apply(named("creds"))));
        assert!(w.take(Event::Delete(named("creds"))));
        assert_eq!(w.seen, Some(None));
    }
}
