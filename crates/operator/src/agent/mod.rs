//! Pull-mode agent (spec connectivity §3): polls the control plane for jobs, applies them
//! within a scope policy, reports results, conditions and heartbeats. See docs/agent.md.
//!
//! Wiring (main.rs):
//!
//! ```ignore
//! let agent = Agent::new(client.clone(), AgentConfig::new(&operator_ns), metrics.clone())?;
//! tokio::spawn(run_agent(agent.clone(), leadership.clone(), shutdown.clone()));
//! tokio::spawn(controller::cluster::run(client, agent, leadership, shutdown));
//! ```
//!
//! Everything outbound (polling, event delivery, registration, rotation, heartbeats) runs
//! only while `leadership` reads `true`.

pub mod applier;
pub mod backoff;
pub mod client;
pub mod connectivity;
pub mod credentials;
pub mod events;
pub mod follow;
pub mod idempotency;
pub mod journal;
pub mod lanes;
pub mod poller;
pub mod readiness;
pub mod relist;
pub mod reporter;
pub mod runtime;
pub mod scope;
pub mod signing;
pub mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use applier::Applier;
use backoff::BackoffConfig;
use client::AgentClient;
use connectivity::{State, Windows};
use credentials::{CredentialStore, SecretLocation};
use events::{BatcherConfig, EventBatcher};
use idempotency::{IdempotencyStore, Limits};
use reporter::Reporter;
use scope::ScopePolicy;
use signing::SigningMode;
use vworkspace_decide::cluster::ConnectivityMode;

/// Create/replace parameters of everything the agent writes itself (journal,
/// idempotency store, namespaces): its own field manager, so `managedFields` say who
/// wrote what instead of `unknown`.
pub(crate) fn write_params() -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(vworkspace_api::keys::FIELD_MANAGER_AGENT.into()),
        ..kube::api::PostParams::default()
    }
}

/// Agent settings. [`AgentConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Operator namespace: credentials Secret, idempotency ConfigMap, registration-token
    /// Secrets. Default `vworkspace-system` (main.rs: `--agent-credentials-namespace` /
    /// `POD_NAMESPACE`).
    pub operator_namespace: String,
    /// Credentials Secret name. Default `vworkspace-agent-credentials`.
    pub credentials_secret: String,
    /// Long-poll `wait` (whole seconds are sent; 0 → immediate answers, at most one poll
    /// per second). Default 30 s.
    pub poll_interval: Duration,
    /// What jobs may touch. Default [`ScopePolicy::new`]: our two CRDs, every namespace
    /// but the system ones and the operator's.
    pub scope: ScopePolicy,
    /// Payload signature policy. Default `Off`.
    pub signing_mode: SigningMode,
    /// The control plane's Ed25519 public key for this cluster (base64 or hex). Default none.
    pub signing_public_key: Option<String>,
    /// How long a job waits for its object to become Ready/Succeeded before `failed`.
    /// Default 10 min.
    pub ready_timeout: Duration,
    /// Scheduled credential rotation: rotate when the token is older than this. Default
    /// 7 days; zero disables.
    pub rotation_period: Duration,
    /// Heartbeat cadence (Cluster reconcile requeue). Default 60 s: with the 30 s long
    /// poll that keeps an idle cluster at ≈ 180 requests an hour to the control plane
    /// (issue 10's budget is 200; at 30 s it was ≈ 240). Connectivity is still proven
    /// every poll, and the disconnect window (5 min) spans five heartbeats.
    pub heartbeat_period: Duration,
    /// Retry pacing of polls, results and event batches. Default 2 s ×2 to 60 s, floor 1 s.
    pub backoff: BackoffConfig,
    /// Event batcher. Default 100 per batch, 1 s, capacity 1000.
    pub batcher: BatcherConfig,
    /// Disconnect (5 min) and recovery (1 min) windows.
    pub connectivity: Windows,
    /// Safety resync of the runtime supervisor, which is otherwise driven by its watches
    /// (Clusters, the credentials Secret) and credential changes; a resync reads only
    /// those watches' stores (no request) and restarts a poller that ended. Default 5 min.
    pub runtime_resync: Duration,
    /// Limit the reporter's namespaced watches to one namespace. Default all.
    pub watch_namespace: Option<String>,
    /// Idempotency-store bounds. Default 5000 keys / 30 days / 512 KiB.
    pub idempotency: Limits,
    /// Pull polls jobs; Push and GitOps only post events and heartbeats. Default Pull.
    pub mode: ConnectivityMode,
}

