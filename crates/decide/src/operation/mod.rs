//! Decisions of the Operation controller: `decide(&Observed, now) -> Plan`.
//!
//! Terminal Operations (Succeeded, Failed, Cancelled) are never re-evaluated or
//! rewritten. Gates run only while an Operation is Pending. A failed or timed-out
//! workload is stopped but kept (`status.logsRef` points at it); Jobs go with their
//! `ttlSecondsAfterFinished`.
//!
//! The controller observes ([`Observed`]), asks [`decide`] for a [`Plan`] and executes
//! it. Starting a workload is the one step whose result matters to the status: the
//! controller reports how the writes went ([`StartOutcome`]) and [`after_start`] decides
//! what that means.

pub mod draft;
pub mod gates;

#[cfg(test)]
mod tests;

use std::time::Duration;

use kube_core::{DynamicObject, ResourceExt};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{FALSE, TRUE, Time, op_reasons as r, types};
use vworkspace_api::keys;
use vworkspace_api::operation::{LogsRef, Operation, OperationStatus, Phase};

pub use draft::Draft;
pub use gates::{Block, admit, blocked_by, conflict, target_not_ready, validate};

use crate::engines::{self, Build, EngineStatus, Input, Query, Settings, Stop, Workload, Write};

/// A workload that vanished this soon after materialization is waited for.
pub const MISSING_GRACE: Duration = Duration::from_secs(60);
/// How often a young missing workload is looked for again.
pub const MISSING_RECHECK: Duration = Duration::from_secs(5);
/// Re-check cadence of Blocked Operations (they also react to every change).
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(30);
/// Longest wait of a Running Operation between passes. Its workload's watch events wake
/// it; this bounds the wait when one is missed. Seen once in the crash test: Operations
/// Running when the operator restarted, whose Job completed within about 2 s of the start,
/// were never reconciled again (cause not found; docs/reliability.md). A pass that finds
/// nothing new reads the target and the workload and writes nothing.
pub const RUNNING_RECHECK: Duration = Duration::from_secs(60);

/// Settings of the Operation controller (CLI flags in main.rs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// HMAC key of `vws1` approval claims; empty rejects every claim.
    pub approval_secret: String,
    pub settings: Settings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("approval_secret", &"<redacted>")
            .field("settings", &self.settings)
            .finish()
    }
}

/// Everything one pass decides on.
#[derive(Clone)]
pub struct Observed {
    pub op: Operation,
    /// The target instance (`spec.targetRef.name` in the Operation's namespace); `None`
    /// when it does not exist or was not read.
    pub target: Option<ApplicationInstance>,
    /// The other Operations of the namespace (from the controller's cache).
    pub peers: Vec<Operation>,
    /// Results of the engine's [`prerequisites`] reads, in order.
    pub prerequisites: Vec<Vec<DynamicObject>>,
    /// Result of the [`workload_query`] read (empty: gone or not started).
    pub workload: Vec<DynamicObject>,
    pub config: Config,
}

impl Observed {
    /// An Operation with nothing else observed yet.
    pub fn of(op: Operation, config: Config) -> Self {
        Observed {
            op,
            target: None,
            peers: Vec::new(),
            prerequisites: Vec::new(),
            workload: Vec::new(),
            config,
        }
    }
}

/// What a pass does.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Terminal, or gone without a finalizer: nothing.
    Nothing,
    AddFinalizer,
    /// Being deleted: stop the workload, then let the Operation go.
    Release {
        stop: Vec<Write>,
        remove_finalizer: bool,
    },
    /// Stays Pending (the status says why).
    Block(Block),
    /// Create the workload; report the outcome to [`after_start`].
    Start(Build),
    /// Still running (the status carries the engine's message), or waiting for a
    /// workload that may still appear.
    Wait,
    /// The terminal transition, after stopping the workload.
    Finish {
        phase: Phase,
        reason: String,
        stop: Vec<Write>,
    },
}

