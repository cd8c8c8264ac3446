//! Operation controller against a real kube-apiserver with the Velero CRDs installed; the
//! test plays Velero and the Job controller by writing their status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::{Env, SECRET, WAIT, eventually, placeholder};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::find;
use vworkspace_api::operation::Phase;
use vworkspace_operator::approval;

/// The controller on a fresh namespace with one target: `wiki`, a placeholder declaring
/// backup and restore through Velero and runcommand through a Job.
async fn setup(prefix: &str) -> Env {
    Env::start(prefix, |ns| {
        vec![placeholder(
            ns,
            "wiki",
            json!({"ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero",
                   "ops.vworkspace.io/runcommand": "job"}),
        )]
    })
    .await
}

#[tokio::test]
async fn velero_backup_succeeds_and_terminal_is_never_rewritten() {
    let env = setup("op-backup").await;
    env.create(
        "nightly",
        "wiki",
        "Backup",
        "velero",
        json!({"parameters": {"ttl": "720h"}}),
    )
    .await;
    let op = env.wait_phase("nightly", Phase::Running).await;
    let er = op.status.as_ref().unwrap().engine_ref.clone().unwrap();
    let name = format!("{}--nightly", env.ns);
    assert_eq!(
        (
            er.kind.as_deref(),
            er.name.as_deref(),
            er.namespace.as_deref()
        ),
        (
            Some("Backup"),
            Some(name.as_str()),
            Some(env.velero_ns.as_str())
        )
    );
    let backup = env.velero("Backup").get(&name).await.unwrap();
    assert_eq!(backup.data["spec"]["includedNamespaces"], json!([env.ns]));
    assert_eq!(backup.data["spec"]["ttl"], "720h");
    assert_eq!(
        backup.labels()["ops.vworkspace.io/operation"],
        op.uid().unwrap()
    );

    env.velero_reports("Backup", &name, json!({"phase": "InProgress"}))
        .await;
    env.velero_reports(
        "Backup",
        &name,
        json!({"phase": "Completed", "progress": {"itemsBackedUp": 12}}),
    )
    .await;
    let done = env.wait_phase("nightly", Phase::Succeeded).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.outputs.as_ref().unwrap()["backupName"], name);
    assert_eq!(status.outputs.as_ref().unwrap()["itemsBackedUp"], "12");
    assert!(status.finished_at.is_some());
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == done.metadata.generation)
    );

    // Velero later reports a failure, and the Backup is deleted by its TTL: the
    // Operation stays exactly as it was.
    env.velero_reports("Backup", &name, json!({"phase": "Failed"}))
        .await;
    env.velero("Backup")
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.ops().get("nightly").await.unwrap();
    assert_eq!(after.status, done.status, "terminal Operation rewritten");
}

