//! What every integration test needs around the control plane: waiting for an outcome,
//! a namespace of its own, and stand-ins for the third-party controllers that do not run
//! here (Velero, Argo Workflows, VolSync, the snapshot controller, helm-controller, and
//! the Job controller, whose Pods would never start without nodes).
//!
//! A stand-in writes exactly the status its controller would write and nothing else, so
//! the code under test reads the same objects it reads in a real cluster. The writers
//! return errors with context rather than panicking; [`eventually`] panics on purpose,
//! because running out of time is the test failing.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{ControlPlane, fresh_namespace};

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(100);

/// Calls `probe` until it yields a value and returns that value. Panics naming `what` once
/// `timeout` has passed without one.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or_report(what, timeout, probe, || async {}).await
}

/// [`eventually`] that first runs `report` when time runs out (print what the cluster
/// shows, so a failure explains itself), then panics.
pub async fn eventually_or_report<T, F, Fut, R, RFut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
    report: R,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
    R: FnOnce() -> RFut,
    RFut: Future<Output = ()>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            report().await;
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A test's own namespace on the test process's control plane, with an admin client.
pub struct TestNamespace {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub ns: String,
}

/// Starts (or reuses) the control plane and creates a fresh namespace `<prefix>-<pid>-<n>`.
pub async fn test_namespace(prefix: &str) -> Result<TestNamespace> {
    let cp = ControlPlane::get().await?;
    let client = cp.client().await?;
    let ns = fresh_namespace(&client, prefix).await?;
    Ok(TestNamespace { cp, client, ns })
}

/// Creates namespace `name` as it is, for tests that need a well-known name (the operator's
/// own namespace, `velero`); a test process may create each such name once.
pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Plays a controller whose CRD has no status subresource (Velero, Argo Workflows):
/// `status` is an ordinary field there, merge-patched like the spec.
pub async fn write_status<K>(api: &Api<K>, name: &str, status: Value) -> Result<()>
where
    K: Clone + DeserializeOwned + Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .with_context(|| format!("writing the status of {name}"))?;
    Ok(())
}

/// Plays a controller that reports through the status subresource (VolSync, the snapshot
/// controller, the ApplicationInstance controller): merge-patches `status` there.
pub async fn write_status_subresource<K>(api: &Api<K>, name: &str, status: Value) -> Result<()>
where
    K: Clone + DeserializeOwned + Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .with_context(|| format!("writing the status subresource of {name}"))?;
    Ok(())
}

/// Plays the Job controller finishing Job `name`: `condition` is `Complete` or `Failed`
/// with `reason`, preceded by the interim condition the controller sets first
/// (`SuccessCriteriaMet` / `FailureTarget`), with start and completion times and the pod
/// counter.
pub async fn job_controller_finishes(
    jobs: &Api<Job>,
    name: &str,
    condition: &str,
    reason: &str,
) -> Result<()> {
    let now = now();
    let finished = json!({"type": condition, "status": "True", "reason": reason,
        "message": format!("{condition} ({reason})"), "lastTransitionTime": now, "lastProbeTime": now});
    let status = if condition == "Complete" {
        json!({"startTime": now, "completionTime": now, "succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
            finished]})
    } else {
        json!({"startTime": now, "failed": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now},
            finished]})
    };
    write_status_subresource(jobs, name, status).await
}

/// Plays helm-controller: `Ready=<ready>` with `reason` and `message` for the HelmRelease's
/// current generation, and `Released=False` beside it when the release failed.
pub async fn helm_controller_reports<K>(
    api: &Api<K>,
    name: &str,
    ready: &str,
    reason: &str,
    message: &str,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let hr = api
        .get(name)
        .await
        .with_context(|| format!("reading HelmRelease {name}"))?;
    let now = now();
    let mut conditions = vec![
        json!({"type": "Ready", "status": ready, "reason": reason, "message": message, "lastTransitionTime": now}),
    ];
    if ready == "False" {
        conditions.push(json!({"type": "Released", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now}));
    }
    write_status_subresource(
        api,
        name,
        json!({"observedGeneration": hr.meta().generation, "conditions": conditions}),
    )
    .await
}
