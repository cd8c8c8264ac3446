//! Pull mode end to end: the operator *binary* under the chart's RBAC (installed by Helm),
//! the mock control plane, and the real apiserver. The test plays Flux by writing HelmRelease status.
//!
//! One scenario, in order, because a cluster has exactly one `Cluster` object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use mock_control_plane::{AdminClient, Fault};
use serde_json::{Value, json};
use support::{Operator, eventually, job, managed_instance};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports, write_status};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::HelmRelease;
use vworkspace_protocol::{JobResult, signing};

const CLUSTER_ID: &str = "5b0f7c1e-e2e0-4c6a-9d51-3f2a8e7b6c40";
const REG_TOKEN: &str = "vwksp-reg-e2e0000000000000000000000000001";
const LONG: Duration = Duration::from_secs(90);

/// A managed instance declaring Backups through Velero.
fn instance(ns: &str, name: &str) -> Value {
    let mut v = managed_instance(ns, name, "1.0.0");
    v["metadata"]["annotations"] = json!({"ops.vworkspace.io/backup": "velero"});
    v
}

/// Plays helm-controller: Ready for the HelmRelease's current generation, once it exists.
async fn flux_ready(client: &Client, ns: &str, name: &str, ready: &str) {
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), ns);
    eventually(&format!("HelmRelease {name}"), LONG, || async {
        hrs.get_opt(name).await.unwrap()
    })
    .await;
    let reason = if ready == "True" {
        "InstallSucceeded"
    } else {
        "UpgradeFailed"
    };
    helm_controller_reports(&hrs, name, ready, reason, "played by the test")
        .await
        .unwrap();
}

async fn result(admin: &AdminClient, id: &str) -> JobResult {
    admin.wait_for_result(id, LONG).await.unwrap()
}