#[tokio::test]
async fn velero_partial_failure_and_validation_failure() {
    let env = setup("op-velero-fail").await;
    env.create("partial", "wiki", "Backup", "velero", json!({}))
        .await;
    env.wait_phase("partial", Phase::Running).await;
    env.velero_reports(
        "Backup",
        &format!("{}--partial", env.ns),
        json!({"phase": "PartiallyFailed", "errors": 3}),
    )
    .await;
    let op = env.wait_phase("partial", Phase::Succeeded).await;
    let outputs = op.status.unwrap().outputs.unwrap();
    assert!(outputs.contains_key("warning"), "{outputs:?}");
    assert_eq!(outputs["errors"], "3");

    env.create("invalid", "wiki", "Backup", "velero", json!({}))
        .await;
    env.wait_phase("invalid", Phase::Running).await;
    env.velero_reports(
        "Backup",
        &format!("{}--invalid", env.ns),
        json!({"phase": "FailedValidation", "validationErrors": ["storage location not found"]}),
    )
    .await;
    let op = env.wait_phase("invalid", Phase::Failed).await;
    let failed = find(&op.status.as_ref().unwrap().conditions, "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed.reason, "VeleroBackupValidationFailed");
    assert!(failed.message.contains("storage location not found"));
    let running = find(&op.status.unwrap().conditions, "Running")
        .unwrap()
        .clone();
    assert_eq!(running.status, "False");
}

#[tokio::test]
async fn restore_waits_for_a_valid_approval() {
    let env = setup("op-approval").await;
    let now = jiff::Timestamp::now().as_second();
    env.create(
        "restore",
        "wiki",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b1"}}),
    )
    .await;
    let m = env.wait_blocked("restore", "AwaitingApproval").await;
    assert!(m.contains("approval claim required"), "{m}");
    let set_claim =
        |claim: String| env.patch_spec("restore", json!({"approvals": {"claim": claim}}));
    set_claim(approval::issue(
        "wrong-secret",
        "restore",
        "mallory",
        now + 600,
    ))
    .await;
    eventually("bad signature", WAIT, || async {
        let op = env.ops().get("restore").await.unwrap();
        let c = find(&op.status?.conditions, "Blocked")?.clone();
        c.message.contains("signature mismatch").then_some(())
    })
    .await;
    set_claim(approval::issue(SECRET, "restore", "alice", now - 10)).await;
    eventually("expired", WAIT, || async {
        let op = env.ops().get("restore").await.unwrap();
        let c = find(&op.status?.conditions, "Blocked")?.clone();
        c.message.contains("expired").then_some(())
    })
    .await;
    assert!(
        env.velero("Restore")
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    set_claim(approval::issue(SECRET, "restore", "alice", now + 600)).await;
    env.wait_phase("restore", Phase::Running).await;
    let restore = env
        .velero("Restore")
        .get(&format!("{}--restore", env.ns))
        .await
        .unwrap();
    assert_eq!(restore.data["spec"]["backupName"], "b1");
}

#[tokio::test]
async fn concurrency_gate_parks_and_releases() {
    let env = setup("op-conflict").await;
    let claim = approval::issue(
        SECRET,
        "restore",
        "alice",
        jiff::Timestamp::now().as_second() + 600,
    );
    env.create("backup", "wiki", "Backup", "velero", json!({}))
        .await;
    env.wait_phase("backup", Phase::Running).await;
    env.create(
        "restore",
        "wiki",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b1"}, "approvals": {"claim": claim}}),
    )
    .await;
    let m = env.wait_blocked("restore", "ConflictingOperation").await;
    assert!(
        m.contains("conflicts with operation \"backup\" (Backup)"),
        "{m}"
    );
    // Unrelated types run alongside.
    env.create(
        "du",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("du", Phase::Running).await;
    // The backup finishes: the restore goes on without waiting for a recheck.
    env.velero_reports(
        "Backup",
        &format!("{}--backup", env.ns),
        json!({"phase": "Completed"}),
    )
    .await;
    env.wait_phase("restore", Phase::Running).await;
}

#[tokio::test]
async fn job_success_failure_and_logs_kept() {
    let env = setup("op-job").await;
    env.create(
        "du",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {
        "image": "busybox", "command": ["du", "-sh", "/data"],
        "env": [{"name": "MODE", "value": "fast"}], "backoffLimit": 0}}),
    )
    .await;
    let op = env.wait_phase("du", Phase::Running).await;
    let name = format!("{}--du", env.ns);
    assert_eq!(
        op.status.unwrap().engine_ref.unwrap().name.as_deref(),
        Some(name.as_str())
    );
    let job = env.jobs().get(&name).await.unwrap();
    let pod = job.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("vworkspace-operation-runner")
    );
    assert_eq!(
        pod.containers[0].env.as_ref().unwrap()[0].value.as_deref(),
        Some("fast")
    );
    assert_eq!(job.owner_references()[0].kind, "Operation");
    env.job_reports(&name, "Complete", "CompletionsReached")
        .await;
    let op = env.wait_phase("du", Phase::Succeeded).await;
    assert_eq!(op.status.unwrap().outputs.unwrap()["jobName"], name);

    env.create(
        "boom",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("boom", Phase::Running).await;
    let name = format!("{}--boom", env.ns);
    env.job_reports(&name, "Failed", "BackoffLimitExceeded")
        .await;
    let op = env.wait_phase("boom", Phase::Failed).await;
    let status = op.status.unwrap();
    assert_eq!(
        find(&status.conditions, "Failed").unwrap().reason,
        "JobFailedBackoffExceeded"
    );
    let logs = status.logs_ref.unwrap();
    assert_eq!(
        (logs.kind.as_deref(), logs.name.as_deref()),
        (Some("Job"), Some(name.as_str()))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env.jobs().get_opt(&name).await.unwrap().is_some(),
        "failed Job deleted on the spot"
    );
}

#[tokio::test]
async fn cancel_and_timeout_stop_the_workload() {
    let env = setup("op-cancel").await;
    env.create(
        "long",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("long", Phase::Running).await;
    env.cancel("long").await;
    let op = env.wait_phase("long", Phase::Cancelled).await;
    assert_eq!(
        find(&op.status.as_ref().unwrap().conditions, "Cancelled")
            .unwrap()
            .reason,
        "UserCancelled"
    );
    let job = env.jobs().get(&format!("{}--long", env.ns)).await.unwrap();
    assert_eq!(
        job.spec.unwrap().suspend,
        Some(true),
        "workload not stopped"
    );

    env.create(
        "slow",
        "wiki",
        "RunCommand",
        "job",
        json!({"timeoutSeconds": 2, "parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("slow", Phase::Running).await;
    let op = env.wait_phase("slow", Phase::Failed).await;
    let status = op.status.unwrap();
    assert_eq!(
        find(&status.conditions, "Failed").unwrap().reason,
        "Timeout"
    );
    assert!(status.logs_ref.is_some());
    let job = env.jobs().get(&format!("{}--slow", env.ns)).await.unwrap();
    assert_eq!(job.spec.unwrap().suspend, Some(true));

    // A Pending Operation can be cancelled too.
    env.create(
        "parked",
        "wiki",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b"}}),
    )
    .await;
    env.wait_blocked("parked", "AwaitingApproval").await;
    env.cancel("parked").await;
    env.wait_phase("parked", Phase::Cancelled).await;
}

#[tokio::test]
async fn bad_input_is_blocked_with_the_path() {
    let env = setup("op-invalid").await;
    env.create(
        "badenv",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox", "env": [{"value": "x"}]}}),
    )
    .await;
    let m = env.wait_blocked("badenv", "ValidationFailed").await;
    assert_eq!(m, "spec.parameters.env[0].name: required");
    env.create(
        "badsa",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox", "serviceAccountName": "default"}}),
    )
    .await;
    assert!(
        env.wait_blocked("badsa", "ValidationFailed")
            .await
            .contains("serviceAccountName")
    );
    env.create("pair", "wiki", "Backup", "job", json!({})).await;
    assert!(
        env.wait_blocked("pair", "ValidationFailed")
            .await
            .contains("cannot run on spec.engine job")
    );
    env.create(
        "argo",
        "wiki",
        "Runbook",
        "workflow",
        json!({"parameters": {"workflowTemplate": "t"}}),
    )
    .await;
    // The target does not declare ops.vworkspace.io/runbook.
    env.wait_blocked("argo", "CapabilityMissing").await;
    // Missing capability, then declared: re-evaluated on the target's change.
    let targets: Api<ApplicationInstance> = Api::namespaced(env.client.clone(), &env.ns);
    targets
        .patch(
            "wiki",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ops.vworkspace.io/runcommand": null}}}),
            ),
        )
        .await
        .unwrap();
    env.create(
        "nocap",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_blocked("nocap", "CapabilityMissing").await;
    targets
        .patch(
            "wiki",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ops.vworkspace.io/runcommand": "job"}}}),
            ),
        )
        .await
        .unwrap();
    env.wait_phase("nocap", Phase::Running).await;
    // A missing target, created later.
    let mut v = json!({"parameters": {"image": "busybox"}});
    v["targetRef"] = json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "later"});
    env.create("orphan", "wiki", "RunCommand", "job", v).await;
    assert!(
        env.wait_blocked("orphan", "TargetNotFound")
            .await
            .contains("\"later\"")
    );
}

#[tokio::test]
async fn deletion_stops_running_work_and_gc_takes_finished_jobs() {
    let env = setup("op-delete").await;
    env.create(
        "running",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("running", Phase::Running).await;
    env.ops()
        .delete("running", &DeleteParams::default())
        .await
        .unwrap();
    eventually("operation gone", WAIT, || async {
        env.ops()
            .get_opt("running")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("job gone", WAIT, || async {
        let j = env
            .jobs()
            .get_opt(&format!("{}--running", env.ns))
            .await
            .unwrap();
        (j.is_none() || j.is_some_and(|j| j.metadata.deletion_timestamp.is_some())).then_some(())
    })
    .await;

    env.create(
        "done",
        "wiki",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("done", Phase::Running).await;
    let name = format!("{}--done", env.ns);
    env.job_reports(&name, "Complete", "CompletionsReached")
        .await;
    env.wait_phase("done", Phase::Succeeded).await;
    env.ops()
        .delete("done", &DeleteParams::default())
        .await
        .unwrap();
    // Owned through an owner reference: kube-controller-manager's garbage collector.
    eventually("job collected", WAIT, || async {
        env.jobs()
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
