//! Operation engines: which type/engine pairs run, what parameters each accepts, and the
//! pure builders and status mappers of each engine (one module per engine). No client in
//! scope; `controller::operation` observes, calls these, and applies the results.

pub mod job;
pub mod params;
pub mod velero;

use std::collections::BTreeMap;

use kube::ResourceExt;
use vworkspace_api::operation::{Engine, Operation, OperationType};

/// The only ServiceAccount Job/Workflow pods may run as.
pub const RUNNER_SERVICE_ACCOUNT: &str = "vworkspace-operation-runner";

/// A runnable type/engine pair.
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    /// Also the RBAC profile name.
    pub name: &'static str,
    pub r#type: OperationType,
    pub engine: Engine,
    /// Capability annotation verb on the target (`ops.vworkspace.io/<verb>: <engine>`).
    pub verb: &'static str,
    pub approval_by_default: bool,
    /// Whether this build can run it.
    pub implemented: bool,
}

pub const TEMPLATES: &[Template] = &[
    Template {
        name: "backup.velero",
        r#type: OperationType::Backup,
        engine: Engine::Velero,
        verb: "backup",
        approval_by_default: false,
        implemented: true,
    },
    Template {
        name: "restore.velero",
        r#type: OperationType::Restore,
        engine: Engine::Velero,
        verb: "restore",
        approval_by_default: true,
        implemented: true,
    },
    Template {
        name: "runCommand.job",
        r#type: OperationType::RunCommand,
        engine: Engine::Job,
        verb: "runcommand",
        approval_by_default: false,
        implemented: true,
    },
    Template {
        name: "upgrade.helm",
        r#type: OperationType::Upgrade,
        engine: Engine::Helm,
        verb: "upgrade",
        approval_by_default: false,
        implemented: false,
    },
    Template {
        name: "migration.helmHookJob",
        r#type: OperationType::Migration,
        engine: Engine::HelmHookJob,
        verb: "migration",
        approval_by_default: false,
        implemented: false,
    },
    Template {
        name: "runbook.workflow",
        r#type: OperationType::Runbook,
        engine: Engine::Workflow,
        verb: "runbook",
        approval_by_default: false,
        implemented: false,
    },
    Template {
        name: "backup.volsync",
        r#type: OperationType::Backup,
        engine: Engine::Volsync,
        verb: "backup",
        approval_by_default: false,
        implemented: false,
    },
    Template {
        name: "backup.csiSnapshot",
        r#type: OperationType::Backup,
        engine: Engine::CsiSnapshot,
        verb: "backup",
        approval_by_default: false,
        implemented: false,
    },
];

pub fn template(t: OperationType, e: Engine) -> Option<&'static Template> {
    TEMPLATES.iter().find(|x| x.r#type == t && x.engine == e)
}

pub fn engine_name(e: Engine) -> String {
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
