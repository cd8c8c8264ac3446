//! `helmHookJob` engine (Migration): runs a copy of the chart's own rendered hook Job.
//!
//! The hook comes from the Helm release storage Secret of the target's release
//! (`sh.helm.release.v1.<release>.v<N>`, the highest revision, deployed ones first):
//! its `release` data is base64(gzip(JSON)); the JSON's `hooks[]` carry `name`, `kind`,
//! `events` and the rendered `manifest`. The hook named `parameters.hookName` (by hook
//! name or by the Job's `metadata.name`) must be a Job; its spec is copied into a new Job
//! named like every workload (`<ns>--<operation>`), labelled with the Operation UID and
//! the hook name, without Helm's hook annotations (it is not part of the release), and
//! with `ttlSecondsAfterFinished` (default one day) so a failed run keeps its logs.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::ResourceExt;
use serde_json::Value;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_api::operation::Operation;

use super::engine::{
    Build, BuildError, Engine, Input, Query, Scope, Settings, Stop, Workload, Write, parse,
};
use super::job::{job_resource, stop_job};
use super::{EngineStatus, owner_refs, parameters, str_param, workload_labels, workload_name};
use kube_core::ApiResource;
use kube_core::DynamicObject;

pub const DEFAULT_TTL_AFTER_FINISHED: i32 = 86_400;
const SECRET_PREFIX: &str = "sh.helm.release.v1.";

/// Why no hook could be cloned; each is a terminal failure with its own reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookError {
    /// The target has no Helm release (placeholder): `HookRequiresRelease`.
    NoRelease(String),
    /// No storage Secret, or no hook of that name: `HookNotFound`.
    NotFound(String),
    /// The release data or the hook manifest cannot be read: `HookNotFound` too.
    Unreadable(String),
}

impl HookError {
    pub fn reason(&self) -> &'static str {
        match self {
            HookError::NoRelease(_) => "HookRequiresRelease",
            _ => "HookNotFound",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            HookError::NoRelease(m) | HookError::NotFound(m) | HookError::Unreadable(m) => m,
        }
    }
}

/// The Helm release name of the target: the HelmRelease the instance controller made
/// (`status.helmReleaseRef`), else `spec.release.name`. Never assumes `spec.release`.
pub fn release_name(target: &ApplicationInstance) -> Option<String> {
    target
        .status
        .as_ref()
        .and_then(|s| s.helm_release_ref.as_ref())
        .map(|r| r.name.clone())
        .or_else(|| target.spec.release.as_ref().map(|r| r.name.clone()))
        .filter(|n| !n.is_empty())
}

/// The storage Secret to read: highest revision among deployed ones, else highest.
pub fn pick_release_secret<'a>(secrets: &'a [Secret], release: &str) -> Option<&'a Secret> {
    let prefix = format!("{SECRET_PREFIX}{release}.v");
    let revision = |s: &Secret| -> Option<u64> { s.name_any().strip_prefix(&prefix)?.parse().ok() };
    let deployed = |s: &Secret| s.labels().get("status").map(String::as_str) == Some("deployed");
    secrets
        .iter()
        .filter_map(|s| revision(s).map(|r| (deployed(s), r, s)))
        .max_by_key(|(d, r, _)| (*d, *r))
        .map(|(_, _, s)| s)
}

/// Helm's encoding of the `release` key: base64 text of (optionally gzipped) JSON.
pub fn decode_release(data: &[u8]) -> Result<Value, String> {
    let raw = STANDARD
        .decode(data.trim_ascii())
        .map_err(|e| format!("release data is not base64: {e}"))?;
    let json = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("release data is not valid gzip: {e}"))?;
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| format!("release data is not JSON: {e}"))
}

/// Inverse of [`decode_release`] (gzip + base64), as Helm writes it.
pub fn encode_release(release: &Value) -> Vec<u8> {
    let mut gz = Vec::new();
    let json = release.to_string();
    let mut enc = flate2::read::GzEncoder::new(json.as_bytes(), flate2::Compression::default());
    // Reading from an in-memory slice cannot fail.
    let _ = enc.read_to_end(&mut gz);
    STANDARD.encode(gz).into_bytes()
}

