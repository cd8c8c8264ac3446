//! Cluster controller (spec connectivity §3.10–§3.11, api §4, §5.4): registration,
//! rotation, heartbeat and `Cluster.status`, run only on the leader.
//!
//! observe → decide → act: [`observe`] gathers one [`decide::Observed`] (a fresh GET of
//! the Cluster, peers from the watch's reflector store, the token Secret, the credential
//! store, the agent's connectivity, and the cached CRD discovery); [`decide::decide`] is
//! the pure state machine; [`act`] runs the remote call it asks for (exchange, rotate,
//! heartbeat — each outcome is fed back and decided again) and then its effects in order,
//! through the reconciler [`kit`](super::kit) (status by server-side apply, finalizer,
//! Events).
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

pub mod decide;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::conditions::{TRUE, cluster_reasons as r, types};
use vworkspace_api::{Cluster, keys};

use self::decide::{
    Call, Effect, ExchangeFailure, HeartbeatFailure, Link, Observed, Outcomes, Plan, Settings,
    TokenSource,
};
use super::events::Notice;
use super::kit::{self, AtStage, Error, HasKit, Kit, Stage};
use crate::agent::Agent;
use crate::agent::client::{self as agent_client, ClientError};
use crate::agent::connectivity::State;
use crate::agent::credentials::{AuthState, Credentials, Token, parse_secret};
use crate::agent::runtime::active_cluster;
use crate::agent::wire::{
    Condition as WireCondition, EVENT_CLUSTER_HEARTBEAT, EVENT_CREDENTIAL_ROTATED, Event,
    ObjectRef, event_key,
};

pub use self::decide::{REGISTRATION_RETRY, ROTATION_RETRY};

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
        let controller = Controller::new(clusters, watcher::Config::default());
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
            .for_each(|_| async {});
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
/// (kept out of [`Observed`] so the decision never holds a secret).
struct Live {
    cluster: Cluster,
    token: Option<Token>,
}

async fn reconcile(cached: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some((live, mut observed)) = observe(&ctx, &cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let mut plan = decide::decide(&observed, now);
    // Each call runs at most once per pass; the bound only guards against a bug.
    for _ in 0..3 {
        let Some(call) = plan.call.take() else { break };
        call_out(&ctx, &live, &mut observed, call, now).await;
        plan = decide::decide(&observed, now);
    }
    if plan.call.is_some() {
        return Err(Error::new(Stage::Apply, "decision did not settle"));
    }
    act(&ctx, &live.cluster, plan).await
}

fn endpoint(c: &Cluster) -> Option<String> {
    c.spec
        .control_plane_endpoint
        .as_deref()
        .or(c.spec.control_plane_base_url.as_deref())
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
}

fn reregister_annotation(c: &Cluster) -> bool {
    c.annotations()
        .get(keys::ANNOTATION_ROTATE_CREDENTIALS)
        .is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("false"))
}

fn link(state: State) -> Link {
    match state {
        State::Unknown => Link::Unknown,
        State::Connected => Link::Connected,
        State::Reconnecting { .. } => Link::Reconnecting,
        State::Disconnected { .. } => Link::Disconnected,
        State::Recovering { .. } => Link::Recovering,
    }
}

/// Reads the agent's connectivity and authentication verdict into `o`.
fn observe_link(agent: &Agent, o: &mut Observed) {
    let conn = agent.client().connectivity();
    o.link = link(conn.state());
    o.link_error = conn.last_error().map(str::to_string);
    o.rejected = match agent.store().auth_state() {
        AuthState::Rejected {
            status, message, ..
        } => Some(format!("control plane answered {status}: {message}")),
        _ => None,
    };
}

