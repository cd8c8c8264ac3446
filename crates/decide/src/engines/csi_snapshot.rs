//! `csiSnapshot` engine (Backup through CSI snapshots): one
//! `snapshot.storage.k8s.io/v1` VolumeSnapshot per PVC of the target, in the target
//! namespace. The PVCs are `parameters.persistentVolumeClaims`, else those labelled
//! `app.kubernetes.io/instance=<release name>` (Helm's standard label; the release name
//! is the instance's `spec.release.name`, else its own name) or
//! `app.vworkspace.io/application-instance=<instance>`.
//!
//! Done when every snapshot is `readyToUse`; failed as soon as one reports
//! `status.error`. Cancel deletes the snapshots (a half-taken snapshot has no use);
//! timeout keeps them so their errors can be read.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::DynamicObject;
use kube_core::ResourceExt;
use serde_json::{Value, json};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write, parse,
};
use super::{EngineStatus, owner_refs, parameters, str_param, workload_labels, workload_name};
use crate::kinds::snapshot;
use kube_core::ApiResource;

const HELM_INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The PVC names to snapshot, sorted; an error is a failure (`SourcePvcNotFound`).
pub fn select_pvcs(
    op: &Operation,
    target: &ApplicationInstance,
    pvcs: &[PersistentVolumeClaim],
) -> Result<Vec<String>, String> {
    let present: BTreeSet<String> = pvcs.iter().map(|p| p.name_any()).collect();
    let p = parameters(op);
    if let Some(list) = p.get("persistentVolumeClaims").and_then(Value::as_array) {
        let wanted: BTreeSet<String> = list
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let missing: Vec<&String> = wanted.difference(&present).collect();
        if !missing.is_empty() {
            return Err(format!(
                "PersistentVolumeClaim(s) not found in the target namespace: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if wanted.is_empty() {
            return Err("spec.parameters.persistentVolumeClaims is empty".into());
        }
        return Ok(wanted.into_iter().collect());
    }
    let instance = target.name_any();
    let release = target
        .spec
        .release
        .as_ref()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| instance.clone());
    let selected: BTreeSet<String> = pvcs
        .iter()
        .filter(|pvc| {
            let l = pvc.labels();
            l.get(HELM_INSTANCE_LABEL) == Some(&release)
                || l.get(keys::LABEL_APPLICATION_INSTANCE) == Some(&instance)
        })
        .map(|pvc| pvc.name_any())
        .collect();
    if selected.is_empty() {
        return Err(format!(
            "no PersistentVolumeClaim labelled {HELM_INSTANCE_LABEL}={release} or \
             {}={instance}; name them in spec.parameters.persistentVolumeClaims",
            keys::LABEL_APPLICATION_INSTANCE
        ));
    }
    Ok(selected.into_iter().collect())
}

/// Snapshot name for one PVC: `<workload>-<pvc>`, else `op-<uid>-<index>`.
pub fn snapshot_name(op: &Operation, pvc: &str, index: usize) -> String {
    super::fit_name(format!("{}-{pvc}", workload_name(op)), 253, || {
        format!("op-{}-{index}", op.uid().unwrap_or_default())
    })
}

pub fn build(op: &Operation, target_ns: &str, pvcs: &[String]) -> Vec<DynamicObject> {
    let p = parameters(op);
    let class = str_param(&p, "volumeSnapshotClassName");
    pvcs.iter()
        .enumerate()
        .map(|(i, pvc)| {
            let name = snapshot_name(op, pvc, i);
            let mut obj = DynamicObject::new(&name, &snapshot::volume_snapshot()).within(target_ns);
            let mut labels = workload_labels(op);
            labels.insert("ops.vworkspace.io/source-pvc".into(), pvc.clone());
            obj.metadata = ObjectMeta {
                name: Some(name),
                namespace: Some(target_ns.into()),
                labels: Some(labels),
                owner_references: owner_refs(op, target_ns),
                ..Default::default()
            };
            let mut spec = json!({"source": {"persistentVolumeClaimName": pvc}});
            if let Some(c) = &class {
                spec["volumeSnapshotClassName"] = json!(c);
            }
            obj.data = json!({ "spec": spec });
            obj
        })
        .collect()
}

/// All snapshots of the Operation → engine status.
pub fn status(snapshots: &[DynamicObject]) -> EngineStatus {
    let mut names: Vec<String> = snapshots.iter().map(|s| s.name_any()).collect();
    names.sort();
    let mut outputs = BTreeMap::from([("volumeSnapshots".to_string(), names.join(","))]);
    let mut ready = 0;
    for s in snapshots {
        let st = s.data.get("status").cloned().unwrap_or(json!({}));
        if let Some(err) = st.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("snapshot error");
            return EngineStatus::Failed {
                reason: "VolumeSnapshotFailed".into(),
                message: format!("VolumeSnapshot {}: {msg}", s.name_any()),
                outputs,
            };
        }
        if st.get("readyToUse").and_then(Value::as_bool) == Some(true) {
            ready += 1;
            if let Some(size) = st.get("restoreSize") {
                let size = size
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| size.to_string());
                outputs.insert(format!("restoreSize.{}", s.name_any()), size);
            }
        }
    }
    if ready == snapshots.len() && !snapshots.is_empty() {
        EngineStatus::Succeeded {
            message: format!("{ready} VolumeSnapshot(s) ready to use"),
            outputs,
        }
    } else {
        EngineStatus::Running(format!(
            "{ready}/{} VolumeSnapshot(s) ready",
            snapshots.len()
        ))
    }
}

