//! The mock's agent and admin API over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mock_control_plane::{Fault, MockConfig, MockServer};
use serde_json::{Value, json};
use vworkspace_protocol::{Job, MEDIA_TYPE};

const CLUSTER: &str = "c-1";
const REG: &str = "vwksp-reg-0123";

fn config() -> MockConfig {
    MockConfig {
        registration_token: REG.into(),
        cluster_id: CLUSTER.into(),
        admin_token: Some("admin".into()),
        ..MockConfig::default()
    }
}

/// [`config`] with state in a new database file in a directory named after `tag` (returned
/// for cleanup).
fn durable_config(tag: &str) -> (MockConfig, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("state.db");
    let _ = std::fs::remove_file(&db);
    let cfg = MockConfig {
        db_path: Some(db),
        ..config()
    };
    (cfg, dir)
}

struct Agent {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Agent {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("accept", MEDIA_TYPE)
    }
    /// One poll without waiting, as it came back (or failed).
    async fn poll_raw(&self) -> reqwest::Result<reqwest::Response> {
        self.req(
            reqwest::Method::GET,
            &format!("/api/agent/jobs?cluster={CLUSTER}&wait=0"),
        )
        .send()
        .await
    }
    async fn poll(&self, wait: &str) -> (u16, Value) {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/api/agent/jobs?cluster={CLUSTER}&wait={wait}"),
            )
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, body: Value) -> u16 {
        self.req(reqwest::Method::POST, path)
            .header("content-type", MEDIA_TYPE)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

async fn register(url: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/api/agent/register"))
        .bearer_auth(token)
        .header("accept", MEDIA_TYPE)
        .header("content-type", MEDIA_TYPE)
        .body(json!({"registrationToken": token}).to_string())
        .send()
        .await
        .unwrap()
}

async fn registered(server: &MockServer) -> Agent {
    let r = register(&server.url(), REG).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["clusterId"], CLUSTER);
    Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: body["token"].as_str().unwrap().to_string(),
    }
}

fn job(id: &str) -> Job {
    serde_json::from_value(json!({"id": id, "kind": "apply", "payload": {"kind": "X"}})).unwrap()
}

