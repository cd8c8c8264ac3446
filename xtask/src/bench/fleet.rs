//! fleet: the mock control plane binary with `--agents` simulated agents long-polling it
//! on loopback. An agent here is a loop in this process (poll with `wait=30`, ack what it
//! gets), not an operator. Jobs are enqueued through the admin API at `--rate` per second
//! for `--duration` seconds, each to one agent; delivery latency is enqueue request →
//! the poll answer carrying the job. The server's RSS is read from /proc before the
//! agents connect, once they all poll, and at the end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use vworkspace_protocol::{JobsResponse, MEDIA_TYPE};

use super::Args;
use super::kit::rss_kib;
use super::mock::job;
use super::stats::percentile;

/// The `wait` of every simulated poll, seconds.
const POLL_WAIT: Duration = Duration::from_secs(30);

/// Job id → when its enqueue request was sent.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Raises the soft open-file limit to the hard one: each agent holds one connection
/// here, and the server (a child process, which inherits the limit) one more there.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

pub async fn run(args: &Args, bin: &Path) -> Result<String> {
    let agents = args.agents;
    let stagger = !args.in_step;
    if agents == 0 || args.rate == 0 {
        bail!("--agents and --rate must be positive");
    }
    let limit = raise_fd_limit();
    if (limit as usize) < agents + 256 {
        bail!("open-file limit {limit} too low for {agents} agents and the server");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(bin)
        .arg(format!("--addr=127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the mock control plane")?;
    let pid = server.id().context("mock exited at once")?;
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .build()?;
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the mock control plane did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_idle = rss_kib(pid)?;

    println!("registering {agents} clusters");
    let tokens: Vec<(String, String)> = futures::stream::iter(0..agents)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let cluster = format!("fleet-{i:05}");
                let reg = format!("reg-{cluster}");
                http.post(format!("{base}/api/admin/registration-tokens"))
                    .json(&json!({"token": reg, "clusterId": cluster}))
                    .send()
                    .await?
                    .error_for_status()?;
                let resp: serde_json::Value = http
                    .post(format!("{base}/api/agent/register"))
                    .header("accept", MEDIA_TYPE)
                    .bearer_auth(&reg)
                    .json(&json!({"registrationToken": reg, "clusterId": cluster}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let token = resp["token"]
                    .as_str()
                    .context("registration answer without token")?
                    .to_string();
                Ok::<_, anyhow::Error>((cluster, token))
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;

    let sent: Sent = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loops = Vec::new();
    // Real agents do not start in the same second: spread the first polls over one poll
    // period, or every poll of the fleet ends (and is re-sent) at the same moment.
    let spread = if stagger { POLL_WAIT } else { Duration::ZERO };
    for (i, (cluster, token)) in tokens.into_iter().enumerate() {
        let delay = spread.mul_f64(i as f64 / agents as f64);
        let (http, base, sent, latencies, errors) = (
            http.clone(),
            base.clone(),
            sent.clone(),
            latencies.clone(),
            errors.clone(),
        );
        loops.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            loop {
                let got = http
                    .get(format!("{base}/api/agent/jobs?cluster={cluster}&wait=30"))
                    .header("accept", MEDIA_TYPE)
                    .bearer_auth(&token)
                    .send()
                    .await;
                let answer = match got {
                    Ok(r) if r.status().is_success() => r.json::<JobsResponse>().await,
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let now = Instant::now();
                let Ok(answer) = answer else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                for j in answer.jobs {
                    if let Some(at) = sent.lock().ok().and_then(|mut s| s.remove(&j.id))
                        && let Ok(mut l) = latencies.lock()
                    {
                        l.push(now.duration_since(at).as_secs_f64());
                    }
                    let _ = http
                        .post(format!("{base}/api/agent/jobs/{}/ack", j.id))
                        .header("accept", MEDIA_TYPE)
                        .bearer_auth(&token)
                        .send()
                        .await;
                }
            }
        }));
    }
    // Every agent has its first poll open well within this.
    tokio::time::sleep(spread + Duration::from_secs(10)).await;
    let rss_polling = rss_kib(pid)?;

    println!("delivering {} jobs/s for {} s", args.rate, args.duration);
    let count = (args.rate * args.duration) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut enqueues = Vec::new();
    for i in 0..count {
        tick.tick().await;
        // Spread over the fleet, each job to another agent.
        let cluster = format!("fleet-{:05}", (i * 7919) % agents);
        let j = job(
            &format!("fleet-job-{i}"),
            "apply",
            &format!("k-{i}"),
            json!({}),
        )?;
        if let Ok(mut s) = sent.lock() {
            s.insert(j.id.clone(), Instant::now());
        }
        let (http, base) = (http.clone(), base.clone());
        enqueues.push(tokio::spawn(async move {
            http.post(format!("{base}/api/admin/enqueue"))
                .json(&json!({"clusterId": cluster, "job": j}))
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for e in enqueues {
        e.await??;
    }
    let waited = Instant::now();
    while sent.lock().map(|s| !s.is_empty()).unwrap_or(false)
        && waited.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_end = rss_kib(pid)?;
    let lost = sent.lock().map(|s| s.len()).unwrap_or(0);
    for l in loops {
        l.abort();
    }
    let _ = server.kill().await;
    let l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let mib = |k: u64| k as f64 / 1024.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### fleet, {agents} agents long-polling ({}), {} jobs/s for {} s\n",
        if stagger {
            "first polls spread over 30 s"
        } else {
            "all started at once"
        },
        args.rate,
        args.duration
    );
    let _ = writeln!(
        out,
        "| delivered | not delivered in 60 s | p50 s | p99 s | max s | server RSS idle | all polling | end | failed polls |\n|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| {} | {lost} | {:.3} | {:.3} | {:.3} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |",
        l.len(),
        percentile(&l, 50.0),
        percentile(&l, 99.0),
        percentile(&l, 100.0),
        mib(rss_idle),
        mib(rss_polling),
        mib(rss_end),
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(out)
}
