//! Cluster controller (spec connectivity §3.10–§3.11, api §4, §5.4): registration,
//! rotation, heartbeat and `Cluster.status`, run only on the leader.
//!
//! Fixes of the original: the registration token is exchanged once (its fingerprint is
//! recorded with conflict retries before anything else can fail, and never re-exchanged);
//! rotation — on `spec.rotateCredentials`, the `rotate-operator-credentials` intent or on
//! schedule (default weekly) — hot-swaps the new token into the running poller and
//! batcher; the heartbeat runs every 30 s and carries the Cluster's condition snapshot
//! with `resourceRef.name` = the Cluster object name; connectivity follows the
//! 5-minute-disconnect / 1-minute-recovery state machine, plain network errors never set
//! `Authenticated=False`; `ControllersHealthy` reports the third-party CRDs; a second
//! Cluster object is flagged `DuplicateCluster` and ignored.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::cluster::{ClusterStatus, CredentialStatus, CredentialsSecretRef};
use vworkspace_api::conditions::{
    self, Desired, FALSE, TRUE, Time, cluster_phases as phase, cluster_reasons as r, types,
};
use vworkspace_api::{Cluster, keys};

use crate::agent::Agent;
use crate::agent::client::{self as agent_client, ClientError};
use crate::agent::connectivity::State;
use crate::agent::credentials::{AuthState, Credentials, Token, parse_secret};
use crate::agent::runtime::active_cluster;
use crate::agent::wire::{
    Condition as WireCondition, EVENT_CLUSTER_HEARTBEAT, EVENT_CREDENTIAL_ROTATED, Event,
    ObjectRef, event_key,
};

/// Default key of the registration token in its Secret.
pub const DEFAULT_TOKEN_KEY: &str = "registrationToken";
/// Retry cadence after a failed registration.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(30);
/// Retry cadence after a failed rotation.
pub const ROTATION_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: kube::Client,
    agent: Agent,
    recorder: Recorder,
}

/// Runs the controller while `leadership` reads `true`, until `shutdown`.
pub async fn run(
    client: kube::Client,
    agent: Agent,
    mut leadership: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "vworkspace-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        agent,
    });
    loop {
        while !*leadership.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leadership.changed() => if r.is_err() { return },
            }
        }
        let term = shutdown.child_token();
        let secrets: Api<Secret> =
            Api::namespaced(client.clone(), &ctx.agent.config().operator_namespace);
        let clusters: Api<Cluster> = Api::all(client.clone());
        let t2 = term.clone();
        let controller = Controller::new(clusters, watcher::Config::default());
        let store = controller.store();
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
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::warn!(error = %e, "cluster reconcile failed");
                }
            });
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

fn error_policy(_: Arc<Cluster>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %err, "cluster: will retry");
    Action::requeue(Duration::from_secs(10))
}

struct Draft {
    status: ClusterStatus,
    generation: Option<i64>,
    now: Time,
}

impl Draft {
    fn set(&mut self, t: &str, s: &str, reason: &str, message: impl Into<String>) {
        conditions::set(
            &mut self.status.conditions,
            Desired::new(t, s, reason, message),
            self.generation,
            &self.now,
        );
    }
}

