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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{self, Condition, Desired, FALSE, TRUE, op_reasons as r, types};
use vworkspace_api::keys;
use vworkspace_api::operation::{
    Engine, EngineRef, LogsRef, Operation, OperationStatus, OperationType, Phase,
};

use super::Context;
use super::events::publish_transitions;
use crate::engines::{self, EngineStatus, Template, job, params, velero};

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
    let by_uid2 = by_uid.clone();
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
    let targets: Api<ApplicationInstance> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let peers: Api<Operation> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let by_uid3 = by_uid.clone();
    let labelled = watcher::Config::default().labels(keys::LABEL_OPERATION);
    let jobs: Api<Job> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let backups = velero::api_resource("Backup");
    let restores = velero::api_resource("Restore");
    let velero_ns = config.velero_namespace.clone();
    let ctx = Arc::new(Ctx { base: ctx, config });
    controller
        .watches(
            targets,
            watcher::Config::default(),
            move |t: ApplicationInstance| pending_for(t.namespace(), t.name_any(), None),
        )
        .watches(peers, watcher::Config::default(), move |o: Operation| {
            pending_for2(o.namespace(), o.spec.target_ref.name.clone(), o.uid())
        })
        .watches(jobs, labelled.clone(), move |j| by_uid(j.labels()))
        .watches_with(
            Api::<DynamicObject>::namespaced_with(client.clone(), &velero_ns, &backups),
            backups.clone(),
            labelled.clone(),
            move |b| by_uid2(b.labels()),
        )
        .watches_with(
            Api::<DynamicObject>::namespaced_with(client.clone(), &velero_ns, &restores),
            restores.clone(),
            labelled,
            move |b| by_uid3(b.labels()),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "operation reconcile failed");
            }
        })
        .await;
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
    let status = serde_json::to_value(&draft.status).unwrap_or_default();
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
            stop_workload(&ctx, &op, true).await?;
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
        stop_workload(&ctx, &op, false).await?;
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
    let target_ns = target_namespace(&target);
    match materialize(&ctx, &op, &target_ns).await? {
        Ok(engine_ref) => {
            draft.status.engine_ref = Some(engine_ref);
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
        Err(message) => {
            draft.terminal(Phase::Failed, r::ENGINE_FAILED, message);
            write(&ctx, &op, draft).await?;
            Ok(Action::await_change())
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

/// Which existing types block an incoming one (same target, same namespace).
pub fn blocked_by(incoming: OperationType) -> &'static [OperationType] {
    match incoming {
        OperationType::Upgrade => &[OperationType::Upgrade],
        OperationType::Restore => &[OperationType::Upgrade, OperationType::Backup],
        OperationType::Backup => &[OperationType::Restore],
        _ => &[],
    }
}

/// The Operation `op` must wait for, if any: a conflicting one that is Running, or
/// Pending and older (first come, first served — two Pending Operations never wait for
/// each other).
pub fn conflict<'a>(op: &Operation, others: &'a [Operation]) -> Option<&'a Operation> {
    let order = |o: &Operation| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.name_any(),
        )
    };
    others.iter().find(|other| {
        other.uid() != op.uid()
            && other.spec.target_ref.name == op.spec.target_ref.name
            && blocked_by(op.spec.r#type).contains(&other.spec.r#type)
            && match phase(other) {
                Some(Phase::Running) => true,
                Some(Phase::Pending) | None => {
                    other.metadata.deletion_timestamp.is_none() && order(other) < order(op)
                }
                Some(_) => false,
            }
    })
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
        if let Err(why) = crate::approval::verify(
            claim,
            &ctx.config.approval_secret,
            &op.name_any(),
            jiff::Timestamp::now().as_second(),
        ) {
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

/// Creates the workload. `Ok(Err(message))` is a failure of the Operation (ownership
/// conflict, bad input the builder found).
async fn materialize(
    ctx: &Ctx,
    op: &Operation,
    target_ns: &str,
) -> Result<Result<EngineRef, String>, Error> {
    let uid = op.uid().unwrap_or_default();
    let client = ctx.base.client.clone();
    let owned_by_us = |labels: &BTreeMap<String, String>| {
        labels.get(keys::LABEL_OPERATION).map(String::as_str) == Some(uid.as_str())
    };
    match op.spec.engine {
        Engine::Job => {
            let job = match job::build(op, target_ns) {
                Ok(j) => j,
                Err(e) => return Ok(Err(e)),
            };
            let name = job.name_any();
            let api: Api<Job> = Api::namespaced(client, target_ns);
            match api.get_opt(&name).await? {
                Some(existing) if !owned_by_us(existing.labels()) => {
                    return Ok(Err(format!(
                        "Job {target_ns}/{name} exists and belongs to another operation"
                    )));
                }
                Some(_) => {}
                None => {
                    api.create(&PostParams::default(), &job).await?;
                }
            }
            Ok(Ok(EngineRef {
                kind: Some("Job".into()),
                name: Some(name),
                namespace: Some(target_ns.into()),
            }))
        }
        Engine::Velero => {
            let obj = match velero::build(op, target_ns, &ctx.config.velero_namespace) {
                Ok(o) => o,
                Err(e) => return Ok(Err(e)),
            };
            let kind = velero::kind_for(op.spec.r#type).unwrap_or("Backup");
            let ar = velero::api_resource(kind);
            let name = obj.name_any();
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, &ctx.config.velero_namespace, &ar);
            match api.get_opt(&name).await? {
                Some(existing) if !owned_by_us(existing.labels()) => {
                    return Ok(Err(format!(
                        "Velero {kind} {}/{name} exists and belongs to another operation",
                        ctx.config.velero_namespace
                    )));
                }
                Some(_) => {}
                None => {
                    let mut obj = obj;
                    obj.types = Some(kube::core::TypeMeta {
                        api_version: "velero.io/v1".into(),
                        kind: kind.into(),
                    });
                    api.create(&PostParams::default(), &obj).await?;
                }
            }
            Ok(Ok(EngineRef {
                kind: Some(kind.into()),
                name: Some(name),
                namespace: Some(ctx.config.velero_namespace.clone()),
            }))
        }
        other => Ok(Err(format!(
            "engine {} is not implemented in this build",
            engines::engine_name(other)
        ))),
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

/// Reads the workload's state; `None` when it is gone.
async fn workload_status(ctx: &Ctx, op: &Operation) -> Result<Option<EngineStatus>, Error> {
    let Some((kind, name, ns)) = engine_ref(op) else {
        return Ok(None);
    };
    let client = ctx.base.client.clone();
    Ok(match kind.as_str() {
        "Job" => Api::<Job>::namespaced(client, &ns)
            .get_opt(&name)
            .await?
            .map(|j| job::status(&j)),
        "Backup" | "Restore" => {
            let ar = velero::api_resource(&kind);
            Api::<DynamicObject>::namespaced_with(client, &ns, &ar)
                .get_opt(&name)
                .await?
                .map(|mut o| {
                    o.types = Some(kube::core::TypeMeta {
                        api_version: "velero.io/v1".into(),
                        kind: kind.clone(),
                    });
                    velero::status(&o)
                })
        }
        _ => None,
    })
}

/// Stops a running workload. Jobs are suspended (their pods end, the Job and its logs
/// stay until the TTL) unless `delete` (the Operation itself is being deleted: background
/// propagation so pods go too). Velero objects are deleted: Velero has no pause.
async fn stop_workload(ctx: &Ctx, op: &Operation, delete: bool) -> Result<(), Error> {
    let Some((kind, name, ns)) = engine_ref(op) else {
        return Ok(());
    };
    let client = ctx.base.client.clone();
    let result = match kind.as_str() {
        "Job" if delete => Api::<Job>::namespaced(client, &ns)
            .delete(&name, &DeleteParams::background())
            .await
            .map(|_| ()),
        "Job" => Api::<Job>::namespaced(client, &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": true}})),
            )
            .await
            .map(|_| ()),
        "Backup" | "Restore" => {
            let ar = velero::api_resource(&kind);
            Api::<DynamicObject>::namespaced_with(client, &ns, &ar)
                .delete(&name, &DeleteParams::background())
                .await
                .map(|_| ())
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
        stop_workload(ctx, op, false).await?;
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
            draft.status.outputs = Some(outputs);
            draft.terminal(Phase::Succeeded, r::ENGINE_COMPLETED, message);
            write(ctx, op, draft).await?;
            Ok(Action::await_change())
        }
        Some(EngineStatus::Failed {
            reason,
            message,
            outputs,
        }) => {
            draft.status.outputs = Some(outputs);
            draft.status.logs_ref = logs_ref(op);
            draft.terminal(Phase::Failed, &reason, message);
            write(ctx, op, draft).await?;
            Ok(Action::await_change())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, t: &str, phase: Option<&str>, created: &str) -> Operation {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": "n", "uid": name, "creationTimestamp": created},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                     "type": t, "engine": "velero"}
        });
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn concurrency_matrix_and_no_mutual_deadlock() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:00:01Z";
        // Restore blocked by a running Backup; Backup by a running Restore; Upgrade by Upgrade.
        let running_backup = op("b", "Backup", Some("Running"), t0);
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                std::slice::from_ref(&running_backup)
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                &[op("r", "Restore", Some("Running"), t0)]
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("u2", "Upgrade", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_some()
        );
        // Not blocked: Backup by Backup or Upgrade, anything by terminal ones, RunCommand never.
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                std::slice::from_ref(&running_backup)
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                &[op("b", "Backup", Some("Succeeded"), t0)]
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("c", "RunCommand", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_none()
        );
        // Two Pending conflicting Operations: only the younger waits.
        let older = op("b", "Backup", Some("Pending"), t0);
        let younger = op("r", "Restore", Some("Pending"), t1);
        assert!(conflict(&younger, std::slice::from_ref(&older)).is_some());
        assert!(conflict(&older, std::slice::from_ref(&younger)).is_none());
    }
}
