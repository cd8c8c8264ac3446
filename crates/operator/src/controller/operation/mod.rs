//! Operation controller: observe → decide → act.
//!
//! [`observe`] gathers the Operation, its target, its namespace's peers (from a
//! reflector cache, never a per-pass list) and what the engine asked to read; the pure
//! `vworkspace_decide::operation::decide` returns the plan; [`act`] runs it, with the
//! engine's reads and writes executed by [`engine_io`]. The pipeline (terminal
//! short-circuit, deletion, cancel, validation, timeout, gates, engine lifecycle) is
//! documented and unit-tested in `vworkspace_decide::operation`; this module is the
//! wiring: settings, watches, the pass.

mod act;
mod engine_io;
mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_api::operation::{Engine, Operation, Phase};
use vworkspace_decide::engines::{self, Scope, Settings};
use vworkspace_decide::operation::{self as decide, Config};

use super::Context;
use super::kit::{self, Error, HasKit, Kit};

pub use vworkspace_decide::operation::gates::{blocked_by, conflict, target_not_ready};

/// Settings of the Operation controller (CLI flags in main.rs).
#[derive(Clone, Debug)]
pub struct OperationConfig {
    /// HMAC key of `vws1` approval claims; empty rejects every claim.
    pub approval_secret: String,
    /// Where Velero Backup/Restore objects are created.
    pub velero_namespace: String,
}

impl Default for OperationConfig {
    fn default() -> Self {
        OperationConfig {
            approval_secret: String::new(),
            velero_namespace: Settings::default().velero_namespace,
        }
    }
}

impl OperationConfig {
    fn decide_config(&self) -> Config {
        Config {
            approval_secret: self.approval_secret.clone(),
            settings: Settings {
                velero_namespace: self.velero_namespace.clone(),
            },
        }
    }
}

struct Ctx {
    base: Arc<Context>,
    config: Config,
    /// Every Operation in scope; the concurrency gate reads peers from here.
    peers: Store<Operation>,
}

impl HasKit for Ctx {
    fn kit(&self) -> &Kit {
        &self.base.kit
    }
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

pub async fn run(ctx: Arc<Context>, config: OperationConfig, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let config = config.decide_config();
    // As `Controller::new`, but a re-list's Operations reach the controller only once its
    // store holds them (kit::applied_after_list).
    let (primary_store, primary_writer) = reflector::store();
    let primary = kit::applied_after_list(
        watcher(
            scoped::<Operation>(&client, namespace),
            ctx.primary_watch_config(),
        )
        .default_backoff()
        .reflect(primary_writer),
    );
    let controller = Controller::for_stream(primary, primary_store)
        .trigger_backoff(kit::TriggerBackoff::default());
    let store = controller.store();
    // Workloads carry the Operation UID as a label; map them back through the store.
    let by_uid = move |labels: &BTreeMap<String, String>| {
        let uid = labels.get(keys::LABEL_OPERATION)?.clone();
        store
            .state()
            .into_iter()
            .find(|o| o.uid().as_deref() == Some(uid.as_str()))
            .map(|o| ObjectRef::from_obj(&*o))
    };
    // A target that appears or gains a capability annotation, and an Operation that
    // finishes, can unblock others: map both to the Pending Operations they concern.
    let pending_for = {
        let store = controller.store();
        move |ns: Option<String>, target: String, except: Option<String>| {
            store
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.spec.target_ref.name == target)
                .filter(|o| o.uid() != except)
                .filter(|o| !phase(o).is_some_and(|p| p == Phase::Running || p.is_terminal()))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        }
    };
    let pending_for2 = pending_for.clone();
    // An Upgrade follows its target: a Running helm Operation is woken by the instance.
    let upgrades_of = {
        let store = controller.store();
        move |ns: Option<String>, target: String| {
            store
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.spec.target_ref.name == target)
                .filter(|o| o.spec.engine == Engine::Helm && phase(o) == Some(Phase::Running))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        }
    };
    // The peer cache is filled before its events trigger anyone, so an Operation woken
    // because another finished sees that one finished.
    let (peers, writer) = reflector::store();
    let peer_events = reflector::reflector(
        writer,
        watcher(
            scoped::<Operation>(&client, namespace),
            watcher::Config::default(),
        ),
    )
    .touched_objects();
    let labelled = watcher::Config::default().labels(keys::LABEL_OPERATION);
    let workloads = engines::workload_resources(&config.settings);
    let ctx = Arc::new(Ctx {
        base: ctx,
        config,
        peers,
    });
    let mut controller = controller
        // Only an instance's name and namespace are read here: a metadata watch, so the
        // instances' specs and statuses are not fetched and parsed a second time.
        .watches_stream(
            watcher(
                scoped::<PartialObjectMeta<ApplicationInstance>>(&client, namespace),
                watcher::Config::default(),
            )
            .touched_objects(),
            move |t: PartialObjectMeta<ApplicationInstance>| {
                let mut refs = pending_for(t.namespace(), t.name_any(), None);
                refs.extend(upgrades_of(t.namespace(), t.name_any()));
                refs
            },
        )
        .watches_stream(peer_events, move |o: Operation| {
            pending_for2(o.namespace(), o.spec.target_ref.name.clone(), o.uid())
        });
    // Workload kinds are watched only where their CRDs are served, so a cluster
    // without, say, Argo runs everything else without a failing watch.
    for (ar, scope) in workloads {
        let api = match (&scope, namespace) {
            (Scope::Namespace(ns), _) => Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Operations, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Operations, None) => Api::all_with(client.clone(), &ar),
        };
        if !served(&api).await {
            tracing::info!(kind = %ar.kind, group = %ar.group, "CRD not served: not watched");
            continue;
        }
        let by_uid = by_uid.clone();
        controller =
            controller.watches_with(api, ar, labelled.clone(), move |o| by_uid(o.labels()));
    }
    controller
        .shutdown_on_signal()
        .run(kit::reconciler(reconcile), kit::error_policy, ctx)
        .for_each(kit::report)
        .await;
}

/// Whether the kind behind `api` is served (a 404 on list means its CRD is missing).
async fn served(api: &Api<DynamicObject>) -> bool {
    !matches!(
        api.list_metadata(&ListParams::default().limit(1)).await,
        Err(kube::Error::Api(s)) if s.code == 404
    )
}

fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

async fn reconcile(op: Arc<Operation>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let observed = observe::observe(&ctx, &op, now).await?;
    let plan = decide::decide(&observed, now);
    act::act(&ctx, &observed, plan, now).await
}