async fn write_status(ctx: &Ctx, cluster: &Cluster, status: &ClusterStatus) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Cluster> = Api::all(ctx.client.clone());
    let mut value = serde_json::to_value(status).unwrap_or_default();
    for f in [
        "lastHeartbeat",
        "observedToken",
        "credentialStatus",
        "credentialsSecretRef",
    ] {
        if value.get(f).is_none() {
            value[f] = serde_json::Value::Null;
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api
            .patch_status(
                &cluster.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": value})),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn publish(ctx: &Ctx, cluster: &Cluster, warning: bool, reason: &str, note: String) {
    let ev = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        tracing::debug!(error = %e, "could not record event");
    }
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

async fn set_finalizer(ctx: &Ctx, c: &Cluster, present: bool) -> Result<(), Error> {
    let mut f: Vec<String> = c.finalizers().to_vec();
    f.retain(|x| x != keys::FINALIZER_CLUSTER);
    if present {
        f.push(keys::FINALIZER_CLUSTER.into());
    }
    Api::<Cluster>::all(ctx.client.clone())
        .patch(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": f, "resourceVersion": c.resource_version()}}),
            ),
        )
        .await?;
    Ok(())
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
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
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

async fn stored_credentials(ctx: &Ctx) -> Option<Credentials> {
    if let Some(c) = ctx.agent.store().current() {
        return Some(c);
    }
    let loc = ctx.agent.store().default_location().clone();
    let s = Api::<Secret>::namespaced(ctx.client.clone(), &loc.namespace)
        .get_opt(&loc.name)
        .await
        .ok()??;
    parse_secret(&s).ok()
}

fn endpoint(c: &Cluster) -> Option<String> {
    c.spec
        .control_plane_endpoint
        .as_deref()
        .or(c.spec.control_plane_base_url.as_deref())
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
}

fn rotate_annotation(c: &Cluster) -> bool {
    c.annotations()
        .get(keys::ANNOTATION_ROTATE_CREDENTIALS)
        .is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("false"))
}

async fn reconcile(cached: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let agent = &ctx.agent;
    let period = agent.config().heartbeat_period;
    // Decide on the stored object, not the watch cache: right after a registration the
    // cache can still lack the recorded token fingerprint, and acting on it would try to
    // exchange the consumed token again (and overwrite the status with stale fields).
    // One GET per pass is cheap; Cluster passes are rare.
    let Some(cluster) = Api::<Cluster>::all(ctx.client.clone())
        .get_opt(&cached.name_any())
        .await?
    else {
        return Ok(Action::await_change());
    };
    let cluster = Arc::new(cluster);
    if cluster.metadata.deletion_timestamp.is_some() {
        if cluster
            .finalizers()
            .iter()
            .any(|f| f == keys::FINALIZER_CLUSTER)
        {
            let mut status = cluster.status.clone().unwrap_or_default();
            status.phase = Some(phase::TERMINATING.into());
            let _ = write_status(&ctx, &cluster, &status).await;
            agent.metrics().set_connectivity(0);
            set_finalizer(&ctx, &cluster, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !cluster
        .finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_CLUSTER)
    {
        set_finalizer(&ctx, &cluster, true).await?;
        return Ok(Action::await_change());
    }
    let mut d = Draft {
        status: cluster.status.clone().unwrap_or_default(),
        generation: cluster.metadata.generation,
        now: Time(Timestamp::now()),
    };
    let old_phase = d.status.phase.clone().unwrap_or_default();

    // Only one Cluster is served.
    let all = Api::<Cluster>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    if let Some(active) = active_cluster(&all).filter(|a| a.name_any() != cluster.name_any()) {
        d.status.phase = Some(phase::ERROR.into());
        let msg = format!(
            "only one Cluster object is supported; {:?} is the active one and this one is ignored",
            active.name_any()
        );
        d.set(types::CONNECTED, FALSE, r::DUPLICATE_CLUSTER, msg.clone());
        if old_phase != phase::ERROR {
            publish(&ctx, &cluster, true, r::DUPLICATE_CLUSTER, msg).await;
        }
        write_status(&ctx, &cluster, &d.status).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    // Registration.
    let stored = stored_credentials(&ctx).await;
    match resolve_token(&ctx, &cluster).await {
        Err(why) if stored.is_none() => {
            d.status.phase = Some(phase::PENDING.into());
            d.set(types::AUTHENTICATED, FALSE, r::TOKEN_SECRET_MISSING, why);
            d.set(
                types::CONNECTED,
                FALSE,
                r::REGISTRATION_PENDING,
                "waiting for a registration token",
            );
            sync_common(&ctx, &mut d).await;
            write_status(&ctx, &cluster, &d.status).await?;
            return Ok(Action::requeue(REGISTRATION_RETRY));
        }
        Err(why) => {
            tracing::info!(reason = %why, "registration token unresolvable; stored credentials keep working")
        }
        Ok(None) => {}
        Ok(Some((token, inline))) => {
            let fp = token.fingerprint();
            let observed = d.status.observed_token.clone().unwrap_or_default();
            let forced = rotate_annotation(&cluster);
            let consumed = d
                .status
                .credential_status
                .as_ref()
                .and_then(|s| s.registration_token_consumed)
                .unwrap_or(false);
            if !forced && observed.is_empty() && consumed && stored.is_some() {
                // Adoption: credentials exist from an earlier exchange whose fingerprint
                // was not recorded. Never exchange a consumed token again.
                d.status.observed_token = Some(fp.clone());
                write_status(&ctx, &cluster, &d.status).await?;
            } else if fp != observed || forced {
                match exchange(&ctx, &cluster, &token).await {
                    Ok(creds) => {
                        let loc = agent.store().default_location().clone();
                        d.status.observed_token = Some(fp.clone());
                        d.status.credentials_secret_ref = Some(CredentialsSecretRef {
                            name: loc.name.clone(),
                            namespace: Some(loc.namespace.clone()),
                        });
                        d.status.credential_status = Some(CredentialStatus {
                            secret_name: Some(loc.name),
                            secret_namespace: Some(loc.namespace),
                            registered_at: Some(d.now.clone()),
                            registration_token_consumed: Some(true),
                        });
                        d.status.phase = Some(phase::REGISTERING.into());
                        d.set(
                            types::AUTHENTICATED,
                            TRUE,
                            r::REGISTRATION_COMPLETE,
                            "registration token exchanged; credentials stored",
                        );
                        d.set(types::CONNECTED, TRUE, r::CONTROL_PLANE_REACHABLE, "");
                        // Record the consumed fingerprint first (retried on conflicts).
                        write_status(&ctx, &cluster, &d.status).await?;
                        let mut spec = serde_json::Map::new();
                        if cluster
                            .spec
                            .cluster_id
                            .as_deref()
                            .unwrap_or_default()
                            .is_empty()
                        {
                            spec.insert("clusterId".into(), creds.cluster_id.clone().into());
                        }
                        if inline {
                            spec.insert("registrationToken".into(), serde_json::Value::Null);
                        }
                        let mut patch = json!({});
                        if !spec.is_empty() {
                            patch["spec"] = spec.into();
                        }
                        if forced {
                            patch["metadata"] =
                                json!({"annotations": {keys::ANNOTATION_ROTATE_CREDENTIALS: null}});
                        }
                        if patch.as_object().is_some_and(|o| !o.is_empty()) {
                            Api::<Cluster>::all(ctx.client.clone())
                                .patch(
                                    &cluster.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await?;
                        }
                        if inline {
                            publish(&ctx, &cluster, true, "DeprecatedField", "spec.registrationToken is deprecated: put the token in a Secret and use spec.registrationTokenSecretRef".into()).await;
                        }
                        tracing::info!(cluster_id = %creds.cluster_id, "registered with the control plane");
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    }
                    Err(e) => {
                        let reason = if matches!(
                            e,
                            ClientError::Unauthorized(_) | ClientError::Forbidden(_)
                        ) {
                            r::REGISTRATION_TOKEN_INVALID
                        } else {
                            r::REGISTRATION_FAILED
                        };
                        d.status.phase = Some(phase::ERROR.into());
                        d.set(types::AUTHENTICATED, FALSE, reason, e.to_string());
                        d.set(
                            types::CONNECTED,
                            FALSE,
                            r::REGISTRATION_PENDING,
                            "registration failed",
                        );
                        sync_common(&ctx, &mut d).await;
                        write_status(&ctx, &cluster, &d.status).await?;
                        return Ok(Action::requeue(REGISTRATION_RETRY));
                    }
                }
            }
        }
    }

    // Credentials in use.
    let creds = match agent.store().current() {
        Some(c) => Some(c),
        None => agent.store().load().await.ok().flatten(),
    };
    let Some(_creds) = creds else {
        agent.metrics().set_connectivity(-1);
        d.status.phase = Some(phase::PENDING.into());
        d.set(
            types::CONNECTED,
            FALSE,
            r::CREDENTIAL_MISSING,
            "no control-plane credentials yet",
        );
        d.set(
            types::AUTHENTICATED,
            FALSE,
            r::CREDENTIAL_MISSING,
            "no control-plane credentials yet",
        );
        sync_common(&ctx, &mut d).await;
        write_status(&ctx, &cluster, &d.status).await?;
        return Ok(Action::requeue(period));
    };

    // Rotation (requested or scheduled).
    let requested = cluster.spec.rotate_credentials == Some(true);
    let rotation_period = agent.config().rotation_period;
    let due = !rotation_period.is_zero()
        && agent
            .store()
            .written_at()
            .await
            .ok()
            .flatten()
            .is_some_and(|at| {
                Timestamp::now().duration_since(at).as_secs_f64() >= rotation_period.as_secs_f64()
            });
    let mut requeue = period;
    if requested || due {
        tracing::info!(requested, due, "rotating the control-plane credential");
        match rotate(&ctx, &cluster).await {
            Ok(()) => {
                if requested {
                    Api::<Cluster>::all(ctx.client.clone())
                        .patch(
                            &cluster.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"rotateCredentials": false}})),
                        )
                        .await?;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "credential rotation failed; keeping the current token");
                d.status.phase = Some(phase::ERROR.into());
                d.set(
                    types::AUTHENTICATED,
                    FALSE,
                    r::ROTATION_FAILED,
                    e.to_string(),
                );
                requeue = requeue.min(ROTATION_RETRY);
                sync_common(&ctx, &mut d).await;
                write_status(&ctx, &cluster, &d.status).await?;
                return Ok(Action::requeue(requeue));
            }
        }
    }

    // Heartbeat, carrying the condition snapshot.
    let hb = Event {
        event_key: String::new(),
        kind: EVENT_CLUSTER_HEARTBEAT.into(),
        resource_ref: cluster_ref(&cluster),
        conditions: d
            .status
            .conditions
            .iter()
            .map(WireCondition::from)
            .collect(),
        endpoints: Vec::new(),
        timestamp: Timestamp::now(),
    };
    let sent = agent.client().events(std::slice::from_ref(&hb)).await;
    agent.client().tick_connectivity();
    if sent.is_ok() {
        d.status.last_heartbeat = Some(d.now.clone());
    }
    let conn = agent.client().connectivity();
    let auth = agent.store().auth_state();
    let mut next_phase = old_phase.clone();
    match (&sent, &auth) {
        (
            _,
            AuthState::Rejected {
                status, message, ..
            },
        ) => {
            next_phase = phase::ERROR.into();
            d.set(
                types::AUTHENTICATED,
                FALSE,
                r::CREDENTIAL_REJECTED,
                format!("control plane answered {status}: {message}"),
            );
        }
        (Err(ClientError::EndpointNotFound(m)), _) => {
            next_phase = phase::ERROR.into();
            d.set(types::CONNECTED, FALSE, r::ENDPOINT_NOT_FOUND, m.clone());
        }
        _ => match conn.state() {
            State::Connected => {
                next_phase = phase::CONNECTED.into();
                d.set(types::CONNECTED, TRUE, r::ROUND_TRIP_OK, "");
                d.set(types::DISCONNECTED, FALSE, r::CONNECTED, "");
                d.set(types::AUTHENTICATED, TRUE, r::CREDENTIAL_ACCEPTED, "");
            }
            State::Disconnected { .. } | State::Recovering { .. } => {
                next_phase = phase::DISCONNECTED.into();
                let why = conn
                    .last_error()
                    .unwrap_or("no successful round trip")
                    .to_string();
                d.set(
                    types::CONNECTED,
                    FALSE,
                    r::CONTROL_PLANE_UNREACHABLE,
                    why.clone(),
                );
                d.set(types::DISCONNECTED, TRUE, r::NO_RECENT_ROUND_TRIP, why);
            }
            State::Reconnecting { .. } | State::Unknown => {
                // Inside the grace window: keep the phase; say what is failing.
                if !conditions::is_true(&d.status.conditions, types::CONNECTED) {
                    let why = conn
                        .last_error()
                        .unwrap_or("waiting for the first round trip")
                        .to_string();
                    d.set(types::CONNECTED, FALSE, r::RECONNECTING, why);
                }
                if next_phase.is_empty()
                    || next_phase == phase::REGISTERING
                    || next_phase == phase::ERROR
                {
                    next_phase = phase::PENDING.into();
                }
            }
        },
    }
    if next_phase == phase::DISCONNECTED && old_phase != phase::DISCONNECTED {
        publish(
            &ctx,
            &cluster,
            true,
            "ConnectivityLost",
            format!(
                "no successful round trip to the control plane for {}s: {}",
                agent.config().connectivity.disconnect_after.as_secs(),
                conn.last_error().unwrap_or_default()
            ),
        )
        .await;
    }
    if next_phase == phase::CONNECTED && old_phase == phase::DISCONNECTED {
        publish(
            &ctx,
            &cluster,
            false,
            "ConnectivityConnected",
            "control-plane round trips succeed again".into(),
        )
        .await;
    }
    d.status.phase = Some(next_phase);
    sync_common(&ctx, &mut d).await;
    write_status(&ctx, &cluster, &d.status).await?;
    Ok(Action::requeue(requeue))
}

/// BufferOverflow and ControllersHealthy, written on every pass.
async fn sync_common(ctx: &Ctx, d: &mut Draft) {
    match ctx.agent.batcher().overflow() {
        Some(n) => d.set(
            types::BUFFER_OVERFLOW,
            TRUE,
            r::EVENT_BUFFER_FULL,
            format!("{n} events dropped since the buffer last drained"),
        ),
        None => d.set(types::BUFFER_OVERFLOW, FALSE, r::BUFFER_DRAINED, ""),
    }
    let (ok, message) = controllers(&ctx.client).await;
    if ok {
        d.set(
            types::CONTROLLERS_HEALTHY,
            TRUE,
            r::ALL_CONTROLLERS_READY,
            message,
        );
    } else {
        d.set(
            types::CONTROLLERS_HEALTHY,
            FALSE,
            r::CONTROLLER_MISSING,
            message,
        );
    }
}

/// Required: Flux HelmRelease + HelmRepository + OCIRepository; Velero reported only.
async fn controllers(client: &kube::Client) -> (bool, String) {
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
    publish(
        ctx,
        cluster,
        false,
        r::CREDENTIAL_ROTATED,
        "long-lived control-plane credential rotated; the agent uses the new one".into(),
    )
    .await;
    tracing::info!("control-plane credential rotated and hot-swapped");
    Ok(())
}
