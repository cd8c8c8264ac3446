//! ApplicationInstance controller: a managed instance becomes a Flux HelmRelease plus its
//! chart source; the instance's status follows the watched HelmRelease.

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
use vworkspace_api::application_instance::{
    ApplicationInstance, ApplicationInstanceStatus, Mode, ObjectRef as StatusRef, ValuesSource,
};
use vworkspace_api::conditions::{
    self, Change, Condition, Desired, FALSE, TRUE, Time, app_reasons as r, types,
};
use vworkspace_api::keys;

use super::Context;
use super::events::publish_transitions;
use crate::flux::endpoints;
use crate::flux::status::release_conditions;
use crate::flux::{ChartSource, desired_children, source_name};
use crate::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

/// How long deletion waits for Flux to uninstall before letting the instance go.
pub const DELETION_WAIT: Duration = Duration::from_secs(600);

/// Blocked instances are re-evaluated on every relevant change (spec, referenced
/// Secret/ConfigMap) and, as a safety net against missed watch events, at this cadence.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(300);

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

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Status being assembled during one pass, plus the conditions that flipped.
struct StatusDraft {
    status: ApplicationInstanceStatus,
    generation: Option<i64>,
    now: Time,
    flipped: Vec<String>,
}

impl StatusDraft {
    fn new(inst: &ApplicationInstance) -> Self {
        StatusDraft {
            status: inst.status.clone().unwrap_or_default(),
            generation: inst.metadata.generation,
            now: now(),
            flipped: Vec::new(),
        }
    }

    fn set(&mut self, want: Desired<'_>) {
        let t = want.type_.to_string();
        if conditions::set(
            &mut self.status.conditions,
            want,
            self.generation,
            &self.now,
        ) == Change::Transitioned
        {
            self.flipped.push(t);
        }
    }

    fn blocked(&mut self, reason: &str, message: String) {
        self.set(Desired::new(types::BLOCKED, TRUE, reason, message.clone()));
        self.set(Desired::new(types::READY, FALSE, reason, message));
        self.set(Desired::new(types::RECONCILING, FALSE, r::STABLE, ""));
    }

    fn unblocked(&mut self) {
        self.set(Desired::new(types::BLOCKED, FALSE, r::UNBLOCKED, ""));
    }
}

