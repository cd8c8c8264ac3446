//! Operation engines beyond velero/job against a real kube-apiserver with the Argo,
//! VolSync and CSI snapshot CRDs installed: the test plays Argo, the ApplicationInstance
//! controller (for Upgrades), the Job controller, VolSync and the snapshot controller by
//! writing their status. The concurrency matrix is unit-tested on the pure decision; one
//! smoke test of the gate on the apiserver is `operation.rs`'s
//! `concurrency_gate_parks_and_releases`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Env, SECRET, helm_chart, instance, message, placeholder, reason};
use vworkspace_api::operation::Phase;
use vworkspace_operator::engines::helm_hook;
use vworkspace_operator::kinds::{argo, snapshot, volsync};

/// A namespace with the controller running in it and two targets: `wiki`, a placeholder,
/// and `app`, a managed instance (chart `app` 1.0.0, release `app`), both declaring
/// every capability.
async fn setup(prefix: &str) -> Env {
    let caps = json!({
        "ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero",
        "ops.vworkspace.io/runcommand": "job", "ops.vworkspace.io/runbook": "workflow",
        "ops.vworkspace.io/upgrade": "helm", "ops.vworkspace.io/migration": "helmHookJob",
        "ops.vworkspace.io/replicate": "volsync", "ops.vworkspace.io/snapshot": "csiSnapshot"});
    Env::start(prefix, |ns| {
        let mut app = instance(
            ns,
            "app",
            helm_chart("app", "1.0.0"),
            json!({"source": "inline", "inline": {"replicas": 1, "image": {"tag": "a"}}}),
        );
        app["metadata"]["annotations"] = caps.clone();
        vec![placeholder(ns, "wiki", caps), app]
    })
    .await
}

// ---------------------------------------------------------------- workflow (Runbook)

async fn workflow_template(env: &Env, name: &str) {
    let mut t = DynamicObject::new(name, &argo::workflow_template()).within(&env.ns);
    t.data = json!({"spec": {"entrypoint": "main", "arguments": {"parameters": [{"name": "mode"}]},
        "templates": [{"name": "main", "container": {"image": "busybox", "command": ["true"]}}]}});
    env.dynamic(&argo::workflow_template())
        .create(&PostParams::default(), &t)
        .await
        .unwrap();
}

