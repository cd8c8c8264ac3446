//! Decisions of the ApplicationInstance controller: `decide(&Observed, now) -> Plan`.
//!
//! A managed instance becomes a Flux HelmRelease plus its chart source; its status
//! follows the HelmRelease the apply returned. A placeholder only reports itself Ready.
//! Deletion removes the Flux children and keeps the finalizer until they are gone, so
//! Flux's own finalizer uninstalls the release first, but never longer than
//! [`DELETION_WAIT`].
//!
//! The controller reads what [`reads`] names, asks [`decide`] for a [`Plan`] and
//! executes it; applying the children is the one step whose result feeds the status,
//! through [`after_apply`].

pub mod policy;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube_core::ResourceExt;
use vworkspace_api::application_instance::{
    ApplicationInstance, ApplicationInstanceStatus, Mode, ObjectRef as StatusRef, ValuesSource,
};
use vworkspace_api::conditions::{self, Desired, FALSE, TRUE, Time, app_reasons as r, types};
use vworkspace_api::keys;
use vworkspace_api::validation::validate_application_instance;

use crate::flux::status::release_conditions;
use crate::flux::{ChartSource, FluxChildren, desired_children, endpoints, source_name};
use crate::kinds::flux::HelmRelease;

/// How long deletion waits for Flux to uninstall before letting the instance go.
pub const DELETION_WAIT: Duration = Duration::from_secs(600);

/// Blocked instances are re-evaluated on every relevant change (spec, referenced
/// Secret/ConfigMap) and, as a safety net against missed watch events, at this cadence.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(300);

/// What the referenced values Secret/ConfigMap holds. Only key names are looked at;
/// values never leave the API response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuesState {
    Missing,
    KeyMissing,
    Present,
}

/// A Flux child of the instance, by kind and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Child {
    HelmRelease(String),
    HelmRepository(String),
    OCIRepository(String),
}

impl std::fmt::Display for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Child::HelmRelease(n) => write!(f, "HelmRelease {n}"),
            Child::HelmRepository(n) => write!(f, "HelmRepository {n}"),
            Child::OCIRepository(n) => write!(f, "OCIRepository {n}"),
        }
    }
}

/// The reads a pass needs, so observing costs only what the decision uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// The Secret or ConfigMap named by `spec.values`, and the key it must hold.
    pub values: Option<(ValuesSource, String, String)>,
    /// The Flux children that may still exist (deletion).
    pub children: Vec<Child>,
    /// Ingresses of the release: (namespace, label selector).
    pub ingresses: Option<(String, String)>,
}

/// Everything one pass decides on.
#[derive(Clone, Debug)]
pub struct Observed {
    pub inst: ApplicationInstance,
    /// The state of the referenced values Secret/ConfigMap (`None`: none referenced).
    pub values: Option<ValuesState>,
    /// `metadata.resourceVersion` of that Secret/ConfigMap when it exists: never its
    /// content, only a marker that moves with every edit.
    pub values_revision: Option<String>,
    /// Those of [`Reads::children`] that still exist.
    pub children: Vec<Child>,
    /// Ingresses of the release (for `status.endpoints`).
    pub ingresses: Vec<Ingress>,
}

impl Observed {
    pub fn of(inst: ApplicationInstance) -> Self {
        Observed {
            inst,
            values: None,
            values_revision: None,
            children: Vec::new(),
            ingresses: Vec::new(),
        }
    }
}

/// What a pass does.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Deleted and no longer ours: nothing.
    Nothing,
    AddFinalizer,
    /// Stays as it is until something changes (the status says why).
    Block {
        reason: &'static str,
        message: String,
    },
    /// A placeholder: only the status.
    Placeholder,
    /// Apply the children with server-side apply, delete a chart source of the other
    /// kind, then ask [`after_apply`] for the status.
    Apply(Box<FluxChildren>),
    /// The children were applied; the status follows the HelmRelease.
    Applied,
    /// Deletion: delete the children that remain, then (maybe) let the instance go.
    Release {
        delete: Vec<Child>,
        remove_finalizer: bool,
    },
}

/// The result of [`decide`].
#[derive(Clone, Debug)]
pub struct Plan {
    pub decision: Decision,
    /// The status to write, when it changed.
    pub status: Option<ApplicationInstanceStatus>,
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

/// Status being assembled during one pass. The transitions worth an Event are found
/// by the controller's kit when it writes (old vs new conditions).
#[derive(Clone, Debug)]
pub struct Draft {
    pub status: ApplicationInstanceStatus,
    original: Option<ApplicationInstanceStatus>,
    generation: Option<i64>,
    pub now: Time,
}

impl Draft {
    pub fn new(inst: &ApplicationInstance, now: Time) -> Self {
        Draft {
            status: inst.status.clone().unwrap_or_default(),
            original: inst.status.clone(),
            generation: inst.metadata.generation,
            now,
        }
    }

    pub fn set(&mut self, want: Desired<'_>) {
        conditions::set(
            &mut self.status.conditions,
            want,
            self.generation,
            &self.now,
        );
    }