async fn write_status(
    ctx: &Context,
    inst: &ApplicationInstance,
    draft: StatusDraft,
) -> Result<(), Error> {
    if inst.status.as_ref() == Some(&draft.status) {
        return Ok(());
    }
    let api: Api<ApplicationInstance> =
        Api::namespaced(ctx.client.clone(), &inst.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(&draft.status).unwrap_or_default();
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
    let flipped: Vec<Condition> = draft
        .flipped
        .iter()
        .filter_map(|t| conditions::find(&draft.status.conditions, t).cloned())
        .collect();
    publish_transitions(&ctx.recorder, &inst.object_ref(&()), &flipped).await;
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

pub async fn reconcile(inst: Arc<ApplicationInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    if inst.metadata.deletion_timestamp.is_some() {
        return finalize(&inst, &ctx).await;
    }
    if !inst
        .finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_APPLICATION_INSTANCE)
    {
        set_finalizer(&ctx, &inst, true).await?;
        return Ok(Action::await_change());
    }
    let namespace = inst.namespace().unwrap_or_default();
    let mut draft = StatusDraft::new(&inst);
    if let Err(message) =
        vworkspace_api::validation::validate_application_instance(&inst.spec, &namespace)
    {
        draft.blocked(r::VALIDATION_FAILED, message);
        write_status(&ctx, &inst, draft).await?;
        return Ok(Action::requeue(BLOCKED_RECHECK));
    }
    draft.status.observed_generation = inst.metadata.generation;
    draft.status.last_reconcile_time = Some(draft.now.clone());
    if inst.spec.mode() == Mode::Placeholder {
        draft.status.helm_release_ref = None;
        draft.status.last_applied_chart = None;
        draft.status.endpoints.clear();
        draft.status.inventory.clear();
        draft.set(Desired::new(
            types::READY,
            TRUE,
            r::PLACEHOLDER,
            "placeholder instance: nothing to deliver",
        ));
        draft.set(Desired::new(types::RECONCILING, FALSE, r::STABLE, ""));
        draft.set(Desired::new(types::DEGRADED, FALSE, r::RECOVERED, ""));
        draft.unblocked();
        write_status(&ctx, &inst, draft).await?;
        return Ok(Action::await_change());
    }
    if let Some(message) = missing_values_source(&ctx, &inst, &namespace).await? {
        draft.blocked(r::WAITING_FOR_SECRET, message);
        write_status(&ctx, &inst, draft).await?;
        return Ok(Action::requeue(BLOCKED_RECHECK));
    }
    let children = match desired_children(&inst) {
        Ok(c) => c,
        Err(message) => {
            draft.blocked(r::VALIDATION_FAILED, message);
            write_status(&ctx, &inst, draft).await?;
            return Ok(Action::requeue(BLOCKED_RECHECK));
        }
    };
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
    // A chart source of the other kind left from a sourceType change is removed.
    delete_stale_source(&ctx, &namespace, &children.source).await?;
    let hr_name = children.helm_release.name_any();
    let live = Api::<HelmRelease>::namespaced(ctx.client.clone(), &namespace)
        .patch(&hr_name, &pp, &Patch::Apply(&children.helm_release))
        .await?;
    draft.status.helm_release_ref = Some(StatusRef {
        name: hr_name,
        namespace: namespace.clone(),
    });
    draft.status.last_applied_chart = inst.spec.chart.clone();
    draft.status.inventory = endpoints::inventory(&children, &namespace);
    let release_ns = inst
        .spec
        .release
        .as_ref()
        .map(|r| r.namespace.clone())
        .unwrap_or_else(|| namespace.clone());
    let release_name = inst
        .spec
        .release
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let ingresses = Api::<Ingress>::namespaced(ctx.client.clone(), &release_ns)
        .list(&ListParams::default().labels(&format!(
            "{}={release_name}",
            endpoints::RELEASE_INSTANCE_LABEL
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_else(|e| {
            // Endpoints are informative; a missing permission must not block delivery.
            warn!(error = %e, "cannot list Ingresses for status.endpoints");
            Vec::new()
        });
    draft.status.endpoints = endpoints::endpoints(&inst, &ingresses);
    let wanted_version = inst.spec.chart.as_ref().map(|c| c.version.as_str());
    for want in release_conditions(Some(&live), wanted_version) {
        draft.set(want);
    }
    draft.unblocked();
    write_status(&ctx, &inst, draft).await?;
    Ok(Action::await_change())
}

/// Says which referenced Secret/ConfigMap (or key) is missing. Only key names are read;
/// values never leave the API response.
async fn missing_values_source(
    ctx: &Context,
    inst: &ApplicationInstance,
    namespace: &str,
) -> Result<Option<String>, Error> {
    let Some(values) = &inst.spec.values else {
        return Ok(None);
    };
    match values.source {
        ValuesSource::Inline => Ok(None),
        ValuesSource::SecretRef => {
            let Some(r) = &values.secret_ref else {
                return Ok(None);
            };
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&r.name)
                .await?;
            Ok(match secret {
                None => Some(format!(
                    "Secret {:?} referenced by spec.values.secretRef not found in namespace {namespace:?}",
                    r.name
                )),
                Some(s)
                    if !s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                        && !s
                            .string_data
                            .as_ref()
                            .is_some_and(|d| d.contains_key(&r.key)) =>
                {
                    Some(format!(
                        "Secret {:?} has no key {:?} (spec.values.secretRef.key)",
                        r.name, r.key
                    ))
                }
                Some(_) => None,
            })
        }
        ValuesSource::ConfigMapRef => {
            let Some(r) = &values.config_map_ref else {
                return Ok(None);
            };
            let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&r.name)
                .await?;
            Ok(match cm {
                None => Some(format!(
                    "ConfigMap {:?} referenced by spec.values.configMapRef not found in namespace {namespace:?}",
                    r.name
                )),
                Some(c) if !c.data.as_ref().is_some_and(|d| d.contains_key(&r.key)) => {
                    Some(format!(
                        "ConfigMap {:?} has no key {:?} (spec.values.configMapRef.key)",
                        r.name, r.key
                    ))
                }
                Some(_) => None,
            })
        }
    }
}

async fn delete_stale_source(
    ctx: &Context,
    namespace: &str,
    source: &ChartSource,
) -> Result<(), Error> {
    let name = source.name();
    let dp = DeleteParams::background();
    let result = match source {
        ChartSource::Helm(_) => Api::<OCIRepository>::namespaced(ctx.client.clone(), namespace)
            .delete(&name, &dp)
            .await
            .map(|_| ()),
        ChartSource::Oci(_) => Api::<HelmRepository>::namespaced(ctx.client.clone(), namespace)
            .delete(&name, &dp)
            .await
            .map(|_| ()),
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

/// Deletes the Flux children and keeps the finalizer until they are gone, so Flux's own
/// finalizer uninstalls the release first. If they are still there [`DELETION_WAIT`]
/// after deletion started (Flux not running or stuck), the instance is released and the
/// Deleting condition says what was left behind.
async fn finalize(inst: &ApplicationInstance, ctx: &Context) -> Result<Action, Error> {
    if !inst
        .finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_APPLICATION_INSTANCE)
    {
        return Ok(Action::await_change());
    }
    let namespace = inst.namespace().unwrap_or_default();
    let release = inst
        .spec
        .release
        .as_ref()
        .map(|r| r.name.clone())
        .filter(|n| !n.trim().is_empty());
    let mut draft = StatusDraft::new(inst);
    let Some(release) = release.filter(|_| inst.spec.mode() == Mode::Managed) else {
        // Placeholder, or a managed instance that never had a release: nothing to uninstall.
        draft.set(Desired::new(
            types::DELETING,
            TRUE,
            r::DELETING,
            "removing the instance",
        ));
        write_status(ctx, inst, draft).await?;
        set_finalizer(ctx, inst, false).await?;
        return Ok(Action::await_change());
    };
    let dp = DeleteParams::background();
    let hr_api = Api::<HelmRelease>::namespaced(ctx.client.clone(), &namespace);
    let mut remaining = Vec::new();
    if hr_api.get_opt(&release).await?.is_some() {
        ignore_not_found(hr_api.delete(&release, &dp).await.map(|_| ()))?;
        remaining.push(format!("HelmRelease {release}"));
    }
    let src = source_name(&release);
    let helm_repos = Api::<HelmRepository>::namespaced(ctx.client.clone(), &namespace);
    if helm_repos.get_opt(&src).await?.is_some() {
        ignore_not_found(helm_repos.delete(&src, &dp).await.map(|_| ()))?;
        remaining.push(format!("HelmRepository {src}"));
    }
    let oci_repos = Api::<OCIRepository>::namespaced(ctx.client.clone(), &namespace);
    if oci_repos.get_opt(&src).await?.is_some() {
        ignore_not_found(oci_repos.delete(&src, &dp).await.map(|_| ()))?;
        remaining.push(format!("OCIRepository {src}"));
    }
    if remaining.is_empty() {
        set_finalizer(ctx, inst, false).await?;
        return Ok(Action::await_change());
    }
    let waited = inst
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    if waited >= DELETION_WAIT {
        draft.set(Desired::new(
            types::DELETING,
            TRUE,
            r::WAITING_FOR_CHILD_RESOURCES,
            format!(
                "gave up waiting for Flux after {}s; left behind: {}",
                DELETION_WAIT.as_secs(),
                remaining.join(", ")
            ),
        ));
        write_status(ctx, inst, draft).await?;
        warn!(instance = %inst.name_any(), "releasing instance with Flux children still present");
        set_finalizer(ctx, inst, false).await?;
        return Ok(Action::await_change());
    }
    draft.set(Desired::new(
        types::DELETING,
        TRUE,
        r::UNINSTALLING,
        format!("waiting for Flux to uninstall: {}", remaining.join(", ")),
    ));
    write_status(ctx, inst, draft).await?;
    info!(instance = %inst.name_any(), "waiting for Flux children to go");
    // Child deletions arrive through the owned watches; the requeue bounds the wait.
    Ok(Action::requeue(
        DELETION_WAIT.saturating_sub(waited) + Duration::from_secs(1),
    ))
}

fn ignore_not_found(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}
