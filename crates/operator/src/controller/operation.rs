//! Operation controller: validate → load target → approval → concurrency → capability →
//! materialize → observe the workload through watches → terminal.
//!
//! Terminal Operations (Succeeded, Failed, Cancelled) are never re-evaluated or
//! rewritten. Gates run only while an Operation is Pending. A failed or timed-out
//! workload is stopped but kept (`status.logsRef` points at it); Jobs go with their
//! `ttlSecondsAfterFinished`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{self, Condition, Desired, FALSE, TRUE, op_reasons as r, types};
use vworkspace_api::keys;
use vworkspace_api::operation::{Engine, EngineRef, LogsRef, Operation, OperationStatus, Phase};

use super::Context;
use super::events::publish_transitions;
use crate::engines::volsync as volsync_engine;
use crate::engines::{
    self, EngineStatus, Template, csi_snapshot, helm, helm_hook, job, params, velero, workflow,
};
use crate::kinds::{argo, snapshot, volsync};
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
            velero_namespace: "velero".into(),
        }
    }
}

/// A workload that vanished this soon after materialization is waited for.
const MISSING_GRACE: Duration = Duration::from_secs(60);
/// Re-check cadence of Blocked Operations (they also react to every change).
const BLOCKED_RECHECK: Duration = Duration::from_secs(30);

