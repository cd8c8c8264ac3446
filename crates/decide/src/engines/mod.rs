//! Operation engines: which type/engine pairs run, what parameters each accepts, and the
//! pure builders and status mappers of each engine (one module per engine). No client in
//! scope; `controller::operation` observes, calls these, and applies the results.

pub mod csi_snapshot;
pub mod engine;
pub mod helm;
pub mod helm_hook;
pub mod job;
pub mod params;
pub mod velero;
pub mod volsync;
pub mod workflow;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube_core::{Resource, ResourceExt};
use serde_json::Value;
use vworkspace_api::keys;
use vworkspace_api::operation::{Engine as EngineId, Operation, OperationType};

pub use engine::{
    Build, BuildError, Engine, Input, Query, Scope, Select, Settings, Stop, Workload, Write,
};

/// The only ServiceAccount Job/Workflow pods may run as.
pub const RUNNER_SERVICE_ACCOUNT: &str = "vworkspace-operation-runner";

/// A runnable type/engine pair, and the engine that runs it.
pub struct Template {
    /// Also the RBAC profile name.
    pub name: &'static str,
    pub r#type: OperationType,
    pub engine: EngineId,
    /// Capability annotation verb on the target (`ops.vworkspace.io/<verb>: <engine>`).
    pub verb: &'static str,
    pub approval_by_default: bool,
    /// Whether this build can run it.
    pub implemented: bool,
    /// The engine's implementation (the registry: one per `engine`).
    pub runner: &'static dyn Engine,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Template {}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "backup.velero",
        r#type: OperationType::Backup,
        engine: EngineId::Velero,
        verb: "backup",
        approval_by_default: false,
        implemented: true,
        runner: &velero::VeleroEngine,
    },
    Template {
        name: "restore.velero",
        r#type: OperationType::Restore,
        engine: EngineId::Velero,
        verb: "restore",
        approval_by_default: true,
        implemented: true,
        runner: &velero::VeleroEngine,
    },
    Template {
        name: "runCommand.job",
        r#type: OperationType::RunCommand,
        engine: EngineId::Job,
        verb: "runcommand",
        approval_by_default: false,
        implemented: true,
        runner: &job::JobEngine,
    },
    Template {
        name: "upgrade.helm",
        r#type: OperationType::Upgrade,
        engine: EngineId::Helm,
        verb: "upgrade",
        approval_by_default: false,
        implemented: true,
        runner: &helm::HelmEngine,
    },
    Template {
        name: "migration.helmHookJob",
        r#type: OperationType::Migration,
        engine: EngineId::HelmHookJob,
        verb: "migration",
        approval_by_default: false,
        implemented: true,
        runner: &helm_hook::HelmHookEngine,
    },
    Template {
        name: "runbook.workflow",
        r#type: OperationType::Runbook,
        engine: EngineId::Workflow,
        verb: "runbook",
        approval_by_default: false,
        implemented: true,
        runner: &workflow::WorkflowEngine,
    },
    Template {
        name: "backup.volsync",
        r#type: OperationType::Backup,
        engine: EngineId::Volsync,
        // Not `backup`: a target may declare one engine per verb, and `backup` is
        // normally Velero's.
        verb: "replicate",
        approval_by_default: false,
        implemented: true,
        runner: &volsync::VolsyncEngine,
    },
    Template {
        name: "backup.csiSnapshot",
        r#type: OperationType::Backup,
        engine: EngineId::CsiSnapshot,
        verb: "snapshot",
        approval_by_default: false,
        implemented: true,
        runner: &csi_snapshot::CsiSnapshotEngine,
    },
];

pub fn template(t: OperationType, e: EngineId) -> Option<&'static Template> {
    TEMPLATES.iter().find(|x| x.r#type == t && x.engine == e)
}

/// The implementation of engine `e`.
pub fn engine(e: EngineId) -> Option<&'static dyn Engine> {
    TEMPLATES.iter().find(|t| t.engine == e).map(|t| t.runner)
}

/// Every API resource the engines' workloads are made of, once each.
pub fn workload_resources(settings: &Settings) -> Vec<(kube_core::ApiResource, Scope)> {
    let mut out: Vec<(kube_core::ApiResource, Scope)> = Vec::new();
    for t in TEMPLATES {
        for (ar, scope) in t.runner.resources(settings) {
            if !out.iter().any(|(a, s)| a == &ar && s == &scope) {
                out.push((ar, scope));
            }
        }
    }
    out
}

pub fn engine_name(e: EngineId) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

pub fn type_name(t: OperationType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Workload name: `<namespace>--<name>` when it fits in 63 characters, else `op-<uid>`.
/// Unique per Operation even in a shared namespace such as Velero's.
pub fn workload_name(op: &Operation) -> String {
    let ns = op.namespace().unwrap_or_default();
    let candidate = format!("{ns}--{}", op.name_any());
    if candidate.len() <= 63 {
        candidate
    } else {
        format!("op-{}", op.uid().unwrap_or_default())
    }
}

/// Labels on every workload: managed-by, the Operation UID (ownership proof) and the
/// target instance.
pub fn workload_labels(op: &Operation) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            keys::LABEL_MANAGED_BY.to_string(),
            keys::MANAGED_BY_OPERATOR.to_string(),
        ),
        (
            keys::LABEL_OPERATION.to_string(),
            op.uid().unwrap_or_default(),
        ),
        (
            keys::LABEL_APPLICATION_INSTANCE.to_string(),
            op.spec.target_ref.name.clone(),
        ),
    ])
}

/// A plain (non-controller) owner reference to the Operation when the workload lives in
/// the Operation's namespace (cross-namespace owners are invalid): the garbage collector
/// removes the workload with the Operation.
pub fn owner_refs(op: &Operation, workload_ns: &str) -> Option<Vec<OwnerReference>> {
    (op.namespace().as_deref() == Some(workload_ns))
        .then(|| op.controller_owner_ref(&()))
        .flatten()
        .map(|mut o| {
            o.controller = None;
            vec![o]
        })
}

/// `spec.parameters` as an object (absent = empty).
pub fn parameters(op: &Operation) -> serde_json::Map<String, Value> {
    match &op.spec.parameters {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    }
}

/// A string parameter, trimmed, if present and non-empty.
pub fn str_param(p: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    p.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// A DNS-1123 name for a child: `base` when it fits in `max` characters, else `fallback`.
pub fn fit_name(base: String, max: usize, fallback: impl FnOnce() -> String) -> String {
    if base.len() <= max { base } else { fallback() }
}

/// What an engine says about its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineStatus {
    Running(String),
    Succeeded {
        message: String,
        outputs: BTreeMap<String, String>,
    },
    Failed {
        reason: String,
        message: String,
        outputs: BTreeMap<String, String>,
    },
}

impl EngineStatus {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, EngineStatus::Running(_))
    }
}

/// An Operation in namespace `team-a` against ApplicationInstance `wiki`, for the engines'
/// unit tests.
#[cfg(test)]
pub(crate) fn test_operation(
    name: &str,
    uid: &str,
    type_: &str,
    engine: &str,
    params: serde_json::Value,
) -> Operation {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": name, "namespace": "team-a", "uid": uid},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                 "type": type_, "engine": engine, "parameters": params}
    }))
    .expect("a valid test Operation")
}