#[tokio::test]
async fn pull_mode_end_to_end() {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    let op_ns = "vworkspace-system";
    let apps_ns = "org-e2e";
    create_namespace(&client, op_ns).await.unwrap();
    create_namespace(&client, "velero").await.unwrap();

    // Old tokens die at once: a rotated token must be hot-swapped to keep working.
    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin = mock.admin();
    let signer = SigningKey::from_bytes(&[42u8; 32]);
    let public =
        base64::engine::general_purpose::STANDARD.encode(signer.verifying_key().to_bytes());

    // The operator runs as the ServiceAccount a `helm install` of the chart created, with
    // the apps namespace as its tenant (gated, so the agent finds it ready).
    create_namespace(&client, apps_ns).await.unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            apps_ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
        )
        .await
        .unwrap();
    let kubeconfig = support::chart_identity(cp, op_ns, &[apps_ns]).await;
    let metrics_port = support::free_port();
    let flags = [
        "--agent-poll-interval=5s",
        "--agent-signing=warn",
        &format!("--agent-signing-public-key={public}"),
        &format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
        "--metrics-secure=false",
    ];
    let mut op = Operator::start_with(kubeconfig, op_ns, &flags);

    // Registration: token Secret + Cluster, as an installer applies them.
    let clusters =
        support::register_cluster(&client, op_ns, &mock.url(), CLUSTER_ID, REG_TOKEN).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), op_ns);
    let token_of = |s: Secret| s.data.unwrap()["token"].0.clone();
    let first_token = token_of(secrets.get("vworkspace-agent-credentials").await.unwrap());

    // apply → ApplicationInstance → HelmRelease → Flux Ready → succeeded.
    let enqueued = Instant::now();
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "apply-1",
                "apply",
                "applicationinstance/org-e2e/wiki@1",
                instance(apps_ns, "wiki"),
            ),
        )
        .await
        .unwrap();
    flux_ready(&client, apps_ns, "wiki", "True").await;
    let r = result(&admin, "apply-1").await;
    let latency = enqueued.elapsed();
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    assert_eq!(r.applied_ref.as_ref().unwrap().name, "wiki");
    eprintln!(
        "e2e latency enqueue → succeeded (incl. the test playing Flux): {:.2}s",
        latency.as_secs_f64()
    );
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), apps_ns);
    let wiki = apps.get("wiki").await.unwrap();
    assert_eq!(
        wiki.labels()["app.vworkspace.io/managed-by"],
        "control-plane"
    );
    assert_eq!(wiki.labels()["app.vworkspace.io/cluster-id"], CLUSTER_ID);
    assert!(
        !admin.status_updates("apply-1").await.unwrap().is_empty(),
        "interim status"
    );

    // Replay of the same key → noop; nothing is written again.
    let rv = wiki.resource_version();
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "apply-1-again",
                "apply",
                "applicationinstance/org-e2e/wiki@1",
                instance(apps_ns, "wiki"),
            ),
        )
        .await
        .unwrap();
    let r = result(&admin, "apply-1-again").await;
    assert_eq!((r.outcome.as_str(), r.error.as_str()), ("noop", ""));
    assert_eq!(apps.get("wiki").await.unwrap().resource_version(), rv);

    // Expired → noop/expired, not applied.
    let mut expired = job("expired-1", "apply", "", instance(apps_ns, "never"));
    expired.expires_at = Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60));
    admin.enqueue(CLUSTER_ID, &expired).await.unwrap();
    let r = result(&admin, "expired-1").await;
    assert_eq!((r.outcome.as_str(), r.error.as_str()), ("noop", "expired"));
    assert!(apps.get_opt("never").await.unwrap().is_none());

    // Intents: ensure, then delete.
    admin
        .enqueue(CLUSTER_ID, &job("intent-ensure", "intent", "intent/chat@1",
            json!({"intent": "ensure-application-instance", "applicationInstance": instance(apps_ns, "chat")})))
        .await
        .unwrap();
    flux_ready(&client, apps_ns, "chat", "True").await;
    assert_eq!(result(&admin, "intent-ensure").await.outcome, "succeeded");
    admin
        .enqueue(CLUSTER_ID, &job("intent-delete", "intent", "intent/chat/delete",
            json!({"intent": "delete-application-instance", "name": "chat", "namespace": apps_ns})))
        .await
        .unwrap();
    assert_eq!(result(&admin, "intent-delete").await.outcome, "succeeded");
    eventually("chat deleted", LONG, || async {
        apps.get_opt("chat").await.unwrap().is_none().then_some(())
    })
    .await;
    // request-operation: the Operation runs through the operator's Operation controller.
    let operation = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": "wiki-backup", "namespace": apps_ns},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                 "type": "Backup", "engine": "velero", "parameters": {"ttl": "720h"}}
    });
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "intent-operation",
                "intent",
                "intent/wiki-backup@1",
                json!({"intent": "request-operation", "operation": operation}),
            ),
        )
        .await
        .unwrap();
    let ops: Api<vworkspace_api::Operation> = Api::namespaced(client.clone(), apps_ns);
    eventually("Operation", LONG, || async {
        ops.get_opt("wiki-backup").await.unwrap()
    })
    .await;
    // The operator's Operation controller creates the Velero Backup; the test plays Velero.
    let backups: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "velero",
        &vworkspace_operator::engines::velero::api_resource("Backup"),
    );
    let backup_name = format!("{apps_ns}--wiki-backup");
    eventually("Velero Backup", LONG, || async {
        backups.get_opt(&backup_name).await.unwrap()
    })
    .await;
    write_status(&backups, &backup_name, json!({"phase": "Completed"}))
        .await
        .unwrap();
    let r = result(&admin, "intent-operation").await;
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    assert_eq!(r.applied_ref.unwrap().kind, "Operation");
    let r = {
        admin
            .enqueue(
                CLUSTER_ID,
                &job(
                    "intent-unknown",
                    "intent",
                    "",
                    json!({"intent": "make-coffee"}),
                ),
            )
            .await
            .unwrap();
        result(&admin, "intent-unknown").await
    };
    assert_eq!(r.outcome, "failed");
    assert!(r.error.contains("make-coffee"), "{}", r.error);

    // delete job.
    admin
        .enqueue(
            CLUSTER_ID,
            &job("apply-tmp", "apply", "", instance(apps_ns, "tmp")),
        )
        .await
        .unwrap();
    flux_ready(&client, apps_ns, "tmp", "True").await;
    assert_eq!(result(&admin, "apply-tmp").await.outcome, "succeeded");
    admin
        .enqueue(CLUSTER_ID, &job("delete-tmp", "delete", "",
            json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "tmp", "namespace": apps_ns})))
        .await
        .unwrap();
    assert_eq!(result(&admin, "delete-tmp").await.outcome, "succeeded");

    // Scope: kube-system is refused, and so is RBAC.
    let mut sys = instance("kube-system", "evil");
    sys["metadata"]["namespace"] = "kube-system".into();
    admin
        .enqueue(CLUSTER_ID, &job("scope-ns", "apply", "", sys))
        .await
        .unwrap();
    assert_eq!(result(&admin, "scope-ns").await.outcome, "failed");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "evil"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    admin
        .enqueue(CLUSTER_ID, &job("scope-rbac", "apply", "", role))
        .await
        .unwrap();
    assert_eq!(result(&admin, "scope-rbac").await.outcome, "failed");

    // Signed job applies; tampered one is refused and not applied.
    let payload = instance(apps_ns, "signed");
    let mut signed = job("signed-1", "apply", "", payload.clone());
    signed.signature = Some(signing::sign(&signer, &payload));
    admin.enqueue(CLUSTER_ID, &signed).await.unwrap();
    flux_ready(&client, apps_ns, "signed", "True").await;
    assert_eq!(result(&admin, "signed-1").await.outcome, "succeeded");
    let mut tampered_payload = instance(apps_ns, "tampered");
    let mut tampered = job("tampered-1", "apply", "", tampered_payload.clone());
    tampered.signature = Some(signing::sign(&signer, &tampered_payload));
    tampered_payload["spec"]["chart"]["url"] = "https://evil.example.org".into();
    tampered.payload = tampered_payload;
    admin.enqueue(CLUSTER_ID, &tampered).await.unwrap();
    let r = result(&admin, "tampered-1").await;
    assert_eq!(r.outcome, "failed");
    assert!(
        r.error.starts_with("JobPayloadSignatureInvalid"),
        "{}",
        r.error
    );
    assert!(apps.get_opt("tampered").await.unwrap().is_none());

    // Control plane down for a while: transitions are kept and delivered afterwards.
    admin
        .inject_fault(Fault {
            endpoint: "*".into(),
            status: Some(503),
            count: 12,
            ..Fault::default()
        })
        .await
        .unwrap();
    flux_ready(&client, apps_ns, "wiki", "False").await;
    let ready_false = eventually("Ready=False event after the outage", LONG, || async {
        let events = admin
            .events(
                CLUSTER_ID,
                Some("ConditionTransition"),
                Some(apps_ns),
                Some("wiki"),
            )
            .await
            .unwrap();
        events.into_iter().find(|e| {
            e.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False")
        })
    })
    .await;
    assert!(!ready_false.event_key.is_empty());
    flux_ready(&client, apps_ns, "wiki", "True").await;

    // Rotation while polling: the new token is used at once (the old one is dead).
    clusters
        .patch(
            "this-cluster",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateCredentials": true}})),
        )
        .await
        .unwrap();
    eventually("rotated token in the Secret", LONG, || async {
        let t = token_of(secrets.get("vworkspace-agent-credentials").await.unwrap());
        (t != first_token).then_some(())
    })
    .await;
    admin
        .enqueue(
            CLUSTER_ID,
            &job("after-rotation", "apply", "", instance(apps_ns, "rotated")),
        )
        .await
        .unwrap();
    flux_ready(&client, apps_ns, "rotated", "True").await;
    assert_eq!(result(&admin, "after-rotation").await.outcome, "succeeded");

    // Killed mid-job and restarted: applied once, exactly one result.
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "crash-1",
                "apply",
                "applicationinstance/org-e2e/crash@1",
                instance(apps_ns, "crash"),
            ),
        )
        .await
        .unwrap();
    let created = eventually("crash instance", LONG, || async {
        apps.get_opt("crash").await.unwrap()
    })
    .await;
    eventually("ack", LONG, || async {
        admin.was_acked("crash-1").await.unwrap().then_some(())
    })
    .await;
    op.kill().await;
    let mut op = op.restart();
    flux_ready(&client, apps_ns, "crash", "True").await;
    let r = result(&admin, "crash-1").await;
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    let info = admin.job("crash-1").await.unwrap().unwrap();
    assert_eq!(info.result_posts, 1, "exactly one result");
    assert_eq!(info.deliveries, 1, "handed out once");
    let after = apps.get("crash").await.unwrap();
    assert_eq!(after.uid(), created.uid());
    assert_eq!(
        after.metadata.generation, created.metadata.generation,
        "applied once"
    );
    eventually("journal drained", LONG, || async {
        let s = secrets.get_opt("vworkspace-agent-inflight").await.unwrap();
        let empty = s
            .and_then(|s| s.data)
            .and_then(|d| d.get("jobs.json").map(|b| b.0.clone()))
            .is_none_or(|b| b == b"{}");
        empty.then_some(())
    })
    .await;

    // Metrics of the Pull mode are exported.
    let metrics = eventually("metrics", LONG, || async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })
    .await;
    for name in [
        "vworkspace_operator_pull_job_lag_seconds",
        "vworkspace_operator_connectivity_state{mode=\"pull\"} 1",
        "vworkspace_operator_applied_jobs_total",
        "vworkspace_operator_event_buffer_occupancy",
        "vworkspace_operator_credential_age_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // No secret material in the operator's log.
    let log = op.log();
    assert!(!log.contains(REG_TOKEN), "registration token logged");
    assert!(!log.contains("bootstrap-"), "bearer token logged");
    op.kill().await;
}
