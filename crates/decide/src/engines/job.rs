//! `job` engine (RunCommand): one `batch/v1` Job in the target namespace, running as the
//! runner ServiceAccount, owned by the Operation (same namespace), kept after it finishes
//! for `ttlSecondsAfterFinished` (default one day) so its logs can be read.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::ResourceExt;
use serde_json::{Value, json};
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write, parse,
};
use super::{EngineStatus, RUNNER_SERVICE_ACCOUNT, workload_name};
use kube_core::ApiResource;
use kube_core::DynamicObject;
use vworkspace_api::ApplicationInstance;

pub const DEFAULT_TTL_AFTER_FINISHED: i32 = 86_400;

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    })
}

fn int(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64)
}

pub fn labels(op: &Operation) -> BTreeMap<String, String> {
    super::workload_labels(op)
}

/// The Job for `op`; parameters were validated before.
pub fn build(op: &Operation, target_ns: &str) -> Result<Job, String> {
    let p = op.spec.parameters.clone().unwrap_or(json!({}));
    let image = p
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| "spec.parameters.image: required".to_string())?;
    let env: Option<Vec<EnvVar>> = match p.get("env") {
        Some(v) => Some(
            serde_json::from_value(v.clone()).map_err(|e| format!("spec.parameters.env: {e}"))?,
        ),
        None => None,
    };
    let labels = labels(op);
    let owner = super::owner_refs(op, target_ns);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(workload_name(op)),
            namespace: Some(target_ns.to_string()),
            labels: Some(labels.clone()),
            owner_references: owner,
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: int(p.get("backoffLimit")).map(|n| n as i32),
            active_deadline_seconds: int(p.get("activeDeadlineSeconds"))
                .or_else(|| int(p.get("timeoutSeconds"))),
            ttl_seconds_after_finished: Some(
                int(p.get("ttlSecondsAfterFinished"))
                    .map(|n| n as i32)
                    .unwrap_or(DEFAULT_TTL_AFTER_FINISHED),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(RUNNER_SERVICE_ACCOUNT.into()),
                    containers: vec![Container {
                        name: "runner".into(),
                        image: Some(image.to_string()),
                        command: strings(p.get("command")),
                        args: strings(p.get("args")),
                        env,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Job conditions → engine status.
pub fn status(job: &Job) -> EngineStatus {
    let outputs = BTreeMap::from([("jobName".to_string(), job.name_any())]);
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return EngineStatus::Succeeded {
            message: "Job completed".into(),
            outputs,
        };
    }
    if let Some(c) = is("Failed") {
        let reason = match c.reason.as_deref() {
            Some("DeadlineExceeded") => "JobActiveDeadlineExceeded",
            Some("BackoffLimitExceeded") => "JobFailedBackoffExceeded",
            _ => "JobFailed",
        };
        return EngineStatus::Failed {
            reason: reason.into(),
            message: c.message.clone().unwrap_or_else(|| "Job failed".into()),
            outputs,
        };
    }
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    EngineStatus::Running(format!("Job running ({active} active pod(s))"))
}

/// `batch/v1` Job.
pub fn job_resource() -> ApiResource {
    ApiResource::erase::<Job>(&())
}

/// Jobs are suspended (pods end, the Job and its logs stay until the TTL) and deleted
/// with the Operation. Shared with the `helmHookJob` engine.
pub fn stop_job(workload: &Workload, why: Stop) -> Vec<Write> {
    let (ns, name) = (&workload.namespace, &workload.name);
    vec![match why {
        Stop::Delete => Write::delete(job_resource(), ns, name),
        Stop::Cancel | Stop::Timeout => {
            Write::patch(job_resource(), ns, name, json!({"spec": {"suspend": true}}))
        }
    }]
}

/// The `job` engine.
pub struct JobEngine;

impl Engine for JobEngine {
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        vec![(job_resource(), Scope::Operations)]
    }

    fn build(&self, input: &Input<'_>, _: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let job = build(input.op, input.target_ns).map_err(BuildError::Invalid)?;
        let name = job.name_any();
        Ok(Build::one(
            Write::create(&job)?,
            "Job",
            name,
            input.target_ns,
        ))
    }

    fn observe(&self, _: &Operation, workload: &Workload) -> Query {
        Query::named(job_resource(), &workload.namespace, &workload.name)
    }

    fn status(&self, _: &Operation, found: &[DynamicObject]) -> Option<EngineStatus> {
        parse::<Job>(found).first().map(status)
    }

    fn stop(
        &self,
        _: &Operation,
        workload: &Workload,
        why: Stop,
        _: Option<&ApplicationInstance>,
    ) -> Vec<Write> {
        stop_job(workload, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("du", "u-2", "RunCommand", "job", params)
    }

    #[test]
    fn job_from_parameters() {
        let j = build(
            &op(json!({"image": "busybox", "command": ["du", "-sh"], "env": [{"name": "A", "value": "1"}], "backoffLimit": 0})),
            "team-a",
        )
        .unwrap();
        let spec = j.spec.unwrap();
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some(RUNNER_SERVICE_ACCOUNT)
        );
        assert_eq!(pod.containers[0].env.as_ref().unwrap()[0].name, "A");
        assert_eq!(
            spec.ttl_seconds_after_finished,
            Some(DEFAULT_TTL_AFTER_FINISHED)
        );
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(j.metadata.name.as_deref(), Some("team-a--du"));
        assert_eq!(j.metadata.owner_references.unwrap()[0].controller, None);
        // Another namespace: no owner reference (cross-namespace owners are invalid).
        let j = build(&op(json!({"image": "busybox"})), "elsewhere").unwrap();
        assert!(j.metadata.owner_references.is_none());
    }

    #[test]
    fn status_mapping() {
        let mut j = build(&op(json!({"image": "busybox"})), "team-a").unwrap();
        assert!(matches!(status(&j), EngineStatus::Running(_)));
        j.status = serde_json::from_value(json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "boom"}]})).unwrap();
        match status(&j) {
            EngineStatus::Failed {
                reason, message, ..
            } => {
                assert_eq!(reason, "JobFailedBackoffExceeded");
                assert_eq!(message, "boom");
            }
            other => panic!("{other:?}"),
        }
        j.status =
            serde_json::from_value(json!({"conditions": [{"type": "Complete", "status": "True"}]}))
                .unwrap();
        assert!(matches!(status(&j), EngineStatus::Succeeded { .. }));
    }
}
