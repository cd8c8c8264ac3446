//! Cluster controller (spec connectivity §3.10–§3.11, api §4, §5.4): registration,
//! rotation, heartbeat and `Cluster.status`, run only on the leader.
//!
//! observe → decide → act: `observe` gathers one [`decide::Observed`] (a fresh GET of
//! the Cluster, peers from the watch's reflector store, the token Secret, the credential
//! store, the agent's connectivity, and the cached CRD discovery); [`decide::decide`]
//! (crate `vworkspace-decide`) is the pure state machine; `act` runs the remote call it
//! asks for (exchange, rotate, heartbeat — each outcome is fed back and decided again)
//! and then its effects in order, through the reconciler [`kit`](super::kit) (status by
//! server-side apply, finalizer, Events).
//!
//! Fixes of the original kept here: the registration token is exchanged once (its
//! fingerprint is written before anything else can fail, and never re-exchanged);
//! rotation — on `spec.rotateCredentials`, the `rotate-operator-credentials` intent or on
//! schedule (default weekly) — hot-swaps the new token into the running poller and
//! batcher; the heartbeat runs every 30 s (not on every pass) and carries the Cluster's
//! condition snapshot with `resourceRef.name` = the Cluster object name; connectivity
//! follows the 5-minute-disconnect / 1-minute-recovery state machine, plain network errors
//! never set `Authenticated=False`; `ControllersHealthy` reports the third-party CRDs; a
//! second Cluster object is flagged `DuplicateCluster` and ignored.

mod act;
mod observe;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::Cluster;
use vworkspace_decide::cluster::{self as decide, HeartbeatFailure};

use super::kit::{self, Error, HasKit, Kit, Stage};
use crate::agent::Agent;
use crate::agent::credentials::Token;

pub use vworkspace_decide::cluster::{REGISTRATION_RETRY, ROTATION_RETRY};

/// Default key of the registration token in its Secret.
pub const DEFAULT_TOKEN_KEY: &str = "registrationToken";
/// CRD discovery is refreshed this often while every required CRD is served…
pub const DISCOVERY_REFRESH: Duration = Duration::from_secs(300);
/// …and this often while one is missing (so installing Flux shows up quickly).
pub const DISCOVERY_RETRY: Duration = Duration::from_secs(30);

struct Ctx {
    kit: Kit,
    agent: Agent,
    /// Every Cluster, from the controller's own watch (duplicate detection).
    clusters: Store<Cluster>,
    /// Last CRD discovery: when, and `(healthy, message)`.
    discovery: Mutex<Option<(Instant, (bool, String))>>,
    /// Last heartbeat attempt of this process and its result.
    heartbeat: Mutex<Option<(Timestamp, Result<(), HeartbeatFailure>)>>,
}

impl HasKit for Ctx {
    fn kit(&self) -> &Kit {
        &self.kit
    }
}

/// Runs the controller while `leadership` reads `true`, until `shutdown`.
pub async fn run(
    client: kube::Client,
    agent: Agent,
    mut leadership: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        while !*leadership.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leadership.changed() => if r.is_err() { return },
            }
        }
        let term = shutdown.child_token();
        let secrets: Api<Secret> =
            Api::namespaced(client.clone(), &agent.config().operator_namespace);
        let clusters: Api<Cluster> = Api::all(client.clone());
        let t2 = term.clone();
        // As `Controller::new`, but a re-list's Clusters reach the controller only once
        // its store holds them (kit::applied_after_list), as in the other controllers.
        let (primary_store, primary_writer) = reflector::store();
        let primary = kit::applied_after_list(
            watcher(clusters, watcher::Config::default())
                .default_backoff()
                .reflect(primary_writer),
        );
        let controller = Controller::for_stream(primary, primary_store)
            .trigger_backoff(kit::TriggerBackoff::default());
        let store = controller.store();
        let ctx = Arc::new(Ctx {
            kit: Kit::new(client.clone(), agent.metrics().clone()),
            agent: agent.clone(),
            clusters: store.clone(),
            discovery: Mutex::new(None),
            heartbeat: Mutex::new(None),
        });
        let controller = controller
            // Owned credentials Secrets and registration-token Secrets (not owned): any
            // Secret change in the operator namespace re-evaluates every Cluster (there
            // is normally one).
            .watches(secrets, watcher::Config::default(), move |_s: Secret| {
                store
                    .state()
                    .iter()
                    .map(|c| kube::runtime::reflector::ObjectRef::from_obj(&**c))
                    .collect::<Vec<_>>()
            })
            .graceful_shutdown_on(async move { t2.cancelled().await })
            .run(kit::reconciler(reconcile), kit::error_policy, ctx)
            .for_each(kit::report);
        tokio::select! {
            _ = controller => {}
            _ = async {
                loop {
                    if leadership.changed().await.is_err() || !*leadership.borrow_and_update() { break; }
                }
            } => {}
        }
        term.cancel();
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// What observe found besides the plain observation: the object and the token itself
/// (kept out of [`decide::Observed`] so the decision never holds a secret).
struct Live {
    cluster: Cluster,
    token: Option<Token>,
}

async fn reconcile(cached: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some((live, mut observed)) = observe::observe(&ctx, &cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let mut plan = decide::decide(&observed, now);
    // Each call runs at most once per pass; the bound only guards against a bug.
    for _ in 0..3 {
        let Some(call) = plan.call.take() else { break };
        act::call_out(&ctx, &live, &mut observed, call, now).await;
        plan = decide::decide(&observed, now);
    }
    if plan.call.is_some() {
        return Err(Error::new(Stage::Apply, "decision did not settle"));
    }
    act::act(&ctx, &live.cluster, plan).await
}
