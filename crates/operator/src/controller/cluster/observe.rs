//! Observe: everything one Cluster decision needs, in one plain struct.

use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use vworkspace_api::{Cluster, keys};
use vworkspace_decide::cluster::{Link, Observed, Outcomes, Settings, TokenSource};

use super::{Ctx, DEFAULT_TOKEN_KEY, DISCOVERY_REFRESH, DISCOVERY_RETRY, Live};
use crate::agent::Agent;
use crate::agent::connectivity::State;
use crate::agent::credentials::{AuthState, Credentials, Token, parse_secret};
use crate::agent::runtime::active_cluster;
use crate::controller::kit::{AtStage, Error, Kit, Stage};

pub(super) fn endpoint(c: &Cluster) -> Option<String> {
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
pub(super) fn observe_link(agent: &Agent, o: &mut Observed) {
    let conn = agent.client().connectivity();
    o.link = link(conn.state());
    o.link_error = conn.last_error().map(str::to_string);
    o.poll_throttled_until = conn.throttled_until(jiff::Timestamp::now());
    o.rejected = match agent.store().auth_state() {
        AuthState::Rejected {
            status, message, ..
        } => Some(format!("control plane answered {status}: {message}")),
        _ => None,
    };
}

/// Gathers the decision's input. `None` when the Cluster is gone.
pub(super) async fn observe(ctx: &Ctx, name: &str) -> Result<Option<(Live, Observed)>, Error> {
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
        poll_throttled_until: None,
        settings: Settings {
            heartbeat_period: config.heartbeat_period,
            rotation_period: config.rotation_period,
            disconnect_after: config.connectivity.disconnect_after,
            credentials_secret: (loc.name.clone(), loc.namespace.clone()),
            max_retry_after: config.backoff.max_retry_after,
            mode: config.mode,
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