/// Gathers the decision's input. `None` when the Cluster is gone.
async fn observe(ctx: &Ctx, name: &str) -> Result<Option<(Live, Observed)>, Error> {
    let agent = &ctx.agent;
    let config = agent.config();
    // Decide on the stored object, not the watch cache: right after a registration the
    // cache can still lack the recorded token fingerprint, and acting on it would try to
    // exchange the consumed token again. One GET per pass is cheap.
    let Some(cluster) = Api::<Cluster>::all(ctx.kit.client().clone())
        .get_opt(name)
        .await
        .at(Stage::Observe)?
    else {
        return Ok(None);
    };
    let loc = agent.store().default_location().clone();
    let mut o = Observed {
        name: cluster.name_any(),
        generation: cluster.metadata.generation,
        deleting: cluster.metadata.deletion_timestamp.is_some(),
        has_finalizer: Kit::has_finalizer(&cluster, keys::FINALIZER_CLUSTER),
        status: cluster.status.clone().unwrap_or_default(),
        active: None,
        token: TokenSource::None,
        reregister: reregister_annotation(&cluster),
        rotate_requested: cluster.spec.rotate_credentials == Some(true),
        cluster_id_set: !cluster
            .spec
            .cluster_id
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        credentials: false,
        credentials_written_at: None,
        last_heartbeat: ctx.heartbeat.lock().map(|h| h.clone()).unwrap_or_default(),
        overflow: agent.batcher().overflow(),
        controllers: (false, String::new()),
        link: Link::Unknown,
        link_error: None,
        rejected: None,
        settings: Settings {
            heartbeat_period: config.heartbeat_period,
            rotation_period: config.rotation_period,
            disconnect_after: config.connectivity.disconnect_after,
            credentials_secret: (loc.name.clone(), loc.namespace.clone()),
        },
        outcomes: Outcomes::default(),
    };
    let mut live = Live {
        cluster,
        token: None,
    };
    if o.deleting || !o.has_finalizer {
        // Finalizer bookkeeping only; nothing else is read.
        return Ok(Some((live, o)));
    }
    let mut peers: Vec<Cluster> = ctx.clusters.state().iter().map(|c| (**c).clone()).collect();
    if !peers.iter().any(|p| p.name_any() == o.name) {
        peers.push(live.cluster.clone());
    }
    o.active = active_cluster(&peers).map(|c| c.name_any());

    o.credentials = credentials(ctx).await.is_some();
    match resolve_token(ctx, &live.cluster).await {
        Err(why) => {
            if o.credentials {
                tracing::info!(reason = %why, "registration token unresolvable; stored credentials keep working");
            }
            o.token = TokenSource::Unresolvable(why);
        }
        Ok(None) => {}
        Ok(Some((token, inline))) => {
            o.token = TokenSource::Resolved {
                fingerprint: token.fingerprint(),
                inline,
            };
            live.token = Some(token);
        }
    }
    if o.credentials && !config.rotation_period.is_zero() {
        o.credentials_written_at = agent.store().written_at().await.ok().flatten();
    }
    o.controllers = controllers(ctx).await;
    // The connectivity windows are re-evaluated on the Cluster cadence.
    agent.client().tick_connectivity();
    observe_link(agent, &mut o);
    Ok(Some((live, o)))
}

/// The credentials in use, else those stored in the default Secret.
async fn credentials(ctx: &Ctx) -> Option<Credentials> {
    let store = ctx.agent.store();
    if let Some(c) = store.current() {
        return Some(c);
    }
    if let Some(c) = store.load().await.ok().flatten() {
        return Some(c);
    }
    let loc = store.default_location().clone();
    let s = Api::<Secret>::namespaced(ctx.kit.client().clone(), &loc.namespace)
        .get_opt(&loc.name)
        .await
        .ok()??;
    parse_secret(&s).ok()
}

/// The registration token to use, if any: `(token, inline)`.
async fn resolve_token(ctx: &Ctx, c: &Cluster) -> Result<Option<(Token, bool)>, String> {
    if let Some(r) = &c.spec.registration_token_secret_ref {
        if r.name.trim().is_empty() {
            return Err("spec.registrationTokenSecretRef.name is empty".into());
        }
        let key = r
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_KEY.into());
        let ns = &ctx.agent.config().operator_namespace;
        let secret = Api::<Secret>::namespaced(ctx.kit.client().clone(), ns)
            .get_opt(&r.name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{}: {e}", r.name))?
            .ok_or_else(|| format!("registration-token Secret {ns}/{} not found", r.name))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!(
                    "registration-token Secret {ns}/{} has no non-empty key {key:?}",
                    r.name
                )
            })?;
        return Ok(Some((Token::new(value), false)));
    }
    Ok(c.spec
        .registration_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| (Token::new(t), true)))
}

/// Cached CRD discovery (refreshed every [`DISCOVERY_REFRESH`], or [`DISCOVERY_RETRY`]
/// while something is missing).
async fn controllers(ctx: &Ctx) -> (bool, String) {
    if let Ok(cache) = ctx.discovery.lock()
        && let Some((at, value)) = cache.as_ref()
    {
        let ttl = if value.0 {
            DISCOVERY_REFRESH
        } else {
            DISCOVERY_RETRY
        };
        if at.elapsed() < ttl {
            return value.clone();
        }
    }
    let value = discover(ctx.kit.client()).await;
    if let Ok(mut cache) = ctx.discovery.lock() {
        *cache = Some((Instant::now(), value.clone()));
    }
    value
}