#[tokio::test]
async fn workflow_success_failure_cancel_timeout_and_gc() {
    let env = setup("op-wf").await;
    let wfs = env.dynamic(&argo::workflow());
    // The WorkflowTemplate is missing: the Runbook waits, then runs once it exists.
    env.create(
        "rotate",
        "wiki",
        "Runbook",
        "workflow",
        json!({"parameters": {"workflowTemplate": "rotate-keys",
               "workflowTemplateParameters": {"mode": "full"}, "targetChartVersion": "2.0.0"}}),
    )
    .await;
    let m = env.wait_blocked("rotate", "DependencyMissing").await;
    assert!(m.contains("rotate-keys"), "{m}");
    workflow_template(&env, "rotate-keys").await;
    env.ops()
        .patch(
            "rotate",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    let op = env.wait_phase("rotate", Phase::Running).await;
    let name = env.workload("rotate");
    let er = op.status.unwrap().engine_ref.unwrap();
    assert_eq!(
        (
            er.kind.as_deref(),
            er.name.as_deref(),
            er.namespace.as_deref()
        ),
        (Some("Workflow"), Some(name.as_str()), Some(env.ns.as_str()))
    );
    let wf = wfs.get(&name).await.unwrap();
    assert_eq!(
        wf.data["spec"]["workflowTemplateRef"]["name"],
        "rotate-keys"
    );
    assert_eq!(
        wf.data["spec"]["arguments"]["parameters"],
        json!([{"name": "mode", "value": "full"}, {"name": "targetChartVersion", "value": "2.0.0"}])
    );
    assert_eq!(
        wf.data["spec"]["serviceAccountName"],
        "vworkspace-operation-runner"
    );
    env.set_status(&wfs, &name, json!({"phase": "Running"}))
        .await;
    env.set_status(
        &wfs,
        &name,
        json!({"phase": "Succeeded", "outputs": {"parameters": [{"name": "fingerprint", "value": "ab12"}]}}),
    )
    .await;
    let op = env.wait_phase("rotate", Phase::Succeeded).await;
    let outputs = op.status.as_ref().unwrap().outputs.clone().unwrap();
    assert_eq!(outputs["workflowName"], name);
    assert_eq!(outputs["param.fingerprint"], "ab12");
    assert_eq!(reason(&op, "Running"), "EngineNotStarted");

    // Failure: kept for its logs.
    env.create(
        "broken",
        "wiki",
        "Runbook",
        "workflow",
        json!({"parameters": {"template": "rotate-keys"}}),
    )
    .await;
    env.wait_phase("broken", Phase::Running).await;
    let broken = env.workload("broken");
    env.set_status(
        &wfs,
        &broken,
        json!({"phase": "Failed", "message": "child 'main' failed"}),
    )
    .await;
    let op = env.wait_phase("broken", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "WorkflowFailed");
    assert_eq!(message(&op, "Failed"), "child 'main' failed");
    assert_eq!(
        op.status.unwrap().logs_ref.unwrap().name.as_deref(),
        Some(broken.as_str())
    );
    assert!(
        wfs.get_opt(&broken).await.unwrap().is_some(),
        "failed Workflow deleted"
    );

    // Cancel: terminated, kept.
    env.create(
        "stopme",
        "wiki",
        "Runbook",
        "workflow",
        json!({"parameters": {"workflowTemplate": "rotate-keys"}}),
    )
    .await;
    env.wait_phase("stopme", Phase::Running).await;
    env.cancel("stopme").await;
    let op = env.wait_phase("stopme", Phase::Cancelled).await;
    assert_eq!(reason(&op, "Cancelled"), "UserCancelled");
    let wf = wfs.get(&env.workload("stopme")).await.unwrap();
    assert_eq!(wf.data["spec"]["shutdown"], "Terminate");

    // Timeout: terminated, Failed/Timeout.
    env.create(
        "slow",
        "wiki",
        "Runbook",
        "workflow",
        json!({"timeoutSeconds": 2, "parameters": {"workflowTemplate": "rotate-keys"}}),
    )
    .await;
    env.wait_phase("slow", Phase::Running).await;
    let op = env.wait_phase("slow", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    let wf = wfs.get(&env.workload("slow")).await.unwrap();
    assert_eq!(wf.data["spec"]["shutdown"], "Terminate");

    // Garbage collection: the Workflow is owned by the Operation.
    assert_eq!(
        wfs.get(&name).await.unwrap().owner_references()[0].kind,
        "Operation"
    );
    env.ops()
        .delete("rotate", &DeleteParams::default())
        .await
        .unwrap();
    env.gone(&wfs, &name).await;
}

// ------------------------------------------------------------------ helm (Upgrade)

#[tokio::test]
async fn helm_upgrade_through_the_instance() {
    let env = setup("op-helm").await;
    env.create(
        "up2",
        "app",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "2.0.0", "valuesPatch": {"image": {"tag": "b"}}}}),
    )
    .await;
    let op = env.wait_phase("up2", Phase::Running).await;
    let er = op.status.as_ref().unwrap().engine_ref.clone().unwrap();
    assert_eq!(
        (er.kind.as_deref(), er.name.as_deref()),
        (Some("ApplicationInstance"), Some("app"))
    );
    let inst = env.targets().get("app").await.unwrap();
    assert_eq!(inst.spec.chart.as_ref().unwrap().version, "2.0.0");
    assert_eq!(
        inst.spec.values.as_ref().unwrap().inline,
        Some(json!({"replicas": 1, "image": {"tag": "b"}}))
    );
    // A second Upgrade of the same target waits (matrix row Upgrade × Upgrade).
    env.create(
        "up-next",
        "app",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "2.1.0"}}),
    )
    .await;
    let m = env.wait_blocked("up-next", "ConflictingOperation").await;
    assert!(m.contains("\"up2\" (Upgrade)"), "{m}");
    // The instance controller is still rolling out: Ready=Unknown keeps it Running.
    env.instance_reports("app", "Unknown").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.ops().get("up2").await.unwrap().status.unwrap().phase,
        Some(Phase::Running)
    );
    env.instance_reports("app", "True").await;
    let op = env.wait_phase("up2", Phase::Succeeded).await;
    let outputs = op.status.unwrap().outputs.unwrap();
    assert_eq!(outputs["previousVersion"], "1.0.0");
    assert_eq!(outputs["version"], "2.0.0");
    assert!(outputs.keys().all(|k| !k.starts_with('_')), "{outputs:?}");

    // The next one now runs, and fails when the release goes Ready=False.
    env.wait_phase("up-next", Phase::Running).await;
    assert_eq!(env.chart_version("app").await, "2.1.0");
    env.instance_reports("app", "False").await;
    let op = env.wait_phase("up-next", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HelmUpgradeFailed");
    assert!(message(&op, "Failed").contains("release False"));

    // Cancel reverts the instance to what it was.
    env.create(
        "up3",
        "app",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "3.0.0", "valuesPatch": {"replicas": 3}}}),
    )
    .await;
    env.wait_phase("up3", Phase::Running).await;
    assert_eq!(env.chart_version("app").await, "3.0.0");
    env.cancel("up3").await;
    env.wait_phase("up3", Phase::Cancelled).await;
    let inst = env.targets().get("app").await.unwrap();
    assert_eq!(inst.spec.chart.as_ref().unwrap().version, "2.1.0");
    assert_eq!(inst.spec.values.unwrap().inline.unwrap()["replicas"], 1);

    // Timeout: Failed/Timeout and reverted.
    env.create(
        "up4",
        "app",
        "Upgrade",
        "helm",
        json!({"timeoutSeconds": 2, "parameters": {"targetVersion": "4.0.0"}}),
    )
    .await;
    env.wait_phase("up4", Phase::Running).await;
    let op = env.wait_phase("up4", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    assert_eq!(env.chart_version("app").await, "2.1.0");

    // A placeholder has no chart to upgrade: a clear failure.
    env.create(
        "up-ph",
        "wiki",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "9"}}),
    )
    .await;
    let op = env.wait_phase("up-ph", Phase::Failed).await;
    assert!(message(&op, "Failed").contains("placeholder"));
}

