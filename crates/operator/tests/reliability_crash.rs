//! Crash safety (issue 11): the operator binary, serving jobs from the mock control plane,
//! is SIGKILLed at random points and started again each time. Every job must be answered
//! exactly once (one result recorded by the mock; a repeat post after a kill that fell
//! between delivery and journal removal is refused by the server with `409`, counted), applied at most once (each instance
//! created once and never rewritten by a replay), and a RunCommand Operation running when
//! the operator died must resume without a second workload (one Job per Operation).
//!
//! CI: 40 jobs, 3 kills. `RELIABILITY_LONG=1`: 200 jobs, 12 kills. The seed is printed;
//! `RELIABILITY_SEED=<n>` repeats a run. Figures: docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job as BatchJob;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{Operator, job, managed_instance, placeholder};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports, job_controller_finishes};
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_operator::kinds::flux::HelmRelease;

const CLUSTER_ID: &str = "0c4f8a1e-77d2-4c1b-9e0a-c4a5f11c0001";
const REG_TOKEN: &str = "vwksp-reg-crash000000000000000000000001";
const OP_NS: &str = "vworkspace-system";
const APPS: &str = "org-crash";

fn long() -> bool {
    std::env::var("RELIABILITY_LONG").is_ok_and(|v| v == "1")
}

/// Job `n`: every fifth a RunCommand Operation on a target of its own, the others an
/// instance apply with an idempotency key.
fn nth_job(n: usize) -> vworkspace_protocol::Job {
    let id = format!("job-{n:03}");
    if n % 5 == 4 {
        let op = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": format!("run-{n:03}"), "namespace": APPS},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                                   "kind": "ApplicationInstance", "name": format!("target-{n:03}")},
                     "type": "RunCommand", "engine": "job",
                     "parameters": {"image": "busybox", "command": ["true"], "backoffLimit": 0}}
        });
        job(
            &id,
            "intent",
            &format!("intent/run-{n:03}@1"),
            json!({"intent": "request-operation", "operation": op}),
        )
    } else {
        job(
            &id,
            "apply",
            &format!("applicationinstance/{APPS}/app-{n:03}@1"),
            managed_instance(APPS, &format!("app-{n:03}"), "1.0.0"),
        )
    }
}

