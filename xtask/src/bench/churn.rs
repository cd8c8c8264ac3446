//! churn: N converged instances, a steady share of them edited every second; the time
//! from each edit's request to the watch event of its HelmRelease carrying the edit.
//!
//! An edit sets `spec.values.inline.replicas` to a number that grows across the run, so
//! a HelmRelease showing `replicas >= k` settles every edit of that instance up to `k`.
//! **operator**: the harness patches the instance; the in-process controller updates
//! the HelmRelease. **baseline**: the harness patches the instance and server-side-applies
//! the HelmRelease the controller would compute, itself. Edits are launched on a fixed
//! one-second tick whatever the answers take (bounded by `--concurrency` in flight).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::flux::desired_children;
use vworkspace_operator::kinds::flux::HelmRelease;
use vworkspace_operator::metrics::Metrics;

use super::kit::{TIMEOUT, Watched, client, instance, reconcile_count, scrape};
use super::materialize::{Who, baseline_one};
use super::stats::{Requests, diff, median, percentile, spread};
use super::{Args, Env};

/// How long edits still unsettled after the last tick may take before they count as lost.
const DRAIN: Duration = Duration::from_secs(60);

struct Sample {
    who: Who,
    /// Seconds from edit request to HelmRelease event, one per settled edit.
    latencies: Vec<f64>,
    edits: usize,
    requests: u64,
    /// The apiserver's requests during the edits, by verb/resource/subresource/code.
    by_request: Requests,
    reconciles: Option<u64>,
}

/// Edits sent and not yet seen on their HelmRelease: name → (replicas, sent at).
type Pending = Arc<Mutex<HashMap<String, Vec<(u64, Instant)>>>>;

fn replicas(hr: &HelmRelease) -> Option<u64> {
    hr.spec.values.as_ref()?.get("replicas")?.as_u64()
}

pub async fn run(args: &Args, env: &Env) -> Result<String> {
    if !(args.edit_share > 0.0 && args.edit_share <= 1.0) {
        bail!("--edit-share must be in (0, 1]");
    }
    let admin = client(&env.kubeconfig).await?;
    let mut samples = Vec::new();
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [Who::Baseline, Who::Operator]
        } else {
            [Who::Operator, Who::Baseline]
        };
        for who in order {
            let ns = format!("churn-{}-{rep}", who.name());
            let s = one(who, args, &ns, env, &admin).await?;
            println!(
                "rep {rep} churn {:<8} {} edits  p50 {:.3} s  p99 {:.3} s  {} requests{}",
                who.name(),
                s.edits,
                percentile(&s.latencies, 50.0),
                percentile(&s.latencies, 99.0),
                s.requests,
                s.reconciles
                    .map(|r| format!("  {r} reconciles"))
                    .unwrap_or_default()
            );
            samples.push(s);
        }
    }
    Ok(report(args, &samples))
}

