//! Act: the remote calls a plan asks for, and its effects in order.

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use vworkspace_api::conditions::{TRUE, cluster_reasons as r, types};
use vworkspace_api::{Cluster, keys};
use vworkspace_decide::cluster::{Call, Effect, ExchangeFailure, HeartbeatFailure, Observed, Plan};

use super::observe::{endpoint, observe_link};
use super::{Ctx, Live};
use crate::agent::client::{self as agent_client, ClientError};
use crate::agent::credentials::{Credentials, Token};
use crate::agent::wire::{
    Condition as WireCondition, EVENT_CLUSTER_HEARTBEAT, EVENT_CREDENTIAL_ROTATED, Event,
    ObjectRef, event_key,
};
use crate::controller::events::Notice;
use crate::controller::kit::{AtStage, Error, Stage};

/// Runs one remote call and records its outcome (and the connectivity it left) in `o`.
pub(super) async fn call_out(ctx: &Ctx, live: &Live, o: &mut Observed, call: Call, now: Timestamp) {
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
pub(super) async fn act(ctx: &Ctx, cluster: &Cluster, plan: Plan) -> Result<Action, Error> {
    let kit = &ctx.kit;
    let api: Api<Cluster> = Api::all(kit.client().clone());
    let pp = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..PatchParams::default()
    };
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
                    api.patch(&cluster.name_any(), &pp, &Patch::Merge(&patch))
                        .await
                        .at(Stage::Apply)?;
                }
            }
            Effect::ClearRotateFlag => {
                api.patch(
                    &cluster.name_any(),
                    &pp,
                    &Patch::Merge(json!({"spec": {"rotateCredentials": false}})),
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