/// The result of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub decision: Decision,
    /// The status to write, when it changed.
    pub status: Option<OperationStatus>,
    /// `None`: wait for a change.
    pub requeue: Option<Duration>,
}

impl Plan {
    fn only(decision: Decision) -> Self {
        Plan {
            decision,
            status: None,
            requeue: None,
        }
    }
}

fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

fn has_finalizer(op: &Operation) -> bool {
    op.finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_OPERATION)
}

/// Target namespace of the instance (section 0): `spec.release.namespace`, else its own.
pub fn target_namespace(target: &ApplicationInstance) -> String {
    target
        .spec
        .release
        .as_ref()
        .map(|r| r.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| target.namespace().unwrap_or_default())
}

fn logs_ref(op: &Operation) -> Option<LogsRef> {
    let w = Workload::of(op)?;
    Some(LogsRef {
        kind: Some(w.kind),
        name: Some(w.name),
        namespace: Some(w.namespace),
        url: None,
    })
}

fn started_at(op: &Operation) -> Option<jiff::Timestamp> {
    op.status.as_ref()?.started_at.as_ref().map(|t| t.0)
}

/// When a Running Operation looks again: when `spec.timeoutSeconds` is due, and at the
/// latest after [`RUNNING_RECHECK`].
fn running_requeue(
    op: &Operation,
    started: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<Duration> {
    Some(timeout_requeue(op, started, now).map_or(RUNNING_RECHECK, |d| d.min(RUNNING_RECHECK)))
}

/// When to look again so `spec.timeoutSeconds` is enforced on time.
fn timeout_requeue(
    op: &Operation,
    started: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let (t, s) = (op.spec.timeout_seconds?, started?);
    let deadline = s
        .checked_add(jiff::SignedDuration::from_secs(t))
        .unwrap_or(s);
    let secs = now.duration_until(deadline).as_secs().max(0) as u64;
    Some(Duration::from_secs(secs) + Duration::from_millis(500))
}

/// The writes that stop the Operation's workload, if it has one.
fn stop_writes(o: &Observed, why: Stop) -> Vec<Write> {
    let Some(workload) = Workload::of(&o.op) else {
        return Vec::new();
    };
    engines::engine(o.op.spec.engine)
        .map(|e| e.stop(&o.op, &workload, why, o.target.as_ref()))
        .unwrap_or_default()
}

/// The reads the engine needs before it can build: asked only for a Pending Operation
/// that passed every gate (with `target`, `peers` and `config` observed), so a blocked
/// one costs no reads.
pub fn prerequisites(o: &Observed, now: jiff::Timestamp) -> Vec<Query> {
    let op = &o.op;
    let pending = !matches!(phase(op), Some(p) if p == Phase::Running || p.is_terminal());
    let starts = pending && has_finalizer(op) && op.spec.cancel != Some(true);
    if op.metadata.deletion_timestamp.is_some() || !starts {
        return Vec::new();
    }
    let Ok(template) = validate(op) else {
        return Vec::new();
    };
    let admitted = admit(
        op,
        template,
        o.target.as_ref(),
        &o.peers,
        &o.config.approval_secret,
        now.as_second(),
    );
    let (Ok(target), Some(engine)) = (admitted, engines::engine(op.spec.engine)) else {
        return Vec::new();
    };
    let ns = target_namespace(target);
    engine.prerequisites(&Input {
        op,
        target,
        target_ns: &ns,
        settings: &o.config.settings,
    })
}

/// The read that observes a Running Operation's workload.
pub fn workload_query(op: &Operation) -> Option<Query> {
    if phase(op) != Some(Phase::Running) || op.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let workload = Workload::of(op)?;
    engines::engine(op.spec.engine).map(|e| e.observe(op, &workload))
}

/// One pass over an observed Operation.
pub fn decide(o: &Observed, now: jiff::Timestamp) -> Plan {
    let op = &o.op;
    let terminal = phase(op).is_some_and(Phase::is_terminal);
    if op.metadata.deletion_timestamp.is_some() {
        let stop = if terminal {
            Vec::new()
        } else {
            stop_writes(o, Stop::Delete)
        };
        return Plan::only(Decision::Release {
            stop,
            remove_finalizer: has_finalizer(op),
        });
    }
    // Terminal: never re-evaluated, never rewritten.
    if terminal {
        return Plan::only(Decision::Nothing);
    }
    if !has_finalizer(op) {
        return Plan::only(Decision::AddFinalizer);
    }
    let mut draft = Draft::new(op, Time(now));
    if op.spec.cancel == Some(true) {
        draft.status.logs_ref = logs_ref(op);
        draft.terminal(
            Phase::Cancelled,
            r::USER_CANCELLED,
            "cancelled through spec.cancel".into(),
        );
        return finish(
            draft,
            Phase::Cancelled,
            r::USER_CANCELLED,
            stop_writes(o, Stop::Cancel),
        );
    }
    let template = match validate(op) {
        Ok(t) => t,
        Err(b) => return blocked(draft, b),
    };
    if phase(op) == Some(Phase::Running) {
        return running(o, draft, now);
    }
    // Pending (or new): the gates, then the engine builds the workload.
    let target = match admit(
        op,
        template,
        o.target.as_ref(),
        &o.peers,
        &o.config.approval_secret,
        now.as_second(),
    ) {
        Ok(t) => t,
        Err(b) => return blocked(draft, b),
    };
    let Some(engine) = engines::engine(op.spec.engine) else {
        // Every template names a registered engine; kept total all the same.
        return blocked(
            draft,
            Block {
                reason: r::DEPENDENCY_MISSING,
                message: format!(
                    "engine {} is not registered",
                    engines::engine_name(op.spec.engine)
                ),
            },
        );
    };
    let ns = target_namespace(target);
    let input = Input {
        op,
        target,
        target_ns: &ns,
        settings: &o.config.settings,
    };
    match engine.build(&input, &o.prerequisites) {
        Ok(build) => Plan::only(Decision::Start(build)),
        Err(e) if e.waits() => blocked(
            draft,
            Block {
                reason: e.reason(),
                message: e.to_string(),
            },
        ),
        Err(e) => {
            draft.terminal(Phase::Failed, e.reason(), e.to_string());
            finish(draft, Phase::Failed, e.reason(), Vec::new())
        }
    }
}

fn blocked(mut draft: Draft, b: Block) -> Plan {
    draft.blocked(b.reason, b.message.clone());
    Plan {
        decision: Decision::Block(b),
        status: draft.finish(),
        requeue: Some(BLOCKED_RECHECK),
    }
}

fn finish(draft: Draft, phase: Phase, reason: &str, stop: Vec<Write>) -> Plan {
    Plan {
        decision: Decision::Finish {
            phase,
            reason: reason.into(),
            stop,
        },
        status: draft.finish(),
        requeue: None,
    }
}

/// A Running Operation: timeout, then what the engine says about its workload.
fn running(o: &Observed, mut draft: Draft, now: jiff::Timestamp) -> Plan {
    let op = &o.op;
    let started = started_at(op);
    if let (Some(t), Some(s)) = (op.spec.timeout_seconds, started)
        && now.duration_since(s).as_secs() >= t
    {
        draft.status.logs_ref = logs_ref(op);
        draft.terminal(
            Phase::Failed,
            r::TIMEOUT,
            format!("not finished within spec.timeoutSeconds ({t}s); workload stopped"),
        );
        return finish(
            draft,
            Phase::Failed,
            r::TIMEOUT,
            stop_writes(o, Stop::Timeout),
        );
    }
    let status = engines::engine(op.spec.engine).and_then(|e| {
        Workload::of(op)?;
        e.status(op, &o.workload)
    });
    match status {
        None => {
            let young = started
                .is_some_and(|s| now.duration_since(s).as_secs() < MISSING_GRACE.as_secs() as i64);
            if young {
                return Plan {
                    decision: Decision::Wait,
                    status: None,
                    requeue: Some(MISSING_RECHECK),
                };
            }
            draft.terminal(
                Phase::Failed,
                r::ENGINE_FAILED,
                "the workload disappeared before it finished".into(),
            );
            finish(draft, Phase::Failed, r::ENGINE_FAILED, Vec::new())
        }
        Some(EngineStatus::Running(message)) => {
            draft.set(types::RUNNING, TRUE, r::ENGINE_STARTED, message);
            Plan {
                decision: Decision::Wait,
                status: draft.finish(),
                requeue: running_requeue(op, started, now),
            }
        }
        Some(EngineStatus::Succeeded { message, outputs }) => {
            draft.status.outputs.get_or_insert_default().extend(outputs);
            draft.terminal(Phase::Succeeded, r::ENGINE_COMPLETED, message);
            finish(draft, Phase::Succeeded, r::ENGINE_COMPLETED, Vec::new())
        }
        Some(EngineStatus::Failed {
            reason,
            message,
            outputs,
        }) => {
            draft.status.outputs.get_or_insert_default().extend(outputs);
            draft.status.logs_ref = logs_ref(op);
            draft.terminal(Phase::Failed, &reason, message);
            finish(draft, Phase::Failed, &reason, Vec::new())
        }
    }
}

/// How the start writes went.
#[derive(Clone, Debug, PartialEq)]
pub enum StartOutcome {
    /// Every write went through; the objects the apiserver returned, in order.
    Written(Vec<DynamicObject>),
    /// An object of that name exists and carries another Operation's UID.
    Taken {
        kind: String,
        namespace: String,
        name: String,
    },
    /// The kind is not served: its controller (and CRDs) are not installed.
    NotServed { kind: String, api_version: String },
    /// The apiserver refused a patch (schema or CEL validation).
    Refused { kind: String, message: String },
}

/// The status after a start attempt.
pub fn after_start(
    o: &Observed,
    build: &Build,
    outcome: StartOutcome,
    now: jiff::Timestamp,
) -> Plan {
    let op = &o.op;
    let mut draft = Draft::new(op, Time(now));
    let fail = |mut draft: Draft, message: String| {
        draft.terminal(Phase::Failed, r::ENGINE_FAILED, message);
        finish(draft, Phase::Failed, r::ENGINE_FAILED, Vec::new())
    };
    match outcome {
        StartOutcome::Written(written) => {
            let template = validate(op).map(|t| t.name).unwrap_or_default();
            draft.status.engine_ref = Some(build.engine_ref.clone());
            let outputs = engines::engine(op.spec.engine).and_then(|e| e.started(build, &written));
            if outputs.is_some() {
                draft.status.outputs = outputs;
            }
            draft.status.phase = Some(Phase::Running);
            draft.status.started_at = Some(Time(now));
            draft.set(types::BLOCKED, FALSE, r::UNBLOCKED, "");
            draft.set(
                types::ACCEPTED,
                TRUE,
                r::ADMISSION_PASSED,
                format!("template {template}"),
            );
            draft.set(types::RUNNING, TRUE, r::ENGINE_STARTED, "workload created");
            Plan {
                decision: Decision::Wait,
                status: draft.finish(),
                requeue: running_requeue(op, Some(now), now),
            }
        }
        StartOutcome::Taken {
            kind,
            namespace,
            name,
        } => fail(
            draft,
            format!("{kind} {namespace}/{name} exists and belongs to another operation"),
        ),
        StartOutcome::Refused { kind, message } => {
            fail(draft, format!("the {kind} rejected the change: {message}"))
        }
        StartOutcome::NotServed { kind, api_version } => {
            let b = gates::not_served(&kind, &api_version);
            draft.blocked(b.reason, b.message.clone());
            Plan {
                decision: Decision::Block(b),
                status: draft.finish(),
                requeue: Some(BLOCKED_RECHECK),
            }
        }
    }
}
