//! ApplicationInstance controller: observe → decide → act.
//!
//! A managed instance becomes a Flux HelmRelease plus its chart source; the instance's
//! status follows the watched HelmRelease. The decisions (validation, values source,
//! placeholder, children, status, deletion wait) are `vworkspace_decide::instance`;
//! here are the watches, the reads and the writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};
use vworkspace_api::keys;
use vworkspace_decide::flux::{ChartSource, FluxChildren};
use vworkspace_decide::instance::{
    self as decide, Child, Decision, Observed, Plan, StatusUpdate, ValuesState,
};
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use super::Context;
use super::events::publish_transitions;

pub use vworkspace_decide::instance::{BLOCKED_RECHECK, DELETION_WAIT};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until the stream ends (shutdown signal). `namespace` limits it to
/// one namespace; `None` watches the whole cluster.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let instances: Api<ApplicationInstance> = scoped(&client, namespace);
    let controller = Controller::new(instances, ctx.primary_watch_config());
    let store = controller.store();
    // Values Secrets/ConfigMaps are watched by metadata only: the operator never holds
    // their content, yet a missing one appearing unblocks the instance at once.
    let refs = move |kind: ValuesSource, ns: Option<String>, name: String| {
        store
            .state()
            .into_iter()
            .filter(|i| i.namespace() == ns)
            .filter(|i| {
                i.spec.values.as_ref().is_some_and(|v| {
                    v.source == kind
                        && match kind {
                            ValuesSource::SecretRef => {
                                v.secret_ref.as_ref().is_some_and(|r| r.name == name)
                            }
                            ValuesSource::ConfigMapRef => {
                                v.config_map_ref.as_ref().is_some_and(|r| r.name == name)
                            }
                            ValuesSource::Inline => false,
                        }
                })
            })
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    let refs2 = refs.clone();
    let secrets = watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, namespace),
        watcher::Config::default(),
    )
    .touched_objects();
    let config_maps = watcher(
        scoped::<PartialObjectMeta<ConfigMap>>(&client, namespace),
        watcher::Config::default(),
    )
    .touched_objects();
    controller
        .owns(
            scoped::<HelmRelease>(&client, namespace),
            watcher::Config::default(),
        )
        .owns(
            scoped::<HelmRepository>(&client, namespace),
            watcher::Config::default(),
        )
        .owns(
            scoped::<OCIRepository>(&client, namespace),
            watcher::Config::default(),
        )
        .watches_stream(secrets, move |m| {
            refs(ValuesSource::SecretRef, m.namespace(), m.name_any())
        })
        .watches_stream(config_maps, move |m| {
            refs2(ValuesSource::ConfigMapRef, m.namespace(), m.name_any())
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "applicationinstance reconcile failed");
            }
        })
        .await;
}

fn error_policy(_: Arc<ApplicationInstance>, err: &Error, _: Arc<Context>) -> Action {
    warn!(error = %err, "will retry");
    Action::requeue(Duration::from_secs(10))
}

pub async fn reconcile(inst: Arc<ApplicationInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let observed = observe(&ctx, &inst).await?;
    let plan = decide::decide(&observed, now);
    act(&ctx, &observed, plan, now).await
}

/// Reads what the decision needs ([`decide::reads`]): key presence of the values
/// Secret/ConfigMap (never their values), the children left at deletion, the
/// release's Ingresses.
async fn observe(ctx: &Context, inst: &ApplicationInstance) -> Result<Observed, Error> {
    let reads = decide::reads(inst);
    let namespace = inst.namespace().unwrap_or_default();
    let mut o = Observed::of(inst.clone());
    if let Some((kind, name, key)) = &reads.values {
        o.values = Some(values_state(ctx, &namespace, *kind, name, key).await?);
    }
    for child in reads.children {
        if child_exists(ctx, &namespace, &child).await? {
            o.children.push(child);
        }
    }
    if let Some((ns, selector)) = &reads.ingresses {
        o.ingresses = Api::<Ingress>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_else(|e| {
                // Endpoints are informative; a missing permission must not block delivery.
                warn!(error = %e, "cannot list Ingresses for status.endpoints");
                Vec::new()
            });
    }
    Ok(o)
}

async fn values_state(
    ctx: &Context,
    namespace: &str,
    kind: ValuesSource,
    name: &str,
    key: &str,
) -> Result<ValuesState, Error> {
    let has_key = match kind {
        ValuesSource::SecretRef => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|s| {
                s.data.as_ref().is_some_and(|d| d.contains_key(key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
            }),
        _ => Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|c| c.data.as_ref().is_some_and(|d| d.contains_key(key))),
    };
    Ok(match has_key {
        None => ValuesState::Missing,
        Some(false) => ValuesState::KeyMissing,
        Some(true) => ValuesState::Present,
    })
}

