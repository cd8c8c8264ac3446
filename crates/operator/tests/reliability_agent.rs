//! Reliability of the Pull-mode agent against hostile or lenient control planes
//! (issue 11; figures in docs/reliability.md). A scripted in-test server plays a control
//! plane that hands every answer out once and never redelivers, the way the original Go
//! server does, so a job the agent fails to answer is lost for good and shows up here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mock_control_plane::{Fault, MockConfig, MockServer};
use serde_json::json;
use testkit::fixtures::{TestNamespace, eventually, eventually_or_report, test_namespace};
use tokio_util::sync::CancellationToken;
use vworkspace_operator::agent::backoff::BackoffConfig;
use vworkspace_operator::agent::credentials::AuthState;
use vworkspace_operator::agent::poller::Poller;
use vworkspace_operator::agent::{Agent, AgentConfig};
use vworkspace_operator::metrics::Metrics;
use vworkspace_protocol::{Job, JobResult};

const WAIT: Duration = Duration::from_secs(60);

/// What one poll answers: a body (sent once) or a streamed body of `len` bytes.
enum Answer {
    Body(Vec<u8>),
    /// `prefix`, then filler `x` up to `len` bytes, then `suffix`; generated while sent,
    /// so the server itself holds no large buffer.
    Stream {
        prefix: String,
        len: usize,
        suffix: String,
    },
}

#[derive(Default)]
struct Plane {
    answers: VecDeque<Answer>,
    acks: Vec<String>,
    /// First `failing_acks` acks are answered 503.
    failing_acks: u32,
    results: BTreeMap<String, Vec<JobResult>>,
    polls: u32,
}

type S = Arc<Mutex<Plane>>;

async fn poll(State(s): State<S>) -> Response {
    let next = {
        let mut p = s.lock().unwrap();
        p.polls += 1;
        p.answers.pop_front()
    };
    match next {
        Some(Answer::Body(b)) => (StatusCode::OK, b).into_response(),
        Some(Answer::Stream {
            prefix,
            len,
            suffix,
        }) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let n = len / chunk.len();
            let parts = std::iter::once(Bytes::from(prefix))
                .chain(std::iter::repeat_n(chunk, n))
                .chain(std::iter::once(Bytes::from(suffix)))
                .map(Ok::<_, std::io::Error>);
            Response::new(Body::from_stream(futures::stream::iter(parts)))
        }
        None => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (StatusCode::OK, r#"{"jobs":[]}"#).into_response()
        }
    }
}

async fn ack(State(s): State<S>, Path(id): Path<String>) -> StatusCode {
    let mut p = s.lock().unwrap();
    p.acks.push(id);
    if p.failing_acks > 0 {
        p.failing_acks -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::NO_CONTENT
}

async fn result(State(s): State<S>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let Ok(r) = serde_json::from_slice::<JobResult>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    s.lock().unwrap().results.entry(id).or_default().push(r);
    StatusCode::NO_CONTENT
}

async fn server() -> (S, String) {
    let s: S = Arc::default();
    let app = Router::new()
        .route("/api/agent/jobs", get(poll))
        .route("/api/agent/jobs/{id}/ack", post(ack))
        .route(
            "/api/agent/jobs/{id}/status",
            post(|| async { StatusCode::NO_CONTENT }),
        )
        .route("/api/agent/jobs/{id}/result", post(result))
        .route(
            "/api/agent/events",
            post(|| async { StatusCode::NO_CONTENT }),
        )
        .with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (s, format!("http://{addr}"))
}

/// A poller of a fresh agent in its own namespace, polling `url`.
struct Running {
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    client: kube::Client,
    ns: String,
    agent: Agent,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start_agent(prefix: &str, url: &str) -> Running {
    start_agent_with_token(prefix, url, "t-rel").await
}

async fn start_agent_with_token(prefix: &str, url: &str, token: &str) -> Running {
    let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "vworkspace-agent-credentials"},
                "stringData": {"control-plane-base-url": url, "cluster-id": "c-rel", "token": token}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut config = AgentConfig::new(&ns);
    config.poll_interval = Duration::from_secs(1);
    config.backoff = BackoffConfig {
        first: Duration::from_millis(100),
        cap: Duration::from_millis(500),
        floor: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
    };
    let metrics = Arc::new(Metrics::new());
    let agent = Agent::new(client.clone(), config, metrics.clone()).unwrap();
    agent.store().load().await.unwrap().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(Poller::new(agent.clone()).run(cancel.clone()));
    Running {
        metrics,
        cancel,
        client,
        ns,
        agent,
    }
}

/// A job that runs and succeeds at once: deleting an ApplicationInstance that does not
/// exist (no readiness to wait for).
fn delete_job(id: &str, tenant: &str) -> String {
    json!({"id": id, "kind": "delete", "idempotencyKey": format!("k-{id}"),
        "payload": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                    "name": format!("gone-{id}"), "namespace": tenant}})
    .to_string()
}

