//! Pull-mode agent + Cluster controller against a real kube-apiserver and the project's
//! mock control plane, strict (single-use registration token, old token revoked on
//! rotation) with fault injection. One sequential scenario, because `Cluster` is
//! cluster-scoped and only one may be active per apiserver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mock_control_plane::{AdminClient, Fault};
use serde_json::{Value, json};
use testkit::fixtures::{TestNamespace, test_namespace};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster};
use vworkspace_operator::agent::backoff::BackoffConfig;
use vworkspace_operator::agent::events::BatcherConfig;
use vworkspace_operator::agent::{Agent, AgentConfig, run_agent};
use vworkspace_operator::controller::cluster;
use vworkspace_operator::metrics::Metrics;
use vworkspace_protocol::{Event, JobResult};

use support::{eventually, instance_controller_reports, job, managed_instance as instance};

const CLUSTER_ID: &str = "cluster-test-1";
const WAIT: Duration = Duration::from_secs(60);

async fn wait_result(admin: &AdminClient, id: &str) -> JobResult {
    admin.wait_for_result(id, WAIT).await.unwrap()
}

/// The first event of `kind` about object `name` that `pick` accepts, once it arrived.
async fn wait_event(
    admin: &AdminClient,
    what: &str,
    kind: &str,
    name: Option<&str>,
    pick: impl Fn(&Event) -> bool,
) -> Event {
    eventually(what, WAIT, || async {
        let events = admin
            .events(CLUSTER_ID, Some(kind), None, name)
            .await
            .unwrap();
        events.into_iter().find(|e| pick(e))
    })
    .await
}

async fn all_events(admin: &AdminClient) -> usize {
    admin
        .events(CLUSTER_ID, None, None, None)
        .await
        .unwrap()
        .len()
}

/// Plays the ApplicationInstance controller reporting `Ready=<status>`.
async fn set_ready(api: &Api<ApplicationInstance>, name: &str, status: &str, reason: &str) {
    instance_controller_reports(api, name, status, reason, "played by the test").await;
}

async fn cluster_condition(
    api: &Api<Cluster>,
    name: &str,
    t: &str,
) -> Option<(String, String, String)> {
    let c = api.get(name).await.ok()?;
    let st = c.status?;
    let cond = vworkspace_api::conditions::find(&st.conditions, t)?.clone();
    Some((st.phase.unwrap_or_default(), cond.status, cond.reason))
}

fn config(op_ns: &str) -> AgentConfig {
    let mut c = AgentConfig::new(op_ns);
    c.poll_interval = Duration::from_secs(1);
    c.heartbeat_period = Duration::from_secs(2);
    c.ready_timeout = Duration::from_secs(60);
    c.backoff = BackoffConfig {
        first: Duration::from_millis(100),
        cap: Duration::from_millis(500),
        floor: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
    };
    c.batcher = BatcherConfig {
        flush_period: Duration::from_millis(200),
        ..BatcherConfig::default()
    };
    c
}