    /// `Blocked=True` and `Ready=False` with the same reason; nothing in flight.
    pub fn blocked(&mut self, reason: &str, message: String) {
        self.set(Desired::new(types::BLOCKED, TRUE, reason, message.clone()));
        self.set(Desired::new(types::READY, FALSE, reason, message));
        self.set(Desired::new(types::RECONCILING, FALSE, r::STABLE, ""));
    }

    pub fn unblocked(&mut self) {
        self.set(Desired::new(types::BLOCKED, FALSE, r::UNBLOCKED, ""));
    }

    /// The status to write, or `None` when it is unchanged. `lastReconcileTime` alone
    /// is no change: the write would wake the controller for another pass, which would
    /// write a newer time again, a loop that never settles once passes take a second.
    pub fn finish(self) -> Option<ApplicationInstanceStatus> {
        let mut unchanged = self.status.clone();
        if let Some(original) = &self.original {
            unchanged.last_reconcile_time = original.last_reconcile_time.clone();
        }
        (self.original.as_ref() != Some(&unchanged)).then_some(self.status)
    }
}

fn has_finalizer(inst: &ApplicationInstance) -> bool {
    inst.finalizers()
        .iter()
        .any(|f| f == keys::FINALIZER_APPLICATION_INSTANCE)
}

/// The release a managed instance may have made (deletion), if any.
fn release(inst: &ApplicationInstance) -> Option<String> {
    inst.spec
        .release
        .as_ref()
        .map(|r| r.name.clone())
        .filter(|n| !n.trim().is_empty())
        .filter(|_| inst.spec.mode() == Mode::Managed)
}

/// What a pass over `inst` needs read.
pub fn reads(inst: &ApplicationInstance) -> Reads {
    if inst.metadata.deletion_timestamp.is_some() {
        let children = match release(inst).filter(|_| has_finalizer(inst)) {
            Some(release) => {
                let src = source_name(&release);
                vec![
                    Child::HelmRelease(release),
                    Child::HelmRepository(src.clone()),
                    Child::OCIRepository(src),
                ]
            }
            None => Vec::new(),
        };
        return Reads {
            children,
            ..Reads::default()
        };
    }
    if !has_finalizer(inst) || inst.spec.mode() != Mode::Managed {
        return Reads::default();
    }
    let values = inst.spec.values.as_ref().and_then(|v| match v.source {
        ValuesSource::Inline => None,
        ValuesSource::SecretRef => v
            .secret_ref
            .as_ref()
            .map(|r| (ValuesSource::SecretRef, r.name.clone(), r.key.clone())),
        ValuesSource::ConfigMapRef => v
            .config_map_ref
            .as_ref()
            .map(|r| (ValuesSource::ConfigMapRef, r.name.clone(), r.key.clone())),
    });
    let ingresses = inst.spec.release.as_ref().map(|r| {
        (
            r.namespace.clone(),
            format!("{}={}", endpoints::RELEASE_INSTANCE_LABEL, r.name),
        )
    });
    Reads {
        values,
        children: Vec::new(),
        ingresses,
    }
}

/// One pass over an observed instance.
pub fn decide(o: &Observed, now: jiff::Timestamp) -> Plan {
    let inst = &o.inst;
    if inst.metadata.deletion_timestamp.is_some() {
        return finalize(o, now);
    }
    if !has_finalizer(inst) {
        return Plan::only(Decision::AddFinalizer);
    }
    let namespace = inst.namespace().unwrap_or_default();
    let mut draft = Draft::new(inst, Time(now));
    if let Err(message) = validate_application_instance(&inst.spec, &namespace)
        .and_then(|()| policy::inline_secrets(&inst.spec))
    {
        return blocked(draft, r::VALIDATION_FAILED, message);
    }
    draft.status.observed_generation = inst.metadata.generation;
    draft.status.last_reconcile_time = Some(Time(now));
    if inst.spec.mode() == Mode::Placeholder {
        draft.status.helm_release_ref = None;
        draft.status.last_applied_chart = None;
        draft.status.endpoints.clear();
        draft.status.inventory.clear();
        draft.set(Desired::new(
            types::READY,
            TRUE,
            r::PLACEHOLDER,
            "placeholder instance: nothing to deliver",
        ));
        draft.set(Desired::new(types::RECONCILING, FALSE, r::STABLE, ""));
        draft.set(Desired::new(types::DEGRADED, FALSE, r::RECOVERED, ""));
        draft.unblocked();
        return Plan {
            decision: Decision::Placeholder,
            status: draft.finish(),
            requeue: None,
        };
    }
    if let Some(message) = missing_values(o) {
        return blocked(draft, r::WAITING_FOR_SECRET, message);
    }
    match desired_children(inst) {
        Ok(mut children) => {
            request_values_reread(&mut children, o.values_revision.as_deref());
            Plan::only(Decision::Apply(Box::new(children)))
        }
        Err(message) => blocked(draft, r::VALIDATION_FAILED, message),
    }
}

/// Flux's annotation asking helm-controller for a reconcile when its value changes.
pub const RECONCILE_REQUEST_ANNOTATION: &str = "reconcile.fluxcd.io/requestedAt";

/// helm-controller re-reads `valuesFrom` only on its interval or when the Secret/ConfigMap
/// carries its watch label (`reconcile.fluxcd.io/watch: Enabled`); the operator must not
/// relabel a user's Secret, so it asks for a reconcile instead, keyed by the source's
/// resourceVersion: every edit of the values re-renders the release at once.
fn request_values_reread(children: &mut FluxChildren, revision: Option<&str>) {
    let Some(revision) = revision else {
        return;
    };
    children
        .helm_release
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            RECONCILE_REQUEST_ANNOTATION.to_string(),
            format!("values-{revision}"),
        );
}

