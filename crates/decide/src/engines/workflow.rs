//! `workflow` engine (Runbook): an Argo `Workflow` from a namespaced (or, with
//! `clusterScope`, cluster) `WorkflowTemplate`, in the target namespace, running as the
//! runner ServiceAccount. `workflowTemplateParameters` (plus `targetChartVersion` and
//! `snapshotClassName` when given) become `spec.arguments.parameters`; `timeoutSeconds`
//! becomes `activeDeadlineSeconds`; a `ttlStrategy` (default one day) lets Argo remove
//! finished Workflows, so a failed one is kept for its logs until then.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::DynamicObject;
use kube_core::ResourceExt;
use serde_json::{Value, json};
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write,
};
use super::{
    EngineStatus, RUNNER_SERVICE_ACCOUNT, owner_refs, parameters, str_param, workload_labels,
    workload_name,
};
use crate::kinds::argo;
use kube_core::ApiResource;
use vworkspace_api::ApplicationInstance;

pub const DEFAULT_TTL_AFTER_FINISHED: i64 = 86_400;

/// The WorkflowTemplate the Runbook runs (`workflowTemplate`, alias `template`).
pub fn template_name(op: &Operation) -> Option<String> {
    let p = parameters(op);
    str_param(&p, "workflowTemplate").or_else(|| str_param(&p, "template"))
}

/// Whether the template is cluster-scoped (`ClusterWorkflowTemplate`).
pub fn cluster_scope(op: &Operation) -> bool {
    parameters(op)
        .get("clusterScope")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Argo arguments, sorted by name.
pub fn arguments(op: &Operation) -> Vec<Value> {
    let p = parameters(op);
    let mut args: BTreeMap<String, String> = p
        .get("workflowTemplateParameters")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    for key in ["targetChartVersion", "snapshotClassName"] {
        if let Some(v) = str_param(&p, key) {
            args.entry(key.to_string()).or_insert(v);
        }
    }
    args.into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect()
}

/// The Workflow for `op`; parameters were validated before.
pub fn build(op: &Operation, target_ns: &str) -> Result<DynamicObject, String> {
    let template = template_name(op)
        .ok_or_else(|| "spec.parameters.workflowTemplate: required".to_string())?;
    let p = parameters(op);
    let mut template_ref = json!({ "name": template });
    if cluster_scope(op) {
        template_ref["clusterScope"] = json!(true);
    }
    let ttl = p
        .get("ttlSecondsAfterFinished")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_TTL_AFTER_FINISHED);
    let mut spec = json!({
        "workflowTemplateRef": template_ref,
        "serviceAccountName": RUNNER_SERVICE_ACCOUNT,
        "ttlStrategy": {"secondsAfterCompletion": ttl},
        "podMetadata": {"labels": workload_labels(op)},
    });
    let args = arguments(op);
    if !args.is_empty() {
        spec["arguments"] = json!({ "parameters": args });
    }
    if let Some(t) = p.get("timeoutSeconds").and_then(Value::as_i64) {
        spec["activeDeadlineSeconds"] = json!(t);
    }
    let mut obj = DynamicObject::new(&workload_name(op), &argo::workflow()).within(target_ns);
    obj.metadata = ObjectMeta {
        name: Some(workload_name(op)),
        namespace: Some(target_ns.into()),
        labels: Some(workload_labels(op)),
        owner_references: owner_refs(op, target_ns),
        ..Default::default()
    };
    obj.data = json!({ "spec": spec });
    Ok(obj)
}

/// Workflow phase → engine status. Outputs: `workflowName` and every
/// `status.outputs.parameters[]` entry as `param.<name>`.
pub fn status(obj: &DynamicObject) -> EngineStatus {
    let status = obj.data.get("status").cloned().unwrap_or(json!({}));
    let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
    let message = status
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut outputs = BTreeMap::from([("workflowName".to_string(), obj.name_any())]);
    if let Some(params) = status
        .pointer("/outputs/parameters")
        .and_then(Value::as_array)
    {
        for p in params {
            if let (Some(n), Some(v)) = (
                p.get("name").and_then(Value::as_str),
                p.get("value").and_then(Value::as_str),
            ) {
                outputs.insert(format!("param.{n}"), v.to_string());
            }
        }
    }
    let or = |m: String, default: &str| if m.is_empty() { default.to_string() } else { m };
    match phase {
        "Succeeded" => EngineStatus::Succeeded {
            message: or(message, "Workflow succeeded"),
            outputs,
        },
        "Failed" => EngineStatus::Failed {
            reason: "WorkflowFailed".into(),
            message: or(message, "Workflow failed"),
            outputs,
        },
        "Error" => EngineStatus::Failed {
            reason: "WorkflowError".into(),
            message: or(message, "Workflow errored"),
            outputs,
        },
        _ if obj.data.pointer("/spec/suspend") == Some(&json!(true)) => {
            EngineStatus::Running("Workflow suspended".into())
        }
        "" => EngineStatus::Running("Workflow not picked up by Argo yet".into()),
        other => EngineStatus::Running(format!("Workflow {other}")),
    }
}

