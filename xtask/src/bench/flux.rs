//! flux: N instances of the test chart `webapp` installed by the real helm-controller
//! (testkit's full profile: source-controller, helm-controller, kwok). The
//! ApplicationInstance controller runs in this process. Per instance, from watch events:
//! create request → HelmRelease exists (the operator's part), HelmRelease Ready → the
//! instance Ready (the operator's part again), against create → instance Ready in all.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::kinds::flux::HelmRelease;

use super::kit::{TIMEOUT, client};
use super::stats::{median, percentile, spread};
use super::{Args, Env};

/// When each step was first seen, per instance name.
#[derive(Default, Clone, Copy)]
struct Marks {
    created: Option<Instant>,
    release: Option<Instant>,
    release_ready: Option<Instant>,
    ready: Option<Instant>,
}

type Timeline = Arc<Mutex<HashMap<String, Marks>>>;

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    vworkspace_api::conditions::is_true(conditions, "Ready")
}

fn mark(t: &Timeline, name: &str, f: impl FnOnce(&mut Marks)) {
    if let Ok(mut t) = t.lock() {
        f(t.entry(name.to_string()).or_default());
    }
}

pub async fn run(args: &Args, env: &Env) -> Result<String> {
    let url = env
        .helm_repository_url
        .clone()
        .context("the full profile has no Helm repository")?;
    let admin = client(&env.kubeconfig).await?;
    let mut runs = Vec::new();
    for rep in 0..args.reps {
        let ns = format!("flux-{rep}");
        let (secs, marks) = one(args, &admin, &env.kubeconfig, &ns, &url).await?;
        println!(
            "rep {rep} flux {} instances Ready in {secs:.1} s",
            marks.len()
        );
        runs.push((secs, marks));
    }
    Ok(report(args, &runs))
}

async fn one(
    args: &Args,
    admin: &Client,
    kubeconfig: &std::path::Path,
    ns: &str,
    url: &str,
) -> Result<(f64, Vec<Marks>)> {
    let n = args.instances();
    testkit::fixtures::create_namespace(admin, ns).await?;
    let t: Timeline = Arc::default();
    let mut tasks = Vec::new();
    {
        let t = t.clone();
        let s = watcher(
            Api::<HelmRelease>::namespaced(admin.clone(), ns),
            watcher::Config::default(),
        )
        .applied_objects();
        tasks.push(tokio::spawn(async move {
            let _ = s
                .try_for_each(|hr| {
                    let now = Instant::now();
                    let is_ready = hr
                        .status
                        .as_ref()
                        .is_some_and(|s| ready(s.conditions.as_deref().unwrap_or_default()));
                    mark(&t, &hr.name_any(), |m| {
                        m.release.get_or_insert(now);
                        if is_ready {
                            m.release_ready.get_or_insert(now);
                        }
                    });
                    async { Ok(()) }
                })
                .await;
        }));
    }
    {
        let t = t.clone();
        let s = watcher(
            Api::<ApplicationInstance>::namespaced(admin.clone(), ns),
            watcher::Config::default(),
        )
        .applied_objects();
        tasks.push(tokio::spawn(async move {
            let _ = s
                .try_for_each(|i| {
                    let now = Instant::now();
                    if i.status.as_ref().is_some_and(|s| ready(&s.conditions)) {
                        mark(&t, &i.name_any(), |m| {
                            m.ready.get_or_insert(now);
                        });
                    }
                    async { Ok(()) }
                })
                .await;
        }));
    }
    let ctx = Arc::new(Context::new(client(kubeconfig).await?));
    let scope = ns.to_string();
    tasks.push(tokio::spawn(async move {
        application_instance::run(ctx, Some(&scope)).await
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let api: Api<ApplicationInstance> = Api::namespaced(admin.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, t) = (api.clone(), t.clone());
            async move {
                let name = format!("web-{i:03}");
                let inst: ApplicationInstance = serde_json::from_value(json!({
                    "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"appRef": {"catalogId": "webapp"},
                             "chart": {"sourceType": "helm", "url": url,
                                       "name": "webapp", "version": "0.1.0"},
                             "release": {"name": name, "namespace": ns},
                             "values": {"source": "inline", "inline": {}}}
                }))?;
                mark(&t, &name, |m| m.created = Some(Instant::now()));
                api.create(&PostParams::default(), &inst).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    loop {
        let done = t
            .lock()
            .map(|t| t.values().filter(|m| m.ready.is_some()).count())
            .unwrap_or(0);
        if done == n {
            break;
        }
        if started.elapsed() > TIMEOUT {
            bail!("{done} of {n} instances Ready after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for task in tasks {
        task.abort();
    }
    let marks = t
        .lock()
        .map(|t| t.values().copied().collect())
        .unwrap_or_default();
    Ok((secs, marks))
}

fn report(args: &Args, runs: &[(f64, Vec<Marks>)]) -> String {
    let n = args.instances();
    let d = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_secs_f64()),
        _ => None,
    };
    let mut total = Vec::new();
    let mut to_release = Vec::new();
    let mut to_status = Vec::new();
    let mut share = Vec::new();
    let mut wall = Vec::new();
    for (secs, marks) in runs {
        wall.push(*secs);
        for m in marks {
            let (Some(all), Some(a), Some(b)) = (
                d(m.created, m.ready),
                d(m.created, m.release),
                d(m.release_ready, m.ready),
            ) else {
                continue;
            };
            total.push(all);
            to_release.push(a);
            to_status.push(b);
            share.push(if all > 0.0 { (a + b) / all } else { 0.0 });
        }
    }
    let (wlo, whi) = spread(&wall);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### with real Flux, {n} instances (chart webapp 0.1.0), {} runs\n",
        runs.len()
    );
    let _ = writeln!(
        out,
        "All {n} Ready: median {:.1} s ({wlo:.1}–{whi:.1}).\n",
        median(wall.clone())
    );
    let _ = writeln!(out, "| per instance | p50 s | p99 s |\n|---|---|---|");
    for (what, v) in [
        ("create → HelmRelease exists (operator)", &to_release),
        ("HelmRelease Ready → instance Ready (operator)", &to_status),
        ("create → instance Ready (total)", &total),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {:.3} | {:.3} |",
            percentile(v, 50.0),
            percentile(v, 99.0)
        );
    }
    let _ = writeln!(
        out,
        "\nOperator overhead as a share of create → Ready, per instance: median {:.1} %, p99 {:.1} %.",
        100.0 * percentile(&share, 50.0),
        100.0 * percentile(&share, 99.0)
    );
    out
}