/// The Operation's snapshots, by its UID label.
fn selector(op: &Operation) -> String {
    format!("{}={}", keys::LABEL_OPERATION, op.uid().unwrap_or_default())
}

/// The `csiSnapshot` engine: reads the target namespace's PVCs before building.
pub struct CsiSnapshotEngine;

impl Engine for CsiSnapshotEngine {
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        vec![(snapshot::volume_snapshot(), Scope::Operations)]
    }

    fn prerequisites(&self, input: &Input<'_>) -> Vec<Query> {
        let pvcs = ApiResource::erase::<PersistentVolumeClaim>(&());
        vec![Query::all(pvcs, input.target_ns)]
    }

    fn build(&self, input: &Input<'_>, found: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let pvcs: Vec<PersistentVolumeClaim> = parse(found.first().map_or(&[][..], Vec::as_slice));
        let names =
            select_pvcs(input.op, input.target, &pvcs).map_err(BuildError::SourcePvcNotFound)?;
        let objects = build(input.op, input.target_ns, &names);
        let first = objects.first().map(|o| o.name_any()).unwrap_or_default();
        let writes = objects
            .into_iter()
            .map(|o| Write::create_dynamic(snapshot::volume_snapshot(), o))
            .collect();
        Ok(Build::new(writes, "VolumeSnapshot", first, input.target_ns))
    }

    fn observe(&self, op: &Operation, workload: &Workload) -> Query {
        Query::labelled(
            snapshot::volume_snapshot(),
            &workload.namespace,
            selector(op),
        )
    }

    fn status(&self, _: &Operation, found: &[DynamicObject]) -> Option<EngineStatus> {
        (!found.is_empty()).then(|| status(found))
    }

    /// Deleted on cancel and deletion (a half-taken snapshot has no use), kept on
    /// timeout so their errors can be read.
    fn stop(
        &self,
        op: &Operation,
        workload: &Workload,
        why: Stop,
        _: Option<&ApplicationInstance>,
    ) -> Vec<Write> {
        match why {
            Stop::Timeout => Vec::new(),
            Stop::Cancel | Stop::Delete => vec![Write::DeleteSelected {
                resource: snapshot::volume_snapshot(),
                namespace: workload.namespace.clone(),
                selector: selector(op),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("snap", "u-7", "Backup", "csiSnapshot", params)
    }

    fn target(release: Option<&str>) -> ApplicationInstance {
        let mut v = json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "team-a"}, "spec": {"appRef": {"catalogId": "wiki"}}});
        if let Some(r) = release {
            v["spec"]["release"] = json!({"name": r, "namespace": "team-a"});
        }
        serde_json::from_value(v).unwrap()
    }

    fn pvc(name: &str, labels: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    #[test]
    fn pvc_selection() {
        let pvcs = vec![
            pvc(
                "data-wiki-0",
                json!({"app.kubernetes.io/instance": "wiki-rel"}),
            ),
            pvc(
                "cache",
                json!({"app.vworkspace.io/application-instance": "wiki"}),
            ),
            pvc("other", json!({"app.kubernetes.io/instance": "blog"})),
        ];
        assert_eq!(
            select_pvcs(&op(json!({})), &target(Some("wiki-rel")), &pvcs).unwrap(),
            ["cache", "data-wiki-0"]
        );
        // Placeholder without spec.release: the instance name is the release name.
        assert_eq!(
            select_pvcs(&op(json!({})), &target(None), &pvcs).unwrap(),
            ["cache"]
        );
        assert_eq!(
            select_pvcs(
                &op(json!({"persistentVolumeClaims": ["other"]})),
                &target(None),
                &pvcs
            )
            .unwrap(),
            ["other"]
        );
        assert!(
            select_pvcs(
                &op(json!({"persistentVolumeClaims": ["gone"]})),
                &target(None),
                &pvcs
            )
            .unwrap_err()
            .contains("gone")
        );
        assert!(select_pvcs(&op(json!({})), &target(Some("x")), &pvcs[2..]).is_err());
    }

    #[test]
    fn snapshots_and_status() {
        let snaps = build(
            &op(json!({"volumeSnapshotClassName": "csi-hostpath"})),
            "team-a",
            &["a".into(), "b".into()],
        );
        assert_eq!(snaps[0].name_any(), "team-a--snap-a");
        assert_eq!(
            snaps[1].data["spec"],
            json!({"source": {"persistentVolumeClaimName": "b"}, "volumeSnapshotClassName": "csi-hostpath"})
        );
        assert_eq!(snaps[0].labels()[keys::LABEL_OPERATION], "u-7");
        let mut s = snaps.clone();
        assert!(matches!(status(&s), EngineStatus::Running(_)));
        s[0].data["status"] = json!({"readyToUse": true, "restoreSize": "1Gi"});
        assert!(matches!(status(&s), EngineStatus::Running(_)));
        s[1].data["status"] = json!({"readyToUse": true});
        match status(&s) {
            EngineStatus::Succeeded { outputs, .. } => {
                assert_eq!(outputs["volumeSnapshots"], "team-a--snap-a,team-a--snap-b");
                assert_eq!(outputs["restoreSize.team-a--snap-a"], "1Gi");
            }
            other => panic!("{other:?}"),
        }
        s[1].data["status"] = json!({"readyToUse": false, "error": {"message": "driver failed"}});
        assert!(
            matches!(status(&s), EngineStatus::Failed { message, .. } if message.contains("driver failed"))
        );
        assert!(matches!(status(&[]), EngineStatus::Running(_)));
    }
}
