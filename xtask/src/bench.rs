//! `cargo xtask bench`: the materialize scenario on the test control plane, the operator
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
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use testkit::{Lifetime, StartOptions};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::flux::{ChartSource, desired_children};
use vworkspace_operator::kinds::flux::{HelmRelease, HelmRepository};
use vworkspace_operator::metrics::Metrics;

/// Quiet time after convergence before the operator's requests are counted.
const SETTLE: Duration = Duration::from_secs(3);
/// A run that has not converged after this long fails the benchmark.
const TIMEOUT: Duration = Duration::from_secs(900);

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Instances created per run.
    #[arg(long, default_value_t = 200)]
    pub instances: usize,
    /// Paired repetitions (each one baseline run and one operator run).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Requests in flight at once, for the harness creating instances and the baseline.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Write the results into docs/benchmarks.md (replacing the section of this size).
    #[arg(long)]
    pub write: bool,
    /// Instead: the memory scenario with the operator binary (debug build) as a child
    /// process, RSS idle and after this many instances converged.
    #[arg(long)]
    pub memory: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Baseline,
    Operator,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Baseline => "baseline",
            Who::Operator => "operator",
        }
    }
}

/// `apiserver_request_total` by (verb, resource, subresource, code).
type Requests = BTreeMap<(String, String, String, String), u64>;

struct Sample {
    who: Who,
    seconds: f64,
    requests: Requests,
    /// Operator only: reconcile passes of the ApplicationInstance controller.
    reconciles: Option<u64>,
}

/// One materialize run and the teardown of what it made.
struct Run {
    materialize: Sample,
    teardown: Sample,
}