// ------------------------------------------------------------ helmHookJob (Migration)

const HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: app-db-migrate\n  annotations:\n    helm.sh/hook: pre-upgrade\nspec:\n  backoffLimit: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: migrate\n        image: app:2.0\n        command: [\"/migrate\", \"up\"]\n";

async fn helm_release_secret(env: &Env) {
    let release = json!({"name": "app", "version": 2, "namespace": env.ns, "manifest": "---\n",
        "hooks": [{"name": "app-db-migrate", "kind": "Job", "path": "app/templates/migrate.yaml",
                   "manifest": HOOK, "events": ["pre-upgrade"]}]});
    for (rev, status) in [(1, "superseded"), (2, "deployed")] {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("sh.helm.release.v1.app.v{rev}")),
                labels: Some(BTreeMap::from([
                    ("owner".to_string(), "helm".to_string()),
                    ("name".to_string(), "app".to_string()),
                    ("status".to_string(), status.to_string()),
                    ("version".to_string(), rev.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("helm.sh/release.v1".into()),
            data: Some(BTreeMap::from([(
                "release".to_string(),
                ByteString(helm_hook::encode_release(&release)),
            )])),
            ..Default::default()
        };
        Api::<Secret>::namespaced(env.client.clone(), &env.ns)
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn helm_hook_job_clones_the_charts_hook() {
    let env = setup("op-hook").await;
    // No release Secret yet: the Migration runs (no gate holds it) and fails on the hook.
    env.create(
        "mig-early",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "h"}}),
    )
    .await;
    let op = env.wait_phase("mig-early", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HookNotFound");
    helm_release_secret(&env).await;
    env.create(
        "migrate",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "app-db-migrate", "backoffLimit": 0}}),
    )
    .await;
    let op = env.wait_phase("migrate", Phase::Running).await;
    let name = env.workload("migrate");
    assert_eq!(
        op.status
            .as_ref()
            .unwrap()
            .engine_ref
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some(name.as_str())
    );
    let job = env.jobs().get(&name).await.unwrap();
    assert_eq!(
        job.labels()["ops.vworkspace.io/hook-name"],
        "app-db-migrate"
    );
    assert_eq!(job.annotations()["helm.sh/hook"], "app-db-migrate");
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    let c = &spec.template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("app:2.0"));
    assert_eq!(c.command.as_ref().unwrap(), &["/migrate", "up"]);
    env.job_reports(&name, "Complete", "CompletionsReached")
        .await;
    let op = env.wait_phase("migrate", Phase::Succeeded).await;
    let outputs = op.status.unwrap().outputs.unwrap();
    assert_eq!(outputs["jobName"], name);
    assert_eq!(outputs["releaseSecret"], "sh.helm.release.v1.app.v2");
    assert_eq!(outputs["hookEvents"], "pre-upgrade");

    // Failure: kept for its logs.
    env.create(
        "mig-fail",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "app-db-migrate"}}),
    )
    .await;
    env.wait_phase("mig-fail", Phase::Running).await;
    let failed = env.workload("mig-fail");
    env.job_reports(&failed, "Failed", "BackoffLimitExceeded")
        .await;
    let op = env.wait_phase("mig-fail", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HelmHookJobFailed");
    assert!(op.status.unwrap().logs_ref.is_some());
    assert!(env.jobs().get_opt(&failed).await.unwrap().is_some());

    // No such hook; no release at all.
    env.create(
        "nohook",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "seed"}}),
    )
    .await;
    let op = env.wait_phase("nohook", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HookNotFound");
    assert!(
        message(&op, "Failed").contains("app-db-migrate"),
        "{}",
        message(&op, "Failed")
    );
    env.create(
        "norel",
        "wiki",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "x"}}),
    )
    .await;
    let op = env.wait_phase("norel", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HookRequiresRelease");

    // Cancel and timeout suspend the Job.
    env.create(
        "mig-cancel",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "app-db-migrate"}}),
    )
    .await;
    env.wait_phase("mig-cancel", Phase::Running).await;
    env.cancel("mig-cancel").await;
    env.wait_phase("mig-cancel", Phase::Cancelled).await;
    let j = env.jobs().get(&env.workload("mig-cancel")).await.unwrap();
    assert_eq!(j.spec.unwrap().suspend, Some(true));
    env.create(
        "mig-slow",
        "app",
        "Migration",
        "helmHookJob",
        json!({"timeoutSeconds": 2, "parameters": {"hookName": "app-db-migrate"}}),
    )
    .await;
    env.wait_phase("mig-slow", Phase::Running).await;
    let op = env.wait_phase("mig-slow", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    let j = env.jobs().get(&env.workload("mig-slow")).await.unwrap();
    assert_eq!(j.spec.unwrap().suspend, Some(true));
}