async fn results_of(s: &S, id: &str) -> Option<Vec<JobResult>> {
    s.lock().unwrap().results.get(id).cloned()
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Item 2: each malformed job is answered on its own (or counted when it has no usable
/// id) and the good jobs beside it run.
#[tokio::test]
async fn malformed_jobs_are_answered_one_by_one() {
    let (s, url) = server().await;
    let body = {
        let tenant = format!("rel-bad-tenant-{}", std::process::id());
        let deep = format!(
            r#"{{"id":"deep","kind":"apply","payload":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let mut body = format!(
            r#"{{"jobs":[{},{deep},{},{},"#,
            delete_job("good-1", &tenant),
            r#"{"id":"kind-42","kind":42,"payload":{}}"#,
            r#"{"id":7,"kind":"apply","payload":{}}"#,
        )
        .into_bytes();
        body.extend_from_slice(br#"{"id":"bad-utf8","kind":"apply","payload":{"x":""#);
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}},"#);
        body.extend_from_slice(delete_job("good-2", &tenant).as_bytes());
        body.extend_from_slice(b"]}");
        body
    };
    s.lock().unwrap().answers.push_back(Answer::Body(body));
    let agent = start_agent("rel-bad", &url).await;

    for id in ["good-1", "good-2"] {
        let r = eventually(&format!("result of {id}"), WAIT, || results_of(&s, id)).await;
        assert_eq!(r[0].outcome, "succeeded", "{id}: {r:?}");
    }
    for (id, says) in [
        ("deep", "JobTooDeep"),
        ("kind-42", "integer `42`"),
        ("bad-utf8", "JobMalformed"),
    ] {
        let r = eventually(&format!("result of {id}"), WAIT, || results_of(&s, id)).await;
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        assert_eq!(r[0].outcome, "failed", "{id}: {r:?}");
        assert!(r[0].error.contains(says), "{id}: {r:?}");
    }
    // The numeric id cannot be answered: counted instead.
    eventually("the unanswerable job counted", WAIT, || async {
        (metric(&agent.metrics, "vworkspace_operator_malformed_jobs_total") >= 1.0).then_some(())
    })
    .await;
    let p = s.lock().unwrap();
    assert!(!p.results.contains_key("7"), "{:?}", p.results.keys());
    for id in ["deep", "kind-42", "bad-utf8", "good-1", "good-2"] {
        assert!(
            p.acks.iter().any(|a| a == id),
            "{id} not acked: {:?}",
            p.acks
        );
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Item 1: a 50 MB job is acknowledged and answered `failed` naming the limit, the job
/// before it runs, and the agent's memory stays bounded (the body is read with a cap).
#[tokio::test]
async fn oversized_job_is_answered_with_the_limit() {
    let (s, url) = server().await;
    let tenant = format!("rel-big-tenant-{}", std::process::id());
    let huge = Answer::Stream {
        prefix: format!(
            r#"{{"jobs":[{},{{"id":"huge","kind":"apply","idempotencyKey":"k-huge","payload":{{"blob":""#,
            delete_job("before-huge", &tenant)
        ),
        len: 50 * 1024 * 1024,
        suffix: r#""}}]}"#.into(),
    };
    let _agent = start_agent("rel-big", &url).await;
    // The baseline once the agent is set up and polling.
    eventually("two polls", WAIT, || async {
        (s.lock().unwrap().polls >= 2).then_some(())
    })
    .await;
    let before = peak_rss_kib();
    s.lock().unwrap().answers.push_back(huge);
    let r = eventually("result of before-huge", WAIT, || {
        results_of(&s, "before-huge")
    })
    .await;
    assert_eq!(r[0].outcome, "succeeded", "{r:?}");
    let r = eventually("result of huge", WAIT, || results_of(&s, "huge")).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome, "failed", "{r:?}");
    assert!(
        r[0].error.contains("JobTooLarge") && r[0].error.contains("262144"),
        "{r:?}"
    );
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    eprintln!("peak RSS growth while answering a 50 MB job: {grown_mib} MiB");
    assert!(grown_mib < 40, "peak RSS grew by {grown_mib} MiB");
}

/// Item 8: the ack fails twice and the server never hands the job out again: the agent
/// retries the ack and answers the job anyway.
#[tokio::test]
async fn failed_ack_without_redelivery_is_still_answered() {
    let (s, url) = server().await;
    let tenant = format!("rel-ack-tenant-{}", std::process::id());
    {
        let mut p = s.lock().unwrap();
        p.failing_acks = 2;
        p.answers.push_back(Answer::Body(
            format!(r#"{{"jobs":[{}]}}"#, delete_job("once", &tenant)).into_bytes(),
        ));
    }
    let agent = start_agent("rel-ack", &url).await;
    let r = eventually("result of once", WAIT, || results_of(&s, "once")).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].outcome, "succeeded", "{r:?}");
    {
        let p = s.lock().unwrap();
        assert!(
            p.acks.iter().filter(|a| *a == "once").count() >= 3,
            "{:?}",
            p.acks
        );
    }
    // Item 5: what the agent writes names its field manager (not "unknown").
    let journal: Secret = Api::namespaced(agent.client.clone(), &agent.ns)
        .get("vworkspace-agent-inflight")
        .await
        .unwrap();
    let managers: Vec<String> = journal
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        !managers.is_empty() && managers.iter().all(|m| m == "vworkspace-agent"),
        "{managers:?}"
    );
}

