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
    // `VWORKSPACE_BENCH_OPERATOR_WRAPPER` (e.g. `heaptrack -o /tmp/op`) runs the operator
    // under a profiler; the RSS figures are then the profiler's, not the operator's.
    let wrapper = std::env::var("VWORKSPACE_BENCH_OPERATOR_WRAPPER").ok();
    let mut command = match wrapper.as_deref().map(str::split_whitespace) {
        Some(mut words) => {
            let mut c = tokio::process::Command::new(words.next().context("empty wrapper")?);
            c.args(words).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    let mut child = command
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
    // `VWORKSPACE_BENCH_MALLOC_TRIM=1`: glibc's `malloc_stats` into the operator's log and
    // `malloc_trim(0)` through gdb, then RSS again: what the allocator kept but no object
    // uses.
    let trimmed = if std::env::var_os("VWORKSPACE_BENCH_MALLOC_TRIM").is_some() {
        let out = std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "call (void)malloc_stats()",
            ])
            .args(["-ex", "call (int)malloc_trim(0)"])
            .output()
            .context("running gdb")?;
        if !out.status.success() {
            bail!("gdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default();
        let stats: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("bytes") || l.starts_with("Arena") || l.contains("mmap"))
            .collect();
        println!("malloc_stats:\n{}", stats.join("\n"));
        Some(rss_kib(pid)?)
    } else {
        None
    };
    if wrapper.is_some() {
        // A profiler writes its data when the operator exits: stop it gracefully.
        stop_gracefully(pid, &mut child).await;
    }
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
    if let Some(t) = trimmed {
        let _ = writeln!(out, "\nAfter `malloc_trim(0)`: {:.1} MiB.", mib(t));
    }
    Ok(out)
}

/// SIGTERM to the processes `pid` started (the wrapped operator), then wait for `child`.
async fn stop_gracefully(pid: u32, child: &mut tokio::process::Child) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for p in children.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", p])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
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
