//! Operation controller: observe → decide → act.
//!
//! `observe` gathers the Operation, its target, its namespace's peers (from a reflector
//! cache, never a per-pass list) and what the engine asked to read; the pure
//! `vworkspace_decide::operation::decide` returns the plan; `act` runs the engine's
//! reads and writes and writes the status. The pipeline (terminal short-circuit,
//! deletion, cancel, validation, timeout, gates, engine lifecycle) is documented and
//! unit-tested in `vworkspace_decide::operation`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_api::operation::{Engine, Operation, Phase};
use vworkspace_decide::engines::{self, Build, Query, Scope, Select, Settings, Write};
use vworkspace_decide::operation::{
    self as decide, Config, Decision, Observed, Plan, StartOutcome, StatusUpdate,
};

use super::Context;
use super::events::publish_transitions;

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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
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

pub async fn run(ctx: Arc<Context>, config: OperationConfig, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let config = config.decide_config();
    let controller = Controller::new(
        scoped::<Operation>(&client, namespace),
        ctx.primary_watch_config(),
    );
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
        .watches(
            scoped::<ApplicationInstance>(&client, namespace),
            watcher::Config::default(),
            move |t: ApplicationInstance| {
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
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "operation reconcile failed");
            }
        })
        .await;
}

/// Whether the kind behind `api` is served (a 404 on list means its CRD is missing).
async fn served(api: &Api<DynamicObject>) -> bool {
    !matches!(
        api.list_metadata(&ListParams::default().limit(1)).await,
        Err(kube::Error::Api(s)) if s.code == 404
    )
}

fn error_policy(_: Arc<Operation>, err: &Error, _: Arc<Ctx>) -> Action {
    warn!(error = %err, "will retry");
    Action::requeue(Duration::from_secs(10))
}

fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

async fn reconcile(op: Arc<Operation>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let observed = observe(&ctx, &op, now).await?;
    let plan = decide::decide(&observed, now);
    act(&ctx, &observed, plan, now).await
}

/// Everything the decision needs, read once.
async fn observe(ctx: &Ctx, op: &Operation, now: jiff::Timestamp) -> Result<Observed, Error> {
    let mut o = Observed::of(op.clone(), ctx.config.clone());
    let settled =
        op.metadata.deletion_timestamp.is_some() || phase(op).is_some_and(Phase::is_terminal);
    if settled {
        return Ok(o);
    }
    let ns = op.namespace().unwrap_or_default();
    o.target = Api::<ApplicationInstance>::namespaced(ctx.base.client.clone(), &ns)
        .get_opt(&op.spec.target_ref.name)
        .await?;
    // An empty cache before the first list would let a conflicting Operation through.
    if ctx.peers.wait_until_ready().await.is_ok() {
        o.peers = ctx
            .peers
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .map(|p| (**p).clone())
            .collect();
    }
    for query in decide::prerequisites(&o, now) {
        let found = read(ctx, &query).await?;
        o.prerequisites.push(found);
    }
    if let Some(query) = decide::workload_query(op) {
        o.workload = read(ctx, &query).await?;
    }
    Ok(o)
}

fn dynamic(ctx: &Ctx, ns: &str, ar: &kube::api::ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.base.client.clone(), ns, ar)
}

/// Runs one engine read; results carry their type so engines can parse them.
async fn read(ctx: &Ctx, q: &Query) -> Result<Vec<DynamicObject>, Error> {
    let api = dynamic(ctx, &q.namespace, &q.resource);
    let mut found = match &q.select {
        Select::Name(name) => api.get_opt(name).await?.into_iter().collect(),
        Select::Labels(selector) => {
            api.list(&ListParams::default().labels(selector))
                .await?
                .items
        }
        Select::All => api.list(&ListParams::default()).await?.items,
    };
    for o in &mut found {
        o.types = Some(kube::core::TypeMeta {
            api_version: q.resource.api_version.clone(),
            kind: q.resource.kind.clone(),
        });
    }
    Ok(found)
}

/// Executes the plan.
async fn act(ctx: &Ctx, o: &Observed, plan: Plan, now: jiff::Timestamp) -> Result<Action, Error> {
    let op = &o.op;
    match &plan.decision {
        Decision::Nothing => {}
        Decision::AddFinalizer => set_finalizer(ctx, op, true).await?,
        Decision::Release {
            stop,
            remove_finalizer,
        } => {
            apply_all(ctx, stop).await?;
            if *remove_finalizer {
                set_finalizer(ctx, op, false).await?;
            }
        }
        Decision::Finish { stop, .. } => apply_all(ctx, stop).await?,
        Decision::Start(build) => {
            let outcome = start(ctx, op, build).await?;
            let next = decide::after_start(o, build, outcome, now);
            return finish_pass(ctx, op, next).await;
        }
        Decision::Block(_) | Decision::Wait => {}
    }
    finish_pass(ctx, op, plan).await
}