#[tokio::test]
async fn pull_mode_end_to_end() {
    let TestNamespace {
        client, ns: op_ns, ..
    } = test_namespace("agent-op").await.unwrap();
    let tenant = format!("agent-tenant-{}", std::process::id());
    let mock = support::mock("vwksp-reg-test", CLUSTER_ID).await;
    let admin = mock.admin();

    let metrics = Arc::new(Metrics::new());
    let agent = Agent::new(client.clone(), config(&op_ns), metrics.clone()).unwrap();
    let (_lead_tx, lead_rx) = watch::channel(true);
    let shutdown = CancellationToken::new();
    tokio::spawn(run_agent(agent.clone(), lead_rx.clone(), shutdown.clone()));
    tokio::spawn(cluster::run(
        client.clone(),
        agent.clone(),
        lead_rx,
        shutdown.clone(),
    ));

    // --- Before registration there is no control plane to tell: a transition is not
    // queued (10,000 of them would only overflow the buffer); the first contact re-sends
    // the current conditions instead.
    let early: Api<ApplicationInstance> = Api::namespaced(client.clone(), &op_ns);
    early
        .create(
            &PostParams::default(),
            &serde_json::from_value(instance(&op_ns, "early", "1.0.0")).unwrap(),
        )
        .await
        .unwrap();
    set_ready(&early, "early", "True", "HelmReleaseReady").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent.batcher().len(),
        0,
        "transitions queued with no Cluster registered"
    );

    // --- Registration through a token Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &op_ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "reg"}, "stringData": {"registrationToken": "vwksp-reg-test"}})).unwrap(),
        )
        .await
        .unwrap();
    let clusters: Api<Cluster> = Api::all(client.clone());
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "agent-test"},
                "spec": {"controlPlaneEndpoint": mock.url(), "registrationTokenSecretRef": {"name": "reg"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    eventually("Cluster Connected", WAIT, || async {
        cluster_condition(&clusters, "agent-test", "Connected")
            .await
            .filter(|(p, s, r)| p == "Connected" && s == "True" && r == "RoundTripOK")
    })
    .await;
    let c = clusters.get("agent-test").await.unwrap();
    let st = c.status.clone().unwrap();
    assert_eq!(st.observed_token.as_deref().map(str::len), Some(16));
    assert_eq!(c.spec.cluster_id.as_deref(), Some(CLUSTER_ID));
    assert!(
        c.finalizers()
            .iter()
            .any(|f| f == "ops.vworkspace.io/cluster-cleanup")
    );
    let creds = secrets.get("vworkspace-agent-credentials").await.unwrap();
    assert_eq!(creds.owner_references()[0].name, "agent-test");
    assert!(vworkspace_api::conditions::find(&st.conditions, "ControllersHealthy").is_some());
    assert_eq!(admin.request_count("register").await.unwrap(), 1);
    // Heartbeat carries the condition snapshot under the Cluster's object name.
    wait_event(
        &admin,
        "heartbeat",
        "ClusterHeartbeat",
        Some("agent-test"),
        |e| !e.conditions.is_empty(),
    )
    .await;

    // The instance's Ready from before the registration, re-sent at first contact.
    wait_event(
        &admin,
        "ConditionTransition of the instance from before registration",
        "ConditionTransition",
        Some("early"),
        |e| e.conditions.first().is_some_and(|c| c.status == "True"),
    )
    .await;

    // --- apply: instance written with labels; succeeded only after Ready=True.
    let instances: Api<ApplicationInstance> = Api::namespaced(client.clone(), &tenant);
    let enqueue = |id: &str, kind: &str, key: &str, payload: Value| {
        let (admin, job) = (admin.clone(), job(id, kind, key, payload));
        async move { admin.enqueue(CLUSTER_ID, &job).await.unwrap() }
    };
    enqueue(
        "j-apply",
        "apply",
        "applicationinstance/t/wiki@1",
        instance(&tenant, "wiki", "1.0.0"),
    )
    .await;
    let inst = eventually("instance", WAIT, || async {
        instances.get_opt("wiki").await.unwrap()
    })
    .await;
    assert_eq!(
        inst.labels()["app.vworkspace.io/managed-by"],
        "control-plane"
    );
    assert_eq!(inst.labels()["app.vworkspace.io/cluster-id"], CLUSTER_ID);
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get(&tenant)
        .await
        .unwrap();
    assert_eq!(ns.labels()["managed-by"], "vworkspace");
    assert!(admin.was_acked("j-apply").await.unwrap());
    set_ready(&instances, "wiki", "Unknown", "Reconciling").await;
    eventually("interim status", WAIT, || async {
        let updates = admin.status_updates("j-apply").await.unwrap();
        (!updates.is_empty()).then_some(updates)
    })
    .await;
    assert!(
        admin.result("j-apply").await.unwrap().is_none(),
        "succeeded before Ready=True"
    );
    set_ready(&instances, "wiki", "True", "HelmReleaseReady").await;
    let r = wait_result(&admin, "j-apply").await;
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    assert_eq!(r.applied_ref.as_ref().unwrap().name, "wiki");
    // The Ready transition reached the events endpoint.
    wait_event(
        &admin,
        "ConditionTransition Ready=True",
        "ConditionTransition",
        Some("wiki"),
        |e| e.conditions.first().is_some_and(|c| c.status == "True"),
    )
    .await;

    // --- replay → noop; expired → noop/expired.
    enqueue(
        "j-replay",
        "apply",
        "applicationinstance/t/wiki@1",
        instance(&tenant, "wiki", "1.0.0"),
    )
    .await;
    let r = wait_result(&admin, "j-replay").await;
    assert_eq!((r.outcome.as_str(), r.error.as_str()), ("noop", ""));
    let mut expired = job(
        "j-expired",
        "apply",
        "",
        instance(&tenant, "other", "1.0.0"),
    );
    expired.expires_at = Some("2020-01-01T00:00:00Z".parse().unwrap());
    admin.enqueue(CLUSTER_ID, &expired).await.unwrap();
    let r = wait_result(&admin, "j-expired").await;
    assert_eq!((r.outcome.as_str(), r.error.as_str()), ("noop", "expired"));
    assert!(instances.get_opt("other").await.unwrap().is_none());

    // --- scope refusals.
    enqueue(
        "j-kube-system",
        "apply",
        "",
        instance("kube-system", "evil", "1.0.0"),
    )
    .await;
    enqueue(
        "j-clusterrole",
        "apply",
        "",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "evil"}, "rules": []}),
    )
    .await;
    enqueue(
        "j-malformed",
        "apply",
        "",
        json!({"kind": "ApplicationInstance"}),
    )
    .await;
    enqueue("j-unknown-kind", "frobnicate", "", json!({})).await;
    let r = wait_result(&admin, "j-kube-system").await;
    assert_eq!(r.outcome, "failed");
    assert!(r.error.contains("kube-system"), "{r:?}");
    let r = wait_result(&admin, "j-clusterrole").await;
    assert!(r.error.contains("sensitive"), "{r:?}");
    let r = wait_result(&admin, "j-malformed").await;
    assert!(r.error.contains("apiVersion"), "{r:?}");
    let r = wait_result(&admin, "j-unknown-kind").await;
    assert!(r.error.contains("unknown job kind"), "{r:?}");

    // --- conflict: another manager owns spec.chart.version.
    instances
        .patch(
            "wiki",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki"}, "spec": {"chart": {"version": "9.9.9"}}})),
        )
        .await
        .unwrap();
    enqueue(
        "j-conflict",
        "apply",
        "applicationinstance/t/wiki@2",
        instance(&tenant, "wiki", "2.0.0"),
    )
    .await;
    let r = wait_result(&admin, "j-conflict").await;
    assert_eq!(r.outcome, "conflict", "{r:?}");
    assert!(
        r.error.contains("someone-else") && r.error.contains(".spec.chart.version"),
        "{}",
        r.error
    );

    // --- intents.
    let mut op_inst = instance(&tenant, "viaintent", "1.0.0");
    op_inst["spec"]["unknownField"] = json!(1);
    enqueue(
        "j-ensure",
        "intent",
        "",
        json!({"intent": "ensure-application-instance", "applicationInstance": op_inst}),
    )
    .await;
    eventually("intent instance", WAIT, || async {
        instances.get_opt("viaintent").await.unwrap()
    })
    .await;
    set_ready(&instances, "viaintent", "True", "HelmReleaseReady").await;
    assert_eq!(wait_result(&admin, "j-ensure").await.outcome, "succeeded");
    enqueue(
        "j-del-intent",
        "intent",
        "",
        json!({"intent": "delete-application-instance", "name": "viaintent", "namespace": tenant}),
    )
    .await;
    assert_eq!(
        wait_result(&admin, "j-del-intent").await.outcome,
        "succeeded"
    );
    enqueue(
        "j-bad-intent",
        "intent",
        "",
        json!({"intent": "launch-rockets"}),
    )
    .await;
    assert!(
        wait_result(&admin, "j-bad-intent")
            .await
            .error
            .contains("unsupported intent")
    );

    // --- delete.
    enqueue(
        "j-delete",
        "delete",
        "",
        json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki", "namespace": tenant}),
    )
    .await;
    assert_eq!(wait_result(&admin, "j-delete").await.outcome, "succeeded");
    eventually("instance gone", WAIT, || async {
        instances
            .get_opt("wiki")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // --- control plane down: events stay queued, then drain; none lost.
    admin
        .inject_fault(Fault::status("*", 503, u32::MAX))
        .await
        .unwrap();
    let before = all_events(&admin).await;
    for i in 0..5 {
        instances
            .create(
                &PostParams::default(),
                &serde_json::from_value(instance(&tenant, &format!("down-{i}"), "1.0.0")).unwrap(),
            )
            .await
            .unwrap();
        set_ready(&instances, &format!("down-{i}"), "False", "Reconciling").await;
    }
    eventually("events queued while down", WAIT, || async {
        (agent.batcher().len() >= 5).then_some(())
    })
    .await;
    assert_eq!(all_events(&admin).await, before);
    admin.clear_faults().await.unwrap();
    eventually("queued events delivered", WAIT, || async {
        let events = admin
            .events(CLUSTER_ID, Some("ConditionTransition"), None, None)
            .await
            .unwrap();
        (0..5)
            .all(|i| {
                events
                    .iter()
                    .any(|e| e.resource_ref.name == format!("down-{i}"))
            })
            .then_some(())
    })
    .await;

    // --- rotation while polling: old token revoked at once; the next job still flows.
    let token_of = |s: Secret| s.data.unwrap()["token"].0.clone();
    let first_token = token_of(secrets.get("vworkspace-agent-credentials").await.unwrap());
    clusters
        .patch(
            "agent-test",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateCredentials": true}})),
        )
        .await
        .unwrap();
    eventually("rotated Secret", WAIT, || async {
        let s = secrets.get("vworkspace-agent-credentials").await.ok()?;
        (token_of(s) != first_token).then_some(())
    })
    .await;
    eventually("rotation flag cleared", WAIT, || async {
        (clusters
            .get("agent-test")
            .await
            .ok()?
            .spec
            .rotate_credentials
            == Some(false))
        .then_some(())
    })
    .await;
    enqueue(
        "j-after-rotation",
        "delete",
        "",
        json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "down-0", "namespace": tenant}),
    )
    .await;
    assert_eq!(
        wait_result(&admin, "j-after-rotation").await.outcome,
        "succeeded"
    );
    wait_event(
        &admin,
        "CredentialRotated audit event",
        "CredentialRotated",
        None,
        |_| true,
    )
    .await;

    // --- a second Cluster is flagged and ignored.
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "agent-test-dup"}, "spec": {"controlPlaneEndpoint": "http://127.0.0.1:1"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    eventually("DuplicateCluster", WAIT, || async {
        cluster_condition(&clusters, "agent-test-dup", "Connected")
            .await
            .filter(|(p, _, r)| p == "Error" && r == "DuplicateCluster")
    })
    .await;
    assert_eq!(admin.request_count("register").await.unwrap(), 1);
    assert!(
        metrics
            .encode()
            .contains("vworkspace_operator_applied_jobs_total")
    );
    assert!(metrics.applied_jobs_total.get() >= 4);
    shutdown.cancel();
}
