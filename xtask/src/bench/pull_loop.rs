//! pull-loop: `apply` jobs of placeholder instances through the mock control plane and
//! the operator binary's agent.
//!
//! - **throughput**: `--jobs` jobs enqueued at once → time to the last result; the
//!   **baseline** server-side-applies the same objects directly (same concurrency) and
//!   waits, through a watch, until each is Ready — what the agent waits for before it
//!   answers `succeeded`. Runs alternate as in materialize; each has its own namespace.
//! - **latency**: jobs enqueued at a steady `--rate` for `--duration` s; enqueue request
//!   → result accepted by the control plane, per job.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use vworkspace_api::ApplicationInstance;

use super::kit::{TIMEOUT, client, watch};
use super::materialize::Who;
use super::mock::{self, CLUSTER_ID, Mock};
use super::stats::{median, percentile, spread};
use super::{Args, Env};

const OP_NS: &str = "vworkspace-system";

pub async fn run(args: &Args, env: &Env, bin: &Path) -> Result<String> {
    if args.jobs == 0 || args.rate == 0 {
        bail!("--jobs and --rate must be positive");
    }
    let admin = client(&env.kubeconfig).await?;
    testkit::fixtures::create_namespace(&admin, OP_NS).await?;
    let mock = Mock::start().await?;
    let mut operator = mock::spawn_operator(
        bin,
        &env.kubeconfig,
        OP_NS,
        &[],
        &env.dir.join("operator.log"),
    )?;
    mock::register(&admin, OP_NS, &mock).await?;
    let mut throughput: Vec<(Who, f64)> = Vec::new();
    let mut latencies: Vec<Vec<f64>> = Vec::new();
    let mut failed = 0usize;
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [Who::Baseline, Who::Operator]
        } else {
            [Who::Operator, Who::Baseline]
        };
        for who in order {
            let ns = format!("pull-{}-{rep}", who.name());
            testkit::fixtures::create_namespace(&admin, &ns).await?;
            let seconds = match who {
                Who::Baseline => baseline(args, &admin, &ns).await?,
                Who::Operator => {
                    let (s, f) = burst(args, &mock, &ns).await?;
                    failed += f;
                    s
                }
            };
            println!(
                "rep {rep} pull-loop {:<8} {} objects in {seconds:.2} s",
                who.name(),
                args.jobs
            );
            throughput.push((who, seconds));
        }
        let ns = format!("pull-steady-{rep}");
        testkit::fixtures::create_namespace(&admin, &ns).await?;
        let (l, f) = steady(args, &mock, &ns).await?;
        failed += f;
        println!(
            "rep {rep} pull-loop steady {} jobs/s: p50 {:.3} s  p99 {:.3} s",
            args.rate,
            percentile(&l, 50.0),
            percentile(&l, 99.0)
        );
        latencies.push(l);
        if let Ok(Some(status)) = operator.try_wait() {
            bail!("the operator exited with {status}");
        }
    }
    let _ = operator.kill().await;
    Ok(report(args, &throughput, &latencies, failed, &mock))
}

fn ready(store: &Store<ApplicationInstance>) -> usize {
    store
        .state()
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
        })
        .count()
}

