//! memory: the operator binary (release build unless VWORKSPACE_BENCH_DEBUG) as a child process watching one namespace;
//! RSS idle, then after N instances converged (and settled), against the JSON bytes of
//! the objects its stores hold.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::{HelmRelease, HelmRepository};

use super::kit::{TIMEOUT, Watched, cached_bytes, client, instance, rss_kib};
use super::{Args, Env};

pub async fn run(args: &Args, env: &Env, bin: &Path) -> Result<String> {
    memory(
        args.instances(),
        args.concurrency,
        bin,
        &env.kubeconfig,
        &env.dir,
    )
    .await
}

async fn memory(
    n: usize,
    concurrency: usize,
    bin: &Path,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<String> {
    let admin = client(kubeconfig).await?;
    let ns = "bench-memory";
    for name in ["vworkspace-system", ns] {
        testkit::fixtures::create_namespace(&admin, name).await?;
    }
    let watched = Watched::start(&admin, ns).await?;
    let log = std::fs::File::create(dir.join("operator.log"))?;
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--health-probe-bind-address=127.0.0.1:0"])
        .arg(format!("--watch-namespace={ns}"))
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "vworkspace-system")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")?;
    let pid = child.id().context("operator exited at once")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = rss_kib(pid)?;
    let api: Api<ApplicationInstance> = Api::namespaced(admin.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &instance(ns, &format!("app-{i:05}"), false)?,
                )
                .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let mut last_report = Instant::now();
    while !watched.converged(n) {
        // 10,000 instances took longer than the common timeout on a loaded machine.
        let timeout = TIMEOUT.max(Duration::from_millis(300 * n as u64));
        if started.elapsed() > timeout {
            bail!("memory run did not converge in {timeout:?}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the operator exited with {status}");
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            println!(
                "{:.0} s: {} HelmReleases, RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                watched.releases.state().len(),
                rss_kib(pid)? as f64 / 1024.0
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let loaded = rss_kib(pid)?;
    let (anon, file) = (status_kib(pid, "RssAnon")?, status_kib(pid, "RssFile")?);
    let _ = child.kill().await;
    let bytes = cached_bytes::<ApplicationInstance>(&admin, ns).await?
        + cached_bytes::<HelmRelease>(&admin, ns).await?
        + cached_bytes::<HelmRepository>(&admin, ns).await?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### memory, {n} instances (operator binary, {} build)\n",
        super::profile()
    );
    let _ = writeln!(
        out,
        "| RSS idle | RSS after {n} converged | growth | JSON of the objects its stores hold | growth ÷ JSON | converged in |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} × | {seconds:.1} s |",
        mib(idle),
        mib(loaded),
        mib(loaded.saturating_sub(idle)),
        bytes as f64 / 1048576.0,
        (loaded.saturating_sub(idle) * 1024) as f64 / bytes.max(1) as f64,
    );
    let _ = writeln!(
        out,
        "\nRSS after {n} ÷ JSON held: {:.1} ×. Of the RSS after {n}: {:.1} MiB anonymous \
         (heap and stacks), {:.1} MiB file-backed (the binary's text).",
        (loaded * 1024) as f64 / bytes.max(1) as f64,
        mib(anon),
        mib(file),
    );
    Ok(out)
}

/// One `kB` field of `/proc/<pid>/status` (`RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