/// Writes `token` into the agent's credentials Secret and loads it, as the runtime does
/// on its tick after a rotation or a hand edit.
async fn set_token(r: &Running, token: &str) {
    let secrets: Api<Secret> = Api::namespaced(r.client.clone(), &r.ns);
    secrets
        .patch(
            "vworkspace-agent-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": token}})),
        )
        .await
        .unwrap();
    r.agent.store().load().await.unwrap().unwrap();
}

/// The agent against a control plane as lenient as the original Go server: `403` on a
/// bad poll token, no job registry, no redelivery, no rotation grace.
#[tokio::test]
async fn compatible_with_a_lenient_control_plane() {
    let mock = MockServer::start(
        MockConfig {
            registration_token: String::new(),
            cluster_id: "c-rel".into(),
            bootstrap_token: Some("good-token".into()),
            admin_token: Some("adm".into()),
            ..MockConfig::default()
        }
        .lenient(),
    )
    .await
    .unwrap();
    let admin = mock.admin();
    let tenant = format!("rel-compat-tenant-{}", std::process::id());
    let job = |id: &str| serde_json::from_str::<Job>(&delete_job(id, &tenant)).unwrap();

    // A bad token: 403, the agent stops polling until the Secret changes.
    let r = start_agent_with_token("rel-compat", &mock.url(), "bad-token").await;
    eventually("the 403 rejection", WAIT, || async {
        matches!(
            r.agent.store().auth_state(),
            AuthState::Rejected { status: 403, .. }
        )
        .then_some(())
    })
    .await;
    let polls = admin.request_count("jobs").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        admin.request_count("jobs").await.unwrap(),
        polls,
        "polling stopped"
    );

    // The right token: jobs are answered, each handed out once.
    admin.enqueue("c-rel", &job("c1")).await.unwrap();
    set_token(&r, "good-token").await;
    let res = admin.wait_for_result("c1", WAIT).await.unwrap();
    assert_eq!(res.outcome, "succeeded", "{res:?}");

    // A failed ack is retried: the server never hands the job out again.
    admin
        .inject_fault(Fault::status("ack", 503, 2))
        .await
        .unwrap();
    admin.enqueue("c-rel", &job("c2")).await.unwrap();
    let res = admin.wait_for_result("c2", WAIT).await.unwrap();
    assert_eq!(res.outcome, "succeeded", "{res:?}");
    assert_eq!(admin.job("c2").await.unwrap().unwrap().deliveries, 1);

    // Rotation without grace: the old token dies at once; the new one carries on.
    let new = r.agent.client().rotate().await.unwrap();
    set_token(&r, new.expose()).await;
    admin.enqueue("c-rel", &job("c3")).await.unwrap();
    let res = admin.wait_for_result("c3", WAIT).await.unwrap();
    assert_eq!(res.outcome, "succeeded", "{res:?}");
    for id in ["c1", "c2", "c3"] {
        let j = admin.job(id).await.unwrap().unwrap();
        assert_eq!((j.deliveries, j.result_posts), (1, 1), "{id}");
    }
}