/// Required: Flux HelmRelease + HelmRepository + OCIRepository; Velero reported only.
async fn discover(client: &kube::Client) -> (bool, String) {
    let groups = match client.list_api_groups().await {
        Ok(g) => g.groups,
        Err(e) => return (false, format!("API discovery failed: {e}")),
    };
    let mut missing = Vec::new();
    let mut present = Vec::new();
    for (group, kinds, required) in [
        ("helm.toolkit.fluxcd.io", &["HelmRelease"][..], true),
        (
            "source.toolkit.fluxcd.io",
            &["HelmRepository", "OCIRepository"][..],
            true,
        ),
        ("velero.io", &["Backup", "Restore"][..], false),
    ] {
        let Some(g) = groups.iter().find(|g| g.name == group) else {
            if required {
                missing.extend(kinds.iter().map(|k| format!("{group}/{k}")));
            } else {
                present.push(format!(
                    "{group} absent (backup/restore Operations unavailable)"
                ));
            }
            continue;
        };
        let version = g
            .preferred_version
            .as_ref()
            .map(|v| v.group_version.clone())
            .unwrap_or_default();
        let served: Vec<String> = match client.list_api_group_resources(&version).await {
            Ok(l) => l.resources.into_iter().map(|r| r.kind).collect(),
            Err(_) => Vec::new(),
        };
        for k in kinds {
            if served.iter().any(|s| s == k) {
                present.push(format!("{group}/{k}"));
            } else if required {
                missing.push(format!("{group}/{k}"));
            }
        }
    }
    if missing.is_empty() {
        (true, format!("CRDs served: {}", present.join(", ")))
    } else {
        (
            false,
            format!(
                "missing CRDs: {} (install Flux helm-controller and source-controller)",
                missing.join(", ")
            ),
        )
    }
}

/// Runs one remote call and records its outcome (and the connectivity it left) in `o`.
async fn call_out(ctx: &Ctx, live: &Live, o: &mut Observed, call: Call, now: Timestamp) {
    let agent = &ctx.agent;
    match call {
        Call::Exchange => {
            let result = match &live.token {
                Some(token) => exchange(ctx, &live.cluster, token).await,
                None => Err(ClientError::Unexpected(
                    "no registration token resolved".into(),
                )),
            };
            o.outcomes.exchange = Some(match result {
                Ok(creds) => {
                    tracing::info!(cluster_id = %creds.cluster_id, "registered with the control plane");
                    Ok(creds.cluster_id)
                }
                Err(e @ (ClientError::Unauthorized(_) | ClientError::Forbidden(_))) => {
                    Err(ExchangeFailure::Rejected(e.to_string()))
                }
                Err(e) => Err(ExchangeFailure::Failed(e.to_string())),
            });
        }
        Call::Rotate => {
            tracing::info!(
                requested = o.rotate_requested,
                "rotating the control-plane credential"
            );
            let result = rotate(ctx, &live.cluster).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "credential rotation failed; keeping the current token");
            }
            o.outcomes.rotation = Some(result.map_err(|e| e.to_string()));
        }
        Call::Heartbeat { conditions } => {
            let hb = Event {
                event_key: String::new(),
                kind: EVENT_CLUSTER_HEARTBEAT.into(),
                resource_ref: cluster_ref(&live.cluster),
                conditions: conditions.iter().map(WireCondition::from).collect(),
                endpoints: Vec::new(),
                timestamp: now,
            };
            let result = match agent.client().events(std::slice::from_ref(&hb)).await {
                Ok(()) => Ok(()),
                Err(ClientError::EndpointNotFound(m)) => Err(HeartbeatFailure::EndpointNotFound(m)),
                Err(e) => Err(HeartbeatFailure::Other(e.to_string())),
            };
            if let Ok(mut h) = ctx.heartbeat.lock() {
                *h = Some((now, result.clone()));
            }
            o.outcomes.heartbeat = Some(result);
            agent.client().tick_connectivity();
            observe_link(agent, o);
        }
    }
}

