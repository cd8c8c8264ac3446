//! ApplicationInstance controller: observe → decide → act.
//!
//! A managed instance becomes a Flux HelmRelease plus its chart source; the instance's
//! status follows the watched HelmRelease. The decisions (validation, values source,
//! placeholder, children, status, deletion wait) are `vworkspace_decide::instance`;
//! here are the watches and the pass; [`observe`] and [`act`] hold the reads and the
//! writes.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};
use vworkspace_decide::instance as decide;
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use super::Context;
use super::kit::{self, AtStage, Error, Stage};

mod act;
mod observe;

pub use vworkspace_decide::instance::{BLOCKED_RECHECK, DELETION_WAIT};

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
    let controller = Controller::new(instances, ctx.primary_watch_config())
        .trigger_backoff(kit::TriggerBackoff::default());
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
        .run(kit::reconciler(reconcile), kit::error_policy, ctx)
        .for_each(kit::report)
        .await;
}

pub async fn reconcile(inst: Arc<ApplicationInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let observed = observe::observe(&ctx, &inst).await.at(Stage::Observe)?;
    let plan = decide::decide(&observed, now);
    act::act(&ctx, &observed, plan, now).await
}
