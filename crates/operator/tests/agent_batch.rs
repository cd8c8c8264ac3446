//! Jobs run side by side, except jobs on the same object, which keep the order the
//! control plane sent them in, also across polls; the next poll does not wait for the
//! jobs of the last one (issue 10, pull-loop). A scripted control plane
//! holds every ack for a while and notes when each ack and result arrives, so overlap
//! and order are read from the server's side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use testkit::fixtures::{TestNamespace, eventually, test_namespace};
use tokio_util::sync::CancellationToken;
use vworkspace_operator::agent::backoff::BackoffConfig;
use vworkspace_operator::agent::journal;
use vworkspace_operator::agent::poller::Poller;
use vworkspace_operator::agent::{Agent, AgentConfig};
use vworkspace_operator::metrics::Metrics;
use vworkspace_protocol::JobResult;

const WAIT: Duration = Duration::from_secs(60);
/// How long the scripted server holds each ack.
const ACK_DELAY: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Plane {
    /// The answers with jobs, one per poll; later polls are empty.
    batches: VecDeque<String>,
    /// When each answer with jobs was handed out.
    handed: Vec<Instant>,
    /// Acks being held right now, and the most at once.
    acks_open: usize,
    acks_peak: usize,
    /// Job id → (ack arrived, result arrived), from the server's clock.
    acked: BTreeMap<String, Instant>,
    results: BTreeMap<String, Vec<(Instant, JobResult)>>,
    /// When set, each ack first reads the agent's journal Secret and notes the jobs
    /// acknowledged without being in it; no jobs are handed out until it is set.
    journal: Option<Api<Secret>>,
    check_journal: bool,
    acked_unjournaled: Vec<String>,
}

type S = Arc<Mutex<Plane>>;

async fn poll(State(s): State<S>) -> (StatusCode, String) {
    let next = {
        let mut p = s.lock().unwrap();
        let b = if p.check_journal && p.journal.is_none() {
            None
        } else {
            p.batches.pop_front()
        };
        if b.is_some() {
            p.handed.push(Instant::now());
        }
        b
    };
    match next {
        Some(b) => (StatusCode::OK, b),
        None => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (StatusCode::OK, r#"{"jobs":[]}"#.into())
        }
    }
}

async fn ack(State(s): State<S>, Path(id): Path<String>) -> StatusCode {
    let journal = s.lock().unwrap().journal.clone();
    if let Some(api) = journal {
        let held = api
            .get_opt(journal::SECRET_NAME)
            .await
            .unwrap()
            .and_then(|s| s.data)
            .and_then(|d| d.get(journal::DATA_KEY).cloned())
            .map(|b| serde_json::from_slice::<serde_json::Value>(&b.0).unwrap())
            .is_some_and(|j| j.get(&id).is_some());
        if !held {
            s.lock().unwrap().acked_unjournaled.push(id.clone());
        }
    }
    {
        let mut p = s.lock().unwrap();
        p.acked.insert(id, Instant::now());
        p.acks_open += 1;
        p.acks_peak = p.acks_peak.max(p.acks_open);
    }
    tokio::time::sleep(ACK_DELAY).await;
    s.lock().unwrap().acks_open -= 1;
    StatusCode::NO_CONTENT
}

async fn result(State(s): State<S>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let Ok(r) = serde_json::from_slice::<JobResult>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    s.lock()
        .unwrap()
        .results
        .entry(id)
        .or_default()
        .push((Instant::now(), r));
    StatusCode::NO_CONTENT
}

async fn server(batch: String) -> (S, String) {
    server_of(vec![batch]).await
}

