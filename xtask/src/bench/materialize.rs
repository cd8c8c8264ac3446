//! materialize (and teardown) on the test control plane, the operator
//! against a raw-client baseline in the same run.
//!
//! One control plane serves every run; each run gets a fresh namespace. A run creates N
//! managed ApplicationInstances at a fixed concurrency and ends when every HelmRelease
//! and HelmRepository exists and every status carries the current `observedGeneration`
//! (seen through watches, so checking costs no requests).
//!
//! - **operator**: the ApplicationInstance controller runs in this process, scoped to the
//!   run's namespace; the harness only creates the instances.
//! - **baseline**: a plain client creates each instance and server-side-applies the same
//!   HelmRepository, HelmRelease and status the controller computes (from the same pure
//!   functions), at the same concurrency.
//!
//! Runs alternate (baseline first on even repetitions, operator first on odd ones). The
//! API requests of a run are the difference of the apiserver's `apiserver_request_total`
//! before and after it; for the operator the count waits until the controller has been
//! idle for [`SETTLE`], so self-triggered passes after convergence are counted too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::flux::{ChartSource, desired_children};
use vworkspace_operator::kinds::flux::{HelmRelease, HelmRepository};
use vworkspace_operator::metrics::Metrics;

use super::kit::{Own, TIMEOUT, Watched, client, counting_client, instance, scrape, settle};
use super::stats::{Requests, diff, is_write, median, spread};
use super::{Args, Env};

pub async fn run(args: &Args, env: &Env) -> Result<String> {
    let runs = drive(args, &env.kubeconfig).await?;
    let materialized: Vec<&Sample> = runs.iter().map(|r| &r.materialize).collect();
    let torn_down: Vec<&Sample> = runs.iter().map(|r| &r.teardown).collect();
    Ok(format!(
        "{}\n{}",
        report("materialize", args, &materialized),
        report("teardown", args, &torn_down)
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Baseline,
    Operator,
}

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Baseline => "baseline",
            Who::Operator => "operator",
        }
    }
}

struct Sample {
    who: Who,
    seconds: f64,
    requests: Requests,
    /// Operator only: reconcile passes of the ApplicationInstance controller.
    reconciles: Option<u64>,
    /// Operator only: the requests its own client sent (the rest of `requests` came from
    /// the harness and the control plane's controllers).
    own: Option<Own>,
}

