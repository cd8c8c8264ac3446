//! `velero` engine: a `velero.io/v1` Backup or Restore in the Velero namespace.
//!
//! Named `<operation namespace>--<operation name>` so same-named Operations of two
//! namespaces never collide in the shared Velero namespace, and labelled with the
//! Operation UID: an existing object with another UID is somebody else's and fails the
//! Operation instead of being taken over.

use std::collections::BTreeMap;

use kube_core::ResourceExt;
use kube_core::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use vworkspace_api::operation::{Operation, OperationType};

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write,
};
use super::{EngineStatus, workload_name};
use vworkspace_api::ApplicationInstance;

pub fn api_resource(kind: &str) -> ApiResource {
    crate::kinds::velero::api_resource(kind)
}

pub fn kind_for(t: OperationType) -> Option<&'static str> {
    match t {
        OperationType::Backup => Some("Backup"),
        OperationType::Restore => Some("Restore"),
        _ => None,
    }
}

/// The Backup/Restore for `op` against a target whose workloads live in `target_ns`.
pub fn build(op: &Operation, target_ns: &str, velero_ns: &str) -> Result<DynamicObject, String> {
    let kind = kind_for(op.spec.r#type)
        .ok_or_else(|| "the velero engine runs Backup and Restore operations only".to_string())?;
    let p = op.spec.parameters.clone().unwrap_or(json!({}));
    let copy = |spec: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = p.get(from) {
            spec.insert(to.into(), v.clone());
        }
    };
    let mut spec = serde_json::Map::new();
    if kind == "Backup" {
        spec.insert("includedNamespaces".into(), json!([target_ns]));
        spec.insert(
            "storageLocation".into(),
            p.get("storageLocation")
                .cloned()
                .unwrap_or(json!("default")),
        );
        for (from, to) in [
            ("ttl", "ttl"),
            ("snapshotVolumes", "snapshotVolumes"),
            ("volumeSnapshotLocations", "volumeSnapshotLocations"),
            ("includedResources", "includedResources"),
            ("excludedResources", "excludedResources"),
            ("defaultVolumesToFsBackup", "defaultVolumesToFsBackup"),
        ] {
            copy(&mut spec, from, to);
        }
    } else {
        let backup = p
            .get("backupName")
            .and_then(Value::as_str)
            .ok_or_else(|| "spec.parameters.backupName: required".to_string())?;
        spec.insert("backupName".into(), json!(backup));
        spec.insert("includedNamespaces".into(), json!([target_ns]));
        for key in [
            "namespaceMapping",
            "restorePVs",
            "existingResourcePolicy",
            "includedResources",
            "excludedResources",
        ] {
            copy(&mut spec, key, key);
        }
    }
    let mut obj = DynamicObject::new(&workload_name(op), &api_resource(kind)).within(velero_ns);
    obj.metadata.labels = Some(super::workload_labels(op));
    obj.data = json!({ "spec": spec });
    Ok(obj)
}

/// Velero phase → engine status.
pub fn status(obj: &DynamicObject) -> EngineStatus {
    let status = obj.data.get("status").cloned().unwrap_or(json!({}));
    let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
    let kind = obj
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_else(|| "Backup".into());
    let name_key = if kind == "Restore" {
        "restoreName"
    } else {
        "backupName"
    };
    let mut outputs = BTreeMap::from([(name_key.to_string(), obj.name_any())]);
    for (field, key) in [
        ("warnings", "warnings"),
        ("errors", "errors"),
        ("completionTimestamp", "completionTime"),
    ] {
        if let Some(v) = status.get(field) {
            outputs.insert(key.into(), v.to_string().trim_matches('"').to_string());
        }
    }
    if let Some(items) = status.pointer("/progress/itemsBackedUp") {
        outputs.insert("itemsBackedUp".into(), items.to_string());
    }
    let reason = status
        .get("failureReason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match phase {
        "Completed" => EngineStatus::Succeeded {
            message: format!("Velero {kind} completed"),
            outputs,
        },
        "PartiallyFailed" => {
            outputs.insert(
                "warning".into(),
                format!("Velero {kind} partially failed; some items were not processed"),
            );
            EngineStatus::Succeeded {
                message: format!("Velero {kind} partially failed (completed with errors)"),
                outputs,
            }
        }
        "Failed" => EngineStatus::Failed {
            reason: format!("Velero{kind}Failed"),
            message: if reason.is_empty() {
                format!("Velero {kind} failed")
            } else {
                reason
            },
            outputs,
        },
        "FailedValidation" => {
            let errors = status
                .get("validationErrors")
                .map(|v| v.to_string())
                .unwrap_or_default();
            EngineStatus::Failed {
                reason: format!("Velero{kind}ValidationFailed"),
                message: format!("Velero rejected the {kind}: {errors}"),
                outputs,
            }
        }
        "" => EngineStatus::Running(format!("Velero {kind} not picked up yet")),
        other => EngineStatus::Running(format!("Velero {kind} {other}")),
    }
}