impl AgentConfig {
    pub fn new(operator_namespace: &str) -> Self {
        AgentConfig {
            operator_namespace: operator_namespace.to_string(),
            credentials_secret: credentials::DEFAULT_SECRET_NAME.into(),
            poll_interval: Duration::from_secs(30),
            scope: ScopePolicy::new(operator_namespace),
            signing_mode: SigningMode::Off,
            signing_public_key: None,
            ready_timeout: Duration::from_secs(600),
            rotation_period: Duration::from_secs(7 * 24 * 3600),
            heartbeat_period: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
            batcher: BatcherConfig::default(),
            connectivity: Windows::default(),
            runtime_resync: Duration::from_secs(300),
            watch_namespace: None,
            idempotency: Limits::default(),
            mode: ConnectivityMode::Pull,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig::new("vworkspace-system")
    }
}

pub(crate) struct Inner {
    pub kube: kube::Client,
    pub config: AgentConfig,
    pub metrics: Arc<Metrics>,
    pub store: Arc<CredentialStore>,
    pub client: AgentClient,
    pub batcher: Arc<EventBatcher>,
    pub reporter: Arc<Reporter>,
    pub applier: Arc<Applier>,
    pub idempotency: Arc<IdempotencyStore>,
    pub journal: Arc<journal::Journal>,
    /// Shared watches of the objects readiness waits follow.
    pub follow: follow::Follow,
    pub verifying_key: Option<ed25519_dalek::VerifyingKey>,
    /// Name of the Cluster object the runtime serves.
    pub active_cluster: Mutex<Option<String>>,
    /// Set after the first successful round trip.
    pub connected_once: std::sync::atomic::AtomicBool,
}

/// Handle to the agent's shared parts. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

impl Agent {
    /// Builds the agent (nothing runs yet). Fails only on an unparsable public key.
    pub fn new(
        kube: kube::Client,
        config: AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Agent, String> {
        let verifying_key = config
            .signing_public_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(signing::parse_public_key)
            .transpose()?;
        let store = Arc::new(CredentialStore::new(
            kube.clone(),
            metrics.clone(),
            SecretLocation {
                namespace: config.operator_namespace.clone(),
                name: config.credentials_secret.clone(),
            },
        ));
        let client = AgentClient::new(store.clone(), metrics.clone(), config.connectivity);
        let batcher = Arc::new(EventBatcher::new(config.batcher, metrics.clone()));
        let registered = store.clone();
        let reporter = Arc::new(
            Reporter::new(
                batcher.clone(),
                kube.clone(),
                config.watch_namespace.clone(),
            )
            .with_gate(move || registered.has_credentials()),
        );
        let applier = Arc::new(Applier::new(kube.clone(), config.scope.clone()));
        let idempotency = Arc::new(IdempotencyStore::new(
            kube.clone(),
            &config.operator_namespace,
            config.idempotency,
        ));
        let follow = follow::Follow::new(kube.clone());
        let journal = Arc::new(journal::Journal::new(
            kube.clone(),
            &config.operator_namespace,
        ));
        Ok(Agent {
            inner: Arc::new(Inner {
                kube,
                config,
                metrics,
                store,
                client,
                batcher,
                reporter,
                applier,
                idempotency,
                journal,
                follow,
                verifying_key,
                active_cluster: Mutex::new(None),
                connected_once: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }
    pub fn client(&self) -> &AgentClient {
        &self.inner.client
    }
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.inner.store
    }
    pub fn batcher(&self) -> &Arc<EventBatcher> {
        &self.inner.batcher
    }
    pub fn reporter(&self) -> &Arc<Reporter> {
        &self.inner.reporter
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn kube(&self) -> &kube::Client {
        &self.inner.kube
    }

    pub fn active_cluster(&self) -> Option<String> {
        self.inner
            .active_cluster
            .lock()
            .ok()
            .and_then(|c| c.clone())
    }

    pub(crate) fn set_active_cluster(&self, name: Option<String>) {
        if let Ok(mut c) = self.inner.active_cluster.lock() {
            *c = name;
        }
    }

    /// For `/readyz`: not configured without credentials, connected after the first
    /// successful round trip, waiting in between.
    pub fn probe_state(&self) -> crate::probes::AgentState {
        use crate::probes::AgentState;
        // GitOps: the optional event channel never holds readiness back.
        if self.store().current().is_none() || self.config().mode == ConnectivityMode::Gitops {
            return AgentState::NotConfigured;
        }
        let c = self.client().connectivity();
        if c.last_success().is_some() || matches!(c.state(), State::Connected) {
            AgentState::Connected
        } else {
            AgentState::Waiting
        }
    }
}

/// Runs batcher, reporter and runtime (which runs the poller) while `leadership` reads
/// `true`, until `shutdown`. On losing leadership everything outbound stops; queued
/// events stay queued.
pub async fn run_agent(
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
        tracing::info!(mode = %agent.config().mode, "leader: starting the agent");
        let term = shutdown.child_token();
        let batcher = {
            let (a, t) = (agent.clone(), term.clone());
            tokio::spawn(async move {
                a.batcher().run(a.client(), a.config().backoff, t).await;
            })
        };
        let reporter = tokio::spawn(agent.reporter().clone().run(term.clone()));
        let runtime = tokio::spawn(runtime::run(agent.clone(), term.clone()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = leadership.changed() => {
                    if r.is_err() || !*leadership.borrow_and_update() { break; }
                }
            }
        }
        term.cancel();
        let _ = futures::future::join3(batcher, reporter, runtime).await;
        if shutdown.is_cancelled() {
            return;
        }
        tracing::warn!("lost leadership: agent stopped");
    }
}