async fn finish_pass(ctx: &Ctx, op: &Operation, plan: Plan) -> Result<Action, Error> {
    if let Some(update) = plan.status {
        write(ctx, op, update).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

async fn write(ctx: &Ctx, op: &Operation, update: StatusUpdate) -> Result<(), Error> {
    let api: Api<Operation> =
        Api::namespaced(ctx.base.client.clone(), &op.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(&update.status).unwrap_or_default();
    // A merge patch keeps map keys it does not mention: dropped outputs are sent as null.
    if let Some(old) = op.status.as_ref().and_then(|s| s.outputs.as_ref()) {
        let new = update.status.outputs.clone().unwrap_or_default();
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            status["outputs"][key] = serde_json::Value::Null;
        }
    }
    api.patch_status(
        &op.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    publish_transitions(&ctx.base.recorder, &op.object_ref(&()), &update.flipped).await;
    Ok(())
}

async fn set_finalizer(ctx: &Ctx, op: &Operation, present: bool) -> Result<(), Error> {
    let mut finalizers = op.finalizers().to_vec();
    finalizers.retain(|f| f != keys::FINALIZER_OPERATION);
    if present {
        finalizers.push(keys::FINALIZER_OPERATION.into());
    }
    let api: Api<Operation> =
        Api::namespaced(ctx.base.client.clone(), &op.namespace().unwrap_or_default());
    api.patch(
        &op.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": finalizers, "resourceVersion": op.resource_version()}})),
    )
    .await?;
    Ok(())
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    }
}

/// Stops (or removes) a workload; objects already gone count as stopped.
async fn apply_all(ctx: &Ctx, writes: &[Write]) -> Result<(), Error> {
    let bg = DeleteParams::background();
    for w in writes {
        let result = match w {
            Write::Delete {
                resource,
                namespace,
                name,
            } => dynamic(ctx, namespace, resource)
                .delete(name, &bg)
                .await
                .map(|_| ()),
            Write::Patch {
                resource,
                namespace,
                name,
                patch,
            } => dynamic(ctx, namespace, resource)
                .patch(name, &patch_params(), &Patch::Merge(patch))
                .await
                .map(|_| ()),
            Write::DeleteSelected {
                resource,
                namespace,
                selector,
            } => {
                // One by one: the chart's RBAC grants delete, not deletecollection.
                let api = dynamic(ctx, namespace, resource);
                let mut result = Ok(());
                for o in api
                    .list_metadata(&ListParams::default().labels(selector))
                    .await?
                    .items
                {
                    if let Err(e) = api.delete(&o.name_any(), &bg).await
                        && !is_not_found(&e)
                    {
                        result = Err(e);
                    }
                }
                result
            }
            Write::CreateOwned { resource, object } => {
                dynamic(ctx, &object.namespace().unwrap_or_default(), resource)
                    .create(&post_params(), object)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Err(e) if is_not_found(&e) => {}
            other => other?,
        }
    }
    Ok(())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    }
}

/// Runs the start writes in order; the first one that cannot go through ends the start.
async fn start(ctx: &Ctx, op: &Operation, build: &Build) -> Result<StartOutcome, Error> {
    let uid = op.uid().unwrap_or_default();
    let mut written = Vec::new();
    for w in &build.writes {
        match w {
            Write::CreateOwned { resource, object } => {
                let name = object.name_any();
                let ns = object.namespace().unwrap_or_default();
                let api = dynamic(ctx, &ns, resource);
                match api.get_opt(&name).await? {
                    Some(existing)
                        if existing.labels().get(keys::LABEL_OPERATION) != Some(&uid) =>
                    {
                        return Ok(StartOutcome::Taken {
                            kind: resource.kind.clone(),
                            namespace: existing.namespace().unwrap_or_default(),
                            name,
                        });
                    }
                    Some(existing) => written.push(existing),
                    None => match api.create(&post_params(), object).await {
                        Ok(created) => written.push(created),
                        // Raced with ourselves: the next pass sees it and checks the label.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            written.push((**object).clone())
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            return Ok(StartOutcome::NotServed {
                                kind: resource.kind.clone(),
                                api_version: resource.api_version.clone(),
                            });
                        }
                        Err(e) => return Err(e.into()),
                    },
                }
            }
            Write::Patch {
                resource,
                namespace,
                name,
                patch,
            } => {
                let patched = dynamic(ctx, namespace, resource)
                    .patch(name, &patch_params(), &Patch::Merge(patch))
                    .await;
                match patched {
                    Ok(p) => written.push(p),
                    // The apiserver refused the change (schema/CEL): a failure, not a retry.
                    Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                        return Ok(StartOutcome::Refused {
                            kind: resource.kind.clone(),
                            message: s.message,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            other => apply_all(ctx, std::slice::from_ref(other)).await?,
        }
    }
    Ok(StartOutcome::Written(written))
}