async fn server_of(batches: Vec<String>) -> (S, String) {
    let s: S = Arc::new(Mutex::new(Plane {
        batches: batches.into(),
        ..Plane::default()
    }));
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

struct Running {
    cancel: CancellationToken,
    client: kube::Client,
    ns: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// An agent that may write ConfigMaps, polling `url`, with its own operator namespace
/// (the jobs' namespace is created by the agent when it applies them).
async fn start_agent(prefix: &str, url: &str) -> Running {
    let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "vworkspace-agent-credentials"},
                "stringData": {"control-plane-base-url": url, "cluster-id": "c-batch", "token": "t"}
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
    config
        .scope
        .allowed_kinds
        .push("/ConfigMap".parse().unwrap());
    let agent = Agent::new(client.clone(), config, Arc::new(Metrics::new())).unwrap();
    agent.store().load().await.unwrap().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(Poller::new(agent).run(cancel.clone()));
    Running { cancel, client, ns }
}

fn apply_cm(id: &str, ns: &str, name: &str, value: &str) -> serde_json::Value {
    json!({"id": id, "kind": "apply", "idempotencyKey": format!("k-{id}"),
        "payload": {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": ns}, "data": {"v": value}}})
}

async fn all_answered(s: &S, ids: &[String]) -> Option<()> {
    let p = s.lock().unwrap();
    ids.iter()
        .all(|id| p.results.contains_key(id))
        .then_some(())
}

/// Waits until the in-flight journal holds no job.
async fn journal_drained(secrets: &Api<Secret>) {
    eventually("journal drained", WAIT, || async {
        let s = secrets.get_opt(journal::SECRET_NAME).await.unwrap();
        s.and_then(|s| s.data)
            .and_then(|d| d.get(journal::DATA_KEY).cloned())
            .is_none_or(|b| b.0 == b"{}")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn jobs_on_different_objects_overlap() {
    let tenant = format!("batch-overlap-{}", std::process::id());
    let ids: Vec<String> = (0..12).map(|i| format!("ov-{i}")).collect();
    let jobs: Vec<_> = ids
        .iter()
        .map(|id| apply_cm(id, &tenant, &format!("cm-{id}"), "1"))
        .collect();
    let (s, url) = server(json!({ "jobs": jobs }).to_string()).await;
    let agent = start_agent("batch-overlap", &url).await;
    eventually("every job answered", WAIT, || all_answered(&s, &ids)).await;
    {
        let p = s.lock().unwrap();
        let first_ack = p.acked.values().min().copied().unwrap();
        let last_result = p.results.values().flatten().map(|r| r.0).max().unwrap();
        let elapsed = last_result - first_ack;
        // One after another, 12 held acks alone would take 12 × 300 ms.
        assert!(
            p.acks_peak >= 4,
            "at most {} acks were in flight at once",
            p.acks_peak
        );
        assert!(
            elapsed < ACK_DELAY * 12,
            "12 jobs took {elapsed:?}: not faster than one after another"
        );
        for id in &ids {
            let r = &p.results[id];
            assert_eq!(r.len(), 1, "{id}: {} results", r.len());
            assert_eq!(r[0].1.outcome, "succeeded", "{id}: {:?}", r[0].1);
        }
    }
    // Answered jobs leave the journal (removals written together).
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), &agent.ns);
    journal_drained(&secrets).await;
}

#[tokio::test]
async fn jobs_on_one_object_keep_their_order() {
    let tenant = format!("batch-order-{}", std::process::id());
    // Three writes of `same` interleaved with writes of other objects, all in one poll.
    let jobs = vec![
        apply_cm("o-1", &tenant, "same", "1"),
        apply_cm("x-1", &tenant, "other-1", "1"),
        apply_cm("o-2", &tenant, "same", "2"),
        apply_cm("x-2", &tenant, "other-2", "1"),
        apply_cm("x-3", &tenant, "other-3", "1"),
        apply_cm("o-3", &tenant, "same", "3"),
    ];
    let ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let (s, url) = server(json!({ "jobs": jobs }).to_string()).await;
    let agent = start_agent("batch-order", &url).await;
    eventually("every job answered", WAIT, || all_answered(&s, &ids)).await;
    {
        let p = s.lock().unwrap();
        for id in &ids {
            assert_eq!(p.results[id].len(), 1, "{id}");
            assert_eq!(p.results[id][0].1.outcome, "succeeded", "{id}");
        }
        // Each write of `same` is acknowledged only after the previous one was answered.
        for (before, after) in [("o-1", "o-2"), ("o-2", "o-3")] {
            assert!(
                p.results[before][0].0 <= p.acked[after],
                "{after} was acknowledged before {before} was answered"
            );
        }
        // The other objects did not wait for `same`'s lane.
        assert!(p.acked["x-1"] < p.results["o-1"][0].0, "x-1 waited for o-1");
    }
    let cms: Api<ConfigMap> = Api::namespaced(agent.client.clone(), &tenant);
    let same = cms.get("same").await.unwrap();
    assert_eq!(same.data.unwrap()["v"], "3", "the last write in order wins");
}

#[tokio::test]
async fn the_next_poll_does_not_wait_and_same_object_order_holds_across_polls() {
    let tenant = format!("batch-polls-{}", std::process::id());
    let first = vec![apply_cm("p1-same", &tenant, "same", "1")];
    let second = vec![
        apply_cm("p2-same", &tenant, "same", "2"),
        apply_cm("p2-other", &tenant, "other", "1"),
    ];
    let ids = ["p1-same", "p2-same", "p2-other"].map(String::from);
    let (s, url) = server_of(vec![
        json!({ "jobs": first }).to_string(),
        json!({ "jobs": second }).to_string(),
    ])
    .await;
    let agent = start_agent("batch-polls", &url).await;
    eventually("every job answered", WAIT, || all_answered(&s, &ids)).await;
    {
        let p = s.lock().unwrap();
        for id in &ids {
            assert_eq!(p.results[id].len(), 1, "{id}");
            assert_eq!(p.results[id][0].1.outcome, "succeeded", "{id}");
        }
        let p1_answered = p.results["p1-same"][0].0;
        // p1-same's ack is held 300 ms: the second poll came while it was running.
        assert_eq!(p.handed.len(), 2);
        assert!(
            p.handed[1] < p1_answered,
            "the second poll waited for the first poll's job"
        );
        assert!(
            p.acked["p2-other"] < p1_answered,
            "a job on another object waited for the first poll's job"
        );
        assert!(
            p1_answered <= p.acked["p2-same"],
            "p2-same was acknowledged before p1-same (same object, earlier poll) was answered"
        );
    }
    let cms: Api<ConfigMap> = Api::namespaced(agent.client.clone(), &tenant);
    let same = cms.get("same").await.unwrap();
    assert_eq!(same.data.unwrap()["v"], "2", "the later poll's write wins");
}

#[tokio::test]
async fn each_job_is_journaled_before_its_ack_and_leaves_it_with_its_key_recorded() {
    let tenant = format!("batch-journal-{}", std::process::id());
    let batches: Vec<String> = (0..4)
        .map(|b| {
            let jobs: Vec<_> = (0..3)
                .map(|i| apply_cm(&format!("j-{b}-{i}"), &tenant, &format!("cm-{b}-{i}"), "1"))
                .collect();
            json!({ "jobs": jobs }).to_string()
        })
        .collect();
    let ids: Vec<String> = (0..4)
        .flat_map(|b| (0..3).map(move |i| format!("j-{b}-{i}")))
        .collect();
    let (s, url) = server_of(batches).await;
    s.lock().unwrap().check_journal = true;
    let agent = start_agent("batch-journal", &url).await;
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), &agent.ns);
    s.lock().unwrap().journal = Some(secrets.clone());
    eventually("every job answered", WAIT, || all_answered(&s, &ids)).await;
    {
        let p = s.lock().unwrap();
        assert_eq!(p.handed.len(), 4);
        assert!(
            p.acked_unjournaled.is_empty(),
            "acknowledged before being journaled: {:?}",
            p.acked_unjournaled
        );
        for id in &ids {
            assert_eq!(p.results[id].len(), 1, "{id}");
            assert_eq!(p.results[id][0].1.outcome, "succeeded", "{id}");
        }
    }
    // A job leaves the journal only once its key is recorded too: once drained, every
    // key is in the idempotency ConfigMap.
    journal_drained(&secrets).await;
    let cms: Api<ConfigMap> = Api::namespaced(agent.client.clone(), &agent.ns);
    let keys = cms
        .get("vworkspace-applied-jobs")
        .await
        .unwrap()
        .data
        .unwrap()["applied-keys.json"]
        .clone();
    for id in &ids {
        assert!(
            keys.contains(&format!("\"k-{id}\"")),
            "{id} not recorded: {keys}"
        );
    }
}
