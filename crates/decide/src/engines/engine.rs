//! The [`Engine`] trait: what every Operation engine says about its workload, in a small
//! vocabulary of reads ([`Query`]) and writes ([`Write`]) that the operator executes.
//!
//! An engine never talks to the apiserver. It names the objects it needs read before it
//! can build (its prerequisites), builds the writes that start its workload, names the
//! read that observes the workload, maps what was read onto an [`EngineStatus`], and
//! builds the writes that stop it. The operator runs the reads and writes generically,
//! so adding an engine touches its own module and the template table only.

use std::collections::BTreeMap;

use kube_core::{ApiResource, DynamicObject, Resource};
use serde_json::Value;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::op_reasons as r;
use vworkspace_api::operation::{EngineRef, Operation};

use super::EngineStatus;

/// Which objects to read.
#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    /// The object of this name (zero or one result).
    Name(String),
    /// Every object matching this label selector.
    Labels(String),
    /// Every object.
    All,
}

/// One read: objects of `resource` in `namespace`.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub resource: ApiResource,
    pub namespace: String,
    pub select: Select,
}

impl Query {
    pub fn named(resource: ApiResource, namespace: &str, name: &str) -> Self {
        Query {
            resource,
            namespace: namespace.into(),
            select: Select::Name(name.into()),
        }
    }

    pub fn labelled(resource: ApiResource, namespace: &str, selector: String) -> Self {
        Query {
            resource,
            namespace: namespace.into(),
            select: Select::Labels(selector),
        }
    }

    pub fn all(resource: ApiResource, namespace: &str) -> Self {
        Query {
            resource,
            namespace: namespace.into(),
            select: Select::All,
        }
    }
}

/// One write. A write on an object that is gone counts as done.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create `object` unless one of that name exists; an existing one must carry the
    /// Operation's UID label (it is ours from an earlier pass), otherwise it belongs to
    /// somebody else and the Operation fails instead of taking it over.
    CreateOwned {
        resource: ApiResource,
        object: Box<DynamicObject>,
    },
    /// JSON merge patch with the operator's field manager.
    Patch {
        resource: ApiResource,
        namespace: String,
        name: String,
        patch: Value,
    },
    /// Delete with background propagation.
    Delete {
        resource: ApiResource,
        namespace: String,
        name: String,
    },
    /// Delete every object matching the selector, one by one (the chart's RBAC grants
    /// delete, not deletecollection).
    DeleteSelected {
        resource: ApiResource,
        namespace: String,
        selector: String,
    },
}

impl Write {
    /// Create `obj` (a typed object such as a Job) as a dynamic object.
    pub fn create<K>(obj: &K) -> Result<Write, BuildError>
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let mut object: DynamicObject = serde_json::to_value(obj)
            .and_then(serde_json::from_value)
            .map_err(|e| BuildError::Invalid(format!("cannot encode {}: {e}", K::kind(&()))))?;
        object.types = Some(kube_core::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
        Ok(Write::CreateOwned {
            resource,
            object: Box::new(object),
        })
    }

    pub fn create_dynamic(resource: ApiResource, mut object: DynamicObject) -> Write {
        object.types = Some(kube_core::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
        Write::CreateOwned {
            resource,
            object: Box::new(object),
        }
    }

    pub fn delete(resource: ApiResource, namespace: &str, name: &str) -> Write {
        Write::Delete {
            resource,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn patch(resource: ApiResource, namespace: &str, name: &str, patch: Value) -> Write {
        Write::Patch {
            resource,
            namespace: namespace.into(),
            name: name.into(),
            patch,
        }
    }
}

/// Why a workload is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `spec.cancel`: stop, keep what has logs.
    Cancel,
    /// `timeoutSeconds` passed: stop, keep everything for inspection.
    Timeout,
    /// The Operation is being deleted: remove it.
    Delete,
}

/// Operator settings engines read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Where Velero Backup/Restore objects are created.
    pub velero_namespace: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            velero_namespace: "velero".into(),
        }
    }
}

/// What an engine builds from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub op: &'a Operation,
    pub target: &'a ApplicationInstance,
    /// Where the target's workloads live (`spec.release.namespace`, else its own).
    pub target_ns: &'a str,
    pub settings: &'a Settings,
}

/// The writes that start a workload, and what to record about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Build {
    pub writes: Vec<Write>,
    pub engine_ref: EngineRef,
    /// Recorded in `status.outputs` once the writes went through.
    pub outputs: Option<BTreeMap<String, String>>,
}