// --------------------------------------------------------------------------- volsync

#[tokio::test]
async fn volsync_replication_source() {
    let env = setup("op-volsync").await;
    let rss = env.dynamic(&volsync::replication_source());
    let params = json!({"parameters": {"sourcePVC": "data", "repository": "restic-config"}});
    env.create("rep", "wiki", "Backup", "volsync", params.clone())
        .await;
    let op = env.wait_phase("rep", Phase::Running).await;
    let name = env.workload("rep");
    assert_eq!(
        op.status.unwrap().engine_ref.unwrap().kind.as_deref(),
        Some("ReplicationSource")
    );
    let rs = rss.get(&name).await.unwrap();
    assert_eq!(rs.data["spec"]["sourcePVC"], "data");
    assert_eq!(rs.data["spec"]["restic"]["repository"], "restic-config");
    let trigger = rs.data["spec"]["trigger"]["manual"]
        .as_str()
        .unwrap()
        .to_string();
    env.set_status_sub(
        &rss,
        &name,
        json!({"lastManualSync": trigger, "lastSyncTime": "2026-01-01T00:00:00Z",
        "latestMoverStatus": {"result": "Successful", "logs": "ok"}}),
    )
    .await;
    let op = env.wait_phase("rep", Phase::Succeeded).await;
    assert_eq!(
        op.status.unwrap().outputs.unwrap()["lastSyncTime"],
        "2026-01-01T00:00:00Z"
    );

    env.create("rep-fail", "wiki", "Backup", "volsync", params.clone())
        .await;
    env.wait_phase("rep-fail", Phase::Running).await;
    env.set_status_sub(
        &rss,
        &env.workload("rep-fail"),
        json!({"latestMoverStatus": {"result": "Failed", "logs": "repo locked"}}),
    )
    .await;
    let op = env.wait_phase("rep-fail", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "VolSyncSyncFailed");
    assert!(!message(&op, "Failed").contains("repo locked"));
    assert!(
        rss.get_opt(&env.workload("rep-fail"))
            .await
            .unwrap()
            .is_some()
    );

    env.create("rep-cancel", "wiki", "Backup", "volsync", params.clone())
        .await;
    env.wait_phase("rep-cancel", Phase::Running).await;
    env.cancel("rep-cancel").await;
    env.wait_phase("rep-cancel", Phase::Cancelled).await;
    assert_eq!(
        rss.get(&env.workload("rep-cancel")).await.unwrap().data["spec"]["paused"],
        true
    );

    let mut slow = params.clone();
    slow["timeoutSeconds"] = json!(2);
    env.create("rep-slow", "wiki", "Backup", "volsync", slow)
        .await;
    env.wait_phase("rep-slow", Phase::Running).await;
    let op = env.wait_phase("rep-slow", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    assert_eq!(
        rss.get(&env.workload("rep-slow")).await.unwrap().data["spec"]["paused"],
        true
    );

    // A bad parameter never creates anything.
    env.create(
        "rep-bad",
        "wiki",
        "Backup",
        "volsync",
        json!({"parameters": {"sourcePVC": "data", "repository": "r", "copyMethod": "Copy"}}),
    )
    .await;
    let m = env.wait_blocked("rep-bad", "ValidationFailed").await;
    assert_eq!(
        m,
        "spec.parameters.copyMethod: must be one of Snapshot, Clone, Direct"
    );

    // Garbage collection with the Operation.
    env.ops()
        .delete("rep", &DeleteParams::default())
        .await
        .unwrap();
    env.gone(&rss, &name).await;
}

// ----------------------------------------------------------------------- csiSnapshot

async fn pvc(env: &Env, name: &str, labels: Value) {
    let p: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

#[tokio::test]
async fn csi_snapshots_of_the_targets_pvcs() {
    let env = setup("op-snap").await;
    let vss = env.dynamic(&snapshot::volume_snapshot());
    // Nothing labelled yet: a clear failure.
    env.create("none", "wiki", "Backup", "csiSnapshot", json!({}))
        .await;
    let op = env.wait_phase("none", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "SourcePvcNotFound");
    pvc(
        &env,
        "data-wiki-0",
        json!({"app.kubernetes.io/instance": "wiki"}),
    )
    .await;
    pvc(
        &env,
        "uploads",
        json!({"app.vworkspace.io/application-instance": "wiki"}),
    )
    .await;
    pvc(&env, "unrelated", json!({})).await;

    env.create(
        "snap",
        "wiki",
        "Backup",
        "csiSnapshot",
        json!({"parameters": {"volumeSnapshotClassName": "csi-hostpath"}}),
    )
    .await;
    let op = env.wait_phase("snap", Phase::Running).await;
    assert_eq!(
        op.status.unwrap().engine_ref.unwrap().kind.as_deref(),
        Some("VolumeSnapshot")
    );
    let a = format!("{}-data-wiki-0", env.workload("snap"));
    let b = format!("{}-uploads", env.workload("snap"));
    let snap = vss.get(&a).await.unwrap();
    assert_eq!(
        snap.data["spec"]["source"]["persistentVolumeClaimName"],
        "data-wiki-0"
    );
    assert_eq!(snap.data["spec"]["volumeSnapshotClassName"], "csi-hostpath");
    assert!(
        vss.get_opt(&format!("{}-unrelated", env.workload("snap")))
            .await
            .unwrap()
            .is_none()
    );
    env.set_status_sub(&vss, &a, json!({"readyToUse": true, "restoreSize": "1Gi"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.ops().get("snap").await.unwrap().status.unwrap().phase,
        Some(Phase::Running)
    );
    env.set_status_sub(&vss, &b, json!({"readyToUse": true}))
        .await;
    let op = env.wait_phase("snap", Phase::Succeeded).await;
    assert_eq!(
        op.status.unwrap().outputs.unwrap()["volumeSnapshots"],
        format!("{a},{b}")
    );

    env.create(
        "snap-fail",
        "wiki",
        "Backup",
        "csiSnapshot",
        json!({"parameters": {"persistentVolumeClaims": ["uploads"]}}),
    )
    .await;
    env.wait_phase("snap-fail", Phase::Running).await;
    let f = format!("{}-uploads", env.workload("snap-fail"));
    env.set_status_sub(&vss, &f, json!({"readyToUse": false, "error": {"message": "driver refused", "time": "2026-01-01T00:00:00Z"}}))
        .await;
    let op = env.wait_phase("snap-fail", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "VolumeSnapshotFailed");
    assert!(message(&op, "Failed").contains("driver refused"));

    env.create(
        "snap-cancel",
        "wiki",
        "Backup",
        "csiSnapshot",
        json!({"parameters": {"persistentVolumeClaims": ["uploads"]}}),
    )
    .await;
    env.wait_phase("snap-cancel", Phase::Running).await;
    env.cancel("snap-cancel").await;
    env.wait_phase("snap-cancel", Phase::Cancelled).await;
    env.gone(&vss, &format!("{}-uploads", env.workload("snap-cancel")))
        .await;

    env.create(
        "snap-slow",
        "wiki",
        "Backup",
        "csiSnapshot",
        json!({"timeoutSeconds": 2, "parameters": {"persistentVolumeClaims": ["uploads"]}}),
    )
    .await;
    env.wait_phase("snap-slow", Phase::Running).await;
    let op = env.wait_phase("snap-slow", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    assert!(
        vss.get_opt(&format!("{}-uploads", env.workload("snap-slow")))
            .await
            .unwrap()
            .is_some()
    );

    env.create(
        "snap-missing",
        "wiki",
        "Backup",
        "csiSnapshot",
        json!({"parameters": {"persistentVolumeClaims": ["gone"]}}),
    )
    .await;
    let op = env.wait_phase("snap-missing", Phase::Failed).await;
    assert!(message(&op, "Failed").contains("gone"));

    // Garbage collection with the Operation.
    env.ops()
        .delete("snap", &DeleteParams::default())
        .await
        .unwrap();
    env.gone(&vss, &a).await;
    env.gone(&vss, &b).await;
}

// ------------------------------------- velero cancel/timeout, target readiness, claims

#[tokio::test]
async fn velero_cancel_timeout_target_readiness_and_bound_claims() {
    let env = setup("op-velero2").await;
    let backups = env.velero("Backup");
    env.create("b-cancel", "wiki", "Backup", "velero", json!({}))
        .await;
    env.wait_phase("b-cancel", Phase::Running).await;
    env.cancel("b-cancel").await;
    env.wait_phase("b-cancel", Phase::Cancelled).await;
    // Velero has no pause: the in-flight Backup is removed.
    env.gone(&backups, &env.workload("b-cancel")).await;

    env.create(
        "b-slow",
        "wiki",
        "Backup",
        "velero",
        json!({"timeoutSeconds": 2}),
    )
    .await;
    env.wait_phase("b-slow", Phase::Running).await;
    let op = env.wait_phase("b-slow", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "Timeout");
    assert!(op.status.unwrap().finished_at.is_some());

    // A target reporting Ready=False holds a Backup back (not a Restore/Upgrade).
    let now = jiff::Timestamp::now().to_string();
    let ready = |s: &str| {
        json!({"status": {"conditions": [{"type": "Ready", "status": s, "reason": "HelmReleaseFailed",
            "message": "install failed", "lastTransitionTime": now}]}})
    };
    env.targets()
        .patch_status(
            "wiki",
            &PatchParams::default(),
            &Patch::Merge(ready("False")),
        )
        .await
        .unwrap();
    env.create("b-held", "wiki", "Backup", "velero", json!({}))
        .await;
    let m = env.wait_blocked("b-held", "TargetNotReady").await;
    assert!(m.contains("install failed"), "{m}");
    env.targets()
        .patch_status(
            "wiki",
            &PatchParams::default(),
            &Patch::Merge(ready("True")),
        )
        .await
        .unwrap();
    env.wait_phase("b-held", Phase::Running).await;

    // A claim bound to another namespace is refused even with a valid signature.
    let body = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            json!({"at": "", "by": "alice", "exp": jiff::Timestamp::now().as_second() + 600,
                   "op": "r-bound", "rid": 7, "v": 1, "ns": "somewhere-else"})
            .to_string(),
        )
    };
    let sig = {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    env.create(
        "r-bound",
        "wiki",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b"}, "approvals": {"claim": format!("vws1.{body}.{sig}")}}),
    )
    .await;
    let m = env.wait_blocked("r-bound", "AwaitingApproval").await;
    assert!(m.contains("bound to ns"), "{m}");
}
