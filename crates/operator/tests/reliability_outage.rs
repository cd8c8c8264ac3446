//! A long control-plane outage (issue 11): the control plane first answers every agent
//! request `503`, then is gone altogether (connection refused) and comes back on the same
//! address with the same database. Meanwhile jobs are waiting for it (applied, answered
//! while it was down) or at it (enqueued, not yet handed out) and events accrue in the
//! agent's buffer. Afterwards: every job answered once and applied once, every event that
//! fit the buffer delivered; then a second, short outage overfills the buffer and the
//! overflow must be counted and shown on the Cluster until the buffer drains.
//!
//! CI: a 25 s outage with short windows (backoff cap 5 s, disconnect after 10 s, recovered
//! after 5 s). `RELIABILITY_LONG=1`: 10 minutes with the documented defaults (backoff cap
//! 60 s, disconnect after 5 min, recovered after 1 min). `RELIABILITY_OUTAGE_SECS=<n>`
//! sets the outage length. Figures: docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use mock_control_plane::{AdminClient, Fault, MockConfig, MockServer};
use serde_json::json;
use testkit::fixtures::{TestNamespace, create_namespace, eventually_or_report, test_namespace};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster};
use vworkspace_operator::agent::backoff::BackoffConfig;
use vworkspace_operator::agent::connectivity::Windows;
use vworkspace_operator::agent::events::BatcherConfig;
use vworkspace_operator::agent::{Agent, AgentConfig, run_agent};
use vworkspace_operator::controller::cluster;
use vworkspace_operator::metrics::Metrics;
use vworkspace_protocol::Event;

use support::{instance_controller_reports, job, managed_instance};

const CLUSTER_ID: &str = "0c4f8a1e-77d2-4c1b-9e0a-c4a5f11c0002";
const REG_TOKEN: &str = "vwksp-reg-outage00000000000000000000001";
const ADMIN: &str = "outage-admin";
/// Jobs applied and waiting for Ready when the outage starts (answered during it).
const IN_FLIGHT: usize = 4;
/// Jobs enqueued at the control plane during the outage (handed out after it).
const PENDING: usize = 8;
/// Events beyond the buffer's capacity in the overflow leg.
const OVER: usize = 50;

fn long() -> bool {
    std::env::var("RELIABILITY_LONG").is_ok_and(|v| v == "1")
}

fn outage() -> Duration {
    let secs = std::env::var("RELIABILITY_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long() { 600 } else { 25 });
    Duration::from_secs(secs)
}

fn mock_config(db: &std::path::Path) -> MockConfig {
    MockConfig {
        registration_token: REG_TOKEN.into(),
        cluster_id: CLUSTER_ID.into(),
        admin_token: Some(ADMIN.into()),
        db_path: Some(db.to_path_buf()),
        ..MockConfig::default()
    }
}

fn agent_config(op_ns: &str, tenant: &str) -> AgentConfig {
    let mut c = AgentConfig::new(op_ns);
    c.poll_interval = Duration::from_secs(1);
    c.runtime_resync = Duration::from_millis(500);
    c.heartbeat_period = Duration::from_secs(2);
    c.ready_timeout = outage() + Duration::from_secs(300);
    c.watch_namespace = Some(tenant.to_string());
    c.batcher = BatcherConfig {
        flush_period: Duration::from_millis(500),
        ..BatcherConfig::default()
    };
    if !long() {
        c.backoff = BackoffConfig {
            first: Duration::from_millis(500),
            cap: Duration::from_secs(5),
            ..BackoffConfig::default()
        };
        c.connectivity = Windows {
            disconnect_after: Duration::from_secs(10),
            recover_after: Duration::from_secs(5),
        };
    }
    c
}

/// Keeps `addr` bound but not listening while the control plane is away: connections are
/// refused, and no other process on this busy machine can take the port meanwhile (one
/// run lost it during a 9-minute gap). Retries while the stopped server still holds it.
async fn hold_port(addr: &str) -> tokio::net::TcpSocket {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        if socket.bind(addr).is_ok() {
            return socket;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} still in use 10 s after the mock stopped");
}

fn probe_event(key: &str) -> Event {
    serde_json::from_value(json!({
        "eventKey": key, "kind": "ReliabilityProbe",
        "resourceRef": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "probe", "name": key},
        "timestamp": jiff::Timestamp::now().to_string()
    }))
    .unwrap()
}