impl Build {
    /// One workload object, with nothing recorded up front.
    pub fn one(write: Write, kind: &str, name: String, namespace: &str) -> Build {
        Build::new(vec![write], kind, name, namespace)
    }

    /// `writes`, recorded as the workload `kind`/`name` in `namespace`.
    pub fn new(writes: Vec<Write>, kind: &str, name: String, namespace: &str) -> Build {
        Build {
            writes,
            engine_ref: EngineRef {
                kind: Some(kind.into()),
                name: Some(name),
                namespace: Some(namespace.into()),
            },
            outputs: None,
        }
    }
}

/// Why an engine cannot start its workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The input cannot make a workload (bad parameter, wrong type): the Operation fails.
    #[error("{0}")]
    Invalid(String),
    /// Something the workload needs is missing but may still appear: it waits.
    #[error("{0}")]
    Missing(String),
    /// The PVCs to snapshot are not there.
    #[error("{0}")]
    SourcePvcNotFound(String),
    /// The target has no Helm release to take a hook from.
    #[error("{0}")]
    HookRequiresRelease(String),
    /// No such hook (or its release data cannot be read).
    #[error("{0}")]
    HookNotFound(String),
}

impl BuildError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Invalid(_) => r::ENGINE_FAILED,
            BuildError::Missing(_) => r::DEPENDENCY_MISSING,
            BuildError::SourcePvcNotFound(_) => r::SOURCE_PVC_NOT_FOUND,
            BuildError::HookRequiresRelease(_) => r::HOOK_REQUIRES_RELEASE,
            BuildError::HookNotFound(_) => r::HOOK_NOT_FOUND,
        }
    }

    /// Whether the Operation waits (stays Pending) rather than fails.
    pub fn waits(&self) -> bool {
        matches!(self, BuildError::Missing(_))
    }
}

/// One Operation engine. Every method is pure.
pub trait Engine: Sync {
    /// The API resources its workloads are made of (watched where served).
    fn resources(&self, settings: &Settings) -> Vec<(ApiResource, Scope)>;

    /// Objects to read before [`Engine::build`]; their results come back in order.
    fn prerequisites(&self, _input: &Input<'_>) -> Vec<Query> {
        Vec::new()
    }

    /// The writes that start the workload, from the input and the prerequisites read.
    fn build(&self, input: &Input<'_>, found: &[Vec<DynamicObject>]) -> Result<Build, BuildError>;

    /// Outputs to record once the start writes went through (`written`: the objects
    /// the apiserver returned, in write order).
    fn started(
        &self,
        build: &Build,
        _written: &[DynamicObject],
    ) -> Option<BTreeMap<String, String>> {
        build.outputs.clone()
    }

    /// The read that observes the workload recorded in `status.engineRef`.
    fn observe(&self, op: &Operation, workload: &Workload) -> Query;

    /// The workload's state from what [`Engine::observe`] read; `None` when it is gone.
    fn status(&self, op: &Operation, found: &[DynamicObject]) -> Option<EngineStatus>;

    /// The writes that stop the workload. `target` is the observed target instance.
    fn stop(
        &self,
        op: &Operation,
        workload: &Workload,
        why: Stop,
        target: Option<&ApplicationInstance>,
    ) -> Vec<Write>;
}

/// Where an engine's workloads live: the Operation's namespace side (watched in the
/// controller's namespace scope) or one fixed namespace (Velero's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced like the Operations the controller watches.
    Operations,
    /// Always in this namespace.
    Namespace(String),
}

/// The workload named by `status.engineRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

impl Workload {
    /// `status.engineRef`, when it names a workload fully.
    pub fn of(op: &Operation) -> Option<Workload> {
        let e = op.status.as_ref()?.engine_ref.as_ref()?;
        Some(Workload {
            kind: e.kind.clone()?,
            name: e.name.clone()?,
            namespace: e.namespace.clone()?,
        })
    }
}

/// Objects of one kind that came back from a read, parsed into their typed form;
/// unparseable ones are skipped (they cannot be ours).
pub fn parse<K>(found: &[DynamicObject]) -> Vec<K>
where
    K: Resource + serde::de::DeserializeOwned,
{
    found
        .iter()
        .filter_map(|o| o.clone().try_parse::<K>().ok())
        .collect()
}
