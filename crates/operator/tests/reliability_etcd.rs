//! Slow etcd (issue 11): the operator binary reconciles ApplicationInstances while the
//! test control plane's etcd is throttled (SIGSTOP for 400 ms, SIGCONT for 100 ms, over
//! and over: four fifths of the time it answers nothing). The operator's request rate —
//! requests the kube-apiserver completed for the operator's API groups, from its own
//! `apiserver_request_total` — must stay bounded (no busy loop while writes crawl) and
//! every instance must converge once etcd is back. Alone in its binary: it stops the
//! shared etcd. Figures: docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use support::Operator;
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::HelmRelease;

const OP_NS: &str = "vworkspace-system";
const APPS: &str = "org-etcd";
/// The API groups only the operator (and, outside the slow window, the test) writes.
const GROUPS: [&str; 3] = [
    "apps.vworkspace.io",
    "ops.vworkspace.io",
    "helm.toolkit.fluxcd.io",
];
/// A bound far above what the work needs (a few requests per instance) and far below a
/// retry loop without backoff (hundreds per second).
const MAX_RATE: f64 = 25.0;

/// The etcd child of this test process.
fn etcd_pid() -> i32 {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap_or("");
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let first = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if ppid == me && String::from_utf8_lossy(first).ends_with("/etcd") {
            return pid.parse().unwrap();
        }
    }
    panic!("no etcd child");
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Requests the apiserver completed so far for [`GROUPS`] (all verbs and codes).
async fn operator_requests(client: &Client) -> u64 {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| GROUPS.iter().any(|g| l.contains(&format!("group=\"{g}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn instance(name: &str) -> ApplicationInstance {
    let mut v = support::managed_instance(APPS, name, "1.0.0");
    v["metadata"]["labels"] = serde_json::json!({"app.vworkspace.io/cluster-id": "etcd-1"});
    serde_json::from_value(v).unwrap()
}

/// Plays Flux for every HelmRelease not reported for its generation; returns how many
/// instances are Ready.
async fn play_and_count(client: &Client) -> usize {
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), APPS);
    for hr in hrs.list(&ListParams::default()).await.unwrap().items {
        let observed = serde_json::to_value(&hr.status).unwrap()["observedGeneration"].as_i64();
        if observed != hr.metadata.generation {
            let _ =
                helm_controller_reports(&hrs, &hr.name_any(), "True", "InstallSucceeded", "played")
                    .await;
        }
    }
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    apps.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
        })
        .count()
}

async fn converge(client: &Client, want: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = play_and_count(client).await;
        if n == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{n}/{want} instances Ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn slow_etcd_keeps_the_request_rate_bounded() {
    let long = std::env::var("RELIABILITY_LONG").is_ok_and(|v| v == "1");
    let (batch, slow_for) = if long {
        (100, Duration::from_secs(120))
    } else {
        (20, Duration::from_secs(20))
    };
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    for ns in [OP_NS, APPS] {
        create_namespace(&client, ns).await.unwrap();
    }
    let mut op = Operator::start(cp, OP_NS, &[]).await;
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    for i in 0..batch {
        apps.create(&PostParams::default(), &instance(&format!("first-{i:03}")))
            .await
            .unwrap();
    }
    converge(&client, batch, Duration::from_secs(180)).await;

    // Idle baseline.
    let window = Duration::from_secs(10);
    let r0 = operator_requests(&client).await;
    tokio::time::sleep(window).await;
    let idle = operator_requests(&client).await - r0;

    // A second batch arrives, then etcd turns slow while the operator works on it.
    for i in 0..batch {
        apps.create(&PostParams::default(), &instance(&format!("second-{i:03}")))
            .await
            .unwrap();
    }
    let etcd = etcd_pid();
    let before = operator_requests(&client).await;
    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut last = before;
    let mut tick = Instant::now();
    while started.elapsed() < slow_for {
        signal(etcd, "-STOP");
        tokio::time::sleep(Duration::from_millis(400)).await;
        signal(etcd, "-CONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tick.elapsed() >= Duration::from_secs(5) {
            // /metrics needs no etcd; it answers while etcd is stopped too.
            let now = operator_requests(&client).await;
            per_second.push((now - last) as f64 / tick.elapsed().as_secs_f64());
            last = now;
            tick = Instant::now();
        }
    }
    signal(etcd, "-CONT");
    let slow_requests = operator_requests(&client).await - before;
    let slow_rate = slow_requests as f64 / started.elapsed().as_secs_f64();

    // Recovery: everything converges without restarting the operator.
    let after = operator_requests(&client).await;
    let took = converge(&client, 2 * batch, Duration::from_secs(240)).await;
    let recovery_requests = operator_requests(&client).await - after;
    let rates: Vec<String> = per_second.iter().map(|r| format!("{r:.1}")).collect();
    eprintln!(
        "slow etcd ({}s, stopped 80% of the time): idle {idle} requests in {}s; while slow \
         {slow_requests} requests = {slow_rate:.1}/s (per 5 s: {}); all {} instances Ready \
         {:.0}s after etcd recovered with {recovery_requests} more requests; operator restarts 0",
        slow_for.as_secs(),
        window.as_secs(),
        rates.join(", "),
        2 * batch,
        took.as_secs_f64()
    );
    assert!(
        slow_rate <= MAX_RATE,
        "{slow_rate:.1} requests/s while etcd was slow"
    );
    assert!(
        per_second.iter().all(|r| *r <= 2.0 * MAX_RATE),
        "a burst while etcd was slow: {rates:?}"
    );
    assert!(
        op.child.try_wait().unwrap().is_none(),
        "the operator exited"
    );
    op.kill().await;
}
