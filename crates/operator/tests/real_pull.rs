//! Pull mode with real controllers: the mock control plane enqueues an application, the
//! operator binary (chart RBAC) pulls it, Flux installs the chart from the local Helm
//! repository, kube-scheduler and kwok run its pods, and the control plane receives
//! `succeeded` only once the release is really Ready. Then a day-2 RunCommand Operation,
//! sent through the control plane too, runs as a real Job.
//!
//! Its own test binary: a cluster has exactly one `Cluster` object.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_support;
mod support;

use std::time::{Duration, Instant};

use mock_control_plane::{MockConfig, MockServer};
use real_support::{Scenario, Source, instance};
use serde_json::json;
use support::job;
use testkit::FullCluster;

const CLUSTER_ID: &str = "0d6f3a2b-real-4c1e-9b7d-5e8f1a2c3d40";
const REG_TOKEN: &str = "vwksp-reg-real000000000000000000000000001";
const LONG: Duration = Duration::from_secs(180);

#[tokio::test]
async fn pull_mode_delivers_a_real_release_and_a_real_operation() {
    let full = FullCluster::get().await.unwrap();
    let client = full.client().await.unwrap();
    let op_ns = "vworkspace-system";
    let apps_ns = "org-real";
    for ns in [op_ns, apps_ns] {
        testkit::fixtures::create_namespace(&client, ns)
            .await
            .unwrap();
    }
    let mock = MockServer::start(MockConfig {
        registration_token: REG_TOKEN.into(),
        cluster_id: CLUSTER_ID.into(),
        admin_token: Some("real-admin".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let admin = mock.admin();
    let operator = support::Operator::start(full, op_ns, &["--agent-poll-interval=5s"]).await;

    support::register_cluster(&client, op_ns, &mock.url(), CLUSTER_ID, REG_TOKEN).await;

    // The control plane asks for the application; the result comes once Flux made it Ready.
    let enqueued = Instant::now();
    let app = instance(
        full,
        apps_ns,
        "notes",
        Source::Http,
        "webapp",
        "0.1.0",
        json!({"source": "inline", "inline": {"greeting": "pulled"}}),
    );
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "apply-notes",
                "apply",
                "applicationinstance/org-real/notes@1",
                app,
            ),
        )
        .await
        .unwrap();
    let result = admin.wait_for_result("apply-notes", LONG).await.unwrap();
    let latency = enqueued.elapsed();
    assert_eq!(result.outcome, "succeeded", "{result:?}");
    eprintln!(
        "pull mode with a real install: enqueue → succeeded in {:.1}s",
        latency.as_secs_f64()
    );

    // What the result claims is true in the cluster (read from a scenario view of it).
    let s = Scenario {
        full,
        client: client.clone(),
        ns: apps_ns.to_string(),
        operator,
    };
    assert_eq!(
        s.wait_config("notes-config", "greeting", |_| true).await,
        "pulled"
    );
    assert_eq!(s.ready_pods("notes").await.len(), 1);
    let (status, reason, _) = s.condition("notes", "Ready").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "HelmReleaseReady")
    );

    // Day 2, also through the control plane: a RunCommand Operation runs as a real Job.
    let op = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": "report", "namespace": apps_ns},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                               "kind": "ApplicationInstance", "name": "notes"},
                 "type": "RunCommand", "engine": "job",
                 "parameters": {"image": "busybox", "command": ["true"]}}
    });
    let enqueued = Instant::now();
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "op-report",
                "intent",
                "intent/report@1",
                json!({"intent": "request-operation", "operation": op}),
            ),
        )
        .await
        .unwrap();
    let result = admin.wait_for_result("op-report", LONG).await.unwrap();
    assert_eq!(result.outcome, "succeeded", "{result:?}");
    assert_eq!(result.applied_ref.unwrap().kind, "Operation");
    let done = s.wait_operation("report").await;
    assert_eq!(
        real_support::phase(&done),
        Some(vworkspace_api::operation::Phase::Succeeded),
        "{:?}",
        done.status
    );
    eprintln!(
        "pull mode RunCommand: enqueue → succeeded in {:.1}s",
        enqueued.elapsed().as_secs_f64()
    );
}
