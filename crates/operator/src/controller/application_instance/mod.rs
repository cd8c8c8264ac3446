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
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};
use vworkspace_api::keys;
use vworkspace_decide::flux::endpoints::RELEASE_INSTANCE_LABEL;
use vworkspace_decide::instance as decide;
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use super::Context;
use super::kit::{self, AtStage, Error, HasKit, Stage};

mod act;
mod cache;
mod observe;
mod stored;
mod stored_instance;
mod tenant_access;

use stored_instance::StoredInstance;

pub use vworkspace_decide::instance::{BLOCKED_RECHECK, DELETION_WAIT};

/// Passes at once. Each pass holds a connection to the apiserver; unbounded, a burst of
/// new instances opened one connection (and TLS handshake) per instance. A pass is two
/// round trips (HelmRelease, status); 256 instead of 64 did not make churn keep up on
/// a CPU-bound apiserver (docs/benchmarks.md, churn), so the bound stays.
const CONCURRENCY: u16 = 64;

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

/// The primary watch's events with each instance in its stored form. An instance that
/// cannot be encoded (nothing the apiserver accepts should be) is logged and left out.
fn stored_events(
    event: Result<watcher::Event<ApplicationInstance>, watcher::Error>,
) -> Option<Result<watcher::Event<StoredInstance>, watcher::Error>> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    let slim = |inst: ApplicationInstance| {
        StoredInstance::new(inst)
            .inspect_err(|e| tracing::error!(error = %e, "instance not stored"))
            .ok()
    };
    Some(Ok(match event {
        Ok(Apply(o)) => Apply(slim(o)?),
        Ok(InitApply(o)) => InitApply(slim(o)?),
        Ok(Delete(o)) => Delete(slim(o)?),
        Ok(Init) => Init,
        Ok(InitDone) => InitDone,
        Err(e) => return Some(Err(e)),
    }))
}

/// A watch of child kind `K` feeding `writer` with the slim form of each object (see
/// [`stored`]) and yielding the full objects whose change should trigger their owner's
/// pass (see [`cache`]); the owner trigger reads their owner references and drops them.
fn child_triggers<K: stored::Slim>(
    api: Api<K>,
    mut writer: reflector::store::Writer<K::Stored>,
    cache: Arc<cache::Cache>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
            let out = match event {
                Ok(event) => {
                    let slim = match &event {
                        Apply(o) => Apply(o.slim()),
                        InitApply(o) => InitApply(o.slim()),
                        Delete(o) => Delete(o.slim()),
                        Init => Init,
                        InitDone => InitDone,
                    };
                    writer.apply_watcher_event(&slim);
                    match (event, slim) {
                        (Apply(o) | InitApply(o), Apply(s) | InitApply(s)) => {
                            cache.triggers(&s).then_some(Ok(o))
                        }
                        (Delete(o), Delete(s)) => cache.forget(&s).then_some(Ok(o)),
                        _ => None,
                    }
                }
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        })
}