/// The `workflow` engine: a namespaced template that does not exist yet may still be
/// installed, so the Operation waits for it. Stopping terminates the Workflow
/// (`spec.shutdown`); deletion deletes it.
pub struct WorkflowEngine;

impl Engine for WorkflowEngine {
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        vec![(argo::workflow(), Scope::Operations)]
    }

    fn prerequisites(&self, input: &Input<'_>) -> Vec<Query> {
        if cluster_scope(input.op) {
            return Vec::new();
        }
        let template = template_name(input.op).unwrap_or_default();
        vec![Query::named(
            argo::workflow_template(),
            input.target_ns,
            &template,
        )]
    }

    fn build(&self, input: &Input<'_>, found: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let obj = build(input.op, input.target_ns).map_err(BuildError::Invalid)?;
        if !cluster_scope(input.op) && found.first().is_none_or(Vec::is_empty) {
            let template = template_name(input.op).unwrap_or_default();
            return Err(BuildError::Missing(format!(
                "WorkflowTemplate {}/{template} not found (spec.parameters.workflowTemplate)",
                input.target_ns
            )));
        }
        let name = obj.name_any();
        let write = Write::create_dynamic(argo::workflow(), obj);
        Ok(Build::one(write, "Workflow", name, input.target_ns))
    }

    fn observe(&self, _: &Operation, workload: &Workload) -> Query {
        Query::named(argo::workflow(), &workload.namespace, &workload.name)
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
        let (ar, ns, name) = (argo::workflow(), &workload.namespace, &workload.name);
        vec![match why {
            Stop::Delete => Write::delete(ar, ns, name),
            Stop::Cancel | Stop::Timeout => {
                Write::patch(ar, ns, name, json!({"spec": {"shutdown": "Terminate"}}))
            }
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_api::keys;

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("rb", "u-3", "Runbook", "workflow", params)
    }

    #[test]
    fn workflow_from_template_with_arguments() {
        let w = build(
            &op(json!({"workflowTemplate": "rotate", "workflowTemplateParameters": {"b": "2", "a": "1"},
                       "targetChartVersion": "3.1.0", "timeoutSeconds": 600})),
            "team-a",
        )
        .unwrap();
        assert_eq!(w.name_any(), "team-a--rb");
        let spec = &w.data["spec"];
        assert_eq!(spec["workflowTemplateRef"], json!({"name": "rotate"}));
        assert_eq!(
            spec["arguments"]["parameters"],
            json!([{"name": "a", "value": "1"}, {"name": "b", "value": "2"},
                   {"name": "targetChartVersion", "value": "3.1.0"}])
        );
        assert_eq!(spec["activeDeadlineSeconds"], 600);
        assert_eq!(spec["serviceAccountName"], RUNNER_SERVICE_ACCOUNT);
        assert_eq!(
            spec["ttlStrategy"]["secondsAfterCompletion"],
            DEFAULT_TTL_AFTER_FINISHED
        );
        assert_eq!(w.labels()[keys::LABEL_OPERATION], "u-3");
        assert_eq!(w.owner_references()[0].kind, "Operation");
        // Alias and cluster scope.
        let w = build(
            &op(json!({"template": "t", "clusterScope": true})),
            "elsewhere",
        )
        .unwrap();
        assert_eq!(
            w.data["spec"]["workflowTemplateRef"],
            json!({"name": "t", "clusterScope": true})
        );
        assert!(w.data["spec"].get("arguments").is_none());
        assert!(w.owner_references().is_empty());
        assert!(build(&op(json!({})), "team-a").is_err());
    }

    #[test]
    fn status_mapping() {
        let mut w = build(&op(json!({"workflowTemplate": "t"})), "team-a").unwrap();
        assert!(matches!(status(&w), EngineStatus::Running(_)));
        w.data["status"] = json!({"phase": "Running"});
        assert_eq!(status(&w), EngineStatus::Running("Workflow Running".into()));
        w.data["status"] = json!({"phase": "Succeeded",
            "outputs": {"parameters": [{"name": "url", "value": "https://x"}]}});
        match status(&w) {
            EngineStatus::Succeeded { outputs, .. } => {
                assert_eq!(outputs["workflowName"], "team-a--rb");
                assert_eq!(outputs["param.url"], "https://x");
            }
            other => panic!("{other:?}"),
        }
        w.data["status"] = json!({"phase": "Failed", "message": "step 2 failed"});
        assert!(
            matches!(status(&w), EngineStatus::Failed { reason, message, .. }
            if reason == "WorkflowFailed" && message == "step 2 failed")
        );
        w.data["status"] = json!({"phase": "Error"});
        assert!(
            matches!(status(&w), EngineStatus::Failed { reason, .. } if reason == "WorkflowError")
        );
    }
}