/// Item 3: a `429` with `Retry-After: 999999` pauses job polling only up to the cap
/// (2 s in this configuration, 300 s by default), and the pause is visible.
#[tokio::test]
async fn retry_after_is_capped_and_visible() {
    let mock = MockServer::start(MockConfig {
        registration_token: String::new(),
        cluster_id: "c-rel".into(),
        bootstrap_token: Some("t-rel".into()),
        admin_token: Some("adm".into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let admin = mock.admin();
    admin
        .inject_fault(Fault {
            retry_after: Some("999999".into()),
            ..Fault::status("jobs", 429, 1)
        })
        .await
        .unwrap();
    let r = start_agent("rel-429", &mock.url()).await;
    eventually("the throttle shown", WAIT, || async {
        let until = r
            .agent
            .client()
            .connectivity()
            .throttled_until(jiff::Timestamp::now());
        let gauge = metric(&r.metrics, "vworkspace_operator_poll_throttled_seconds");
        (until.is_some() && gauge == 2.0).then_some(())
    })
    .await;
    let tenant = format!("rel-429-tenant-{}", std::process::id());
    admin
        .enqueue(
            "c-rel",
            &serde_json::from_str::<Job>(&delete_job("after-429", &tenant)).unwrap(),
        )
        .await
        .unwrap();
    let res = admin
        .wait_for_result("after-429", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(res.outcome, "succeeded", "{res:?}");
    assert_eq!(
        metric(&r.metrics, "vworkspace_operator_poll_throttled_seconds"),
        0.0
    );
}

/// Soak: batches mixing good jobs with every kind of malformed one, a failing ack now and
/// then, on a server that never redelivers. Every good job is answered once, every
/// malformed job with an id is answered `failed` once, the others are counted. Short by
/// default; `RELIABILITY_LONG=1` runs 100 batches. Prints the figures for
/// docs/reliability.md.
#[tokio::test]
async fn mixed_batches_lose_nothing() {
    let batches: usize = if std::env::var_os("RELIABILITY_LONG").is_some() {
        100
    } else {
        10
    };
    let (s, url) = server().await;
    let tenant = format!("rel-soak-tenant-{}", std::process::id());
    let (mut good, mut bad_with_id, mut bad_without_id) = (Vec::new(), Vec::new(), 0usize);
    {
        let mut p = s.lock().unwrap();
        p.failing_acks = 0;
        for b in 0..batches {
            let mut body = b"{\"jobs\":[".to_vec();
            for j in 0..5 {
                let id = format!("g-{b}-{j}");
                body.extend_from_slice(delete_job(&id, &tenant).as_bytes());
                body.push(b',');
                good.push(id);
            }
            let bad_id = format!("b-{b}");
            match b % 4 {
                0 => body.extend_from_slice(
                    format!(
                        r#"{{"id":"{bad_id}","kind":"apply","payload":{}1{}}}"#,
                        "[".repeat(5000),
                        "]".repeat(5000)
                    )
                    .as_bytes(),
                ),
                1 => {
                    body.extend_from_slice(
                        format!(r#"{{"id":"{bad_id}","kind":"apply","payload":{{"x":""#).as_bytes(),
                    );
                    body.extend_from_slice(&[0xc3, 0x28]);
                    body.extend_from_slice(b"\"}}");
                }
                2 => body.extend_from_slice(
                    format!(r#"{{"id":"{bad_id}","kind":42,"payload":{{}}}}"#).as_bytes(),
                ),
                _ => {
                    body.extend_from_slice(format!(r#"{{"id":{b},"kind":"apply"}}"#).as_bytes());
                    bad_without_id += 1;
                }
            }
            if b % 4 != 3 {
                bad_with_id.push(bad_id);
            }
            body.extend_from_slice(b"]}");
            p.answers.push_back(Answer::Body(body));
        }
    }
    let r = start_agent("rel-soak", &url).await;
    // Every fifth ack fails once more while the batches are worked through.
    let s2 = s.clone();
    let flaky = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            s2.lock().unwrap().failing_acks = 1;
        }
    });
    let expected = good.len() + bad_with_id.len();
    eventually_or_report(
        "every answerable job answered",
        Duration::from_secs(if batches > 10 { 600 } else { 120 }),
        || async { (s.lock().unwrap().results.len() >= expected).then_some(()) },
        || async {
            let p = s.lock().unwrap();
            eprintln!("answered {} of {expected}", p.results.len());
        },
    )
    .await;
    flaky.abort();
    let p = s.lock().unwrap();
    let twice: Vec<_> = p.results.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    for id in &good {
        assert_eq!(p.results[id][0].outcome, "succeeded", "{id}");
    }
    for id in &bad_with_id {
        assert_eq!(p.results[id][0].outcome, "failed", "{id}");
    }
    let counted = metric(&r.metrics, "vworkspace_operator_malformed_jobs_total") as usize;
    assert_eq!(counted, bad_without_id);
    let failed_acks = p.acks.len() - expected;
    eprintln!(
        "FIGURES soak: batches={batches} good={} malformed_with_id={} malformed_without_id={bad_without_id} \
         answered={} counted={counted} failed_acks_retried={failed_acks} lost=0",
        good.len(),
        bad_with_id.len(),
        p.results.len()
    );
}