#[tokio::test]
async fn registration_tokens_are_single_use_and_expire() {
    let server = MockServer::start(config()).await.unwrap();
    let _agent = registered(&server).await;
    assert_eq!(
        register(&server.url(), REG).await.status(),
        401,
        "second use"
    );
    assert_eq!(
        register(&server.url(), "vwksp-reg-unknown").await.status(),
        401
    );
    let admin = server.admin();
    admin
        .add_registration_token("vwksp-reg-short", "c-2", Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        register(&server.url(), "vwksp-reg-short").await.status(),
        401,
        "expired"
    );
    // Wrong media type.
    let r = reqwest::Client::new()
        .post(format!("{}/api/agent/register", server.url()))
        .bearer_auth("x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn agent_endpoints_answer_as_specified() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    let bad = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: "nope".into(),
    };
    assert_eq!(bad.poll("0").await.0, 401);
    assert_eq!(
        bad.post("/api/agent/events", json!({"events": []})).await,
        401
    );
    // A valid token of another cluster gets 403 on the poll.
    let (code, _) = agent
        .req(reqwest::Method::GET, "/api/agent/jobs?cluster=other&wait=0")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 403);
    assert_eq!(agent.poll("0").await, (200, json!({"jobs": []})));
    assert_eq!(
        agent.post("/api/agent/jobs/ghost/ack", json!(null)).await,
        404
    );
    assert_eq!(
        agent
            .post(
                "/api/agent/jobs/ghost/result",
                json!({"outcome": "noop", "timestamp": "2026-01-01T00:00:00Z"})
            )
            .await,
        404
    );

    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    let (code, body) = agent.poll("0").await;
    assert_eq!(code, 200);
    assert_eq!(body["jobs"][0]["id"], "j1");
    assert_eq!(agent.post("/api/agent/jobs/j1/ack", json!(null)).await, 204);
    assert!(admin.was_acked("j1").await.unwrap());
    let status = json!({"phase": "Reconciling", "timestamp": "2026-01-01T00:00:00Z"});
    assert_eq!(agent.post("/api/agent/jobs/j1/status", status).await, 204);
    assert_eq!(
        admin.status_updates("j1").await.unwrap()[0].phase,
        "Reconciling"
    );
    let result = json!({"outcome": "succeeded", "timestamp": "2026-01-01T00:00:00Z"});
    assert_eq!(
        agent
            .post(
                "/api/agent/jobs/j1/result",
                json!({"outcome": "weird", "timestamp": "2026-01-01T00:00:00Z"})
            )
            .await,
        400
    );
    assert_eq!(
        agent
            .post("/api/agent/jobs/j1/result", result.clone())
            .await,
        204
    );
    assert_eq!(agent.post("/api/agent/jobs/j1/result", result).await, 409);
    assert_eq!(agent.post("/api/agent/jobs/j1/ack", json!(null)).await, 409);
    let info = admin.job("j1").await.unwrap().unwrap();
    assert_eq!((info.deliveries, info.result_posts), (1, 2));
    assert_eq!(
        admin.result("j1").await.unwrap().unwrap().outcome,
        "succeeded"
    );
    assert!(admin.result("ghost").await.unwrap().is_none());

    // Events are de-duplicated by key; keyless events are always stored.
    let ev = |key: &str| {
        json!({"eventKey": key, "kind": "ConditionTransition",
        "resourceRef": {"apiVersion": "v1", "kind": "ApplicationInstance", "namespace": "n", "name": "a"},
        "timestamp": "2026-01-01T00:00:00Z"})
    };
    let batch = json!({"events": [ev("k1"), ev("k1"), ev(""), ev("")]});
    assert_eq!(agent.post("/api/agent/events", batch).await, 204);
    let got = admin
        .events(CLUSTER, Some("ConditionTransition"), Some("n"), Some("a"))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        admin
            .events(CLUSTER, None, Some("other"), None)
            .await
            .unwrap()
            .is_empty()
    );

    // Admin API needs its token.
    let r = reqwest::get(format!("{}/api/admin/jobs", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn unacked_jobs_are_redelivered_after_the_lease() {
    let mut cfg = config();
    cfg.lease = Duration::from_secs(1);
    let server = MockServer::start(cfg).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    admin.enqueue(CLUSTER, &job("j2")).await.unwrap();
    let (_, first) = agent.poll("0").await;
    assert_eq!(first["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(agent.post("/api/agent/jobs/j1/ack", json!(null)).await, 204);
    // Within the lease nothing is handed out; after it, only the unacked job.
    assert_eq!(agent.poll("0").await.1, json!({"jobs": []}));
    let (_, again) = agent.poll("5").await;
    let ids: Vec<_> = again["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(ids, [json!("j2")]);
    assert_eq!(admin.job("j2").await.unwrap().unwrap().deliveries, 2);
}

#[tokio::test]
async fn long_poll_wakes_on_enqueue() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    let poll = tokio::spawn(async move { agent.poll("60").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the poll must hold while there is no job"
    );
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    let (code, body) = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["jobs"][0]["id"], "j1");
}

#[tokio::test]
async fn restart_with_the_same_database_loses_nothing() {
    let (cfg, dir) = durable_config("mock-cp");
    let server = MockServer::start(cfg.clone()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    admin.enqueue(CLUSTER, &job("j2")).await.unwrap();
    agent.poll("0").await;
    agent.post("/api/agent/jobs/j1/ack", json!(null)).await;
    agent
        .post(
            "/api/agent/jobs/j1/result",
            json!({"outcome": "succeeded", "timestamp": "2026-01-01T00:00:00Z"}),
        )
        .await;
    drop(server);

    let server = MockServer::start(cfg).await.unwrap();
    let agent = Agent {
        url: server.url(),
        ..agent
    };
    let admin = server.admin();
    assert_eq!(
        register(&server.url(), REG).await.status(),
        401,
        "a used token stays used"
    );
    assert_eq!(agent.poll("0").await.0, 200, "the bootstrap token survives");
    assert_eq!(
        admin.result("j1").await.unwrap().unwrap().outcome,
        "succeeded"
    );
    assert_eq!(admin.job("j2").await.unwrap().unwrap().deliveries, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rotation_keeps_the_old_token_for_the_grace_period() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let r = agent
        .req(reqwest::Method::POST, "/api/agent/credentials/rotate")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new: Value = r.json().await.unwrap();
    let new_agent = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: new["token"].as_str().unwrap().into(),
    };
    assert_eq!(agent.poll("0").await.0, 200, "old token within grace");
    assert_eq!(new_agent.poll("0").await.0, 200);

    let mut cfg = config();
    cfg.rotation_grace = Duration::ZERO;
    let strict = MockServer::start(cfg).await.unwrap();
    let agent = registered(&strict).await;
    let rotated = strict.admin().rotate(CLUSTER).await.unwrap();
    assert_eq!(agent.poll("0").await.0, 401, "revoked at once");
    let new_agent = Agent {
        http: reqwest::Client::new(),
        url: strict.url(),
        token: rotated,
    };
    assert_eq!(new_agent.poll("0").await.0, 200);
    strict.admin().revoke(CLUSTER).await.unwrap();
    assert_eq!(new_agent.poll("0").await.0, 401);
}

#[tokio::test]
async fn rotate_refuses_a_garbage_body() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    for garbage in ["not json", "[1]", "{\"a\":"] {
        let r = agent
            .req(reqwest::Method::POST, "/api/agent/credentials/rotate")
            .body(garbage)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{garbage}");
    }
    let mut cfg = config();
    cfg.rotation_grace = Duration::ZERO;
    let strict = MockServer::start(cfg).await.unwrap();
    let agent = registered(&strict).await;
    let r = agent
        .req(reqwest::Method::POST, "/api/agent/credentials/rotate")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(agent.poll("0").await.0, 200, "no rotation happened");
}

#[tokio::test]
async fn lenient_mode_behaves_like_the_original_server() {
    let server = MockServer::start(config().lenient()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    let job: Job =
        serde_json::from_value(json!({"id": "once", "kind": "apply", "payload": {}})).unwrap();
    admin.enqueue(CLUSTER, &job).await.unwrap();
    assert_eq!(agent.poll("0").await.1["jobs"][0]["id"], "once");
    // Not acked, yet never handed out again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(agent.poll("0").await.1["jobs"], json!([]));
    // No job registry.
    assert_eq!(
        agent.post("/api/agent/jobs/nobody/ack", json!({})).await,
        204
    );
    let bad = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: "wrong".into(),
    };
    assert_eq!(bad.poll("0").await.0, 403);
}

#[tokio::test]
async fn faults_are_injected_per_endpoint() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    admin
        .inject_fault(Fault {
            endpoint: "jobs".into(),
            status: Some(429),
            retry_after: Some("7".into()),
            count: 1,
            ..Fault::default()
        })
        .await
        .unwrap();
    let r = agent.poll_raw().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(agent.poll("0").await.0, 200, "count used up");
    // Other endpoints are untouched by an endpoint-specific fault.
    admin
        .inject_fault(Fault::status("events", 503, 2))
        .await
        .unwrap();
    assert_eq!(agent.poll("0").await.0, 200);
    assert_eq!(
        agent.post("/api/agent/events", json!({"events": []})).await,
        503
    );
    assert_eq!(
        agent.post("/api/agent/events", json!({"events": []})).await,
        503
    );
    assert_eq!(
        agent.post("/api/agent/events", json!({"events": []})).await,
        204
    );
    // Delay.
    admin
        .inject_fault(Fault {
            endpoint: "*".into(),
            delay_ms: Some(500),
            count: 1,
            ..Fault::default()
        })
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(agent.poll("0").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(500));
    // Dropped connection: the client sees a transport error, not a status.
    admin
        .inject_fault(Fault {
            endpoint: "jobs".into(),
            drop_connection: true,
            count: 1,
            ..Fault::default()
        })
        .await
        .unwrap();
    let r = agent.poll_raw().await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "the dropped connection must surface as an error");
}

#[tokio::test]
async fn requests_are_counted_and_faults_can_be_cleared() {
    let server = MockServer::start(config()).await.unwrap();
    let admin = server.admin();
    assert_eq!(admin.request_count("register").await.unwrap(), 0);
    let agent = registered(&server).await;
    // A rejected registration counts too: it reached the endpoint.
    assert_eq!(register(&server.url(), REG).await.status(), 401);
    assert_eq!(admin.request_count("register").await.unwrap(), 2);
    // Faulted requests count; admin calls and other endpoints do not.
    admin
        .inject_fault(Fault::status("*", 503, 100))
        .await
        .unwrap();
    assert_eq!(agent.poll("0").await.0, 503);
    assert_eq!(agent.poll("0").await.0, 503);
    assert_eq!(admin.request_count("jobs").await.unwrap(), 2);
    assert_eq!(admin.request_count("events").await.unwrap(), 0);
    // Clearing ends an unfinished fault at once.
    admin.clear_faults().await.unwrap();
    assert_eq!(agent.poll("0").await.0, 200);
    assert_eq!(
        agent.post("/api/agent/events", json!({"events": []})).await,
        204
    );
    assert_eq!(admin.request_count("jobs").await.unwrap(), 3);
    assert_eq!(admin.request_count("events").await.unwrap(), 1);
    // Reset forgets the counts.
    admin.reset().await.unwrap();
    assert_eq!(admin.request_count("jobs").await.unwrap(), 0);
}

#[tokio::test]
async fn every_agent_endpoint_rejects_bad_tokens_and_unknown_jobs() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    let bad = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: "nope".into(),
    };
    let result = json!({"outcome": "noop", "timestamp": "2026-01-01T00:00:00Z"});
    let status = json!({"phase": "Reconciling", "timestamp": "2026-01-01T00:00:00Z"});
    // 401 on every agent endpoint for an unknown token, also for a known job.
    assert_eq!(bad.poll("0").await.0, 401);
    assert_eq!(bad.post("/api/agent/jobs/j1/ack", json!(null)).await, 401);
    assert_eq!(
        bad.post("/api/agent/jobs/j1/status", status.clone()).await,
        401
    );
    assert_eq!(
        bad.post("/api/agent/jobs/j1/result", result.clone()).await,
        401
    );
    assert_eq!(
        bad.post("/api/agent/events", json!({"events": []})).await,
        401
    );
    assert_eq!(
        bad.post("/api/agent/credentials/rotate", json!({})).await,
        401
    );
    // Missing bearer altogether.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/agent/jobs?cluster={CLUSTER}&wait=0",
            server.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Unauthorized");

    // 404 for unknown job ids on ack / status / result.
    assert_eq!(
        agent.post("/api/agent/jobs/ghost/ack", json!(null)).await,
        404
    );
    assert_eq!(
        agent
            .post("/api/agent/jobs/ghost/status", status.clone())
            .await,
        404
    );
    assert_eq!(
        agent
            .post("/api/agent/jobs/ghost/result", result.clone())
            .await,
        404
    );

    // 400s: missing cluster, malformed bodies.
    assert_eq!(
        agent
            .req(reqwest::Method::GET, "/api/agent/jobs?wait=0")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        agent
            .post("/api/agent/jobs/j1/status", json!({"phase": 1}))
            .await,
        400
    );
    assert_eq!(
        agent
            .post("/api/agent/jobs/j1/result", json!({"outcome": "noop"}))
            .await,
        400,
        "timestamp is required"
    );
    assert_eq!(
        agent
            .post("/api/agent/events", json!({"events": [{"kind": 1}]}))
            .await,
        400
    );

    // A job of another cluster: 403 for this cluster's token.
    admin
        .add_registration_token("vwksp-reg-other", "c-2", Duration::from_secs(60))
        .await
        .unwrap();
    let r = register(&server.url(), "vwksp-reg-other").await;
    assert_eq!(r.status(), 200);
    let other_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let other = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: other_token,
    };
    assert_eq!(other.post("/api/agent/jobs/j1/ack", json!(null)).await, 403);
    assert_eq!(
        other
            .post("/api/agent/jobs/j1/result", result.clone())
            .await,
        403
    );
    assert!(!admin.was_acked("j1").await.unwrap());

    // Unknown endpoint and health.
    assert_eq!(agent.post("/api/agent/nothing", json!({})).await, 404);
    let r = reqwest::get(format!("{}/healthz", server.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn registration_edge_cases() {
    let server = MockServer::start(config()).await.unwrap();
    let url = server.url();
    let post = |bearer: Option<&'static str>, body: String| {
        let mut r = reqwest::Client::new()
            .post(format!("{url}/api/agent/register"))
            .header("accept", MEDIA_TYPE)
            .header("content-type", MEDIA_TYPE)
            .body(body);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    assert_eq!(
        post(None, json!({"registrationToken": REG}).to_string())
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some(REG), "{not json".into()).await.unwrap().status(),
        400
    );
    // Asking for another cluster than the token is bound to: 403, and the token stays usable.
    let r = post(
        Some(REG),
        json!({"registrationToken": REG, "clusterId": "c-9"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(
        Some(REG),
        json!({"registrationToken": REG, "clusterId": CLUSTER}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["clusterId"], CLUSTER);
    assert!(body["token"].as_str().unwrap().len() > 16);
    // The body token defaults to the bearer.
    server
        .admin()
        .add_registration_token("vwksp-reg-b", "c-3", Duration::from_secs(60))
        .await
        .unwrap();
    let r = post(Some("vwksp-reg-b"), "{}".into()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["clusterId"], "c-3");
}

#[tokio::test]
async fn wait_accepts_a_trailing_s_and_pre_seeded_tokens_work() {
    let mut cfg = config();
    cfg.bootstrap_token = Some("seeded-token".into());
    let server = MockServer::start(cfg).await.unwrap();
    let agent = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: "seeded-token".into(),
    };
    assert_eq!(agent.poll("1s").await, (200, json!({"jobs": []})));
    let admin = server.admin();
    // With jobs ready the poll answers at once whatever the wait says: an empty or
    // negative wait (both read as the default, 30 s) cannot hold this test.
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    assert_eq!(agent.poll("").await.1["jobs"][0]["id"], "j1");
    admin.enqueue(CLUSTER, &job("j2")).await.unwrap();
    assert_eq!(agent.poll("-3").await.1["jobs"][0]["id"], "j2");
    assert_eq!(
        admin.pending_count(CLUSTER).await.unwrap(),
        2,
        "handed out but not acked"
    );
    assert_eq!(agent.post("/api/agent/jobs/j1/ack", json!(null)).await, 204);
    assert_eq!(agent.post("/api/agent/jobs/j2/ack", json!(null)).await, 204);
    assert_eq!(admin.pending_count(CLUSTER).await.unwrap(), 0);
}

#[tokio::test]
async fn admin_api_validates_and_resets() {
    let server = MockServer::start(config()).await.unwrap();
    let url = server.url();
    let admin_post = |path: &str, body: Value| {
        reqwest::Client::new()
            .post(format!("{url}{path}"))
            .header(mock_control_plane::ADMIN_HEADER, "admin")
            .json(&body)
            .send()
    };
    // Each malformed admin request is answered 400.
    for (path, body) in [
        ("/api/admin/enqueue", json!({"job": {"id": "x"}})),
        (
            "/api/admin/enqueue",
            json!({"clusterId": "c", "job": {"id": ""}}),
        ),
        ("/api/admin/faults", json!({"endpoint": "jbos", "count": 1})),
        ("/api/admin/faults", json!({"endpoint": "jobs", "count": 0})),
    ] {
        let r = admin_post(path, body).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    let r = reqwest::Client::new()
        .get(format!("{url}/api/admin/events"))
        .header(mock_control_plane::ADMIN_HEADER, "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "cluster is required");
    let r = reqwest::Client::new()
        .get(format!("{url}/api/admin/jobs/nothing/result"))
        .header(mock_control_plane::ADMIN_HEADER, "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let admin = server.admin();
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    admin
        .inject_fault(Fault::status("jobs", 500, 5))
        .await
        .unwrap();
    let jobs = admin.jobs(Some(CLUSTER)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, mock_control_plane::JobState::Queued);
    admin.reset().await.unwrap();
    assert_eq!(admin.pending_count(CLUSTER).await.unwrap(), 0);
    // Reset also clears faults, but keeps registration state.
    let agent = registered(&server).await;
    assert_eq!(agent.poll("0").await.0, 200);
    assert!(
        admin
            .wait_for_result("none", Duration::from_millis(300))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn restart_keeps_events_status_updates_and_rotated_tokens() {
    let (cfg, dir) = durable_config("mock-cp-b");
    let server = MockServer::start(cfg.clone()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    admin.enqueue(CLUSTER, &job("j1")).await.unwrap();
    agent.poll("0").await;
    assert_eq!(agent.post("/api/agent/jobs/j1/ack", json!(null)).await, 204);
    let status = json!({"phase": "Reconciling", "timestamp": "2026-01-01T00:00:00Z"});
    assert_eq!(agent.post("/api/agent/jobs/j1/status", status).await, 204);
    let ev = json!({"eventKey": "k1", "kind": "ClusterHeartbeat",
        "resourceRef": {"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster", "namespace": "", "name": CLUSTER},
        "timestamp": "2026-01-01T00:00:00Z"});
    assert_eq!(
        agent
            .post("/api/agent/events", json!({"events": [ev.clone()]}))
            .await,
        204
    );
    let rotated = admin.rotate(CLUSTER).await.unwrap();
    drop(server);

    let server = MockServer::start(cfg).await.unwrap();
    let admin = server.admin();
    assert!(admin.was_acked("j1").await.unwrap());
    assert_eq!(admin.status_updates("j1").await.unwrap().len(), 1);
    assert_eq!(
        admin.events(CLUSTER, None, None, None).await.unwrap().len(),
        1
    );
    let again = Agent {
        http: reqwest::Client::new(),
        url: server.url(),
        token: rotated,
    };
    assert_eq!(
        again.poll("0").await,
        (200, json!({"jobs": []})),
        "acked job is not handed out again"
    );
    assert_eq!(
        again
            .post("/api/agent/events", json!({"events": [ev]}))
            .await,
        204
    );
    assert_eq!(
        admin.events(CLUSTER, None, None, None).await.unwrap().len(),
        1,
        "key remembered across restarts"
    );
    let old = Agent {
        url: server.url(),
        ..agent
    };
    assert_eq!(
        old.poll("0").await.0,
        200,
        "old token still within its grace period"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn request_bodies_are_captured_for_scans() {
    let server = MockServer::start(config()).await.unwrap();
    let agent = registered(&server).await;
    let admin = server.admin();
    let r = agent
        .req(reqwest::Method::POST, "/api/agent/events")
        .header("content-type", MEDIA_TYPE)
        .body(json!({"clusterId": CLUSTER, "events": []}).to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(agent.poll("0").await.0, 200);
    // Larger than the capture limit: passed on to the handler, counted, not kept.
    let big = "y".repeat(2 * 1024 * 1024);
    let _ = agent
        .req(reqwest::Method::POST, "/api/agent/events")
        .body(big)
        .send()
        .await
        .unwrap();
    let (bodies, uncaptured) = admin.request_bodies().await.unwrap();
    let endpoints: Vec<&str> = bodies.iter().map(|b| b.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["register", "events", "jobs"]);
    assert!(bodies[2].body.is_empty() && bodies[2].path.contains("wait=0"));
    assert!(bodies[0].body.contains(REG), "{:?}", bodies[0]);
    assert!(bodies[1].body.contains("\"events\":[]"), "{:?}", bodies[1]);
    assert_eq!(bodies[1].path, "/api/agent/events");
    assert_eq!(uncaptured, 1);
    admin.reset().await.unwrap();
    assert_eq!(admin.request_bodies().await.unwrap(), (vec![], 0));
}