/// What `own` counted since `before`.
fn own_diff(
    now: &Own,
    before: &BTreeMap<(String, String, String), u64>,
) -> BTreeMap<(String, String, String), u64> {
    now.lock()
        .map(|n| {
            n.iter()
                .filter_map(|(k, v)| {
                    let d = v - before.get(k).copied().unwrap_or(0);
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn snapshot(own: &Own) -> BTreeMap<(String, String, String), u64> {
    own.lock().map(|o| o.clone()).unwrap_or_default()
}

/// One materialize run and the teardown of what it made.
struct Run {
    materialize: Sample,
    teardown: Sample,
}
async fn drive(args: &Args, kubeconfig: &std::path::Path) -> Result<Vec<Run>> {
    let admin = client(kubeconfig).await?;
    let mut samples = Vec::new();
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [Who::Baseline, Who::Operator]
        } else {
            [Who::Operator, Who::Baseline]
        };
        for who in order {
            let ns = format!("bench-{}-{rep}", who.name());
            // Each run has its own clients, so no connection pool carries over.
            let run = materialize_and_teardown(who, args, &ns, kubeconfig, &admin).await?;
            for (what, sample) in [
                ("materialize", &run.materialize),
                ("teardown", &run.teardown),
            ] {
                println!(
                    "rep {rep} {what:<11} {:<8} {:>7.2} s  {:>5} requests{}",
                    who.name(),
                    sample.seconds,
                    sample.requests.values().sum::<u64>(),
                    sample
                        .reconciles
                        .map(|r| format!("  {r} reconciles"))
                        .unwrap_or_default()
                );
            }
            samples.push(run);
        }
    }
    Ok(samples)
}

async fn materialize_and_teardown(
    who: Who,
    args: &Args,
    ns: &str,
    kubeconfig: &std::path::Path,
    admin: &Client,
) -> Result<Run> {
    testkit::fixtures::create_namespace(admin, ns).await?;
    let watched = Watched::start(admin, ns).await?;
    let metrics = Arc::new(Metrics::new());
    let own: Own = Arc::default();
    let controller = match who {
        Who::Operator => {
            let ctx = Arc::new(
                Context::new(counting_client(kubeconfig, own.clone()).await?)
                    .with_metrics(metrics.clone()),
            );
            let scope = ns.to_string();
            let handle =
                tokio::spawn(async move { application_instance::run(ctx, Some(&scope)).await });
            // Let its watches list the (empty) namespace before the clock starts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(handle)
        }
        Who::Baseline => None,
    };
    let writer = client(kubeconfig).await?;
    let before = scrape(admin).await?;
    let own_before = snapshot(&own);
    let started = Instant::now();
    let api: Api<ApplicationInstance> = Api::namespaced(writer.clone(), ns);
    futures::stream::iter(0..args.instances())
        .map(|i| {
            let api = api.clone();
            let writer = writer.clone();
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
    while !watched.converged(args.instances()) {
        if started.elapsed() > TIMEOUT {
            bail!("{} run in {ns} did not converge in {TIMEOUT:?}", who.name());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let reconciles = match &controller {
        Some(_) => Some(settle(&metrics, started).await),
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        }
    };
    let after = scrape(admin).await?;
    let own_materialize = own_diff(&own, &own_before);
    let own_before = snapshot(&own);
    let materialize = Sample {
        who,
        seconds,
        requests: diff(&before, &after),
        reconciles,
        own: (who == Who::Operator).then(|| Arc::new(std::sync::Mutex::new(own_materialize))),
    };

    // Teardown: every instance deleted at once; done when instances and children are gone.
    let before = after;
    let started = Instant::now();
    futures::stream::iter(0..args.instances())
        .map(|i| {
            let api = api.clone();
            let writer = writer.clone();
            async move {
                let name = format!("app-{i:05}");
                match who {
                    Who::Operator => {
                        api.delete(&name, &Default::default()).await?;
                        Ok(())
                    }
                    Who::Baseline => baseline_delete(&writer, &api, ns, &name).await,
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    while !watched.gone() {
        if started.elapsed() > TIMEOUT {
            bail!(
                "{} teardown in {ns} did not finish in {TIMEOUT:?}",
                who.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let reconciles = match controller {
        Some(handle) => {
            let total = settle(&metrics, started).await;
            handle.abort();
            Some(total - materialize.reconciles.unwrap_or_default())
        }
        None => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        }
    };
    let after = scrape(admin).await?;
    Ok(Run {
        materialize,
        teardown: Sample {
            who,
            seconds,
            requests: diff(&before, &after),
            reconciles,
            own: (who == Who::Operator)
                .then(|| Arc::new(std::sync::Mutex::new(own_diff(&own, &own_before)))),
        },
    })
}

/// The baseline teardown of one instance: delete its children, drop the finalizer,
/// delete it.
async fn baseline_delete(
    client: &Client,
    api: &Api<ApplicationInstance>,
    ns: &str,
    name: &str,
) -> Result<()> {
    let dp = kube::api::DeleteParams::background();
    Api::<HelmRelease>::namespaced(client.clone(), ns)
        .delete(name, &dp)
        .await?;
    Api::<HelmRepository>::namespaced(client.clone(), ns)
        .delete(&vworkspace_operator::flux::source_name(name), &dp)
        .await?;
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    api.delete(name, &dp).await?;
    Ok(())
}

/// The baseline for one instance: create it, server-side-apply its chart source and
/// HelmRelease, then its status, all computed as the controller computes them.
pub async fn baseline_one(
    client: &Client,
    api: &Api<ApplicationInstance>,
    ns: &str,
    name: &str,
) -> Result<()> {
    let created = api
        .create(&PostParams::default(), &instance(ns, name, true)?)
        .await?;
    let children = desired_children(&created).map_err(anyhow::Error::msg)?;
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    match &children.source {
        ChartSource::Helm(src) => {
            Api::<HelmRepository>::namespaced(client.clone(), ns)
                .patch(&src.name_any(), &pp, &Patch::Apply(src))
                .await?;
        }
        ChartSource::Oci(_) => bail!("the benchmark instance uses a Helm repository"),
    }
    let live = Api::<HelmRelease>::namespaced(client.clone(), ns)
        .patch(
            &children.helm_release.name_any(),
            &pp,
            &Patch::Apply(&children.helm_release),
        )
        .await?;
    let observed = vworkspace_decide::instance::Observed::of(created);
    let plan = vworkspace_decide::instance::after_apply(
        &observed,
        &children,
        &live,
        jiff::Timestamp::now(),
    );
    let status = plan.status.context("a new instance always gets a status")?;
    api.patch_status(
        name,
        &pp,
        &Patch::Apply(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "status": status,
        })),
    )
    .await?;
    Ok(())
}
/// Writes of a run besides the harness's own instance creates, split into Events and
/// the rest.
fn writes(s: &Sample, n: usize) -> (u64, u64) {
    let mut events = 0;
    let mut other = 0;
    for ((verb, resource, _, _), v) in &s.requests {
        if !is_write(verb) {
            continue;
        }
        if resource == "events" {
            events += v;
        } else {
            other += v;
        }
    }
    (other.saturating_sub(n as u64), events)
}

fn report(scenario: &str, args: &Args, samples: &[&Sample]) -> String {
    let n = args.instances();
    let of = |who: Who| samples.iter().copied().filter(move |s| s.who == who);
    let secs = |who: Who| of(who).map(|s| s.seconds).collect::<Vec<_>>();
    let ratios: Vec<f64> = of(Who::Operator)
        .zip(of(Who::Baseline))
        .map(|(o, b)| o.seconds / b.seconds)
        .collect();
    let per = |x: u64| x as f64 / n as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {scenario}, {n} instances, concurrency {}, {} paired runs\n",
        args.concurrency, args.reps
    );
    let _ = writeln!(
        out,
        "| | median s | min–max s | writes/instance (excl. Events) | Events/instance | requests/instance | reconciles/instance | 409 conflicts (max) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for who in [Who::Baseline, Who::Operator] {
        let s = secs(who);
        let (lo, hi) = spread(&s);
        let w: Vec<f64> = of(who).map(|s| per(writes(s, n).0)).collect();
        let e: Vec<f64> = of(who).map(|s| per(writes(s, n).1)).collect();
        let r: Vec<f64> = of(who)
            .map(|s| per(s.requests.values().sum::<u64>().saturating_sub(n as u64)))
            .collect();
        let rc: Vec<f64> = of(who).filter_map(|s| s.reconciles.map(per)).collect();
        let conflicts = of(who)
            .map(|s| {
                s.requests
                    .iter()
                    .filter(|((_, _, _, code), _)| code == "409")
                    .map(|(_, v)| v)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2}–{:.2} | {:.2} | {:.2} | {:.2} | {} | {conflicts} |",
            who.name(),
            median(s),
            lo,
            hi,
            median(w),
            median(e),
            median(r),
            if rc.is_empty() {
                "—".to_string()
            } else {
                format!("{:.2}", median(rc))
            }
        );
    }
    let (lo, hi) = spread(&ratios);
    let _ = writeln!(
        out,
        "\nOperator ÷ baseline time: median {:.2} × (per pair {:.2}–{:.2} ×).\n",
        median(ratios.clone()),
        lo,
        hi
    );
    if let Some(first) = of(Who::Operator).next() {
        let _ = writeln!(
            out,
            "API requests of the first operator run, by verb/resource (the harness's {n} instance creates or deletes are excluded from the per-instance figures above, shown here):\n"
        );
        let _ = writeln!(
            out,
            "| verb | resource | subresource | code | total | per instance | sent by the operator's client (any code) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        let own = first
            .own
            .as_ref()
            .and_then(|o| o.lock().ok().map(|o| o.clone()))
            .unwrap_or_default();
        for ((verb, resource, sub, code), v) in &first.requests {
            let mine = own
                .get(&(verb.clone(), resource.clone(), sub.clone()))
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "| {verb} | {resource} | {sub} | {code} | {v} | {:.2} | {mine} |",
                per(*v)
            );
        }
        let unmatched: Vec<String> = own
            .iter()
            .filter(|((v, r, s), _)| {
                !first
                    .requests
                    .keys()
                    .any(|(v2, r2, s2, _)| v == v2 && r == r2 && s == s2)
            })
            .map(|((v, r, s), n)| format!("{v} {r} {s} {n}"))
            .collect();
        if !unmatched.is_empty() {
            let _ = writeln!(
                out,
                "\nSent by the operator's client but not in the apiserver's counters: {}.",
                unmatched.join(", ")
            );
        }
    }
    out
}
