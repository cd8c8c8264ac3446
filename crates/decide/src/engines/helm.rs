//! `helm` engine (Upgrade): the upgrade is made *through the target ApplicationInstance*,
//! which stays the single source of truth: `targetVersion` becomes
//! `spec.chart.version`, `valuesPatch` is merged (RFC 7386) into `spec.values.inline`.
//! The ApplicationInstance controller then rolls the HelmRelease out.
//!
//! Done when the instance has observed the patched generation, reports
//! `status.lastAppliedChart.version == targetVersion` and `Ready=True`; failed when, at
//! that generation, it reports `Ready=False`. Cancel and timeout revert the two fields
//! (only if they still hold what the Operation wrote).
//!
//! What the revert needs is kept in `status.outputs` under keys starting with `_`, which
//! are dropped at the terminal transition.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::application_instance::ValuesSource;
use vworkspace_api::conditions::{FALSE, TRUE, find};
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write, parse,
};
use super::{EngineStatus, parameters, str_param};
use kube_core::ApiResource;
use kube_core::DynamicObject;
use kube_core::ResourceExt;

pub const KEY_PREVIOUS_VERSION: &str = "previousVersion";
pub const KEY_TARGET_VERSION: &str = "targetVersion";
pub const KEY_GENERATION: &str = "_instanceGeneration";
pub const KEY_REVERT: &str = "_revertPatch";

/// What the engine does to the instance, and how to undo it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// JSON merge patch for the instance.
    pub patch: Value,
    /// JSON merge patch restoring the previous state.
    pub revert: Value,
    pub previous_version: String,
    pub target_version: String,
}

/// RFC 7386 patch that undoes `patch` applied to `before`.
pub fn inverse_patch(before: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = Map::new();
            for (k, v) in p {
                let prev = before.get(k);
                let undo = match (prev, v) {
                    (Some(pv @ Value::Object(_)), Value::Object(_)) => inverse_patch(pv, v),
                    (Some(pv), _) => pv.clone(),
                    (None, _) => Value::Null,
                };
                out.insert(k.clone(), undo);
            }
            Value::Object(out)
        }
        _ => before.clone(),
    }
}

/// The change for `op` on `target`; an error is a failure of the Operation.
pub fn plan(op: &Operation, target: &ApplicationInstance) -> Result<Plan, String> {
    let p = parameters(op);
    let chart = target.spec.chart.as_ref().ok_or_else(|| {
        "the target ApplicationInstance has no spec.chart (placeholder): nothing to upgrade"
            .to_string()
    })?;
    let previous_version = chart.version.clone();
    let target_version = str_param(&p, "targetVersion").unwrap_or_else(|| chart.version.clone());
    let mut spec_patch = json!({"chart": {"version": target_version}});
    let mut spec_revert = json!({"chart": {"version": previous_version}});
    if let Some(values_patch) = p.get("valuesPatch").filter(|v| v.is_object()) {
        match &target.spec.values {
            Some(v) if v.source != ValuesSource::Inline => {
                return Err(format!(
                    "spec.parameters.valuesPatch: the target's values come from {:?}, not inline; \
                     change that Secret/ConfigMap instead",
                    v.source
                ));
            }
            Some(v) => {
                let before = v.inline.clone().unwrap_or(json!({}));
                spec_patch["values"] = json!({"inline": values_patch});
                spec_revert["values"] = json!({"inline": inverse_patch(&before, values_patch)});
            }
            None => {
                spec_patch["values"] = json!({"source": "inline", "inline": values_patch});
                spec_revert["values"] = Value::Null;
            }
        }
    }
    Ok(Plan {
        patch: json!({ "spec": spec_patch }),
        revert: json!({ "spec": spec_revert }),
        previous_version,
        target_version,
    })
}

/// Outputs recorded when the change is made (`generation`: the instance's generation
/// after the patch).
pub fn start_outputs(plan: &Plan, generation: Option<i64>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (KEY_PREVIOUS_VERSION.into(), plan.previous_version.clone()),
        (KEY_TARGET_VERSION.into(), plan.target_version.clone()),
        (
            KEY_GENERATION.into(),
            generation.unwrap_or_default().to_string(),
        ),
        (KEY_REVERT.into(), plan.revert.to_string()),
    ])
}