/// The `velero` engine. Velero has no pause: stopping deletes its object.
pub struct VeleroEngine;

impl Engine for VeleroEngine {
    fn resources(&self, settings: &Settings) -> Vec<(ApiResource, Scope)> {
        ["Backup", "Restore"]
            .into_iter()
            .map(|k| {
                let scope = Scope::Namespace(settings.velero_namespace.clone());
                (api_resource(k), scope)
            })
            .collect()
    }

    fn build(&self, input: &Input<'_>, _: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let velero_ns = &input.settings.velero_namespace;
        let obj = build(input.op, input.target_ns, velero_ns).map_err(BuildError::Invalid)?;
        let kind = kind_for(input.op.spec.r#type).unwrap_or("Backup");
        let name = obj.name_any();
        let write = Write::create_dynamic(api_resource(kind), obj);
        Ok(Build::one(write, kind, name, velero_ns))
    }

    fn observe(&self, _: &Operation, workload: &Workload) -> Query {
        let ar = api_resource(&workload.kind);
        Query::named(ar, &workload.namespace, &workload.name)
    }

    fn status(&self, _: &Operation, found: &[DynamicObject]) -> Option<EngineStatus> {
        found.first().map(status)
    }

    fn stop(
        &self,
        _: &Operation,
        workload: &Workload,
        _: Stop,
        _: Option<&ApplicationInstance>,
    ) -> Vec<Write> {
        let ar = api_resource(&workload.kind);
        vec![Write::delete(ar, &workload.namespace, &workload.name)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_api::keys;

    fn op(t: &str, params: Value) -> Operation {
        serde_json::from_value(json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": "nightly", "namespace": "team-a", "uid": "u-1"},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                     "type": t, "engine": "velero", "parameters": params}
        }))
        .unwrap()
    }

    fn with_status(obj: &DynamicObject, status: Value) -> DynamicObject {
        let mut o = obj.clone();
        o.data["status"] = status;
        o
    }

    #[test]
    fn backup_and_status_mapping() {
        let b = build(&op("Backup", json!({"ttl": "720h"})), "team-a", "velero").unwrap();
        assert_eq!(b.name_any(), "team-a--nightly");
        assert_eq!(b.namespace().as_deref(), Some("velero"));
        assert_eq!(b.data["spec"]["includedNamespaces"], json!(["team-a"]));
        assert_eq!(b.data["spec"]["ttl"], "720h");
        assert_eq!(b.labels()[keys::LABEL_OPERATION], "u-1");
        assert!(matches!(status(&b), EngineStatus::Running(_)));
        assert!(matches!(
            status(&with_status(&b, json!({"phase": "Completed"}))),
            EngineStatus::Succeeded { .. }
        ));
        match status(&with_status(
            &b,
            json!({"phase": "PartiallyFailed", "errors": 2}),
        )) {
            EngineStatus::Succeeded { outputs, .. } => {
                assert!(outputs.contains_key("warning"));
                assert_eq!(outputs["errors"], "2");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            status(&with_status(
                &b,
                json!({"phase": "FailedValidation", "validationErrors": ["bad"]})
            )),
            EngineStatus::Failed { .. }
        ));
        match status(&with_status(
            &b,
            json!({"phase": "Failed", "failureReason": "bucket gone"}),
        )) {
            EngineStatus::Failed { message, .. } => assert_eq!(message, "bucket gone"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restore_needs_a_backup_and_other_types_are_refused() {
        let r = build(
            &op("Restore", json!({"backupName": "b1"})),
            "team-a",
            "velero",
        )
        .unwrap();
        assert_eq!(r.data["spec"]["backupName"], "b1");
        assert!(build(&op("Restore", json!({})), "team-a", "velero").is_err());
        assert!(build(&op("Upgrade", json!({})), "team-a", "velero").is_err());
    }
}
