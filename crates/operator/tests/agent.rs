//! Pull-mode agent + Cluster controller against a real kube-apiserver and an in-test
//! control plane speaking the agent protocol (strict: unknown tokens 401, old token
//! revoked on rotation, fault injection). One sequential scenario, because `Cluster` is
//! cluster-scoped and only one may be active per apiserver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testkit::{ControlPlane, fresh_namespace};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster};
use vworkspace_operator::agent::backoff::BackoffConfig;
use vworkspace_operator::agent::events::BatcherConfig;
use vworkspace_operator::agent::{Agent, AgentConfig, run_agent};
use vworkspace_operator::controller::cluster;
use vworkspace_operator::metrics::Metrics;

#[derive(Default)]
struct Cp {
    registration: HashMap<String, String>,
    tokens: HashMap<String, String>,
    queue: Vec<Value>,
    acked: HashSet<String>,
    results: HashMap<String, Value>,
    statuses: HashMap<String, Vec<Value>>,
    events: Vec<Value>,
    seen_keys: HashSet<String>,
    fail: Option<u16>,
    rotations: u32,
    requests: Vec<String>,
}

type S = Arc<Mutex<Cp>>;

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

fn err(code: u16, e: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(json!({"error": e, "message": e})),
    )
        .into_response()
}

#[allow(clippy::result_large_err)]
fn auth(s: &Cp, h: &HeaderMap) -> Result<String, Response> {
    if let Some(code) = s.fail {
        return Err(err(code, "injected"));
    }
    s.tokens
        .get(&bearer(h))
        .cloned()
        .ok_or_else(|| err(401, "Unauthorized"))
}

async fn register(State(s): State<S>, h: HeaderMap) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push("register".into());
    let Some(id) = s.registration.remove(&bearer(&h)) else {
        return err(401, "Unauthorized");
    };
    let token = format!("bootstrap-{id}");
    s.tokens.insert(token.clone(), id.clone());
    axum::Json(json!({"clusterId": id, "token": token})).into_response()
}