async fn wait_ready(store: &Store<ApplicationInstance>, n: usize, started: Instant) -> Result<()> {
    while ready(store) < n {
        if started.elapsed() > TIMEOUT {
            bail!("instances not Ready in {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The same objects applied directly; seconds until every one is Ready.
async fn baseline(args: &Args, admin: &Client, ns: &str) -> Result<f64> {
    let mut tasks = Vec::new();
    let store = watch(
        Api::<ApplicationInstance>::namespaced(admin.clone(), ns),
        &mut tasks,
    );
    store.wait_until_ready().await?;
    let api: Api<ApplicationInstance> = Api::namespaced(admin.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..args.jobs)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("p-{i:05}");
                api.patch(
                    &name,
                    &PatchParams::apply("vworkspace-agent").force(),
                    &Patch::Apply(mock::placeholder(ns, &name)),
                )
                .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait_ready(&store, args.jobs, started).await?;
    let s = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(s)
}

fn apply_job(ns: &str, name: &str) -> Result<vworkspace_protocol::Job> {
    mock::job(
        &format!("{ns}-{name}"),
        "apply",
        &format!("applicationinstance/{ns}/{name}@1"),
        mock::placeholder(ns, name),
    )
}

/// Waits until every id has a result; returns when each arrived and how many failed.
async fn results(
    mock: &Mock,
    ids: &[String],
    started: Instant,
) -> Result<(HashMap<String, Instant>, usize)> {
    loop {
        let done: Option<(HashMap<String, Instant>, usize)> =
            mock.seen.results.lock().ok().and_then(|r| {
                ids.iter().all(|id| r.contains_key(id)).then(|| {
                    let at = ids.iter().map(|id| (id.clone(), r[id].0)).collect();
                    let failed = ids.iter().filter(|id| r[*id].1 != "succeeded").count();
                    (at, failed)
                })
            });
        if let Some(d) = done {
            return Ok(d);
        }
        if started.elapsed() > TIMEOUT {
            bail!("results missing after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--jobs` jobs enqueued at once; seconds from the first enqueue to the last result.
async fn burst(args: &Args, mock: &Mock, ns: &str) -> Result<(f64, usize)> {
    let names: Vec<String> = (0..args.jobs).map(|i| format!("p-{i:05}")).collect();
    let jobs = names
        .iter()
        .map(|n| apply_job(ns, n))
        .collect::<Result<Vec<_>>>()?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let started = Instant::now();
    futures::stream::iter(jobs)
        .map(|j| async move { mock.admin.enqueue(CLUSTER_ID, &j).await })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let (at, failed) = results(mock, &ids, started).await?;
    let last = at.values().max().copied().unwrap_or(started);
    Ok((last.duration_since(started).as_secs_f64(), failed))
}

/// Jobs at a steady rate; latency enqueue → result per job.
async fn steady(args: &Args, mock: &Mock, ns: &str) -> Result<(Vec<f64>, usize)> {
    let count = (args.rate * args.duration) as usize;
    let gap = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tick = tokio::time::interval(gap);
    let mut sent = HashMap::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..count {
        tick.tick().await;
        let j = apply_job(ns, &format!("s-{i:05}"))?;
        sent.insert(j.id.clone(), Instant::now());
        let admin = mock.admin.clone();
        tasks.push(tokio::spawn(
            async move { admin.enqueue(CLUSTER_ID, &j).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    let ids: Vec<String> = sent.keys().cloned().collect();
    let (at, failed) = results(mock, &ids, started).await?;
    Ok((
        ids.iter()
            .map(|id| at[id].duration_since(sent[id]).as_secs_f64())
            .collect(),
        failed,
    ))
}

fn report(
    args: &Args,
    throughput: &[(Who, f64)],
    latencies: &[Vec<f64>],
    failed: usize,
    mock: &Mock,
) -> String {
    let secs = |who: Who| -> Vec<f64> {
        throughput
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, s)| *s)
            .collect()
    };
    let (b, o) = (secs(Who::Baseline), secs(Who::Operator));
    let ratios: Vec<f64> = b.iter().zip(&o).map(|(b, o)| b / o).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### pull-loop, {} jobs at once, then {} jobs/s for {} s, {} repetitions\n",
        args.jobs, args.rate, args.duration, args.reps
    );
    let _ = writeln!(
        out,
        "| | median s | min–max s | objects/s (median) |\n|---|---|---|---|"
    );
    for (who, v) in [(Who::Baseline, &b), (Who::Operator, &o)] {
        let (lo, hi) = spread(v);
        let m = median(v.clone());
        let _ = writeln!(
            out,
            "| {} | {m:.2} | {lo:.2}–{hi:.2} | {:.1} |",
            who.name(),
            args.jobs as f64 / m
        );
    }
    let (lo, hi) = spread(&ratios);
    let _ = writeln!(
        out,
        "\nOperator throughput ÷ baseline: median {:.2} × (per pair {lo:.2}–{hi:.2} ×). \
         Results other than `succeeded`: {failed}.\n",
        median(ratios.clone())
    );
    let p = |q: f64| -> Vec<f64> { latencies.iter().map(|l| percentile(l, q)).collect() };
    let (p50, p99) = (p(50.0), p(99.0));
    let ((a, b2), (c, d)) = (spread(&p50), spread(&p99));
    let _ = writeln!(
        out,
        "Steady {} jobs/s, enqueue → result: p50 {:.3} s ({a:.3}–{b2:.3}), p99 {:.3} s ({c:.3}–{d:.3}), medians over {} runs of {} jobs.\n",
        args.rate,
        median(p50),
        median(p99),
        latencies.len(),
        args.rate * args.duration
    );
    let counts = mock.seen.agent_requests();
    let _ = writeln!(
        out,
        "Agent requests to the control plane over the whole scenario: {}.",
        counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}
