//! Operation engines beyond velero/job against a real kube-apiserver with the Argo,
//! VolSync and CSI snapshot CRDs installed: the test plays Argo, the ApplicationInstance
//! controller (for Upgrades), the Job controller, VolSync and the snapshot controller by
//! writing their status. Also the rows of the concurrency matrix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testkit::{ControlPlane, fresh_namespace};
use vworkspace_api::conditions::find;
use vworkspace_api::operation::Phase;
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_operator::approval;
use vworkspace_operator::controller::Context;
use vworkspace_operator::controller::operation::{self, OperationConfig};
use vworkspace_operator::engines::{helm_hook, velero};
use vworkspace_operator::kinds::{argo, snapshot, volsync};

const SECRET: &str = "approval-s3cret";
// Generous: the garbage collector picks up new kinds on its 30 s discovery resync.
const WAIT: Duration = Duration::from_secs(90);

struct Env {
    client: Client,
    ns: String,
    velero_ns: String,
}

/// A namespace with the controller running in it and two targets: `wiki`, a placeholder,
/// and `app`, a managed instance (chart `app` 1.0.0, release `app`), both declaring
/// every capability.
async fn setup(prefix: &str) -> Env {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = fresh_namespace(&client, prefix).await.unwrap();
    let velero_ns = fresh_namespace(&client, "velero").await.unwrap();
    let ctx = Arc::new(Context::new(client.clone()));
    let config = OperationConfig {
        approval_secret: SECRET.into(),
        velero_namespace: velero_ns.clone(),
    };
    let scope = ns.clone();
    tokio::spawn(async move { operation::run(ctx, config, Some(&scope)).await });
    let caps = json!({
        "ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero",
        "ops.vworkspace.io/runcommand": "job", "ops.vworkspace.io/runbook": "workflow",
        "ops.vworkspace.io/upgrade": "helm", "ops.vworkspace.io/migration": "helmHookJob",
        "ops.vworkspace.io/replicate": "volsync", "ops.vworkspace.io/snapshot": "csiSnapshot"});
    let targets = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    for v in [
        json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": ns, "annotations": caps},
            "spec": {"appRef": {"catalogId": "wiki"}, "mode": "placeholder"}
        }),
        json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "app", "namespace": ns, "annotations": caps},
            "spec": {"appRef": {"catalogId": "app"},
                     "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "app", "version": "1.0.0"},
                     "release": {"name": "app", "namespace": ns},
                     "values": {"source": "inline", "inline": {"replicas": 1, "image": {"tag": "a"}}}}
        }),
    ] {
        targets
            .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap();
    }
    Env {
        client,
        ns,
        velero_ns,
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reason(op: &Operation, t: &str) -> String {
    find(&op.status.as_ref().unwrap().conditions, t)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn message(op: &Operation, t: &str) -> String {
    find(&op.status.as_ref().unwrap().conditions, t)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

impl Env {
    fn ops(&self) -> Api<Operation> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn targets(&self) -> Api<ApplicationInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn dynamic(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, ar)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn workload(&self, op: &str) -> String {
        format!("{}--{op}", self.ns)
    }

    async fn create(&self, name: &str, target: &str, t: &str, engine: &str, extra: Value) {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": target},
                     "type": t, "engine": engine}
        });
        if let Value::Object(m) = extra {
            for (k, val) in m {
                v["spec"][k] = val;
            }
        }
        self.ops()
            .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap();
    }

    async fn wait_phase(&self, name: &str, phase: Phase) -> Operation {
        eventually(&format!("{name} {phase:?}"), || async {
            let op = self.ops().get(name).await.unwrap();
            (op.status.as_ref()?.phase? == phase).then_some(op)
        })
        .await
    }

    async fn wait_blocked(&self, name: &str, reason: &str) -> String {
        eventually(&format!("{name} Blocked/{reason}"), || async {
            let op = self.ops().get(name).await.unwrap();
            let c = find(&op.status?.conditions, "Blocked")?.clone();
            (c.status == "True" && c.reason == reason).then_some(c.message)
        })
        .await
    }

    async fn cancel(&self, name: &str) {
        self.ops()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"cancel": true}})),
            )
            .await
            .unwrap();
    }

    /// Writes `status` of an object whose CRD has no status subresource (Argo, Velero).
    async fn set_status(&self, api: &Api<DynamicObject>, name: &str, status: Value) {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }

    /// Writes `status` through the status subresource (VolSync, snapshots, instances).
    async fn set_status_sub(&self, api: &Api<DynamicObject>, name: &str, status: Value) {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }

    /// Plays the Job controller.
    async fn job_reports(&self, name: &str, condition: &str, reason: &str) {
        let now = jiff::Timestamp::now().to_string();
        let mut status = json!({"conditions": [{"type": condition, "status": "True", "reason": reason,
            "message": format!("{condition} ({reason})"), "lastTransitionTime": now, "lastProbeTime": now}],
            "startTime": now});
        if condition == "Complete" {
            status["completionTime"] = json!(now);
            status["succeeded"] = json!(1);
            status["conditions"].as_array_mut().unwrap().insert(0, json!({"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now}));
        } else {
            status["failed"] = json!(1);
            status["conditions"].as_array_mut().unwrap().insert(0, json!({"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now}));
        }
        self.jobs()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    /// Plays the ApplicationInstance controller: observed the current generation, applied
    /// the spec's chart, with the given Ready status.
    async fn instance_reports(&self, name: &str, ready: &str) {
        let inst = self.targets().get(name).await.unwrap();
        let now = jiff::Timestamp::now().to_string();
        self.targets()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": inst.metadata.generation,
                    "lastAppliedChart": inst.spec.chart,
                    "helmReleaseRef": {"name": name, "namespace": self.ns},
                    "conditions": [{"type": "Ready", "status": ready, "reason": "HelmRelease",
                                    "message": format!("release {ready}"), "lastTransitionTime": now,
                                    "observedGeneration": inst.metadata.generation}]}})),
            )
            .await
            .unwrap();
    }

    async fn chart_version(&self, name: &str) -> String {
        self.targets()
            .get(name)
            .await
            .unwrap()
            .spec
            .chart
            .unwrap()
            .version
    }

    async fn gone<K>(&self, api: &Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        eventually(&format!("{name} collected"), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await
    }
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

// ------------------------------------------------------------- concurrency matrix

#[tokio::test]
async fn concurrency_matrix_rows() {
    let env = setup("op-matrix").await;
    let backups = Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        &env.velero_ns,
        &velero::api_resource("Backup"),
    );
    let restores = Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        &env.velero_ns,
        &velero::api_resource("Restore"),
    );
    let claim = |op: &str| {
        approval::issue(
            SECRET,
            op,
            "alice",
            jiff::Timestamp::now().as_second() + 600,
        )
    };
    // Row Restore × Upgrade: a running Upgrade blocks a Restore.
    env.create(
        "up",
        "app",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "2.0.0"}}),
    )
    .await;
    env.wait_phase("up", Phase::Running).await;
    env.create(
        "r1",
        "app",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b"}, "approvals": {"claim": claim("r1")}}),
    )
    .await;
    let m = env.wait_blocked("r1", "ConflictingOperation").await;
    assert!(m.contains("\"up\" (Upgrade)"), "{m}");
    // Rows Migration / RunCommand / Runbook: never blocked.
    env.create(
        "cmd",
        "app",
        "RunCommand",
        "job",
        json!({"parameters": {"image": "busybox"}}),
    )
    .await;
    env.wait_phase("cmd", Phase::Running).await;
    workflow_template(&env, "t").await;
    env.create(
        "rb",
        "app",
        "Runbook",
        "workflow",
        json!({"parameters": {"workflowTemplate": "t"}}),
    )
    .await;
    env.wait_phase("rb", Phase::Running).await;
    env.create(
        "mig",
        "app",
        "Migration",
        "helmHookJob",
        json!({"parameters": {"hookName": "h"}}),
    )
    .await;
    // (No release Secret here: it runs and fails on the hook, but it was not blocked.)
    let op = env.wait_phase("mig", Phase::Failed).await;
    assert_eq!(reason(&op, "Failed"), "HookNotFound");
    // The Upgrade completes: the Restore goes on.
    env.instance_reports("app", "True").await;
    env.wait_phase("up", Phase::Succeeded).await;
    env.wait_phase("r1", Phase::Running).await;
    // Row Backup × Restore: a running Restore blocks a Backup.
    env.create("b1", "app", "Backup", "velero", json!({})).await;
    let m = env.wait_blocked("b1", "ConflictingOperation").await;
    assert!(m.contains("\"r1\" (Restore)"), "{m}");
    env.set_status(
        &restores,
        &env.workload("r1"),
        json!({"phase": "Completed"}),
    )
    .await;
    env.wait_phase("r1", Phase::Succeeded).await;
    env.wait_phase("b1", Phase::Running).await;
    // Backup × Backup and Upgrade × Backup: not blocked.
    env.create("b2", "app", "Backup", "velero", json!({})).await;
    env.wait_phase("b2", Phase::Running).await;
    env.create(
        "up-b",
        "app",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "3.0.0"}}),
    )
    .await;
    env.wait_phase("up-b", Phase::Running).await;
    // Row Restore × Backup: running Backups block a Restore until they finish.
    env.create(
        "r3",
        "app",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b"}, "approvals": {"claim": claim("r3")}}),
    )
    .await;
    env.wait_blocked("r3", "ConflictingOperation").await;
    env.instance_reports("app", "True").await;
    env.wait_phase("up-b", Phase::Succeeded).await;
    let m = env.wait_blocked("r3", "ConflictingOperation").await;
    assert!(m.contains("(Backup)"), "{m}");
    for b in ["b1", "b2"] {
        env.set_status(&backups, &env.workload(b), json!({"phase": "Completed"}))
            .await;
        env.wait_phase(b, Phase::Succeeded).await;
    }
    env.wait_phase("r3", Phase::Running).await;

    // Two Pending, mutually conflicting Operations never wait for each other: the older
    // Restore (Pending, awaiting approval) holds the younger Backup; once approved it
    // runs although the Backup is Pending too.
    env.create(
        "r2",
        "wiki",
        "Restore",
        "velero",
        json!({"parameters": {"backupName": "b"}}),
    )
    .await;
    env.wait_blocked("r2", "AwaitingApproval").await;
    // Creation timestamps have one-second resolution; ties are ordered by name.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.create("b4", "wiki", "Backup", "velero", json!({}))
        .await;
    let m = env.wait_blocked("b4", "ConflictingOperation").await;
    assert!(m.contains("\"r2\" (Restore)"), "{m}");
    env.ops()
        .patch(
            "r2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"approvals": {"claim": claim("r2")}}})),
        )
        .await
        .unwrap();
    env.wait_phase("r2", Phase::Running).await;
    env.set_status(
        &restores,
        &env.workload("r2"),
        json!({"phase": "Completed"}),
    )
    .await;
    env.wait_phase("b4", Phase::Running).await;
    // Gates never touch a Running Operation: a newer Upgrade does not push b4 back.
    env.create(
        "up2",
        "wiki",
        "Upgrade",
        "helm",
        json!({"parameters": {"targetVersion": "1"}}),
    )
    .await;
    env.wait_phase("up2", Phase::Failed).await;
    assert_eq!(
        env.ops().get("b4").await.unwrap().status.unwrap().phase,
        Some(Phase::Running)
    );
}

// ------------------------------------- velero cancel/timeout, target readiness, claims

#[tokio::test]
async fn velero_cancel_timeout_target_readiness_and_bound_claims() {
    let env = setup("op-velero2").await;
    let backups = Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        &env.velero_ns,
        &velero::api_resource("Backup"),
    );
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