/// The hook Job named `hook_name` in a decoded release, and its events.
pub fn find_hook(release: &Value, hook_name: &str) -> Result<(Job, Vec<String>), HookError> {
    let hooks = release
        .get("hooks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut names = Vec::new();
    for hook in &hooks {
        let name = hook.get("name").and_then(Value::as_str).unwrap_or("");
        let manifest = hook.get("manifest").and_then(Value::as_str).unwrap_or("");
        let parsed: Option<Value> = serde_yaml::from_str(manifest).ok();
        let manifest_name = parsed
            .as_ref()
            .and_then(|m| m.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        names.push(name.to_string());
        if name != hook_name && manifest_name != hook_name {
            continue;
        }
        let kind = hook
            .get("kind")
            .and_then(Value::as_str)
            .or_else(|| parsed.as_ref()?.get("kind")?.as_str())
            .unwrap_or("");
        if kind != "Job" {
            return Err(HookError::NotFound(format!(
                "hook {hook_name:?} is a {kind}, not a Job"
            )));
        }
        let job: Job = parsed
            .ok_or_else(|| {
                HookError::Unreadable(format!("hook {hook_name:?}: manifest is not YAML"))
            })
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| {
                    HookError::Unreadable(format!("hook {hook_name:?}: not a valid Job: {e}"))
                })
            })?;
        let events = hook
            .get("events")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return Ok((job, events));
    }
    let release_name = release.get("name").and_then(Value::as_str).unwrap_or("?");
    Err(HookError::NotFound(format!(
        "release {release_name:?} has no hook named {hook_name:?} (hooks: {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )))
}

/// The copy of `hook` that runs for `op` in `target_ns`.
pub fn build(op: &Operation, target_ns: &str, hook: &Job) -> Job {
    let p = parameters(op);
    let hook_name = str_param(&p, "hookName").unwrap_or_default();
    let mut labels = hook.labels().clone();
    labels.extend(workload_labels(op));
    labels.insert(keys::LABEL_HOOK_NAME.into(), label_value(&hook_name));
    let mut spec = hook.spec.clone().unwrap_or_default();
    // The Job controller fills these; a copy must not carry them.
    spec.selector = None;
    spec.manual_selector = None;
    let int = |k: &str| p.get(k).and_then(Value::as_i64);
    if let Some(n) = int("backoffLimit") {
        spec.backoff_limit = Some(n as i32);
    }
    if let Some(n) = int("activeDeadlineSeconds") {
        spec.active_deadline_seconds = Some(n);
    }
    spec.ttl_seconds_after_finished = Some(
        int("ttlSecondsAfterFinished")
            .map(|n| n as i32)
            .unwrap_or(DEFAULT_TTL_AFTER_FINISHED),
    );
    let mut pod_meta = spec.template.metadata.clone().unwrap_or_default();
    let mut pod_labels = pod_meta.labels.clone().unwrap_or_default();
    pod_labels
        .retain(|k, _| !k.contains("controller-uid") && !k.starts_with("batch.kubernetes.io/"));
    pod_labels.extend(labels.clone());
    pod_meta.labels = Some(pod_labels);
    spec.template.metadata = Some(pod_meta);
    if let (Some(sa), Some(pod)) = (
        str_param(&p, "serviceAccountName"),
        spec.template.spec.as_mut(),
    ) {
        pod.service_account_name = Some(sa);
    }
    let mut annotations: BTreeMap<String, String> = hook
        .annotations()
        .iter()
        .filter(|(k, _)| !k.starts_with("helm.sh/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(keys::ANNOTATION_HELM_HOOK.into(), hook_name);
    Job {
        metadata: ObjectMeta {
            name: Some(workload_name(op)),
            namespace: Some(target_ns.into()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner_refs(op, target_ns),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A label value from a hook name (≤ 63 characters, alphanumeric at both ends).
fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Job status as for RunCommand, with the hook's reasons.
pub fn status(job: &Job) -> EngineStatus {
    match super::job::status(job) {
        EngineStatus::Succeeded { outputs, .. } => EngineStatus::Succeeded {
            message: "hook Job completed".into(),
            outputs,
        },
        EngineStatus::Failed {
            message,
            outputs,
            reason,
        } => EngineStatus::Failed {
            reason: if reason == "JobActiveDeadlineExceeded" {
                reason
            } else {
                "HelmHookJobFailed".into()
            },
            message,
            outputs,
        },
        running => running,
    }
}

/// The `helmHookJob` engine.
pub struct HelmHookEngine;

impl Engine for HelmHookEngine {
    fn resources(&self, _: &Settings) -> Vec<(ApiResource, Scope)> {
        vec![(job_resource(), Scope::Operations)]
    }

    /// The release's storage Secrets (Helm labels them `owner=helm,name=<release>`).
    fn prerequisites(&self, input: &Input<'_>) -> Vec<Query> {
        release_name(input.target)
            .map(|release| {
                Query::labelled(
                    ApiResource::erase::<Secret>(&()),
                    input.target_ns,
                    format!("owner=helm,name={release}"),
                )
            })
            .into_iter()
            .collect()
    }

    fn build(&self, input: &Input<'_>, found: &[Vec<DynamicObject>]) -> Result<Build, BuildError> {
        let (op, target, target_ns) = (input.op, input.target, input.target_ns);
        let Some(release) = release_name(target) else {
            return Err(BuildError::HookRequiresRelease(format!(
                "ApplicationInstance {:?} has no Helm release (placeholder): no hook to run",
                target.name_any()
            )));
        };
        let secrets: Vec<Secret> = parse(found.first().map_or(&[][..], Vec::as_slice));
        let Some(secret) = pick_release_secret(&secrets, &release) else {
            return Err(BuildError::HookNotFound(format!(
                "no Helm release storage Secret {SECRET_PREFIX}{release}.v<N> in namespace {target_ns}"
            )));
        };
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get("release"))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let hook_name = str_param(&parameters(op), "hookName").unwrap_or_default();
        let (hook, events) = decode_release(&data)
            .map_err(HookError::Unreadable)
            .and_then(|rel| find_hook(&rel, &hook_name))
            .map_err(|e| {
                let message = format!("{}: {}", secret.name_any(), e.message());
                match e {
                    HookError::NoRelease(_) => BuildError::HookRequiresRelease(message),
                    HookError::NotFound(_) | HookError::Unreadable(_) => {
                        BuildError::HookNotFound(message)
                    }
                }
            })?;
        let job = build(op, target_ns, &hook);
        let mut out = Build::one(Write::create(&job)?, "Job", job.name_any(), target_ns);
        out.outputs = Some(BTreeMap::from([
            ("hookName".to_string(), hook_name),
            ("hookEvents".to_string(), events.join(",")),
            ("releaseSecret".to_string(), secret.name_any()),
        ]));
        Ok(out)
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
    use k8s_openapi::ByteString;
    use serde_json::json;

    const HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: wiki-db-migrate\n  annotations:\n    helm.sh/hook: pre-upgrade\n    helm.sh/hook-weight: \"1\"\n    team: wiki\n  labels:\n    app.kubernetes.io/instance: wiki\nspec:\n  backoffLimit: 3\n  template:\n    metadata:\n      labels:\n        app: migrate\n    spec:\n      restartPolicy: Never\n      serviceAccountName: wiki\n      containers:\n      - name: migrate\n        image: wiki:2.0\n        command: [\"/bin/migrate\", \"up\"]\n        env:\n        - name: DB\n          value: postgres\n";

    fn release() -> Value {
        json!({"name": "wiki", "version": 3, "manifest": "---\n# main manifest",
        "hooks": [
            {"name": "wiki-test", "kind": "Pod", "manifest": "kind: Pod\nmetadata: {name: wiki-test}", "events": ["test"]},
            {"name": "wiki-db-migrate", "kind": "Job", "manifest": HOOK, "events": ["pre-upgrade", "pre-install"]}
        ]})
    }

    fn op(params: Value) -> Operation {
        crate::engines::test_operation("mig", "u-5", "Migration", "helmHookJob", params)
    }

    fn secret(name: &str, status: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("status".to_string(), status.to_string())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "release".to_string(),
                ByteString(encode_release(&release())),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn release_round_trip_and_latest_deployed_revision() {
        let s = secret("sh.helm.release.v1.wiki.v3", "deployed");
        let data = &s.data.as_ref().unwrap()["release"].0;
        assert_eq!(decode_release(data).unwrap(), release());
        assert!(decode_release(b"not base64!").is_err());
        let secrets = vec![
            secret("sh.helm.release.v1.wiki.v2", "superseded"),
            secret("sh.helm.release.v1.wiki.v10", "deployed"),
            secret("sh.helm.release.v1.wiki.v11", "failed"),
            secret("sh.helm.release.v1.wiki-other.v12", "deployed"),
            secret("sh.helm.release.v1.wiki.v9", "deployed"),
        ];
        assert_eq!(
            pick_release_secret(&secrets, "wiki").unwrap().name_any(),
            "sh.helm.release.v1.wiki.v10"
        );
        assert!(pick_release_secret(&secrets, "nope").is_none());
    }

    #[test]
    fn clones_the_hook_job() {
        let (hook, events) = find_hook(&release(), "wiki-db-migrate").unwrap();
        assert_eq!(events, ["pre-upgrade", "pre-install"]);
        let job = build(
            &op(json!({"hookName": "wiki-db-migrate", "backoffLimit": 0})),
            "team-a",
            &hook,
        );
        assert_eq!(job.name_any(), "team-a--mig");
        assert_eq!(job.labels()[keys::LABEL_OPERATION], "u-5");
        assert_eq!(job.labels()[keys::LABEL_HOOK_NAME], "wiki-db-migrate");
        assert_eq!(job.labels()["app.kubernetes.io/instance"], "wiki");
        let ann = job.annotations();
        assert_eq!(ann[keys::ANNOTATION_HELM_HOOK], "wiki-db-migrate");
        assert!(!ann.contains_key("helm.sh/hook-weight"));
        assert_eq!(ann["team"], "wiki");
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(
            spec.ttl_seconds_after_finished,
            Some(DEFAULT_TTL_AFTER_FINISHED)
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("wiki:2.0"));
        assert_eq!(pod.containers[0].env.as_ref().unwrap()[0].name, "DB");
        assert_eq!(pod.service_account_name.as_deref(), Some("wiki"));
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(pod_labels["app"], "migrate");
        assert_eq!(pod_labels[keys::LABEL_OPERATION], "u-5");
    }

    #[test]
    fn missing_and_wrong_hooks() {
        let e = find_hook(&release(), "seed").unwrap_err();
        assert_eq!(e.reason(), "HookNotFound");
        assert!(e.message().contains("wiki-db-migrate"), "{}", e.message());
        assert!(
            find_hook(&release(), "wiki-test")
                .unwrap_err()
                .message()
                .contains("not a Job")
        );
        assert!(find_hook(&json!({}), "x").is_err());
        assert_eq!(label_value("pre upgrade/ü"), "pre-upgrade");
    }
}
