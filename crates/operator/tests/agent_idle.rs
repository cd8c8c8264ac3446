//! The agent's runtime supervisor while idle (issue 10): it follows the Clusters and the
//! credentials Secret through watches, so a hand-edited Secret is taken in within about
//! a second and an idle supervisor sends no request at all, not one LIST or GET per tick.
//! One sequential scenario: `Cluster` is cluster-scoped and the oldest one is active.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::fixtures::{eventually, test_namespace};
use tokio_util::sync::CancellationToken;
use vworkspace_api::Cluster;
use vworkspace_decide::cluster::ConnectivityMode;
use vworkspace_operator::agent::credentials::DEFAULT_SECRET_NAME;
use vworkspace_operator::agent::{Agent, AgentConfig, runtime};
use vworkspace_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(30);

/// Every request a client sent, as `(method, path?query)`.
type Log = Arc<Mutex<Vec<(String, String)>>>;

/// A client that records each request it sends.
async fn recording_client(config: kube::Config) -> (kube::Client, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        l.lock().unwrap().push((req.method().to_string(), path));
        req
    });
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, log)
}

fn is_watch(path: &str) -> bool {
    path.contains("watch=true") || path.contains("watch=1")
}

async fn token(agent: &Agent) -> Option<String> {
    agent
        .store()
        .current()
        .map(|c| c.token.expose().to_string())
}

#[tokio::test]
async fn supervisor_follows_watches_and_sends_nothing_while_idle() {
    let t = test_namespace("agent-idle").await.unwrap();
    let (client, log) = recording_client(t.cp.admin_config().await.unwrap()).await;
    let mut config = AgentConfig::new(&t.ns);
    // Push: the supervisor loads credentials but starts no poller, so every request the
    // recording client sees is the supervisor's. The resync stays at its default (5 min):
    // whatever happens within this test is driven by watches.
    config.mode = ConnectivityMode::Push;
    assert!(config.runtime_resync >= Duration::from_secs(60));
    let agent = Agent::new(client, config, Arc::new(Metrics::new())).unwrap();

    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.ns);
    let secret = |token: &str| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": DEFAULT_SECRET_NAME},
            "stringData": {"control-plane-base-url": "http://127.0.0.1:9", "cluster-id": "idle-1", "token": token}
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("token-a"))
        .await
        .unwrap();
    let clusters: Api<Cluster> = Api::all(t.client.clone());
    let name = format!("idle-{}", std::process::id());
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name}, "spec": {"controlPlaneEndpoint": "http://127.0.0.1:9"}}))
            .unwrap(),
        )
        .await
        .unwrap();

    let cancel = CancellationToken::new();
    let task = tokio::spawn(runtime::run(agent.clone(), cancel.clone()));
    eventually("credentials loaded", WAIT, || async {
        (token(&agent).await.as_deref() == Some("token-a")).then_some(())
    })
    .await;
    assert_eq!(agent.active_cluster().as_deref(), Some(name.as_str()));

    // A hand edit of the Secret is in use within about a second, with no resync due.
    let edited = Instant::now();
    secrets
        .patch(
            DEFAULT_SECRET_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "token-b"}})),
        )
        .await
        .unwrap();
    eventually("edited token in use", Duration::from_secs(10), || async {
        (token(&agent).await.as_deref() == Some("token-b")).then_some(())
    })
    .await;
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(2), "hand edit took {took:?}");

    // Idle: longer than the old 10 s tick, and not one request — watches stay open.
    let before = log.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let idle: Vec<_> = log.lock().unwrap()[before..].to_vec();
    assert!(idle.is_empty(), "requests while idle: {idle:?}");
    // What it did send: watches, and the initial list of each (one Clusters, one Secret).
    let all = log.lock().unwrap().clone();
    let lists = |what: &str| {
        all.iter()
            .filter(|(m, p)| m == "GET" && !is_watch(p) && p.contains(what))
            .count()
    };
    assert_eq!(lists("/clusters"), 1, "{all:?}");
    assert_eq!(lists("/secrets"), 1, "{all:?}");
    assert!(all.iter().all(|(m, _)| m == "GET"), "{all:?}");

    // Deleting the Secret clears the credentials; re-creating it restores them.
    secrets
        .delete(DEFAULT_SECRET_NAME, &Default::default())
        .await
        .unwrap();
    eventually("credentials cleared", Duration::from_secs(10), || async {
        token(&agent).await.is_none().then_some(())
    })
    .await;
    secrets
        .create(&PostParams::default(), &secret("token-c"))
        .await
        .unwrap();
    eventually(
        "re-created Secret in use",
        Duration::from_secs(10),
        || async { (token(&agent).await.as_deref() == Some("token-c")).then_some(()) },
    )
    .await;

    // Deleting the Cluster clears them too (no Cluster: nothing to serve).
    clusters.delete(&name, &Default::default()).await.unwrap();
    eventually("no active Cluster", Duration::from_secs(10), || async {
        (agent.active_cluster().is_none() && token(&agent).await.is_none()).then_some(())
    })
    .await;

    cancel.cancel();
    task.await.unwrap();
}