async fn child_exists(ctx: &Context, namespace: &str, child: &Child) -> Result<bool, Error> {
    let client = ctx.client.clone();
    Ok(match child {
        Child::HelmRelease(n) => Api::<HelmRelease>::namespaced(client, namespace)
            .get_opt(n)
            .await?
            .is_some(),
        Child::HelmRepository(n) => Api::<HelmRepository>::namespaced(client, namespace)
            .get_opt(n)
            .await?
            .is_some(),
        Child::OCIRepository(n) => Api::<OCIRepository>::namespaced(client, namespace)
            .get_opt(n)
            .await?
            .is_some(),
    })
}

/// Executes the plan.
async fn act(
    ctx: &Context,
    o: &Observed,
    plan: Plan,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let inst = &o.inst;
    match &plan.decision {
        Decision::Nothing | Decision::Block { .. } | Decision::Placeholder | Decision::Applied => {}
        Decision::AddFinalizer => set_finalizer(ctx, inst, true).await?,
        Decision::Apply(children) => {
            let live = apply(ctx, inst, children).await?;
            let next = decide::after_apply(o, children, &live, now);
            return finish_pass(ctx, inst, next).await;
        }
        Decision::Release {
            delete,
            remove_finalizer,
        } => {
            let namespace = inst.namespace().unwrap_or_default();
            for child in delete {
                delete_child(ctx, &namespace, child).await?;
            }
            if let Some(update) = &plan.status {
                write_status(ctx, inst, update).await?;
            }
            if *remove_finalizer {
                if !delete.is_empty() {
                    warn!(instance = %inst.name_any(), "releasing instance with Flux children still present");
                }
                set_finalizer(ctx, inst, false).await?;
            } else if !delete.is_empty() {
                info!(instance = %inst.name_any(), "waiting for Flux children to go");
            }
            return Ok(plan
                .requeue
                .map_or_else(Action::await_change, Action::requeue));
        }
    }
    finish_pass(ctx, inst, plan).await
}

async fn finish_pass(
    ctx: &Context,
    inst: &ApplicationInstance,
    plan: Plan,
) -> Result<Action, Error> {
    if let Some(update) = &plan.status {
        write_status(ctx, inst, update).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Applies the chart source and the HelmRelease (server-side apply), removes a source
/// of the other kind, and returns the live HelmRelease.
async fn apply(
    ctx: &Context,
    inst: &ApplicationInstance,
    children: &FluxChildren,
) -> Result<HelmRelease, Error> {
    let namespace = inst.namespace().unwrap_or_default();
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    match &children.source {
        ChartSource::Helm(src) => {
            Api::<HelmRepository>::namespaced(ctx.client.clone(), &namespace)
                .patch(&src.name_any(), &pp, &Patch::Apply(src))
                .await?;
        }
        ChartSource::Oci(src) => {
            Api::<OCIRepository>::namespaced(ctx.client.clone(), &namespace)
                .patch(&src.name_any(), &pp, &Patch::Apply(src))
                .await?;
        }
    }
    delete_child(ctx, &namespace, &decide::stale_source(children)).await?;
    Ok(
        Api::<HelmRelease>::namespaced(ctx.client.clone(), &namespace)
            .patch(
                &children.helm_release.name_any(),
                &pp,
                &Patch::Apply(&children.helm_release),
            )
            .await?,
    )
}

/// Deletes one child with background propagation; one already gone is fine.
async fn delete_child(ctx: &Context, namespace: &str, child: &Child) -> Result<(), Error> {
    let dp = DeleteParams::background();
    let client = ctx.client.clone();
    let result = match child {
        Child::HelmRelease(n) => Api::<HelmRelease>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
        Child::HelmRepository(n) => Api::<HelmRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
        Child::OCIRepository(n) => Api::<OCIRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

async fn write_status(
    ctx: &Context,
    inst: &ApplicationInstance,
    update: &StatusUpdate,
) -> Result<(), Error> {
    let api: Api<ApplicationInstance> =
        Api::namespaced(ctx.client.clone(), &inst.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(&update.status).unwrap_or_default();
    // Cleared optional fields must be sent as null for a merge patch to remove them.
    for field in ["helmReleaseRef", "lastAppliedChart"] {
        if status.get(field).is_none() {
            status[field] = serde_json::Value::Null;
        }
    }
    api.patch_status(
        &inst.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    publish_transitions(&ctx.recorder, &inst.object_ref(&()), &update.flipped).await;
    Ok(())
}

async fn set_finalizer(
    ctx: &Context,
    inst: &ApplicationInstance,
    present: bool,
) -> Result<(), Error> {
    let api: Api<ApplicationInstance> =
        Api::namespaced(ctx.client.clone(), &inst.namespace().unwrap_or_default());
    let mut finalizers: Vec<String> = inst.finalizers().to_vec();
    finalizers.retain(|f| f != keys::FINALIZER_APPLICATION_INSTANCE);
    if present {
        finalizers.push(keys::FINALIZER_APPLICATION_INSTANCE.into());
    }
    // resourceVersion makes the patch fail instead of clobbering a concurrent change.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": inst.resource_version()}});
    api.patch(
        &inst.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}
