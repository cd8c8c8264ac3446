//! The reporter's reconnect re-sync (issue 10, memory): the reporter keeps only hashes
//! of the conditions it has seen, so `Reporter::snapshot` lists the watched kinds from
//! the API server, page by page, and queues every current condition under the same key
//! the watch gave it. The ApplicationInstance controller is played by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::api::{Api, PostParams};
use testkit::fixtures::{TestNamespace, test_namespace};
use tokio_util::sync::CancellationToken;
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::agent::client::ClientError;
use vworkspace_operator::agent::events::{EventBatcher, EventSink};
use vworkspace_operator::agent::reporter::Reporter;
use vworkspace_operator::metrics::Metrics;
use vworkspace_protocol::Event;

use support::{instance_controller_reports, managed_instance};

const WAIT: Duration = Duration::from_secs(60);
const INSTANCES: usize = 5;

/// Takes every batch it is given.
#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl EventSink for Collect {
    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), ClientError>> {
        self.0.lock().unwrap().extend_from_slice(events);
        Box::pin(async { Ok(()) })
    }
}

/// Takes the queued events out of `batcher`.
async fn drain(batcher: &EventBatcher) -> Vec<Event> {
    let sink = Collect::default();
    batcher.flush(&sink).await.unwrap();
    sink.0.into_inner().unwrap()
}

fn about(events: Vec<Event>, ns: &str) -> Vec<Event> {
    events
        .into_iter()
        .filter(|e| e.resource_ref.namespace == ns)
        .collect()
}

/// Drains `batcher` until the events about `ns` taken so far satisfy `done`.
async fn collect_until(
    batcher: &EventBatcher,
    ns: &str,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        got.extend(about(drain(batcher).await, ns));
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: timed out with {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keys(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_key.clone()).collect()
}

fn batcher() -> Arc<EventBatcher> {
    Arc::new(EventBatcher::new(
        Default::default(),
        Arc::new(Metrics::new()),
    ))
}

async fn reported_instance(api: &Api<ApplicationInstance>, ns: &str, name: &str) {
    let inst = serde_json::from_value(managed_instance(ns, name, "1.0.0")).unwrap();
    api.create(&PostParams::default(), &inst).await.unwrap();
    instance_controller_reports(api, name, "True", "Installed", "played by the test").await;
}

#[tokio::test]
async fn resync_lists_every_page_with_the_watchs_keys() {
    let TestNamespace { client, ns, .. } = test_namespace("resync").await.unwrap();
    let api: Api<ApplicationInstance> = Api::namespaced(client.clone(), &ns);
    for i in 0..INSTANCES {
        reported_instance(&api, &ns, &format!("wiki-{i}")).await;
    }
    // An instance outside the reporter's namespace is neither watched nor listed.
    let TestNamespace { ns: elsewhere, .. } = test_namespace("resync-other").await.unwrap();
    let other: Api<ApplicationInstance> = Api::namespaced(client.clone(), &elsewhere);
    reported_instance(&other, &elsewhere, "wiki-other").await;

    // The watch reports each instance's Ready condition once.
    let watched_into = batcher();
    let watching = Arc::new(
        Reporter::new(watched_into.clone(), client.clone(), Some(ns.clone())).with_page_size(2),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(watching.clone().run(cancel.clone()));
    let watched = collect_until(
        &watched_into,
        &ns,
        "the watch reported every instance",
        |got| got.len() >= INSTANCES,
    )
    .await;
    assert_eq!(watched.len(), INSTANCES, "{watched:?}");
    let watched_keys = keys(&watched);
    assert_eq!(watched_keys.len(), INSTANCES);

    // The re-sync lists five instances two at a time (three pages, following the
    // continue token) and queues the same keys again, nothing from elsewhere.
    let n = watching.snapshot().await;
    let all = drain(&watched_into).await;
    assert_eq!(n, all.len(), "the count is what was queued");
    assert!(all.iter().all(|e| e.resource_ref.namespace != elsewhere));
    let resent = about(all, &ns);
    assert_eq!(keys(&resent), watched_keys);
    assert_eq!(resent.len(), INSTANCES);
    cancel.cancel();

    // The re-sync leaves the kept fingerprints to the watch (a page listed before a
    // newer watch event must not put an older state back): a reporter that re-synced
    // before its watch started still reports every condition on its watch's first list,
    // with the same keys, and then only what changes.
    let fresh_into = batcher();
    let fresh = Arc::new(Reporter::new(
        fresh_into.clone(),
        client.clone(),
        Some(ns.clone()),
    ));
    let n = fresh.snapshot().await;
    let all = drain(&fresh_into).await;
    assert_eq!(n, all.len());
    assert_eq!(keys(&about(all, &ns)), watched_keys);
    let cancel = CancellationToken::new();
    tokio::spawn(fresh.clone().run(cancel.clone()));
    let listed = collect_until(&fresh_into, &ns, "the watch listed every instance", |got| {
        got.len() >= INSTANCES
    })
    .await;
    assert_eq!(keys(&listed), watched_keys);
    instance_controller_reports(&api, "wiki-0", "True", "Upgraded", "played by the test").await;
    let after = collect_until(&fresh_into, &ns, "the watch reported the change", |got| {
        got.iter().any(|e| e.conditions[0].reason == "Upgraded")
    })
    .await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].resource_ref.name, "wiki-0");
    cancel.cancel();
}