fn blocked(mut draft: Draft, reason: &'static str, message: String) -> Plan {
    draft.blocked(reason, message.clone());
    Plan {
        decision: Decision::Block { reason, message },
        status: draft.finish(),
        requeue: Some(BLOCKED_RECHECK),
    }
}

/// Which referenced Secret/ConfigMap (or key) is missing.
fn missing_values(o: &Observed) -> Option<String> {
    let (kind, name, key) = reads(&o.inst).values?;
    let namespace = o.inst.namespace().unwrap_or_default();
    let (what, field) = match kind {
        ValuesSource::SecretRef => ("Secret", "secretRef"),
        _ => ("ConfigMap", "configMapRef"),
    };
    match o.values? {
        ValuesState::Present => None,
        ValuesState::Missing => Some(format!(
            "{what} {name:?} referenced by spec.values.{field} not found in namespace {namespace:?}"
        )),
        ValuesState::KeyMissing => Some(format!(
            "{what} {name:?} has no key {key:?} (spec.values.{field}.key)"
        )),
    }
}

/// The chart source of the other kind, left from a `sourceType` change: deleted.
pub fn stale_source(children: &FluxChildren) -> Child {
    let name = children.source.name();
    match children.source {
        ChartSource::Helm(_) => Child::OCIRepository(name),
        ChartSource::Oci(_) => Child::HelmRepository(name),
    }
}

/// The status once the children were applied (`live`: the HelmRelease the apply
/// returned).
pub fn after_apply(
    o: &Observed,
    children: &FluxChildren,
    live: &HelmRelease,
    now: jiff::Timestamp,
) -> Plan {
    let inst = &o.inst;
    let namespace = inst.namespace().unwrap_or_default();
    let mut draft = Draft::new(inst, Time(now));
    draft.status.observed_generation = inst.metadata.generation;
    draft.status.last_reconcile_time = Some(Time(now));
    draft.status.helm_release_ref = Some(StatusRef {
        name: children.helm_release.name_any(),
        namespace: namespace.clone(),
    });
    draft.status.last_applied_chart = inst.spec.chart.clone();
    draft.status.inventory = endpoints::inventory(children, &namespace);
    draft.status.endpoints = endpoints::endpoints(inst, &o.ingresses);
    let wanted_version = inst.spec.chart.as_ref().map(|c| c.version.as_str());
    for want in release_conditions(Some(live), wanted_version) {
        draft.set(want);
    }
    draft.unblocked();
    Plan {
        decision: Decision::Applied,
        status: draft.finish(),
        requeue: None,
    }
}

/// Deletion: children first, then the finalizer; at most [`DELETION_WAIT`].
fn finalize(o: &Observed, now: jiff::Timestamp) -> Plan {
    let inst = &o.inst;
    if !has_finalizer(inst) {
        return Plan::only(Decision::Nothing);
    }
    let mut draft = Draft::new(inst, Time(now));
    if release(inst).is_none() {
        // Placeholder, or a managed instance that never had a release: nothing to uninstall.
        draft.set(Desired::new(
            types::DELETING,
            TRUE,
            r::DELETING,
            "removing the instance",
        ));
        return Plan {
            decision: Decision::Release {
                delete: Vec::new(),
                remove_finalizer: true,
            },
            status: draft.finish(),
            requeue: None,
        };
    }
    let remaining = o.children.clone();
    if remaining.is_empty() {
        return Plan::only(Decision::Release {
            delete: Vec::new(),
            remove_finalizer: true,
        });
    }
    let listed = remaining
        .iter()
        .map(Child::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let waited = inst
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| now.duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    if waited >= DELETION_WAIT {
        draft.set(Desired::new(
            types::DELETING,
            TRUE,
            r::WAITING_FOR_CHILD_RESOURCES,
            format!(
                "gave up waiting for Flux after {}s; left behind: {listed}",
                DELETION_WAIT.as_secs()
            ),
        ));
        return Plan {
            decision: Decision::Release {
                delete: remaining,
                remove_finalizer: true,
            },
            status: draft.finish(),
            requeue: None,
        };
    }
    draft.set(Desired::new(
        types::DELETING,
        TRUE,
        r::UNINSTALLING,
        format!("waiting for Flux to uninstall: {listed}"),
    ));
    Plan {
        decision: Decision::Release {
            delete: remaining,
            remove_finalizer: false,
        },
        status: draft.finish(),
        // Child deletions arrive through the owned watches; the requeue bounds the wait.
        requeue: Some(DELETION_WAIT.saturating_sub(waited) + Duration::from_secs(1)),
    }
}
