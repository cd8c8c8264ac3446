//! idle: what one idle cluster costs. The operator binary with default flags, registered
//! with the mock control plane, holding N Ready placeholder instances and doing nothing
//! else. Over `--window` seconds: the agent's requests to the control plane (counted by
//! the mock's recording layer), the apiserver requests (`apiserver_request_total`) minus
//! those of a window of the same length before the operator started (the control
//! plane's own background), and the operator's CPU time; all extrapolated to an hour.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::{Api, Patch, PatchParams};
use vworkspace_api::ApplicationInstance;

use super::kit::{client, rss_kib, scrape};
use super::mock::{self, Mock};
use super::stats::diff;
use super::{Args, Env};

const OP_NS: &str = "vworkspace-system";
/// Time after the instances are Ready before the window opens.
const QUIET: Duration = Duration::from_secs(30);

pub async fn run(args: &Args, env: &Env, bin: &Path) -> Result<String> {
    let n = args.instances();
    let window = Duration::from_secs(args.window.max(1));
    let admin = client(&env.kubeconfig).await?;
    testkit::fixtures::create_namespace(&admin, OP_NS).await?;
    let ns = "idle";
    testkit::fixtures::create_namespace(&admin, ns).await?;

    println!("background window ({} s, no operator)", window.as_secs());
    let b0 = scrape(&admin).await?;
    tokio::time::sleep(window).await;
    let b1 = scrape(&admin).await?;
    let background: u64 = diff(&b0, &b1).values().sum();

    let mock = Mock::start().await?;
    let mut operator = mock::spawn_operator(
        bin,
        &env.kubeconfig,
        OP_NS,
        &[],
        &env.dir.join("operator.log"),
    )?;
    let pid = operator.id().unwrap_or(0);
    mock::register(&admin, OP_NS, &mock).await?;
    let api: Api<ApplicationInstance> = Api::namespaced(admin.clone(), ns);
    for i in 0..n {
        let name = format!("idle-{i:03}");
        api.patch(
            &name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(mock::placeholder(ns, &name)),
        )
        .await?;
    }
    let started = Instant::now();
    loop {
        let ready = api
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
            })
            .count();
        if ready == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("placeholders not Ready in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(QUIET).await;

    println!("measured window ({} s, operator idle)", window.as_secs());
    let agent0 = mock.seen.agent_requests();
    let cpu0 = mock::cpu_seconds(pid)?;
    let a0 = scrape(&admin).await?;
    tokio::time::sleep(window).await;
    let a1 = scrape(&admin).await?;
    let cpu1 = mock::cpu_seconds(pid)?;
    let agent1 = mock.seen.agent_requests();
    let rss = rss_kib(pid)?;
    if let Ok(Some(status)) = operator.try_wait() {
        bail!("the operator exited with {status}");
    }
    let _ = operator.kill().await;

    let per_hour = 3600.0 / window.as_secs_f64();
    let apiserver = diff(&a0, &a1);
    let with_operator: u64 = apiserver.values().sum();
    let agent: Vec<(&str, u64)> = agent1
        .iter()
        .map(|(k, v)| (*k, v - agent0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let agent_total: u64 = agent.iter().map(|(_, v)| v).sum();
    let cpu = cpu1 - cpu0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### idle, {n} Ready placeholder instances, default flags, {} s windows\n",
        window.as_secs()
    );
    let _ = writeln!(out, "| measure | in the window | per hour (extrapolated) |");
    let _ = writeln!(out, "|---|---|---|");
    let _ = writeln!(
        out,
        "| requests to the control plane | {agent_total} ({}) | {:.0} |",
        agent
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        agent_total as f64 * per_hour
    );
    let _ = writeln!(
        out,
        "| apiserver requests, operator running | {with_operator} | {:.0} |",
        with_operator as f64 * per_hour
    );
    let _ = writeln!(
        out,
        "| apiserver requests, background window before it started | {background} | {:.0} |",
        background as f64 * per_hour
    );
    let _ = writeln!(
        out,
        "| apiserver requests attributable to the operator (difference) | {} | {:.0} |",
        with_operator as i64 - background as i64,
        (with_operator as f64 - background as f64) * per_hour
    );
    let _ = writeln!(
        out,
        "| operator CPU | {cpu:.2} s ({:.2} % of one core) | {:.0} s |",
        100.0 * cpu / window.as_secs_f64(),
        cpu * per_hour
    );
    let _ = writeln!(
        out,
        "| operator RSS at the end | {:.1} MiB | — |",
        rss as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "\napiserver requests in the measured window, by verb/resource (operator and background together):\n"
    );
    let _ = writeln!(
        out,
        "| verb | resource | subresource | code | count |\n|---|---|---|---|---|"
    );
    for ((verb, resource, sub, code), v) in &apiserver {
        let _ = writeln!(out, "| {verb} | {resource} | {sub} | {code} | {v} |");
    }
    Ok(out)
}
