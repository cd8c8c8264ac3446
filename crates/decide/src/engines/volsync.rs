//! `volsync` engine (Backup through VolSync): one `ReplicationSource` in the target
//! namespace with a manual trigger, copying `parameters.sourcePVC` to the restic
//! repository described by the Secret `parameters.repository`.
//!
//! Done when VolSync reports `status.lastManualSync` equal to the trigger; failed when
//! the latest mover reports `Failed`. Cancel and timeout pause the source
//! (`spec.paused`), which keeps it, and its mover status, for inspection.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::DynamicObject;
use kube_core::ResourceExt;
use serde_json::{Value, json};
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write,
};
use super::{EngineStatus, owner_refs, parameters, str_param, workload_labels, workload_name};
use crate::kinds::volsync;
use kube_core::ApiResource;
use vworkspace_api::ApplicationInstance;

/// The manual trigger value: unique per Operation.
pub fn trigger(op: &Operation) -> String {
    format!("op-{}", op.uid().unwrap_or_default())
}

pub fn build(op: &Operation, target_ns: &str) -> Result<DynamicObject, String> {
    let p = parameters(op);
    let pvc = str_param(&p, "sourcePVC")
        .ok_or_else(|| "spec.parameters.sourcePVC: required".to_string())?;
    let repository = str_param(&p, "repository")
        .ok_or_else(|| "spec.parameters.repository: required".to_string())?;
    let mut restic = json!({
        "repository": repository,
        "copyMethod": str_param(&p, "copyMethod").unwrap_or_else(|| "Snapshot".into()),
    });
    for key in ["volumeSnapshotClassName", "storageClassName"] {
        if let Some(v) = str_param(&p, key) {
            restic[key] = json!(v);
        }
    }
    if let Some(n) = p.get("pruneIntervalDays").and_then(Value::as_i64) {
        restic["pruneIntervalDays"] = json!(n);
    }
    let mut obj =
        DynamicObject::new(&workload_name(op), &volsync::replication_source()).within(target_ns);
    obj.metadata = ObjectMeta {
        name: Some(workload_name(op)),
        namespace: Some(target_ns.into()),
        labels: Some(workload_labels(op)),
        owner_references: owner_refs(op, target_ns),
        ..Default::default()
    };
    obj.data = json!({"spec": {
        "sourcePVC": pvc,
        "trigger": {"manual": trigger(op)},
        "restic": restic,
    }});
    Ok(obj)
}

pub fn status(obj: &DynamicObject) -> EngineStatus {
    let st = obj.data.get("status").cloned().unwrap_or(json!({}));
    let manual = obj
        .data
        .pointer("/spec/trigger/manual")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut outputs = BTreeMap::from([("replicationSourceName".to_string(), obj.name_any())]);
    for (field, key) in [
        ("lastSyncTime", "lastSyncTime"),
        ("lastSyncDuration", "lastSyncDuration"),
    ] {
        if let Some(v) = st.get(field).and_then(Value::as_str) {
            outputs.insert(key.into(), v.to_string());
        }
    }
    let result = st
        .pointer("/latestMoverStatus/result")
        .and_then(Value::as_str)
        .unwrap_or("");
    let synced =
        !manual.is_empty() && st.get("lastManualSync").and_then(Value::as_str) == Some(manual);
    if result == "Failed" {
        return EngineStatus::Failed {
            reason: "VolSyncSyncFailed".into(),
            message: "the VolSync mover failed; see the ReplicationSource's \
                      status.latestMoverStatus"
                .into(),
            outputs,
        };
    }
    if synced {
        return EngineStatus::Succeeded {
            message: "VolSync replication completed".into(),
            outputs,
        };
    }
    let syncing = st
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Synchronizing"))
        })
        .and_then(|c| c.get("message").and_then(Value::as_str))
        .map(String::from);
    EngineStatus::Running(syncing.unwrap_or_else(|| "waiting for VolSync".into()))
}

/// The `volsync` engine: stopping pauses the ReplicationSource; deletion deletes it.
pub struct VolsyncEngine;

impl Engine for VolsyncEngine {
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        vec![(volsync::replication_source(), Scope::Operations)]
    }

    fn build(&self, input: &Input<'_>, _: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let obj = build(input.op, input.target_ns).map_err(BuildError::Invalid)?;
        let name = obj.name_any();
        let write = Write::create_dynamic(volsync::replication_source(), obj);
        Ok(Build::one(
            write,
            "ReplicationSource",
            name,
            input.target_ns,
        ))
    }

    fn observe(&self, _: &Operation, workload: &Workload) -> Query {
        let ar = volsync::replication_source();
        Query::named(ar, &workload.namespace, &workload.name)
    }

    fn status(&self, _: &Operation, found: &[DynamicObject]) -> Option<EngineStatus> {
        found.first().map(status)
    }

    fn stop(
        &self,
        _: &Operation,
        workload: &Workload,
        why: Stop,
        _: Option<&ApplicationInstance>,
    ) -> Vec<Write> {
        let ar = volsync::replication_source();
        let (ns, name) = (&workload.namespace, &workload.name);
        vec![match why {
            Stop::Delete => Write::delete(ar, ns, name),
            Stop::Cancel | Stop::Timeout => {
                Write::patch(ar, ns, name, json!({"spec": {"paused": true}}))
            }
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_api::keys;

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("rep", "u-6", "Backup", "volsync", params)
    }

    #[test]
    fn replication_source_and_status() {
        let mut rs = build(
            &op(json!({"sourcePVC": "data", "repository": "restic-cfg", "volumeSnapshotClassName": "csi"})),
            "team-a",
        )
        .unwrap();
        assert_eq!(rs.name_any(), "team-a--rep");
        assert_eq!(rs.labels()[keys::LABEL_OPERATION], "u-6");
        assert_eq!(
            rs.data["spec"],
            json!({"sourcePVC": "data", "trigger": {"manual": "op-u-6"},
                   "restic": {"repository": "restic-cfg", "copyMethod": "Snapshot", "volumeSnapshotClassName": "csi"}})
        );
        assert!(matches!(status(&rs), EngineStatus::Running(_)));
        rs.data["status"] = json!({"lastManualSync": "something-else"});
        assert!(matches!(status(&rs), EngineStatus::Running(_)));
        rs.data["status"] = json!({"lastManualSync": "op-u-6", "lastSyncTime": "2026-01-01T00:00:00Z",
            "latestMoverStatus": {"result": "Successful"}});
        match status(&rs) {
            EngineStatus::Succeeded { outputs, .. } => {
                assert_eq!(outputs["lastSyncTime"], "2026-01-01T00:00:00Z")
            }
            other => panic!("{other:?}"),
        }
        rs.data["status"] =
            json!({"latestMoverStatus": {"result": "Failed", "logs": "secret stuff"}});
        match status(&rs) {
            EngineStatus::Failed {
                reason, message, ..
            } => {
                assert_eq!(reason, "VolSyncSyncFailed");
                assert!(!message.contains("secret stuff"));
            }
            other => panic!("{other:?}"),
        }
        assert!(build(&op(json!({"repository": "r"})), "team-a").is_err());
    }
}
