//! Lease-based leader election against a real kube-apiserver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use testkit::fixtures::{TestNamespace, eventually, test_namespace};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_operator::leader::{self, LeaderConfig};

fn config(ns: &str, id: &str) -> LeaderConfig {
    let mut c = LeaderConfig::new(ns, id);
    c.lease_duration = Duration::from_secs(4);
    c.renew_deadline = Duration::from_secs(3);
    c.retry_period = Duration::from_millis(200);
    c
}

async fn until(what: &str, f: impl Fn() -> bool) {
    eventually(what, Duration::from_secs(30), || {
        std::future::ready(f().then_some(()))
    })
    .await
}

fn leaders(rs: &[&watch::Receiver<bool>]) -> usize {
    rs.iter().filter(|r| *r.borrow()).count()
}

#[tokio::test]
async fn one_leader_and_handover() {
    let TestNamespace { client, ns, .. } = test_namespace("leader").await.unwrap();

    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = leader::spawn(client.clone(), Some(config(&ns, "a")), stop_a.clone());
    let b = leader::spawn(client.clone(), Some(config(&ns, "b")), stop_b.clone());
    until("a leader", || leaders(&[&a, &b]) == 1).await;
    // Stays exactly one over several renewals.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(leaders(&[&a, &b]), 1);
    }
    let (first, second, stop_first) = if *a.borrow() {
        (a, b, stop_a.clone())
    } else {
        (b, a, stop_b.clone())
    };
    // A graceful stop releases the lease; the other candidate takes over.
    stop_first.cancel();
    until("handover", || *second.borrow()).await;
    assert!(!*first.borrow());
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get(leader::LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    stop_b.cancel();
}

#[tokio::test]
async fn a_dead_leader_is_replaced_after_the_lease_expires() {
    let TestNamespace { client, ns, .. } = test_namespace("leader-exp").await.unwrap();
    // A holder that stopped renewing without releasing (a crashed pod).
    let api = Api::<Lease>::namespaced(client.clone(), &ns);
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": leader::LEASE_NAME},
        "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 3,
                 "renewTime": jiff::Timestamp::now().to_string()}
    }))
    .unwrap();
    api.create(&Default::default(), &lease).await.unwrap();
    let stop = CancellationToken::new();
    let rx = leader::spawn(client.clone(), Some(config(&ns, "new")), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!*rx.borrow(), "took over a live lease");
    until("takeover", || *rx.borrow()).await;
    stop.cancel();
}