/// The instance → engine status, given the outputs recorded at start.
pub fn status(target: &ApplicationInstance, started: &BTreeMap<String, String>) -> EngineStatus {
    let generation: i64 = started
        .get(KEY_GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or_default();
    let want = started.get(KEY_TARGET_VERSION).cloned().unwrap_or_default();
    let Some(st) = target.status.as_ref() else {
        return EngineStatus::Running("waiting for the ApplicationInstance controller".into());
    };
    if st.observed_generation.unwrap_or_default() < generation {
        return EngineStatus::Running(format!(
            "waiting for the ApplicationInstance to observe generation {generation}"
        ));
    }
    let applied = st.last_applied_chart.as_ref().map(|c| c.version.clone());
    let ready = find(&st.conditions, "Ready");
    let mut outputs = BTreeMap::from([("version".to_string(), want.clone())]);
    if let Some(hr) = &st.helm_release_ref {
        outputs.insert(
            "helmRelease".into(),
            format!("{}/{}", hr.namespace, hr.name),
        );
    }
    match ready.map(|c| c.status.as_str()) {
        Some(FALSE) => EngineStatus::Failed {
            reason: "HelmUpgradeFailed".into(),
            message: format!(
                "the release went Ready=False: {}",
                ready.map(|c| c.message.as_str()).unwrap_or("")
            ),
            outputs,
        },
        Some(TRUE) if applied.as_deref() == Some(want.as_str()) => EngineStatus::Succeeded {
            message: format!("ApplicationInstance Ready at chart version {want}"),
            outputs,
        },
        _ => EngineStatus::Running(format!(
            "upgrading to {want} (last applied: {})",
            applied.unwrap_or_else(|| "none".into())
        )),
    }
}

/// The revert patch, if the instance still holds the version the Operation wrote.
pub fn revert(target: &ApplicationInstance, started: &BTreeMap<String, String>) -> Option<Value> {
    let want = started.get(KEY_TARGET_VERSION)?;
    let current = target.spec.chart.as_ref()?.version.clone();
    if &current != want {
        return None;
    }
    serde_json::from_str(started.get(KEY_REVERT)?).ok()
}

/// Drops the bookkeeping keys from terminal outputs.
pub fn public_outputs(outputs: &mut BTreeMap<String, String>) {
    outputs.retain(|k, _| !k.starts_with('_'));
}

/// `apps.vworkspace.io/v1alpha1` ApplicationInstance.
fn instance_resource() -> ApiResource {
    ApiResource::erase::<ApplicationInstance>(&())
}

/// The `helm` engine: its "workload" is the target instance itself.
pub struct HelmEngine;

impl Engine for HelmEngine {
    /// None of its own: the Operation controller watches the targets anyway.
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        Vec::new()
    }

    fn build(&self, input: &Input<'_>, _: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let plan = plan(input.op, input.target).map_err(BuildError::Invalid)?;
        let (ns, name) = (
            input.target.namespace().unwrap_or_default(),
            input.target.name_any(),
        );
        let write = Write::patch(instance_resource(), &ns, &name, plan.patch.clone());
        let mut out = Build::one(write, "ApplicationInstance", name, &ns);
        out.outputs = Some(start_outputs(&plan, None));
        Ok(out)
    }

    /// Records the generation the patch produced: done is judged against it.
    fn started(
        &self,
        build: &Build,
        written: &[DynamicObject],
    ) -> Option<BTreeMap<String, String>> {
        let mut outputs = build.outputs.clone()?;
        let generation = written.first().and_then(|o| o.metadata.generation);
        outputs.insert(
            KEY_GENERATION.into(),
            generation.unwrap_or_default().to_string(),
        );
        Some(outputs)
    }

    fn observe(&self, _: &Operation, workload: &Workload) -> Query {
        Query::named(instance_resource(), &workload.namespace, &workload.name)
    }

    fn status(&self, op: &Operation, found: &[DynamicObject]) -> Option<EngineStatus> {
        let recorded = op
            .status
            .as_ref()
            .and_then(|s| s.outputs.clone())
            .unwrap_or_default();
        parse::<ApplicationInstance>(found)
            .first()
            .map(|t| status(t, &recorded))
    }

    /// Cancel and timeout revert the change if the instance still holds what the
    /// Operation wrote; deletion leaves the instance alone.
    fn stop(
        &self,
        op: &Operation,
        workload: &Workload,
        why: Stop,
        target: Option<&ApplicationInstance>,
    ) -> Vec<Write> {
        if why == Stop::Delete {
            return Vec::new();
        }
        let recorded = op
            .status
            .as_ref()
            .and_then(|s| s.outputs.clone())
            .unwrap_or_default();
        target
            .and_then(|t| revert(t, &recorded))
            .map(|patch| {
                Write::patch(
                    instance_resource(),
                    &workload.namespace,
                    &workload.name,
                    patch,
                )
            })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("up", "u-4", "Upgrade", "helm", params)
    }

    fn inst(status: Value) -> ApplicationInstance {
        serde_json::from_value(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "team-a", "generation": 4},
            "spec": {"appRef": {"catalogId": "wiki"},
                     "chart": {"sourceType": "helm", "url": "https://c", "name": "wiki", "version": "1.0.0"},
                     "release": {"name": "wiki", "namespace": "team-a"},
                     "values": {"source": "inline", "inline": {"replicas": 1, "image": {"tag": "a", "pull": "x"}}}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn plan_and_revert() {
        let t = inst(json!({}));
        let p = plan(
            &op(json!({"targetVersion": "2.0.0", "valuesPatch": {"image": {"tag": "b"}, "new": true}})),
            &t,
        )
        .unwrap();
        assert_eq!(
            p.patch,
            json!({"spec": {"chart": {"version": "2.0.0"}, "values": {"inline": {"image": {"tag": "b"}, "new": true}}}})
        );
        assert_eq!(
            p.revert,
            json!({"spec": {"chart": {"version": "1.0.0"}, "values": {"inline": {"image": {"tag": "a"}, "new": null}}}})
        );
        let started = start_outputs(&p, Some(5));
        // Still at the version we wrote: revert; someone changed it since: leave it.
        let mut moved = t.clone();
        moved.spec.chart.as_mut().unwrap().version = "2.0.0".into();
        assert_eq!(revert(&moved, &started), Some(p.revert.clone()));
        moved.spec.chart.as_mut().unwrap().version = "3.0.0".into();
        assert_eq!(revert(&moved, &started), None);
        // Placeholder targets and non-inline values are refused.
        let mut placeholder = t.clone();
        placeholder.spec.chart = None;
        assert!(plan(&op(json!({"targetVersion": "2"})), &placeholder).is_err());
        let mut secret = t;
        secret.spec.values.as_mut().unwrap().source = ValuesSource::SecretRef;
        assert!(plan(&op(json!({"valuesPatch": {"a": 1}})), &secret).is_err());
        let mut outs = started;
        public_outputs(&mut outs);
        assert_eq!(
            outs.keys().collect::<Vec<_>>(),
            ["previousVersion", "targetVersion"]
        );
    }

    #[test]
    fn status_mapping() {
        let started = BTreeMap::from([
            (KEY_TARGET_VERSION.to_string(), "2.0.0".to_string()),
            (KEY_GENERATION.to_string(), "5".to_string()),
        ]);
        let cond = |s: &str| json!([{"type": "Ready", "status": s, "reason": "R", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        // Old generation: a stale Ready=True/False means nothing yet.
        let old = inst(json!({"observedGeneration": 4, "conditions": cond("False"),
            "lastAppliedChart": {"sourceType": "helm", "url": "u", "name": "wiki", "version": "1.0.0"}}));
        assert!(matches!(status(&old, &started), EngineStatus::Running(_)));
        let applied = |v: &str, s: &str| {
            inst(json!({"observedGeneration": 5, "conditions": cond(s),
            "lastAppliedChart": {"sourceType": "helm", "url": "u", "name": "wiki", "version": v}}))
        };
        assert!(matches!(
            status(&applied("2.0.0", "Unknown"), &started),
            EngineStatus::Running(_)
        ));
        assert!(matches!(
            status(&applied("2.0.0", "True"), &started),
            EngineStatus::Succeeded { .. }
        ));
        assert!(matches!(
            status(&applied("1.0.0", "True"), &started),
            EngineStatus::Running(_)
        ));
        assert!(matches!(status(&applied("2.0.0", "False"), &started),
            EngineStatus::Failed { reason, .. } if reason == "HelmUpgradeFailed"));
    }
}