async fn probes_delivered(admin: &AdminClient) -> Vec<String> {
    admin
        .events(CLUSTER_ID, Some("ReliabilityProbe"), None, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.event_key)
        .collect()
}

async fn condition(clusters: &Api<Cluster>, t: &str) -> Option<(String, String)> {
    let c = clusters.get("this-cluster").await.ok()?;
    let cond = vworkspace_api::conditions::find(&c.status?.conditions, t)?.clone();
    Some((cond.status, cond.reason))
}

/// Plays the ApplicationInstance controller: every instance in `ns` becomes Ready.
async fn play_instance_controller(api: Api<ApplicationInstance>) {
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            for i in list.items {
                let ready = i
                    .status
                    .as_ref()
                    .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"));
                if !ready {
                    let name = i.metadata.name.clone().unwrap_or_default();
                    instance_controller_reports(&api, &name, "True", "Ready", "played").await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Per instance: the uids it was created with and the highest generation seen.
type Counts = Arc<std::sync::Mutex<std::collections::BTreeMap<String, (Vec<String>, i64)>>>;

/// Counts, from a watch opened before the first job, how often each instance was created
/// (distinct uids) and the highest generation seen.
async fn count_writes(api: Api<ApplicationInstance>, counts: Counts) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let mut s = watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = s.next().await {
        let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev else {
            continue;
        };
        let mut c = counts.lock().unwrap();
        let e = c
            .entry(o.metadata.name.clone().unwrap_or_default())
            .or_default();
        let uid = o.metadata.uid.clone().unwrap_or_default();
        if !e.0.contains(&uid) {
            e.0.push(uid);
        }
        e.1 = e.1.max(o.metadata.generation.unwrap_or(0));
    }
}

fn apply_job(tenant: &str, id: &str) -> vworkspace_protocol::Job {
    job(
        id,
        "apply",
        &format!("applicationinstance/{tenant}/{id}@1"),
        managed_instance(tenant, id, "1.0.0"),
    )
}

#[tokio::test]
async fn a_long_outage_loses_and_duplicates_nothing() {
    let outage = outage();
    eprintln!("outage {} s (long: {})", outage.as_secs(), long());
    let TestNamespace {
        client, ns: op_ns, ..
    } = test_namespace("outage-op").await.unwrap();
    let tenant = format!("outage-tenant-{}", std::process::id());
    create_namespace(&client, &tenant).await.unwrap();
    let instances: Api<ApplicationInstance> = Api::namespaced(client.clone(), &tenant);
    let counts: Counts = Arc::default();
    tokio::spawn(count_writes(instances.clone(), Arc::clone(&counts)));

    let db = std::env::temp_dir().join(format!("vworkspace-outage-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let first = MockServer::start(mock_config(&db)).await.unwrap();
    let addr = first.url().trim_start_matches("http://").to_string();
    let admin = first.admin();

    let metrics = Arc::new(Metrics::new());
    let agent = Agent::new(
        client.clone(),
        agent_config(&op_ns, &tenant),
        metrics.clone(),
    )
    .unwrap();
    let (_lead_tx, lead_rx) = watch::channel(true);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(run_agent(agent.clone(), lead_rx.clone(), shutdown.clone()));
    tokio::spawn(cluster::run(
        client.clone(),
        agent.clone(),
        lead_rx,
        shutdown.clone(),
    ));
    let clusters =
        support::register_cluster(&client, &op_ns, &first.url(), CLUSTER_ID, REG_TOKEN).await;

    // In flight: applied and waiting for Ready when the control plane goes away.
    let in_flight: Vec<String> = (0..IN_FLIGHT).map(|n| format!("inflight-{n}")).collect();
    for id in &in_flight {
        admin
            .enqueue(CLUSTER_ID, &apply_job(&tenant, id))
            .await
            .unwrap();
    }
    eventually_or_report(
        "in-flight jobs applied",
        Duration::from_secs(60),
        || async {
            let n = instances.list(&Default::default()).await.ok()?.items.len();
            (n == IN_FLIGHT).then_some(())
        },
        || async {},
    )
    .await;
    for id in &in_flight {
        assert!(admin.was_acked(id).await.unwrap(), "{id} acked");
    }

    // Outage, first part: every agent request answered 503 (the admin API still works).
    let started = Instant::now();
    admin
        .inject_fault(Fault::status("*", 503, u32::MAX))
        .await
        .unwrap();
    let failing = (outage / 3).min(Duration::from_secs(60));
    // Answered while the control plane is down: the test's instance controller makes the
    // in-flight instances Ready now (each a ConditionTransition event to deliver later).
    let player = tokio::spawn(play_instance_controller(instances.clone()));
    let pending: Vec<String> = (0..PENDING).map(|n| format!("pending-{n}")).collect();
    for id in &pending {
        admin
            .enqueue(CLUSTER_ID, &apply_job(&tenant, id))
            .await
            .unwrap();
    }
    // Probe events accrue through the whole outage, one per second up to 200 (well
    // within the buffer of 1000).
    let mut probes = Vec::new();
    let mut dropped_during = 0;
    let mut disconnected_seen = false;
    let mut buffered_peak = 0;
    let mut unreachable = false;
    let mut hold = None;
    while started.elapsed() < outage {
        if !unreachable && started.elapsed() >= failing {
            // Second part: the control plane is gone (connection refused).
            first.stop();
            hold = Some(hold_port(&addr).await);
            unreachable = true;
        }
        if probes.len() < 200 {
            let key = format!("probe-{}", probes.len());
            agent.batcher().enqueue(probe_event(&key));
            probes.push(key);
        }
        buffered_peak = buffered_peak.max(agent.batcher().len());
        dropped_during = metrics.dropped_events_total.get();
        if condition(&clusters, "Disconnected").await.map(|c| c.0) == Some("True".into()) {
            disconnected_seen = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(unreachable);
    // The restarted mock counts requests from 0: any poll it sees is one after the outage.
    let polls_before = 0;
    // Back on the same address with the same database.
    drop(first);
    drop(hold);
    let mock = MockServer::start_on(&addr, mock_config(&db)).await.unwrap();
    let admin = mock.admin();
    let back = Instant::now();
    eprintln!(
        "outage over after {:.0} s ({} s failing, then unreachable); {} events buffered at peak, \
         Disconnected=True seen: {disconnected_seen}",
        started.elapsed().as_secs_f64(),
        failing.as_secs(),
        buffered_peak
    );
    let window = if long() {
        // One backoff cap (60 s) until the next attempt, one recovery window (60 s) until
        // Connected, plus a margin for the loaded test machine.
        Duration::from_secs(60 + 60 + 60)
    } else {
        Duration::from_secs(5 + 5 + 30)
    };

    // Recovery: polling resumes, every job answered, every probe delivered, Connected.
    let first_poll = eventually_or_report(
        "first poll after the outage",
        window,
        || async {
            (admin.request_count("jobs").await.ok()? > polls_before).then_some(back.elapsed())
        },
        || async {},
    )
    .await;
    let all: Vec<String> = in_flight.iter().chain(&pending).cloned().collect();
    let answered_after = eventually_or_report(
        "every job answered",
        window + Duration::from_secs(60),
        || async {
            for id in &all {
                admin.result(id).await.ok()??;
            }
            Some(back.elapsed())
        },
        || async {
            for id in &all {
                eprintln!("{id}: {:?}", admin.job(id).await);
            }
        },
    )
    .await;
    let events_after = eventually_or_report(
        "every probe event delivered",
        window,
        || async {
            (probes_delivered(&admin).await.len() == probes.len()).then_some(back.elapsed())
        },
        || async {
            eprintln!(
                "delivered {} of {}; buffered {}",
                probes_delivered(&admin).await.len(),
                probes.len(),
                agent.batcher().len()
            );
        },
    )
    .await;
    let connected_after = eventually_or_report(
        "Connected=True again",
        window,
        || async {
            (condition(&clusters, "Connected").await?.0 == "True"
                && condition(&clusters, "Disconnected").await.map(|c| c.0) != Some("True".into()))
            .then_some(back.elapsed())
        },
        || async {
            eprintln!(
                "Connected {:?}, Disconnected {:?}",
                condition(&clusters, "Connected").await,
                condition(&clusters, "Disconnected").await
            );
        },
    )
    .await;

    // Nothing lost, nothing twice.
    let mut redelivered = 0;
    for id in &all {
        let info = admin.job(id).await.unwrap().unwrap();
        assert_eq!(info.result_posts, 1, "{id}: {info:?}");
        redelivered += usize::from(info.deliveries > 1);
        let r = admin.result(id).await.unwrap().unwrap();
        assert_eq!(r.outcome, "succeeded", "{id}: {r:?}");
    }
    {
        let counts = counts.lock().unwrap();
        for id in &all {
            let (uids, generation) = counts.get(id).cloned().unwrap_or_default();
            assert_eq!(uids.len(), 1, "{id} created {} times", uids.len());
            assert_eq!(generation, 1, "{id} spec rewritten");
        }
    }
    assert_eq!(
        dropped_during, 0,
        "events dropped while the buffer had room"
    );
    let delivered = probes_delivered(&admin).await;
    assert_eq!(delivered.len(), probes.len());
    // The in-flight instances' Ready transitions happened during the outage.
    for id in &in_flight {
        let evs = admin
            .events(CLUSTER_ID, Some("ConditionTransition"), None, Some(id))
            .await
            .unwrap();
        assert!(
            evs.iter().any(|e| e
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")),
            "{id}: Ready=True transition not delivered: {evs:?}"
        );
    }
    if outage > Duration::from_secs(15) && !long() || outage > Duration::from_secs(330) {
        assert!(disconnected_seen, "Disconnected=True never shown");
    }
    eprintln!(
        "FIGURES outage: {} s ({} s 503, then refused); jobs {} in flight + {} pending = {}, \
         answered {} once each ({redelivered} handed out twice, answered once), applied once each; \
         events {} probes + {} Ready transitions, delivered all, dropped {dropped_during}, \
         peak buffered {buffered_peak}; recovery after the plane came back: first poll {:.1} s, \
         all jobs answered {:.1} s, all events {:.1} s, Connected {:.1} s; lost 0",
        outage.as_secs(),
        failing.as_secs(),
        IN_FLIGHT,
        PENDING,
        all.len(),
        all.len(),
        probes.len(),
        IN_FLIGHT,
        first_poll.as_secs_f64(),
        answered_after.as_secs_f64(),
        events_after.as_secs_f64(),
        connected_after.as_secs_f64(),
    );
    player.abort();

    // Overflow leg: a short outage and more events than the buffer holds.
    admin
        .inject_fault(Fault::status("*", 503, u32::MAX))
        .await
        .unwrap();
    let capacity = BatcherConfig::default().capacity;
    let dropped_before = metrics.dropped_events_total.get();
    let queued = agent.batcher().len();
    let extra: Vec<String> = (0..capacity + OVER - queued)
        .map(|n| format!("over-{n}"))
        .collect();
    for key in &extra {
        agent.batcher().enqueue(probe_event(key));
    }
    let dropped = metrics.dropped_events_total.get() - dropped_before;
    assert!(dropped >= OVER as u64, "dropped {dropped}");
    let overflow_shown = eventually_or_report(
        "BufferOverflow=True on the Cluster",
        Duration::from_secs(60),
        || async {
            let (status, reason) = condition(&clusters, "BufferOverflow").await?;
            (status == "True").then_some(reason)
        },
        || async { eprintln!("{:?}", condition(&clusters, "BufferOverflow").await) },
    )
    .await;
    admin.clear_faults().await.unwrap();
    eventually_or_report(
        "the buffer drained and BufferOverflow cleared",
        Duration::from_secs(120),
        || async {
            let (status, _) = condition(&clusters, "BufferOverflow").await?;
            (status == "False" && agent.batcher().is_empty()).then_some(())
        },
        || async { eprintln!("{:?}", condition(&clusters, "BufferOverflow").await) },
    )
    .await;
    let got = probes_delivered(&admin).await;
    let over_delivered = got.iter().filter(|k| k.starts_with("over-")).count();
    // The oldest were dropped: what came through is the newest run of probes, without a
    // gap, and every probe that did not is counted as dropped. (Other events — the
    // Cluster's own condition transitions — share the buffer, so a few more probes than
    // `OVER` may go.)
    let first = extra.len() - over_delivered;
    for key in &extra[first..] {
        assert!(got.contains(key), "{key} lost while the buffer had room");
    }
    assert!(
        over_delivered + 20 >= capacity,
        "delivered {over_delivered}"
    );
    let dropped = metrics.dropped_events_total.get() - dropped_before;
    assert!(
        dropped >= first as u64,
        "dropped {dropped}, missing {first}"
    );
    eprintln!(
        "FIGURES overflow: {} events into a buffer of {capacity} while the plane answered 503; \
         dropped {dropped} (counted in vworkspace_operator_dropped_events_total), \
         BufferOverflow=True ({overflow_shown}) until drained; delivered {over_delivered}",
        extra.len()
    );
    let _ = std::fs::remove_file(&db);
}