async fn one(who: Who, args: &Args, ns: &str, env: &Env, admin: &Client) -> Result<Sample> {
    let n = args.instances();
    testkit::fixtures::create_namespace(admin, ns).await?;
    let watched = Watched::start(admin, ns).await?;
    let metrics = Arc::new(Metrics::new());
    let controller = match who {
        Who::Operator => {
            let ctx = Arc::new(
                Context::new(client(&env.kubeconfig).await?).with_metrics(metrics.clone()),
            );
            let scope = ns.to_string();
            Some(tokio::spawn(async move {
                application_instance::run(ctx, Some(&scope)).await
            }))
        }
        Who::Baseline => None,
    };
    let writer = client(&env.kubeconfig).await?;
    let api: Api<ApplicationInstance> = Api::namespaced(writer.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, writer) = (api.clone(), writer.clone());
            async move {
                let name = format!("app-{i:05}");
                match who {
                    Who::Operator => {
                        api.create(&PostParams::default(), &instance(ns, &name, false)?)
                            .await?;
                        Ok(())
                    }
                    Who::Baseline => baseline_one(&writer, &api, ns, &name).await,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let started = Instant::now();
    while !watched.converged(n) {
        if started.elapsed() > TIMEOUT {
            bail!("churn setup in {ns} did not converge in {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the controller's last passes finish before the clock.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let pending: Pending = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let seen = {
        let (pending, latencies) = (pending.clone(), latencies.clone());
        let stream = watcher(
            Api::<HelmRelease>::namespaced(admin.clone(), ns),
            watcher::Config::default(),
        )
        .applied_objects();
        tokio::spawn(async move {
            let _ = stream
                .try_for_each(|hr| {
                    let now = Instant::now();
                    if let Some(r) = replicas(&hr)
                        && let Ok(mut p) = pending.lock()
                        && let Some(list) = p.get_mut(&hr.name_any())
                    {
                        let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                        list.retain(|(k, at)| {
                            let settled = *k <= r;
                            if settled {
                                l.push(now.duration_since(*at).as_secs_f64());
                            }
                            !settled
                        });
                    }
                    async { Ok(()) }
                })
                .await;
        })
    };
    // The watch lists first; give it a moment so the first edits are not missed.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = scrape(admin).await?;
    let reconciles_before = reconcile_count(&metrics);
    let per_tick = ((n as f64 * args.edit_share).round() as usize).max(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next = 0usize;
    let mut seq = 1u64;
    let mut edits = Vec::new();
    for _ in 0..args.duration {
        tick.tick().await;
        for _ in 0..per_tick {
            seq += 1;
            let name = format!("app-{:05}", next % n);
            next += 1;
            let (api, writer, pending, gate) =
                (api.clone(), writer.clone(), pending.clone(), gate.clone());
            let ns = ns.to_string();
            edits.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                if let Ok(mut p) = pending.lock() {
                    p.entry(name.clone())
                        .or_default()
                        .push((seq, Instant::now()));
                }
                edit(who, &writer, &api, &ns, &name, seq).await
            }));
        }
    }
    let total = edits.len();
    for e in edits {
        e.await??;
    }
    let drained = Instant::now();
    while pending
        .lock()
        .map(|p| p.values().any(|l| !l.is_empty()))
        .unwrap_or(false)
        && drained.elapsed() < DRAIN
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.abort();
    if who == Who::Operator {
        // Count the passes the edits cause, including late ones.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = scrape(admin).await?;
    let reconciles = controller.map(|h| {
        h.abort();
        reconcile_count(&metrics) - reconciles_before
    });
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let by_request = diff(&before, &after);
    Ok(Sample {
        who,
        latencies,
        edits: total,
        requests: by_request.values().sum(),
        by_request,
        reconciles,
    })
}

/// One edit: the instance's values; the baseline also applies the HelmRelease itself.
async fn edit(
    who: Who,
    writer: &Client,
    api: &Api<ApplicationInstance>,
    ns: &str,
    name: &str,
    replicas: u64,
) -> Result<()> {
    let patched = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": {"inline": {"replicas": replicas}}}})),
        )
        .await?;
    if who == Who::Baseline {
        let children = desired_children(&patched).map_err(anyhow::Error::msg)?;
        Api::<HelmRelease>::namespaced(writer.clone(), ns)
            .patch(
                &children.helm_release.name_any(),
                &PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force(),
                &Patch::Apply(&children.helm_release),
            )
            .await?;
    }
    Ok(())
}

fn report(args: &Args, samples: &[Sample]) -> String {
    let n = args.instances();
    let per_tick = ((n as f64 * args.edit_share).round() as usize).max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### churn, {n} converged instances, {per_tick} edits per second for {} s, {} paired runs\n",
        args.duration, args.reps
    );
    let _ = writeln!(
        out,
        "| | edits per run | settled (min) | p50 s (median, min–max) | p99 s (median, min–max) | max s (median) | requests/edit | reconciles/edit |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for who in [Who::Baseline, Who::Operator] {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.who == who).collect();
        let p = |q: f64| -> Vec<f64> { of.iter().map(|s| percentile(&s.latencies, q)).collect() };
        let (p50, p99, max) = (p(50.0), p(99.0), p(100.0));
        let settled = of.iter().map(|s| s.latencies.len()).min().unwrap_or(0);
        let edits = of.first().map(|s| s.edits).unwrap_or(0);
        let rq: Vec<f64> = of
            .iter()
            .map(|s| s.requests as f64 / s.edits.max(1) as f64)
            .collect();
        let rc: Vec<f64> = of
            .iter()
            .filter_map(|s| s.reconciles.map(|r| r as f64 / s.edits.max(1) as f64))
            .collect();
        let (p50lo, p50hi) = spread(&p50);
        let (p99lo, p99hi) = spread(&p99);
        let _ = writeln!(
            out,
            "| {} | {edits} | {settled} | {:.3} ({p50lo:.3}–{p50hi:.3}) | {:.3} ({p99lo:.3}–{p99hi:.3}) | {:.3} | {:.2} | {} |",
            who.name(),
            median(p50),
            median(p99),
            median(max),
            median(rq),
            if rc.is_empty() {
                "—".to_string()
            } else {
                format!("{:.2}", median(rc))
            }
        );
    }
    if let Some(first) = samples.iter().find(|s| s.who == Who::Operator) {
        let _ = writeln!(
            out,
            "\nAPI requests during the edits of the first operator run, by verb/resource \
             (the harness's instance patches included):\n"
        );
        let _ = writeln!(
            out,
            "| verb | resource | subresource | code | total | per edit |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for ((verb, resource, sub, code), v) in &first.by_request {
            let _ = writeln!(
                out,
                "| {verb} | {resource} | {sub} | {code} | {v} | {:.2} |",
                *v as f64 / first.edits.max(1) as f64
            );
        }
    }
    let _ = writeln!(
        out,
        "\nLatency: edit request sent → watch event of the HelmRelease carrying it. \
         Requests: every apiserver request during the edits (the harness's instance patches \
         included, one per edit)."
    );
    out
}