/// Runs the plan's effects in order.
async fn act(ctx: &Ctx, cluster: &Cluster, plan: Plan) -> Result<Action, Error> {
    let kit = &ctx.kit;
    let api: Api<Cluster> = Api::all(kit.client().clone());
    let pp = kube::api::PatchParams::default();
    for effect in plan.effects {
        match effect {
            Effect::AddFinalizer => kit.add_finalizer(cluster, keys::FINALIZER_CLUSTER).await?,
            Effect::RemoveFinalizer => {
                kit.remove_finalizer(cluster, keys::FINALIZER_CLUSTER)
                    .await?
            }
            Effect::SetConnectivityGauge(v) => ctx.agent.metrics().set_connectivity(v),
            Effect::WriteStatus(status) => {
                kit.apply_status(cluster, &status).await?;
            }
            Effect::WriteStatusBestEffort(status) => {
                if let Err(e) = kit.apply_status(cluster, &status).await {
                    tracing::debug!(error = %e, "could not write the Terminating phase");
                }
            }
            Effect::RecordRegistration {
                cluster_id,
                clear_inline_token,
                clear_annotation,
            } => {
                let mut patch = json!({});
                if let Some(id) = cluster_id {
                    patch["spec"]["clusterId"] = id.into();
                }
                if clear_inline_token {
                    patch["spec"]["registrationToken"] = serde_json::Value::Null;
                }
                if clear_annotation {
                    patch["metadata"] =
                        json!({"annotations": {keys::ANNOTATION_ROTATE_CREDENTIALS: null}});
                }
                if patch.as_object().is_some_and(|o| !o.is_empty()) {
                    api.patch(&cluster.name_any(), &pp, &kube::api::Patch::Merge(&patch))
                        .await
                        .at(Stage::Apply)?;
                }
            }
            Effect::ClearRotateFlag => {
                api.patch(
                    &cluster.name_any(),
                    &pp,
                    &kube::api::Patch::Merge(json!({"spec": {"rotateCredentials": false}})),
                )
                .await
                .at(Stage::Apply)?;
            }
            Effect::AuditRotation => audit_rotation(ctx, cluster),
            Effect::Notice(n) => {
                let notice = Notice {
                    warning: n.warning,
                    reason: n.reason,
                    note: n.note,
                };
                kit.notice(&cluster.object_ref(&()), &notice).await;
            }
        }
    }
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn cluster_ref(c: &Cluster) -> ObjectRef {
    ObjectRef {
        api_version: Cluster::api_version(&()).into_owned(),
        kind: Cluster::kind(&()).into_owned(),
        namespace: String::new(),
        name: c.name_any(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
        generation: c.metadata.generation.unwrap_or_default(),
    }
}

async fn exchange(ctx: &Ctx, cluster: &Cluster, token: &Token) -> Result<Credentials, ClientError> {
    let base = endpoint(cluster)
        .ok_or_else(|| ClientError::BadRequest("spec.controlPlaneEndpoint is not set".into()))?;
    let (id, bootstrap) = agent_client::register(
        &base,
        token,
        cluster.spec.cluster_id.as_deref().filter(|s| !s.is_empty()),
    )
    .await?;
    let creds = Credentials {
        base_url: base,
        cluster_id: id,
        token: bootstrap,
    };
    ctx.agent
        .store()
        .write(cluster, &creds)
        .await
        .map_err(|e| {
            ClientError::Unexpected(format!(
                "token exchanged but the credentials Secret could not be written: {e}"
            ))
        })?;
    Ok(creds)
}

async fn rotate(ctx: &Ctx, cluster: &Cluster) -> Result<(), ClientError> {
    let store = ctx.agent.store();
    let current = store.current().ok_or(ClientError::NoCredentials)?;
    let token = ctx.agent.client().rotate().await?;
    let creds = Credentials { token, ..current };
    store.write(cluster, &creds).await.map_err(|e| {
        ClientError::Unexpected(format!(
            "rotated, but the credentials Secret could not be written: {e}"
        ))
    })?;
    tracing::info!("control-plane credential rotated and hot-swapped");
    Ok(())
}

/// Queues the `CredentialRotated` audit event for the control plane.
fn audit_rotation(ctx: &Ctx, cluster: &Cluster) {
    let now = Timestamp::now();
    let reference = cluster_ref(cluster);
    let condition = WireCondition {
        type_: types::AUTHENTICATED.into(),
        status: TRUE.into(),
        reason: r::CREDENTIAL_ROTATED.into(),
        message: "long-lived credential rotated".into(),
        last_transition_time: Some(now),
        observed_generation: 0,
    };
    ctx.agent.batcher().enqueue(Event {
        event_key: event_key::audit_key(
            EVENT_CREDENTIAL_ROTATED,
            &reference,
            types::AUTHENTICATED,
            &now.as_millisecond().to_string(),
        ),
        kind: EVENT_CREDENTIAL_ROTATED.into(),
        resource_ref: reference,
        conditions: vec![condition],
        endpoints: Vec::new(),
        timestamp: now,
    });
}