async fn jobs(State(s): State<S>, h: HeaderMap, uri: axum::http::Uri) -> Response {
    let q: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let wait: u64 = q.get("wait").and_then(|w| w.parse().ok()).unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(wait.min(2));
    loop {
        {
            let mut st = s.lock().unwrap();
            let id = match auth(&st, &h) {
                Ok(id) => id,
                Err(r) => return r,
            };
            if q.get("cluster") != Some(&id) {
                return err(403, "Forbidden");
            }
            if !st.queue.is_empty() || Instant::now() >= deadline {
                let jobs: Vec<Value> = st.queue.drain(..).collect();
                return axum::Json(
                    json!({"jobs": if jobs.is_empty() { Value::Null } else { jobs.into() }}),
                )
                .into_response();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn job_op(
    State(s): State<S>,
    h: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    body: String,
) -> Response {
    let mut st = s.lock().unwrap();
    if let Err(r) = auth(&st, &h) {
        return r;
    }
    match op.as_str() {
        "ack" => {
            if st.results.contains_key(&id) {
                return StatusCode::CONFLICT.into_response();
            }
            st.acked.insert(id);
        }
        "status" => st
            .statuses
            .entry(id)
            .or_default()
            .push(serde_json::from_str(&body).unwrap()),
        "result" => {
            if st.results.contains_key(&id) {
                return StatusCode::CONFLICT.into_response();
            }
            st.results.insert(id, serde_json::from_str(&body).unwrap());
        }
        _ => return err(404, "NotFound"),
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn events(State(s): State<S>, h: HeaderMap, body: String) -> Response {
    let mut st = s.lock().unwrap();
    if let Err(r) = auth(&st, &h) {
        return r;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    for e in v["events"].as_array().unwrap() {
        let key = e["eventKey"].as_str().unwrap_or_default().to_string();
        if !key.is_empty() && !st.seen_keys.insert(key) {
            continue;
        }
        st.events.push(e.clone());
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn rotate(State(s): State<S>, h: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    let id = match auth(&st, &h) {
        Ok(id) => id,
        Err(r) => return r,
    };
    st.rotations += 1;
    // Strict: the old token is revoked at once.
    st.tokens.remove(&bearer(&h));
    let token = format!("bootstrap-{id}-rotated-{}", st.rotations);
    st.tokens.insert(token.clone(), id);
    axum::Json(json!({"token": token})).into_response()
}

async fn start_cp() -> (S, String) {
    let s: S = Arc::new(Mutex::new(Cp::default()));
    let app = Router::new()
        .route("/api/agent/register", post(register))
        .route("/api/agent/jobs", get(jobs))
        .route("/api/agent/jobs/{id}/{op}", post(job_op))
        .route("/api/agent/events", post(events))
        .route("/api/agent/credentials/rotate", post(rotate))
        .with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (s, format!("http://{addr}"))
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn result_of(s: &S, id: &str) -> Option<Value> {
    s.lock().unwrap().results.get(id).cloned()
}

async fn wait_result(s: &S, id: &str) -> Value {
    eventually(&format!("result of {id}"), || async { result_of(s, id) }).await
}

fn enqueue(s: &S, job: Value) {
    s.lock().unwrap().queue.push(job);
}

fn job(id: &str, kind: &str, key: &str, payload: Value) -> Value {
    json!({"id": id, "kind": kind, "payload": payload, "idempotencyKey": key,
           "createdAt": jiff::Timestamp::now().to_string(), "expiresAt": "0001-01-01T00:00:00Z"})
}

fn instance(ns: &str, name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"appRef": {"catalogId": name},
                 "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": version},
                 "release": {"name": name, "namespace": ns},
                 "values": {"source": "inline", "inline": {}}}
    })
}

async fn set_ready(api: &Api<ApplicationInstance>, name: &str, status: &str, reason: &str) {
    let inst = api.get(name).await.unwrap();
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": status, "reason": reason, "message": "played by the test",
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
        "observedGeneration": inst.metadata.generation}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
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
    c.runtime_tick = Duration::from_millis(300);
    c.heartbeat_period = Duration::from_secs(2);
    c.ready_timeout = Duration::from_secs(60);
    c.backoff = BackoffConfig {
        first: Duration::from_millis(100),
        cap: Duration::from_millis(500),
        floor: Duration::from_millis(50),
    };
    c.batcher = BatcherConfig {
        flush_period: Duration::from_millis(200),
        ..BatcherConfig::default()
    };
    c
}

#[tokio::test]
async fn pull_mode_end_to_end() {
    let cp = ControlPlane::get().await.unwrap();
    let client: Client = cp.client().await.unwrap();
    let op_ns = fresh_namespace(&client, "agent-op").await.unwrap();
    let tenant = format!("agent-tenant-{}", std::process::id());
    let (s, url) = start_cp().await;
    s.lock()
        .unwrap()
        .registration
        .insert("vwksp-reg-test".into(), "cluster-test-1".into());

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
                "spec": {"controlPlaneEndpoint": url, "registrationTokenSecretRef": {"name": "reg"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    eventually("Cluster Connected", || async {
        cluster_condition(&clusters, "agent-test", "Connected")
            .await
            .filter(|(p, s, r)| p == "Connected" && s == "True" && r == "RoundTripOK")
    })
    .await;
    let c = clusters.get("agent-test").await.unwrap();
    let st = c.status.clone().unwrap();
    assert_eq!(st.observed_token.as_deref().map(str::len), Some(16));
    assert_eq!(c.spec.cluster_id.as_deref(), Some("cluster-test-1"));
    assert!(
        c.finalizers()
            .iter()
            .any(|f| f == "ops.vworkspace.io/cluster-cleanup")
    );
    let creds = secrets.get("vworkspace-agent-credentials").await.unwrap();
    assert_eq!(creds.owner_references()[0].name, "agent-test");
    assert!(vworkspace_api::conditions::find(&st.conditions, "ControllersHealthy").is_some());
    assert_eq!(
        s.lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| *r == "register")
            .count(),
        1
    );
    // Heartbeat carries the condition snapshot under the Cluster's object name.
    eventually("heartbeat", || async {
        s.lock()
            .unwrap()
            .events
            .iter()
            .find(|e| {
                e["kind"] == "ClusterHeartbeat"
                    && e["resourceRef"]["name"] == "agent-test"
                    && e["conditions"].as_array().is_some_and(|c| !c.is_empty())
            })
            .cloned()
    })
    .await;

    // --- apply: instance written with labels; succeeded only after Ready=True.
    let instances: Api<ApplicationInstance> = Api::namespaced(client.clone(), &tenant);
    enqueue(
        &s,
        job(
            "j-apply",
            "apply",
            "applicationinstance/t/wiki@1",
            instance(&tenant, "wiki", "1.0.0"),
        ),
    );
    let inst = eventually("instance", || async {
        instances.get_opt("wiki").await.unwrap()
    })
    .await;
    assert_eq!(
        inst.labels()["app.vworkspace.io/managed-by"],
        "control-plane"
    );
    assert_eq!(
        inst.labels()["app.vworkspace.io/cluster-id"],
        "cluster-test-1"
    );
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get(&tenant)
        .await
        .unwrap();
    assert_eq!(ns.labels()["managed-by"], "vworkspace");
    assert!(s.lock().unwrap().acked.contains("j-apply"));
    set_ready(&instances, "wiki", "Unknown", "Reconciling").await;
    eventually("interim status", || async {
        s.lock().unwrap().statuses.get("j-apply").cloned()
    })
    .await;
    assert!(
        result_of(&s, "j-apply").is_none(),
        "succeeded before Ready=True"
    );
    set_ready(&instances, "wiki", "True", "HelmReleaseReady").await;
    let r = wait_result(&s, "j-apply").await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    assert_eq!(r["appliedRef"]["name"], "wiki");
    // The Ready transition reached the events endpoint.
    eventually("ConditionTransition Ready=True", || async {
        s.lock()
            .unwrap()
            .events
            .iter()
            .find(|e| {
                e["kind"] == "ConditionTransition"
                    && e["resourceRef"]["name"] == "wiki"
                    && e["conditions"][0]["status"] == "True"
            })
            .cloned()
    })
    .await;

    // --- replay → noop; expired → noop/expired.
    enqueue(
        &s,
        job(
            "j-replay",
            "apply",
            "applicationinstance/t/wiki@1",
            instance(&tenant, "wiki", "1.0.0"),
        ),
    );
    let r = wait_result(&s, "j-replay").await;
    assert_eq!(
        (r["outcome"].as_str(), r.get("error")),
        (Some("noop"), None)
    );
    let mut expired = job(
        "j-expired",
        "apply",
        "",
        instance(&tenant, "other", "1.0.0"),
    );
    expired["expiresAt"] = "2020-01-01T00:00:00Z".into();
    enqueue(&s, expired);
    let r = wait_result(&s, "j-expired").await;
    assert_eq!(
        (r["outcome"].as_str(), r["error"].as_str()),
        (Some("noop"), Some("expired"))
    );
    assert!(instances.get_opt("other").await.unwrap().is_none());

    // --- scope refusals.
    enqueue(
        &s,
        job(
            "j-kube-system",
            "apply",
            "",
            instance("kube-system", "evil", "1.0.0"),
        ),
    );
    enqueue(
        &s,
        job(
            "j-clusterrole",
            "apply",
            "",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "evil"}, "rules": []}),
        ),
    );
    enqueue(
        &s,
        job(
            "j-malformed",
            "apply",
            "",
            json!({"kind": "ApplicationInstance"}),
        ),
    );
    enqueue(&s, job("j-unknown-kind", "frobnicate", "", json!({})));
    let r = wait_result(&s, "j-kube-system").await;
    assert_eq!(r["outcome"], "failed");
    assert!(r["error"].as_str().unwrap().contains("kube-system"), "{r}");
    let r = wait_result(&s, "j-clusterrole").await;
    assert!(r["error"].as_str().unwrap().contains("sensitive"), "{r}");
    let r = wait_result(&s, "j-malformed").await;
    assert!(r["error"].as_str().unwrap().contains("apiVersion"), "{r}");
    let r = wait_result(&s, "j-unknown-kind").await;
    assert!(
        r["error"].as_str().unwrap().contains("unknown job kind"),
        "{r}"
    );

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
        &s,
        job(
            "j-conflict",
            "apply",
            "applicationinstance/t/wiki@2",
            instance(&tenant, "wiki", "2.0.0"),
        ),
    );
    let r = wait_result(&s, "j-conflict").await;
    assert_eq!(r["outcome"], "conflict", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("someone-else") && e.contains(".spec.chart.version"),
        "{e}"
    );

    // --- intents.
    let mut op_inst = instance(&tenant, "viaintent", "1.0.0");
    op_inst["spec"]["unknownField"] = json!(1);
    enqueue(
        &s,
        job(
            "j-ensure",
            "intent",
            "",
            json!({"intent": "ensure-application-instance", "applicationInstance": op_inst}),
        ),
    );
    eventually("intent instance", || async {
        instances.get_opt("viaintent").await.unwrap()
    })
    .await;
    set_ready(&instances, "viaintent", "True", "HelmReleaseReady").await;
    assert_eq!(wait_result(&s, "j-ensure").await["outcome"], "succeeded");
    enqueue(
        &s,
        job(
            "j-del-intent",
            "intent",
            "",
            json!({"intent": "delete-application-instance", "name": "viaintent", "namespace": tenant}),
        ),
    );
    assert_eq!(
        wait_result(&s, "j-del-intent").await["outcome"],
        "succeeded"
    );
    enqueue(
        &s,
        job(
            "j-bad-intent",
            "intent",
            "",
            json!({"intent": "launch-rockets"}),
        ),
    );
    assert!(
        wait_result(&s, "j-bad-intent").await["error"]
            .as_str()
            .unwrap()
            .contains("unsupported intent")
    );

    // --- delete.
    enqueue(
        &s,
        job(
            "j-delete",
            "delete",
            "",
            json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki", "namespace": tenant}),
        ),
    );
    assert_eq!(wait_result(&s, "j-delete").await["outcome"], "succeeded");
    eventually("instance gone", || async {
        instances
            .get_opt("wiki")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // --- control plane down: events stay queued, then drain; none lost.
    s.lock().unwrap().fail = Some(503);
    let before = s.lock().unwrap().events.len();
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
    eventually("events queued while down", || async {
        (agent.batcher().len() >= 5).then_some(())
    })
    .await;
    assert_eq!(s.lock().unwrap().events.len(), before);
    s.lock().unwrap().fail = None;
    eventually("queued events delivered", || async {
        let st = s.lock().unwrap();
        (0..5)
            .all(|i| {
                st.events.iter().any(|e| {
                    e["resourceRef"]["name"] == format!("down-{i}").as_str()
                        && e["kind"] == "ConditionTransition"
                })
            })
            .then_some(())
    })
    .await;

    // --- rotation while polling: old token revoked at once; the next job still flows.
    clusters
        .patch(
            "agent-test",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateCredentials": true}})),
        )
        .await
        .unwrap();
    eventually("rotated Secret", || async {
        let s = secrets.get("vworkspace-agent-credentials").await.ok()?;
        let tok = String::from_utf8(s.data?.get("token")?.0.clone()).ok()?;
        tok.contains("rotated").then_some(())
    })
    .await;
    eventually("rotation flag cleared", || async {
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
        &s,
        job(
            "j-after-rotation",
            "delete",
            "",
            json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "down-0", "namespace": tenant}),
        ),
    );
    assert_eq!(
        wait_result(&s, "j-after-rotation").await["outcome"],
        "succeeded"
    );
    eventually("CredentialRotated audit event", || async {
        s.lock()
            .unwrap()
            .events
            .iter()
            .find(|e| e["kind"] == "CredentialRotated")
            .cloned()
    })
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
    eventually("DuplicateCluster", || async {
        cluster_condition(&clusters, "agent-test-dup", "Connected")
            .await
            .filter(|(p, _, r)| p == "Error" && r == "DuplicateCluster")
    })
    .await;
    assert_eq!(
        s.lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| *r == "register")
            .count(),
        1
    );
    assert!(
        metrics
            .encode()
            .contains("vworkspace_operator_applied_jobs_total")
    );
    assert!(metrics.applied_jobs_total.get() >= 4);
    shutdown.cancel();
}