struct Ctx {
    base: Arc<Context>,
    config: OperationConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

pub async fn run(ctx: Arc<Context>, config: OperationConfig, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let ops: Api<Operation> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(ops, ctx.primary_watch_config());
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
    let targets: Api<ApplicationInstance> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let peers: Api<Operation> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let labelled = watcher::Config::default().labels(keys::LABEL_OPERATION);
    let jobs: Api<Job> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let backups = velero::api_resource("Backup");
    let restores = velero::api_resource("Restore");
    let velero_ns = config.velero_namespace.clone();
    // Third-party kinds are watched only where their CRDs are served, so a cluster
    // without, say, Argo runs everything else without a failing watch.
    let mut optional: Vec<(Api<DynamicObject>, ApiResource)> = Vec::new();
    for ar in [backups, restores] {
        optional.push((Api::namespaced_with(client.clone(), &velero_ns, &ar), ar));
    }
    for ar in [
        argo::workflow(),
        volsync::replication_source(),
        snapshot::volume_snapshot(),
    ] {
        let api = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        optional.push((api, ar));
    }
    let ctx = Arc::new(Ctx { base: ctx, config });
    let mut controller = controller
        .watches(
            targets,
            watcher::Config::default(),
            move |t: ApplicationInstance| {
                let mut refs = pending_for(t.namespace(), t.name_any(), None);
                refs.extend(upgrades_of(t.namespace(), t.name_any()));
                refs
            },
        )
        .watches(peers, watcher::Config::default(), move |o: Operation| {
            pending_for2(o.namespace(), o.spec.target_ref.name.clone(), o.uid())
        })
        .watches(jobs, labelled.clone(), {
            let by_uid = by_uid.clone();
            move |j| by_uid(j.labels())
        });
    for (api, ar) in optional {
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

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Status being assembled, plus the condition types that flipped.
struct Draft {
    status: OperationStatus,
    generation: Option<i64>,
    now: Time,
    flipped: Vec<String>,
}

impl Draft {
    fn new(op: &Operation) -> Self {
        Draft {
            status: op.status.clone().unwrap_or_default(),
            generation: op.metadata.generation,
            now: now(),
            flipped: Vec::new(),
        }
    }

    fn set(&mut self, t: &str, s: &str, reason: &str, message: impl Into<String>) {
        let change = conditions::set(
            &mut self.status.conditions,
            Desired::new(t, s, reason, message),
            self.generation,
            &self.now,
        );
        if change == conditions::Change::Transitioned {
            self.flipped.push(t.to_string());
        }
    }

    fn blocked(&mut self, reason: &str, message: String) {
        self.status.phase = Some(Phase::Pending);
        self.set(types::BLOCKED, TRUE, reason, message.clone());
        self.set(types::ACCEPTED, FALSE, reason, message);
    }

    fn terminal(&mut self, phase: Phase, reason: &str, message: String) {
        if let Some(outputs) = self.status.outputs.as_mut() {
            helm::public_outputs(outputs);
        }
        self.status.phase = Some(phase);
        self.status.finished_at = Some(self.now.clone());
        let (t, running_msg) = match phase {
            Phase::Succeeded => (types::SUCCEEDED, "completed"),
            Phase::Cancelled => (types::CANCELLED, "cancelled"),
            _ => (types::FAILED, "finished with failure"),
        };
        self.set(t, TRUE, reason, message);
        self.set(types::RUNNING, FALSE, r::ENGINE_NOT_STARTED, running_msg);
        self.set(types::BLOCKED, FALSE, r::UNBLOCKED, "");
    }
}

async fn write(ctx: &Ctx, op: &Operation, draft: Draft) -> Result<(), Error> {
    if op.status.as_ref() == Some(&draft.status) {
        return Ok(());
    }
    let api: Api<Operation> =
        Api::namespaced(ctx.base.client.clone(), &op.namespace().unwrap_or_default());
    let mut status = serde_json::to_value(&draft.status).unwrap_or_default();
    // A merge patch keeps map keys it does not mention: dropped outputs are sent as null.
    if let Some(old) = op.status.as_ref().and_then(|s| s.outputs.as_ref()) {
        let new = draft.status.outputs.clone().unwrap_or_default();
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
    let flipped: Vec<Condition> = draft
        .flipped
        .iter()
        .filter_map(|t| conditions::find(&draft.status.conditions, t).cloned())
        .collect();
    publish_transitions(&ctx.base.recorder, &op.object_ref(&()), &flipped).await;
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

fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

/// Target namespace of the instance (section 0): `spec.release.namespace`, else its own.
fn target_namespace(target: &ApplicationInstance) -> String {
    target
        .spec
        .release
        .as_ref()
        .map(|r| r.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| target.namespace().unwrap_or_default())
}

async fn reconcile(op: Arc<Operation>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let terminal = phase(&op).is_some_and(Phase::is_terminal);
    if op.metadata.deletion_timestamp.is_some() {
        if !terminal {
            stop_workload(&ctx, &op, Stop::Delete).await?;
        }
        if op
            .finalizers()
            .iter()
            .any(|f| f == keys::FINALIZER_OPERATION)
        {
            set_finalizer(&ctx, &op, false).await?;
        }
        return Ok(Action::await_change());
    }
    // Terminal: never re-evaluated, never rewritten.
    if terminal {
        return Ok(Action::await_change());
    }
    if !op
        .finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_OPERATION)
    {
        set_finalizer(&ctx, &op, true).await?;
        return Ok(Action::await_change());
    }
    let mut draft = Draft::new(&op);

    if op.spec.cancel == Some(true) {
        stop_workload(&ctx, &op, Stop::Cancel).await?;
        draft.status.logs_ref = logs_ref(&op);
        draft.terminal(
            Phase::Cancelled,
            r::USER_CANCELLED,
            "cancelled through spec.cancel".into(),
        );
        write(&ctx, &op, draft).await?;
        return Ok(Action::await_change());
    }

    let template = match validate(&op) {
        Ok(t) => t,
        Err((reason, message)) => {
            draft.blocked(reason, message);
            write(&ctx, &op, draft).await?;
            return Ok(Action::requeue(BLOCKED_RECHECK));
        }
    };

    if phase(&op) == Some(Phase::Running) {
        return observe(&ctx, &op, draft).await;
    }

    // Pending (or new): the gates, then materialization.
    let target = match gates(&ctx, &op, template).await? {
        Ok(target) => target,
        Err((reason, message)) => {
            draft.blocked(reason, message);
            write(&ctx, &op, draft).await?;
            return Ok(Action::requeue(BLOCKED_RECHECK));
        }
    };
    match materialize(&ctx, &op, &target).await? {
        Started::Ok {
            engine_ref,
            outputs,
        } => {
            draft.status.engine_ref = Some(engine_ref);
            if outputs.is_some() {
                draft.status.outputs = outputs;
            }
            draft.status.phase = Some(Phase::Running);
            draft.status.started_at = Some(draft.now.clone());
            draft.set(types::BLOCKED, FALSE, r::UNBLOCKED, "");
            draft.set(
                types::ACCEPTED,
                TRUE,
                r::ADMISSION_PASSED,
                format!("template {}", template.name),
            );
            draft.set(types::RUNNING, TRUE, r::ENGINE_STARTED, "workload created");
            write(&ctx, &op, draft).await?;
            Ok(timeout_requeue(&op, Some(&jiff::Timestamp::now())))
        }
        Started::Failed { reason, message } => {
            draft.terminal(Phase::Failed, &reason, message);
            write(&ctx, &op, draft).await?;
            Ok(Action::await_change())
        }
        Started::Blocked { reason, message } => {
            draft.blocked(reason, message);
            write(&ctx, &op, draft).await?;
            Ok(Action::requeue(BLOCKED_RECHECK))
        }
    }
}

/// Spec checks that need no other object.
fn validate(op: &Operation) -> Result<&'static Template, (&'static str, String)> {
    let tr = &op.spec.target_ref;
    if tr.api_version != "apps.vworkspace.io/v1alpha1" || tr.kind != "ApplicationInstance" {
        return Err((
            r::VALIDATION_FAILED,
            "spec.targetRef must be apps.vworkspace.io/v1alpha1 ApplicationInstance".into(),
        ));
    }
    let Some(template) = engines::template(op.spec.r#type, op.spec.engine) else {
        let pairs: Vec<String> = engines::TEMPLATES
            .iter()
            .map(|t| {
                format!(
                    "{}+{}",
                    engines::type_name(t.r#type),
                    engines::engine_name(t.engine)
                )
            })
            .collect();
        return Err((
            r::VALIDATION_FAILED,
            format!(
                "spec.type {} cannot run on spec.engine {} (runnable pairs: {})",
                engines::type_name(op.spec.r#type),
                engines::engine_name(op.spec.engine),
                pairs.join(", ")
            ),
        ));
    };
    params::validate(template, op.spec.parameters.as_ref())
        .map_err(|m| (r::VALIDATION_FAILED, m))?;
    if !template.implemented {
        return Err((
            r::DEPENDENCY_MISSING,
            format!(
                "engine {} ({}) is not implemented in this build",
                engines::engine_name(op.spec.engine),
                template.name
            ),
        ));
    }
    if let Some(t) = op.spec.timeout_seconds
        && t < 1
    {
        return Err((
            r::VALIDATION_FAILED,
            "spec.timeoutSeconds: must be at least 1".into(),
        ));
    }
    Ok(template)
}

async fn load_target(ctx: &Ctx, op: &Operation) -> Result<Option<ApplicationInstance>, Error> {
    Ok(Api::<ApplicationInstance>::namespaced(
        ctx.base.client.clone(),
        &op.namespace().unwrap_or_default(),
    )
    .get_opt(&op.spec.target_ref.name)
    .await?)
}

type Gate = Result<ApplicationInstance, (&'static str, String)>;

async fn gates(ctx: &Ctx, op: &Operation, template: &Template) -> Result<Gate, Error> {
    let ns = op.namespace().unwrap_or_default();
    let Some(target) = load_target(ctx, op).await? else {
        return Ok(Err((
            r::TARGET_NOT_FOUND,
            format!(
                "ApplicationInstance {:?} not found in namespace {ns:?}",
                op.spec.target_ref.name
            ),
        )));
    };
    if let Some(why) = target_not_ready(&target, op.spec.r#type) {
        return Ok(Err((r::TARGET_NOT_READY, why)));
    }
    let required = template.approval_by_default
        || op
            .spec
            .approvals
            .as_ref()
            .and_then(|a| a.required)
            .unwrap_or(false);
    if required {
        let claim = op
            .spec
            .approvals
            .as_ref()
            .and_then(|a| a.claim.as_deref())
            .map(str::trim)
            .unwrap_or("");
        if claim.is_empty() {
            return Ok(Err((
                r::AWAITING_APPROVAL,
                "approval claim required in spec.approvals.claim".into(),
            )));
        }
        let uid = op.uid().unwrap_or_default();
        let op_type = engines::type_name(op.spec.r#type);
        let verified = crate::approval::verify(
            claim,
            &ctx.config.approval_secret,
            &op.name_any(),
            jiff::Timestamp::now().as_second(),
        )
        .and_then(|claims| {
            crate::approval::check_binding(
                &claims,
                &crate::approval::Binding {
                    namespace: &ns,
                    uid: &uid,
                    op_type: &op_type,
                    target: &op.spec.target_ref.name,
                    approved_by: op
                        .spec
                        .approvals
                        .as_ref()
                        .and_then(|a| a.approved_by.as_deref()),
                },
            )
        });
        if let Err(why) = verified {
            return Ok(Err((
                r::AWAITING_APPROVAL,
                format!("invalid approval claim: {why}"),
            )));
        }
    }
    let others = Api::<Operation>::namespaced(ctx.base.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    if let Some(other) = conflict(op, &others) {
        return Ok(Err((
            r::CONFLICTING_OPERATION,
            format!(
                "conflicts with operation {:?} ({})",
                other.name_any(),
                engines::type_name(other.spec.r#type)
            ),
        )));
    }
    let key = format!("{}{}", keys::CAPABILITY_PREFIX, template.verb);
    let engine = engines::engine_name(op.spec.engine);
    let declared = target.annotations().get(&key).map(|v| v.trim().to_string());
    if declared.as_deref() != Some(engine.as_str()) {
        return Ok(Err((
            r::CAPABILITY_MISSING,
            format!(
                "ApplicationInstance {:?} does not declare {key}: {engine} (found {})",
                target.name_any(),
                declared.map_or("nothing".to_string(), |d| format!("{d:?}"))
            ),
        )));
    }
    Ok(Ok(target))
}

/// What materialization did.
enum Started {
    /// The workload exists; `outputs` are recorded right away (helm's revert data).
    Ok {
        engine_ref: EngineRef,
        outputs: Option<BTreeMap<String, String>>,
    },
    /// A failure of the Operation (ownership conflict, hook not found, bad input).
    Failed { reason: String, message: String },
    /// Something the Operation needs is missing but may appear: stays Pending.
    Blocked {
        reason: &'static str,
        message: String,
    },
}

fn failed(reason: &str, message: impl Into<String>) -> Started {
    Started::Failed {
        reason: reason.into(),
        message: message.into(),
    }
}

fn started(kind: &str, name: String, namespace: &str) -> Started {
    Started::Ok {
        engine_ref: EngineRef {
            kind: Some(kind.into()),
            name: Some(name),
            namespace: Some(namespace.into()),
        },
        outputs: None,
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    }
}

fn dynamic(client: Client, ns: &str, ar: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client, ns, ar)
}

/// Creates `obj` unless an object of that name exists; an existing one must carry this
/// Operation's UID (it is ours from an earlier pass), otherwise it belongs to somebody
/// else and the Operation fails instead of taking it over.
async fn create_owned(
    api: &Api<DynamicObject>,
    ar: &ApiResource,
    mut obj: DynamicObject,
    uid: &str,
) -> Result<Result<String, Started>, Error> {
    let name = obj.name_any();
    match api.get_opt(&name).await? {
        Some(existing)
            if existing
                .labels()
                .get(keys::LABEL_OPERATION)
                .map(String::as_str)
                != Some(uid) =>
        {
            Ok(Err(failed(
                r::ENGINE_FAILED,
                format!(
                    "{} {}/{name} exists and belongs to another operation",
                    ar.kind,
                    api_ns(&existing)
                ),
            )))
        }
        Some(_) => Ok(Ok(name)),
        None => {
            obj.types = Some(kube::core::TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            });
            match api.create(&post_params(), &obj).await {
                Ok(_) => Ok(Ok(name)),
                // Raced with ourselves: the next pass sees it and checks the label.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Ok(name)),
                // The kind is not served: its controller (and CRD) is not installed.
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(Err(Started::Blocked {
                    reason: r::ENGINE_NOT_INSTALLED,
                    message: format!(
                        "{} ({}) is not served by this cluster: install its controller and CRDs",
                        ar.kind, ar.api_version
                    ),
                })),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn api_ns(o: &DynamicObject) -> String {
    o.namespace().unwrap_or_default()
}

async fn create_job(api: &Api<Job>, job: &Job, uid: &str) -> Result<Result<String, String>, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    match api.get_opt(&name).await? {
        Some(existing)
            if existing
                .labels()
                .get(keys::LABEL_OPERATION)
                .map(String::as_str)
                != Some(uid) =>
        {
            Ok(Err(format!(
                "Job {ns}/{name} exists and belongs to another operation"
            )))
        }
        Some(_) => Ok(Ok(name)),
        None => match api.create(&post_params(), job).await {
            Ok(_) => Ok(Ok(name)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Ok(name)),
            Err(e) => Err(e.into()),
        },
    }
}

/// Creates the workload (observe what it needs → pure builder → create).
async fn materialize(
    ctx: &Ctx,
    op: &Operation,
    target: &ApplicationInstance,
) -> Result<Started, Error> {
    let target_ns = target_namespace(target);
    let target_ns = target_ns.as_str();
    let uid = op.uid().unwrap_or_default();
    let client = ctx.base.client.clone();
    match op.spec.engine {
        Engine::Job => {
            let job = match job::build(op, target_ns) {
                Ok(j) => j,
                Err(e) => return Ok(failed(r::ENGINE_FAILED, e)),
            };
            let api: Api<Job> = Api::namespaced(client, target_ns);
            Ok(match create_job(&api, &job, &uid).await? {
                Ok(name) => started("Job", name, target_ns),
                Err(e) => failed(r::ENGINE_FAILED, e),
            })
        }
        Engine::Velero => {
            let obj = match velero::build(op, target_ns, &ctx.config.velero_namespace) {
                Ok(o) => o,
                Err(e) => return Ok(failed(r::ENGINE_FAILED, e)),
            };
            let kind = velero::kind_for(op.spec.r#type).unwrap_or("Backup");
            let ar = velero::api_resource(kind);
            let api = dynamic(client, &ctx.config.velero_namespace, &ar);
            Ok(match create_owned(&api, &ar, obj, &uid).await? {
                Ok(name) => started(kind, name, &ctx.config.velero_namespace),
                Err(not_started) => not_started,
            })
        }
        Engine::Workflow => {
            let obj = match workflow::build(op, target_ns) {
                Ok(o) => o,
                Err(e) => return Ok(failed(r::ENGINE_FAILED, e)),
            };
            // A template that does not exist yet may still be installed: wait for it.
            if !workflow::cluster_scope(op) {
                let template = workflow::template_name(op).unwrap_or_default();
                let templates = dynamic(client.clone(), target_ns, &argo::workflow_template());
                if templates.get_opt(&template).await?.is_none() {
                    return Ok(Started::Blocked {
                        reason: r::DEPENDENCY_MISSING,
                        message: format!(
                            "WorkflowTemplate {target_ns}/{template} not found (spec.parameters.workflowTemplate)"
                        ),
                    });
                }
            }
            let ar = argo::workflow();
            let api = dynamic(client, target_ns, &ar);
            Ok(match create_owned(&api, &ar, obj, &uid).await? {
                Ok(name) => started("Workflow", name, target_ns),
                Err(not_started) => not_started,
            })
        }
        Engine::Volsync => {
            let obj = match volsync_engine::build(op, target_ns) {
                Ok(o) => o,
                Err(e) => return Ok(failed(r::ENGINE_FAILED, e)),
            };
            let ar = volsync::replication_source();
            let api = dynamic(client, target_ns, &ar);
            Ok(match create_owned(&api, &ar, obj, &uid).await? {
                Ok(name) => started("ReplicationSource", name, target_ns),
                Err(not_started) => not_started,
            })
        }
        Engine::CsiSnapshot => {
            let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), target_ns)
                .list(&ListParams::default())
                .await?
                .items;
            let names = match csi_snapshot::select_pvcs(op, target, &pvcs) {
                Ok(n) => n,
                Err(e) => return Ok(failed(r::SOURCE_PVC_NOT_FOUND, e)),
            };
            let ar = snapshot::volume_snapshot();
            let api = dynamic(client, target_ns, &ar);
            let mut first = None;
            for obj in csi_snapshot::build(op, target_ns, &names) {
                match create_owned(&api, &ar, obj, &uid).await? {
                    Ok(name) => {
                        first.get_or_insert(name);
                    }
                    Err(not_started) => return Ok(not_started),
                }
            }
            Ok(started(
                "VolumeSnapshot",
                first.unwrap_or_default(),
                target_ns,
            ))
        }
        Engine::HelmHookJob => {
            let Some(release) = helm_hook::release_name(target) else {
                let e = helm_hook::HookError::NoRelease(format!(
                    "ApplicationInstance {:?} has no Helm release (placeholder): no hook to run",
                    target.name_any()
                ));
                return Ok(failed(e.reason(), e.message()));
            };
            let secrets = Api::<Secret>::namespaced(client.clone(), target_ns)
                .list(&ListParams::default().labels(&format!("owner=helm,name={release}")))
                .await?
                .items;
            let Some(secret) = helm_hook::pick_release_secret(&secrets, &release) else {
                return Ok(failed(
                    r::HOOK_NOT_FOUND,
                    format!(
                        "no Helm release storage Secret sh.helm.release.v1.{release}.v<N> in namespace {target_ns}"
                    ),
                ));
            };
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get("release"))
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let hook_name =
                engines::str_param(&engines::parameters(op), "hookName").unwrap_or_default();
            let hook = helm_hook::decode_release(&data)
                .map_err(helm_hook::HookError::Unreadable)
                .and_then(|rel| helm_hook::find_hook(&rel, &hook_name));
            let (hook, events) = match hook {
                Ok(h) => h,
                Err(e) => {
                    return Ok(failed(
                        e.reason(),
                        format!("{}: {}", secret.name_any(), e.message()),
                    ));
                }
            };
            let job = helm_hook::build(op, target_ns, &hook);
            let api: Api<Job> = Api::namespaced(client, target_ns);
            Ok(match create_job(&api, &job, &uid).await? {
                Ok(name) => Started::Ok {
                    engine_ref: EngineRef {
                        kind: Some("Job".into()),
                        name: Some(name),
                        namespace: Some(target_ns.into()),
                    },
                    outputs: Some(BTreeMap::from([
                        ("hookName".to_string(), hook_name),
                        ("hookEvents".to_string(), events.join(",")),
                        ("releaseSecret".to_string(), secret.name_any()),
                    ])),
                },
                Err(e) => failed(r::ENGINE_FAILED, e),
            })
        }
        Engine::Helm => {
            let plan = match helm::plan(op, target) {
                Ok(p) => p,
                Err(e) => return Ok(failed(r::ENGINE_FAILED, e)),
            };
            let api: Api<ApplicationInstance> =
                Api::namespaced(client, &target.namespace().unwrap_or_default());
            let patched = api
                .patch(
                    &target.name_any(),
                    &PatchParams {
                        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
                        ..Default::default()
                    },
                    &Patch::Merge(&plan.patch),
                )
                .await;
            let patched = match patched {
                Ok(p) => p,
                // The apiserver refused the change (schema/CEL): a failure, not a retry.
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    return Ok(failed(
                        r::ENGINE_FAILED,
                        format!("the ApplicationInstance rejected the change: {}", s.message),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            Ok(Started::Ok {
                engine_ref: EngineRef {
                    kind: Some("ApplicationInstance".into()),
                    name: Some(patched.name_any()),
                    namespace: patched.namespace(),
                },
                outputs: Some(helm::start_outputs(&plan, patched.metadata.generation)),
            })
        }
    }
}

fn engine_ref(op: &Operation) -> Option<(String, String, String)> {
    let e = op.status.as_ref()?.engine_ref.as_ref()?;
    Some((e.kind.clone()?, e.name.clone()?, e.namespace.clone()?))
}

fn logs_ref(op: &Operation) -> Option<LogsRef> {
    let (kind, name, namespace) = engine_ref(op)?;
    Some(LogsRef {
        kind: Some(kind),
        name: Some(name),
        namespace: Some(namespace),
        url: None,
    })
}

fn recorded_outputs(op: &Operation) -> BTreeMap<String, String> {
    op.status
        .as_ref()
        .and_then(|s| s.outputs.clone())
        .unwrap_or_default()
}

fn uid_selector(op: &Operation) -> ListParams {
    ListParams::default().labels(&format!(
        "{}={}",
        keys::LABEL_OPERATION,
        op.uid().unwrap_or_default()
    ))
}

/// Reads the workload's state; `None` when it is gone.
async fn workload_status(ctx: &Ctx, op: &Operation) -> Result<Option<EngineStatus>, Error> {
    let Some((kind, name, ns)) = engine_ref(op) else {
        return Ok(None);
    };
    let client = ctx.base.client.clone();
    let get = |ar: ApiResource| {
        let client = client.clone();
        let ns = ns.clone();
        let name = name.clone();
        async move {
            let obj = dynamic(client, &ns, &ar).get_opt(&name).await?;
            Ok::<_, Error>(obj.map(|mut o| {
                o.types = Some(kube::core::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                o
            }))
        }
    };
    Ok(match kind.as_str() {
        "Job" if op.spec.engine == Engine::HelmHookJob => Api::<Job>::namespaced(client, &ns)
            .get_opt(&name)
            .await?
            .map(|j| helm_hook::status(&j)),
        "Job" => Api::<Job>::namespaced(client, &ns)
            .get_opt(&name)
            .await?
            .map(|j| job::status(&j)),
        "Backup" | "Restore" => get(velero::api_resource(&kind))
            .await?
            .map(|o| velero::status(&o)),
        "Workflow" => get(argo::workflow()).await?.map(|o| workflow::status(&o)),
        "ReplicationSource" => get(volsync::replication_source())
            .await?
            .map(|o| volsync_engine::status(&o)),
        "VolumeSnapshot" => {
            let snaps = dynamic(client, &ns, &snapshot::volume_snapshot())
                .list(&uid_selector(op))
                .await?
                .items;
            (!snaps.is_empty()).then(|| csi_snapshot::status(&snaps))
        }
        "ApplicationInstance" => Api::<ApplicationInstance>::namespaced(client, &ns)
            .get_opt(&name)
            .await?
            .map(|t| helm::status(&t, &recorded_outputs(op))),
        _ => None,
    })
}

/// Why a workload is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// `spec.cancel`: stop, keep what has logs.
    Cancel,
    /// `timeoutSeconds` passed: stop, keep everything for inspection.
    Timeout,
    /// The Operation is being deleted: remove it.
    Delete,
}

/// Stops a running workload. Jobs are suspended (pods end, the Job and its logs stay
/// until the TTL), Workflows are terminated (`spec.shutdown`), ReplicationSources are
/// paused; on deletion each is deleted with background propagation. Velero has no pause:
/// its object is deleted. Snapshots are deleted on cancel and deletion, kept on timeout.
/// An Upgrade is reverted on cancel and timeout (if the instance still holds the
/// version it wrote) and left alone on deletion.
async fn stop_workload(ctx: &Ctx, op: &Operation, why: Stop) -> Result<(), Error> {
    let Some((kind, name, ns)) = engine_ref(op) else {
        return Ok(());
    };
    let client = ctx.base.client.clone();
    let merge = |v: serde_json::Value| Patch::Merge(v);
    let pp = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    };
    let bg = DeleteParams::background();
    let result = match (kind.as_str(), why) {
        ("Job", Stop::Delete) => Api::<Job>::namespaced(client, &ns)
            .delete(&name, &bg)
            .await
            .map(|_| ()),
        ("Job", _) => Api::<Job>::namespaced(client, &ns)
            .patch(&name, &pp, &merge(json!({"spec": {"suspend": true}})))
            .await
            .map(|_| ()),
        ("Backup" | "Restore", _) => dynamic(client, &ns, &velero::api_resource(&kind))
            .delete(&name, &bg)
            .await
            .map(|_| ()),
        ("Workflow", Stop::Delete) => dynamic(client, &ns, &argo::workflow())
            .delete(&name, &bg)
            .await
            .map(|_| ()),
        ("Workflow", _) => dynamic(client, &ns, &argo::workflow())
            .patch(
                &name,
                &pp,
                &merge(json!({"spec": {"shutdown": "Terminate"}})),
            )
            .await
            .map(|_| ()),
        ("ReplicationSource", Stop::Delete) => dynamic(client, &ns, &volsync::replication_source())
            .delete(&name, &bg)
            .await
            .map(|_| ()),
        ("ReplicationSource", _) => dynamic(client, &ns, &volsync::replication_source())
            .patch(&name, &pp, &merge(json!({"spec": {"paused": true}})))
            .await
            .map(|_| ()),
        ("VolumeSnapshot", Stop::Timeout) => Ok(()),
        ("VolumeSnapshot", _) => {
            // One by one: the chart's RBAC grants delete, not deletecollection.
            let api = dynamic(client, &ns, &snapshot::volume_snapshot());
            let mut result = Ok(());
            for snap in api.list_metadata(&uid_selector(op)).await?.items {
                if let Err(e) = api.delete(&snap.name_any(), &bg).await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                {
                    result = Err(e);
                }
            }
            result
        }
        ("ApplicationInstance", Stop::Cancel | Stop::Timeout) => {
            let api = Api::<ApplicationInstance>::namespaced(client, &ns);
            match api.get_opt(&name).await? {
                Some(target) => match helm::revert(&target, &recorded_outputs(op)) {
                    Some(patch) => api.patch(&name, &pp, &merge(patch)).await.map(|_| ()),
                    None => Ok(()),
                },
                None => Ok(()),
            }
        }
        _ => Ok(()),
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map_err(Error::from),
    }
}

fn started_at(op: &Operation) -> Option<jiff::Timestamp> {
    op.status.as_ref()?.started_at.as_ref().map(|t| t.0)
}

fn timeout_requeue(op: &Operation, started: Option<&jiff::Timestamp>) -> Action {
    match (op.spec.timeout_seconds, started) {
        (Some(t), Some(s)) => {
            let deadline = s
                .checked_add(jiff::SignedDuration::from_secs(t))
                .unwrap_or(*s);
            let left = jiff::Timestamp::now().duration_until(deadline);
            let secs = left.as_secs().max(0) as u64;
            Action::requeue(Duration::from_secs(secs) + Duration::from_millis(500))
        }
        _ => Action::await_change(),
    }
}

async fn observe(ctx: &Ctx, op: &Operation, mut draft: Draft) -> Result<Action, Error> {
    let started = started_at(op);
    if let (Some(t), Some(s)) = (op.spec.timeout_seconds, started)
        && jiff::Timestamp::now().duration_since(s).as_secs() >= t
    {
        stop_workload(ctx, op, Stop::Timeout).await?;
        draft.status.logs_ref = logs_ref(op);
        draft.terminal(
            Phase::Failed,
            r::TIMEOUT,
            format!("not finished within spec.timeoutSeconds ({t}s); workload stopped"),
        );
        write(ctx, op, draft).await?;
        return Ok(Action::await_change());
    }
    match workload_status(ctx, op).await? {
        None => {
            let young = started.is_some_and(|s| {
                jiff::Timestamp::now().duration_since(s).as_secs() < MISSING_GRACE.as_secs() as i64
            });
            if young {
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            draft.terminal(
                Phase::Failed,
                r::ENGINE_FAILED,
                "the workload disappeared before it finished".into(),
            );
            write(ctx, op, draft).await?;
            Ok(Action::await_change())
        }
        Some(EngineStatus::Running(message)) => {
            draft.set(types::RUNNING, TRUE, r::ENGINE_STARTED, message);
            write(ctx, op, draft).await?;
            Ok(timeout_requeue(op, started.as_ref()))
        }
        Some(EngineStatus::Succeeded { message, outputs }) => {
            draft.status.outputs.get_or_insert_default().extend(outputs);
            draft.terminal(Phase::Succeeded, r::ENGINE_COMPLETED, message);
            write(ctx, op, draft).await?;
            Ok(Action::await_change())
        }
        Some(EngineStatus::Failed {
            reason,
            message,
            outputs,
        }) => {
            draft.status.outputs.get_or_insert_default().extend(outputs);
            draft.status.logs_ref = logs_ref(op);
            draft.terminal(Phase::Failed, &reason, message);
            write(ctx, op, draft).await?;
            Ok(Action::await_change())
        }
    }
}