/// Plays helm-controller and the Job controller until the test ends: every HelmRelease
/// becomes Ready, every Job of an Operation completes (after a short run, so kills land
/// while Operations are Running).
async fn play_controllers(client: Client) {
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), APPS);
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), APPS);
    let mut first_seen: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        if let Ok(list) = hrs.list(&ListParams::default()).await {
            for hr in list.items {
                let g = hr.metadata.generation;
                let done = hr.status.as_ref().is_some_and(|s| {
                    let v = serde_json::to_value(s).unwrap_or_default();
                    v["observedGeneration"].as_i64() == g
                });
                if !done {
                    let _ = helm_controller_reports(
                        &hrs,
                        &hr.name_any(),
                        "True",
                        "InstallSucceeded",
                        "played",
                    )
                    .await;
                }
            }
        }
        if let Ok(list) = jobs.list(&ListParams::default()).await {
            for j in list.items {
                let since = *first_seen.entry(j.name_any()).or_insert_with(Instant::now);
                let finished = j
                    .status
                    .as_ref()
                    .is_some_and(|s| s.completion_time.is_some());
                if !finished && since.elapsed() > Duration::from_secs(2) {
                    let _ = job_controller_finishes(
                        &jobs,
                        &j.name_any(),
                        "Complete",
                        "CompletionsReached",
                    )
                    .await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Counts, from a watch opened before the first job, how often each instance was created
/// and how often its spec (generation) changed.
async fn count_writes(
    client: Client,
    counts: std::sync::Arc<std::sync::Mutex<BTreeMap<String, (u32, i64)>>>,
) {
    let api: Api<ApplicationInstance> = Api::namespaced(client, APPS);
    let mut seen_uid: BTreeMap<String, String> = BTreeMap::new();
    let mut s = watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = s.next().await {
        let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev else {
            continue;
        };
        let name = o.name_any();
        let uid = o.uid().unwrap_or_default();
        let mut c = counts.lock().unwrap();
        let entry = c.entry(name.clone()).or_insert((0, 0));
        if seen_uid.get(&name) != Some(&uid) {
            seen_uid.insert(name, uid);
            entry.0 += 1;
        }
        entry.1 = entry.1.max(o.metadata.generation.unwrap_or(0));
    }
}

/// What a failed run needs to be explained: each unanswered job with its mock state, and
/// for Operations the phase, conditions and the Jobs in the namespace with their state.
async fn unanswered_state(client: &Client, admin: &mock_control_plane::AdminClient) -> String {
    let infos = admin.jobs(Some(CLUSTER_ID)).await.unwrap_or_default();
    let ops: Api<Operation> = Api::namespaced(client.clone(), APPS);
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), APPS);
    let all_jobs = jobs.list(&ListParams::default()).await.map(|l| l.items);
    let mut out = Vec::new();
    for info in infos.iter().filter(|j| j.result_posts == 0) {
        let mut line = format!(
            "{} ({:?}, {} deliveries)",
            info.id, info.state, info.deliveries
        );
        let name = info.job.payload["operation"]["metadata"]["name"].as_str();
        if let Some(name) = name {
            let op = ops.get_opt(name).await;
            let status = op
                .as_ref()
                .ok()
                .and_then(|o| o.as_ref())
                .map(|o| serde_json::to_string(&o.status).unwrap_or_default());
            line += &format!(" Operation {name}: {status:?}");
            if let Ok(all) = &all_jobs {
                for j in all.iter().filter(|j| j.name_any().ends_with(name)) {
                    line += &format!(
                        "; Job {} status {}",
                        j.name_any(),
                        serde_json::to_string(&j.status).unwrap_or_default()
                    );
                }
            }
        }
        out.push(line);
    }
    out.join(" | ")
}

#[tokio::test]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let (total, kills) = if long() { (200, 12) } else { (40, 3) };
    let seed = std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed}: {total} jobs, {kills} kills");
    let mut rng = fastrand::Rng::with_seed(seed);

    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    for ns in [OP_NS, APPS] {
        create_namespace(&client, ns).await.unwrap();
    }
    let targets: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    for n in (0..total).filter(|n| n % 5 == 4) {
        let t = placeholder(
            APPS,
            &format!("target-{n:03}"),
            json!({"ops.vworkspace.io/runcommand": "job"}),
        );
        targets
            .create(&PostParams::default(), &serde_json::from_value(t).unwrap())
            .await
            .unwrap();
    }
    let counts = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    tokio::spawn(count_writes(client.clone(), counts.clone()));
    tokio::spawn(play_controllers(client.clone()));

    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin = mock.admin();
    let mut op = Operator::start(cp, OP_NS, &["--agent-poll-interval=2s"]).await;
    support::register_cluster(&client, OP_NS, &mock.url(), CLUSTER_ID, REG_TOKEN).await;

    // Jobs arrive in batches of ten; kills fall at random numbers of answered jobs, plus a
    // random delay, so they hit every stage (poll, journal, ack, apply, readiness wait,
    // result post, journal removal).
    let mut kill_at: Vec<usize> = (0..kills).map(|_| rng.usize(1..total)).collect();
    kill_at.sort_unstable();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(if long() { 1500 } else { 400 });
    let mut enqueued = 0;
    let mut killed = 0;
    let mut answered = 0;
    let mut kill_log = Vec::new();
    while answered < total {
        if Instant::now() >= deadline {
            let stuck = unanswered_state(&client, &admin).await;
            panic!("{answered}/{total} answered; {kill_log:?}; unanswered: {stuck}");
        }
        while enqueued < total && enqueued < answered + 10 {
            admin.enqueue(CLUSTER_ID, &nth_job(enqueued)).await.unwrap();
            enqueued += 1;
        }
        let infos = admin.jobs(Some(CLUSTER_ID)).await.unwrap();
        answered = infos.iter().filter(|j| j.result_posts > 0).count();
        if killed < kills && answered >= kill_at[killed] {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..1500))).await;
            let in_flight = infos
                .iter()
                .filter(|j| j.result_posts == 0 && j.deliveries > 0)
                .count();
            op.kill().await;
            kill_log.push(format!(
                "kill {} at {:.1}s: {answered} answered, {in_flight} delivered and unanswered",
                killed + 1,
                started.elapsed().as_secs_f64()
            ));
            killed += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..2000))).await;
            op = op.restart();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    for l in &kill_log {
        eprintln!("{l}");
    }

    // Answered exactly once.
    let infos = admin.jobs(Some(CLUSTER_ID)).await.unwrap();
    assert_eq!(infos.len(), total);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut redelivered = 0;
    let mut refused_repeats = 0;
    for info in &infos {
        redelivered += usize::from(info.deliveries > 1);
        let r = admin.result(&info.id).await.unwrap().unwrap();
        // A kill between the control plane's 204 for a result and the journal removal
        // makes the restarted agent post once more; the server keeps the first result and
        // answers the repeat 409 (protocol §2.11), so one answer is recorded. The stored
        // one must be the real answer, not the replay's `noop`.
        if info.result_posts > 1 {
            refused_repeats += info.result_posts - 1;
            assert_eq!(
                r.outcome, "succeeded",
                "{}: the replay's answer was kept",
                info.id
            );
        }
        *outcomes.entry(r.outcome.clone()).or_default() += 1;
        assert!(
            r.outcome == "succeeded" || r.outcome == "noop",
            "{}: {r:?}",
            info.id
        );
    }
    assert!(
        refused_repeats <= kills as i64,
        "{refused_repeats} repeated result posts for {kills} kills"
    );
    // Applied at most once: each instance created once, its spec written once.
    let counts = counts.lock().unwrap().clone();
    for n in (0..total).filter(|n| n % 5 != 4) {
        let name = format!("app-{n:03}");
        let (created, generation) = counts.get(&name).copied().unwrap_or_default();
        assert_eq!(created, 1, "{name} created {created} times");
        assert_eq!(
            generation, 1,
            "{name} spec rewritten (generation {generation})"
        );
    }
    // Operations resumed without a second workload.
    let ops: Api<Operation> = Api::namespaced(client.clone(), APPS);
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), APPS);
    let all_jobs = jobs.list(&ListParams::default()).await.unwrap().items;
    let operations = ops.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(operations.len(), total / 5);
    for o in &operations {
        let owned = all_jobs
            .iter()
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == o.metadata.uid.as_ref())
                    || j.name_any() == format!("{APPS}--{}", o.name_any())
            })
            .count();
        assert_eq!(owned, 1, "Operation {} has {owned} Jobs", o.name_any());
        let phase = o.status.as_ref().and_then(|s| s.phase);
        assert_eq!(
            phase,
            Some(vworkspace_api::operation::Phase::Succeeded),
            "{}",
            o.name_any()
        );
    }
    let resumed = op
        .log()
        .matches("resuming a job taken on before a restart")
        .count();
    eprintln!(
        "crash safety: {total} jobs, {killed} SIGKILLs in {:.0}s; answered {total} exactly once \
         ({outcomes:?} recorded; {refused_repeats} repeated posts refused with 409); {redelivered} handed out again after a kill; {resumed} resumed from the \
         journal; {} Operations with one Job each; lost 0",
        elapsed.as_secs_f64(),
        operations.len()
    );
    op.kill().await;
}