pub fn run(args: &Args) -> Result<()> {
    if args.instances == 0 || args.reps == 0 || args.concurrency == 0 {
        bail!("--instances, --reps and --concurrency must be positive");
    }
    let operator_bin = match args.memory {
        Some(_) => Some(build_operator()?),
        None => None,
    };
    let dir = std::env::temp_dir().join(format!("vworkspace-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    println!("starting the test control plane");
    // Blocking and runtime-free: must run before our runtime starts.
    let mut cluster = testkit::start(&StartOptions {
        dir: dir.join("cluster"),
        lifetime: Lifetime::TiedToProcess,
        install_crds: true,
        // No Flux: the scenarios measure the operator against the bare apiserver.
        profile: testkit::Profile::Light,
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    if let (Some(n), Some(bin)) = (args.memory, &operator_bin) {
        let outcome = runtime.block_on(memory(n, args.concurrency, bin, &cluster.kubeconfig, &dir));
        drop(runtime);
        for child in cluster.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        let report = outcome?;
        println!("\n{report}");
        if args.write {
            write_section(
                &testkit::repo_root().join("docs/benchmarks.md"),
                &format!("memory:{n}"),
                &format!("cargo xtask bench --memory {n} --write"),
                &report,
            )?;
        }
        return Ok(());
    }
    let outcome = runtime.block_on(drive(args, &cluster.kubeconfig));
    drop(runtime);
    for child in cluster.children.iter_mut().rev() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let runs = outcome?;
    let materialized: Vec<&Sample> = runs.iter().map(|r| &r.materialize).collect();
    let torn_down: Vec<&Sample> = runs.iter().map(|r| &r.teardown).collect();
    let report = format!(
        "{}\n{}",
        report("materialize", args, &materialized),
        report("teardown", args, &torn_down)
    );
    println!("\n{report}");
    if args.write {
        write_section(
            &testkit::repo_root().join("docs/benchmarks.md"),
            &args.instances.to_string(),
            &format!(
                "cargo xtask bench --instances {} --reps {} --concurrency {} --write",
                args.instances, args.reps, args.concurrency
            ),
            &report,
        )?;
        println!("written to docs/benchmarks.md");
    }
    Ok(())
}

/// Builds the operator binary (dev profile) and returns its path.
fn build_operator() -> Result<std::path::PathBuf> {
    let root = testkit::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "vworkspace-operator",
            "--bin",
            "vworkspace-operator",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the operator failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target.join("debug/vworkspace-operator"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// JSON bytes of every object of kind `K` in `ns` as a store holds it (no managedFields).
async fn cached_bytes<K>(client: &Client, ns: &str) -> Result<usize>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize,
{
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    let mut total = 0;
    for mut obj in list.items {
        obj.meta_mut().managed_fields = None;
        total += serde_json::to_vec(&obj)?.len();
    }
    Ok(total)
}

/// The memory scenario: the operator binary watching one namespace; RSS idle, then after
/// `n` instances converged (and settled), against the JSON bytes its stores hold.
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
    while !watched.converged(n) {
        if started.elapsed() > TIMEOUT {
            bail!("memory run did not converge in {TIMEOUT:?}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("the operator exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let loaded = rss_kib(pid)?;
    let _ = child.kill().await;
    let bytes = cached_bytes::<ApplicationInstance>(&admin, ns).await?
        + cached_bytes::<HelmRelease>(&admin, ns).await?
        + cached_bytes::<HelmRepository>(&admin, ns).await?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### memory, {n} instances (operator binary, debug build)\n"
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
        "\nRSS after {n} ÷ JSON held: {:.1} ×.",
        (loaded * 1024) as f64 / bytes.max(1) as f64
    );
    Ok(out)
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?)
}

async fn drive(args: &Args, kubeconfig: &Path) -> Result<Vec<Run>> {
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

/// A managed instance as the control plane writes it (chart `wiki`, inline values).
fn instance(ns: &str, name: &str, finalizer: bool) -> Result<ApplicationInstance> {
    let mut v = json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.vworkspace.io/cluster-id": "bench"}},
        "spec": {"appRef": {"catalogId": "wiki"},
                 "chart": {"sourceType": "helm", "url": "https://charts.example.org",
                           "name": "wiki", "version": "1.0.0"},
                 "release": {"name": name, "namespace": ns},
                 "values": {"source": "inline", "inline": {"replicas": 1}}}
    });
    if finalizer {
        v["metadata"]["finalizers"] = json!([keys::FINALIZER_APPLICATION_INSTANCE]);
    }
    Ok(serde_json::from_value(v)?)
}

/// Stores of what convergence is judged on, filled by watches started before the clock.
struct Watched {
    instances: Store<ApplicationInstance>,
    releases: Store<HelmRelease>,
    repositories: Store<HelmRepository>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn watch<K>(api: Api<K>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tasks.push(tokio::spawn(async move {
        let _ = stream.try_for_each(|_| async { Ok(()) }).await;
    }));
    reader
}

impl Watched {
    async fn start(client: &Client, ns: &str) -> Result<Self> {
        let mut tasks = Vec::new();
        let instances = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        let releases = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        let repositories = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        for ready in [
            instances.wait_until_ready().await,
            releases.wait_until_ready().await,
            repositories.wait_until_ready().await,
        ] {
            ready.context("benchmark watch")?;
        }
        Ok(Watched {
            instances,
            releases,
            repositories,
            tasks,
        })
    }

    fn gone(&self) -> bool {
        self.instances.state().is_empty()
            && self.releases.state().is_empty()
            && self.repositories.state().is_empty()
    }

    fn converged(&self, n: usize) -> bool {
        let current = self
            .instances
            .state()
            .iter()
            .filter(|i| {
                i.metadata.generation.is_some()
                    && i.status.as_ref().and_then(|s| s.observed_generation)
                        == i.metadata.generation
            })
            .count();
        current == n && self.releases.state().len() == n && self.repositories.state().len() == n
    }
}

async fn materialize_and_teardown(
    who: Who,
    args: &Args,
    ns: &str,
    kubeconfig: &Path,
    admin: &Client,
) -> Result<Run> {
    testkit::fixtures::create_namespace(admin, ns).await?;
    let watched = Watched::start(admin, ns).await?;
    let metrics = Arc::new(Metrics::new());
    let controller = match who {
        Who::Operator => {
            let ctx =
                Arc::new(Context::new(client(kubeconfig).await?).with_metrics(metrics.clone()));
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
    let started = Instant::now();
    let api: Api<ApplicationInstance> = Api::namespaced(writer.clone(), ns);
    futures::stream::iter(0..args.instances)
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
    while !watched.converged(args.instances) {
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
    let materialize = Sample {
        who,
        seconds,
        requests: diff(&before, &after),
        reconciles,
    };

    // Teardown: every instance deleted at once; done when instances and children are gone.
    let before = after;
    let started = Instant::now();
    futures::stream::iter(0..args.instances)
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
        },
    })
}

/// Waits until the controller has made no pass for [`SETTLE`]; returns its pass count.
async fn settle(metrics: &Metrics, started: Instant) -> u64 {
    let mut last = reconcile_count(metrics);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = reconcile_count(metrics);
        if now == last || started.elapsed() > TIMEOUT {
            return now;
        }
        last = now;
    }
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
async fn baseline_one(
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

fn reconcile_count(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                && l.contains("controller=\"applicationinstance\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `apiserver_request_total` from the apiserver's `/metrics`.
async fn scrape(client: &Client) -> Result<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(parse_requests(&text))
}

fn parse_requests(text: &str) -> Requests {
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        *out.entry((
            label("verb"),
            label("resource"),
            label("subresource"),
            label("code"),
        ))
        .or_default() += value as u64;
    }
    out
}

fn diff(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or_default());
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn report(scenario: &str, args: &Args, samples: &[&Sample]) -> String {
    let n = args.instances;
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
            "| verb | resource | subresource | code | total | per instance |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for ((verb, resource, sub, code), v) in &first.requests {
            let _ = writeln!(
                out,
                "| {verb} | {resource} | {sub} | {code} | {v} | {:.2} |",
                per(*v)
            );
        }
    }
    out
}

/// Replaces (or appends) the section `id` in `docs/benchmarks.md`.
fn write_section(path: &Path, id: &str, command: &str, report: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let begin = format!("<!-- bench:{id} -->");
    let end = format!("<!-- /bench:{id} -->");
    let when = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let section = format!("{begin}\n_Measured {when} with `{command}`._\n\n{report}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &text[..b], section, &text[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_are_parsed_and_diffed() {
        let before = parse_requests(
            "# HELP x\napiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 3\n",
        );
        let after = parse_requests(
            "apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 5\napiserver_request_total{code=\"404\",component=\"apiserver\",dry_run=\"\",group=\"x\",resource=\"ocirepositories\",scope=\"resource\",subresource=\"\",verb=\"DELETE\",version=\"v1\"} 2\n",
        );
        let d = diff(&before, &after);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&("LIST".into(), "pods".into(), String::new(), "200".into())],
            2
        );
        assert_eq!(
            d[&(
                "DELETE".into(),
                "ocirepositories".into(),
                String::new(),
                "404".into()
            )],
            2
        );
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