/// Runs the controller until the stream ends (shutdown signal). `namespace` limits it to
/// one namespace; `None` watches the whole cluster.
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let (store, writer) = reflector::store();
    let primary = kit::applied_after_list(
        watcher(
            scoped::<ApplicationInstance>(&client, namespace),
            ctx.primary_watch_config(),
        )
        .default_backoff()
        .filter_map(|event| futures::future::ready(stored_events(event)))
        .reflect(writer),
    )
    .predicate_filter(
        |i: &StoredInstance| Some(i.trigger()),
        PredicateConfig::default(),
    );
    let controller = Controller::for_stream(primary, store.clone())
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY))
        .trigger_backoff(kit::TriggerBackoff::default());
    let (releases, releases_w) = reflector::store();
    let (helm_repositories, helm_repositories_w) = reflector::store();
    let (oci_repositories, oci_repositories_w) = reflector::store();
    let (ingresses, ingresses_w) = reflector::store();
    let cache = cache::Cache::new(releases, helm_repositories, oci_repositories, ingresses);
    let instances = store.clone();
    // An Ingress of a release changes that instance's endpoints.
    let by_release = move |ns: Option<String>, release: Option<String>| {
        let Some(release) = release else {
            return Vec::new();
        };
        instances
            .state()
            .into_iter()
            .filter(|i| i.namespace() == ns && i.release() == Some(release.as_str()))
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    let ingress_events = watcher(
        scoped::<Ingress>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|i: &mut Ingress| {
        // Endpoints read the name, the release label and the spec's rules and TLS hosts.
        i.metadata.managed_fields = None;
        i.metadata.annotations = None;
        i.status = None;
    })
    .reflect(ingresses_w)
    .touched_objects();
    // Values Secrets/ConfigMaps are watched by metadata only: the operator never holds
    // their content, yet a missing one appearing unblocks the instance at once.
    let refs = move |kind: ValuesSource, ns: Option<String>, name: String| {
        store
            .state()
            .into_iter()
            .filter(|i| i.namespace() == ns)
            .filter(|i| i.values_ref() == Some((kind, name.as_str())))
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    };
    let refs2 = refs.clone();
    // Cluster-wide, only the gated namespaces are watched (the chart grants Secret and
    // ConfigMap reads nowhere else); one watched namespace is watched directly.
    let (secrets, config_maps) = match namespace {
        Some(_) => (
            watcher(
                scoped::<PartialObjectMeta<Secret>>(&client, namespace),
                watcher::Config::default(),
            )
            .touched_objects()
            .boxed(),
            watcher(
                scoped::<PartialObjectMeta<ConfigMap>>(&client, namespace),
                watcher::Config::default(),
            )
            .touched_objects()
            .boxed(),
        ),
        None => (
            tenant_access::in_gated_namespaces::<Secret>(client.clone()).boxed(),
            tenant_access::in_gated_namespaces::<ConfigMap>(client.clone()).boxed(),
        ),
    };
    controller
        .owns_stream(child_triggers(
            scoped::<HelmRelease>(&client, namespace),
            releases_w,
            cache.clone(),
        ))
        .owns_stream(child_triggers(
            scoped::<HelmRepository>(&client, namespace),
            helm_repositories_w,
            cache.clone(),
        ))
        .owns_stream(child_triggers(
            scoped::<OCIRepository>(&client, namespace),
            oci_repositories_w,
            cache.clone(),
        ))
        .watches_stream(ingress_events, move |i| {
            by_release(
                i.namespace(),
                i.labels().get(RELEASE_INSTANCE_LABEL).cloned(),
            )
        })
        .watches_stream(secrets, move |m| {
            refs(ValuesSource::SecretRef, m.namespace(), m.name_any())
        })
        .watches_stream(config_maps, move |m| {
            refs2(ValuesSource::ConfigMapRef, m.namespace(), m.name_any())
        })
        .shutdown_on_signal()
        .run(
            kit::reconciler(move |inst, ctx| reconcile(inst, ctx, cache.clone())),
            kit::error_policy,
            ctx,
        )
        .for_each(kit::report)
        .await;
}

async fn reconcile(
    stored: Arc<StoredInstance>,
    ctx: Arc<Context>,
    cache: Arc<cache::Cache>,
) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let mut inst = stored
        .to_instance()
        .map_err(|e| Error::new(Stage::Observe, format!("decoding the stored instance: {e}")))?;
    let mut observed = observe::observe(&ctx, &cache, &inst)
        .await
        .at(Stage::Observe)?;
    let mut plan = decide::decide(&observed, now);
    if matches!(plan.decision, decide::Decision::AddFinalizer) {
        // Add it and go on in the same pass: its echo triggers nothing (see
        // `stored_instance::trigger`), so waiting for it would leave the instance undelivered.
        ctx.kit()
            .add_finalizer(&inst, keys::FINALIZER_APPLICATION_INSTANCE)
            .await?;
        inst.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(keys::FINALIZER_APPLICATION_INSTANCE.to_string());
        observed = observe::observe(&ctx, &cache, &inst)
            .await
            .at(Stage::Observe)?;
        plan = decide::decide(&observed, now);
    }
    act::act(&ctx, &cache, &observed, plan, now).await
}
