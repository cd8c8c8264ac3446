//! `cargo xtask bench [scenario]`: the scenarios of docs/benchmarks.md, one at a time.
//!
//! Each scenario lives in its own module and returns a Markdown report; this module
//! parses the flags, starts what the scenario needs (the test control plane, light or
//! full profile; none for `fleet`), and with `--write` replaces the scenario's section of
//! `docs/benchmarks.md`. Defaults are small, for a quick run; the sizes are
//! reachable by flags (see each flag's help).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use testkit::{Lifetime, StartOptions};

mod churn;
mod fleet;
mod flux;
mod idle;
mod kit;
mod materialize;
mod memory;
mod mock;
mod pull_loop;
mod stats;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// N instances created at once, then deleted at once (teardown), against a baseline.
    Materialize,
    /// RSS of the operator binary idle and after N instances converged.
    Memory,
    /// Converged instances edited at a steady share per second: edit → HelmRelease latency.
    Churn,
    /// `apply` jobs through the mock control plane and the agent: throughput and latency.
    PullLoop,
    /// Requests an idle operator sends to the control plane and the apiserver; CPU.
    Idle,
    /// The mock control plane with many simulated agents long-polling: delivery latency.
    Fleet,
    /// Instances installed by the real helm-controller: the operator's share of the time.
    Flux,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The scenario (default: materialize, which includes teardown).
    #[arg(value_enum)]
    pub scenario: Option<Scenario>,
    /// Instances per run. Defaults: materialize 200, memory 1000, churn 200, idle 10,
    /// flux 20 (the issue: 1,000 / 10,000 / 1,000 / — / 100).
    #[arg(long)]
    pub instances: Option<usize>,
    /// Paired repetitions (each one baseline run and one operator run).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Requests in flight at once, for the harness and the baseline.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Write the results into docs/benchmarks.md (replacing the section of this run).
    #[arg(long)]
    pub write: bool,
    /// Shorthand for `memory --instances N`.
    #[arg(long)]
    pub memory: Option<usize>,
    /// churn: seconds of edits; pull-loop: seconds at the steady rate; fleet: seconds of
    /// deliveries (the issue: churn 60).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// churn: share of the instances edited per second.
    #[arg(long, default_value_t = 0.1)]
    pub edit_share: f64,
    /// pull-loop: jobs enqueued at once (the issue: 1,000).
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// pull-loop: steady jobs per second; fleet: deliveries per second.
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// fleet: simulated agents long-polling (the issue: 10,000).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// fleet: start every agent at once (their polls then expire together every 30 s)
    /// instead of spreading the first polls over one poll period.
    #[arg(long)]
    pub in_step: bool,
    /// Leave out the chart's finalizer policy (a MutatingAdmissionPolicy the default
    /// install ships): the controllers then add their finalizers with a write each.
    #[arg(long)]
    pub no_finalizer_policy: bool,
    /// idle: seconds measured, extrapolated to an hour.
    #[arg(long, default_value_t = 120)]
    pub window: u64,
}

impl Args {
    fn scenario(&self) -> Scenario {
        match (self.memory, self.scenario) {
            (Some(_), _) => Scenario::Memory,
            (None, s) => s.unwrap_or(Scenario::Materialize),
        }
    }

    /// Instances for this scenario: the flag, else the scenario's quick default.
    pub fn instances(&self) -> usize {
        self.memory
            .or(self.instances)
            .unwrap_or(match self.scenario() {
                Scenario::Materialize | Scenario::Churn => 200,
                Scenario::Memory => 1000,
                Scenario::Idle => 10,
                Scenario::Flux => 20,
                Scenario::PullLoop | Scenario::Fleet => 0,
            })
    }

    /// The command line that reproduces this run (for the report).
    fn command(&self) -> String {
        let n = self.instances();
        let rest = match self.scenario() {
            Scenario::Materialize => format!(
                "--instances {n} --reps {} --concurrency {}",
                self.reps, self.concurrency
            ),
            Scenario::Memory => format!("--memory {n}"),
            Scenario::Churn => format!(
                "churn --instances {n} --reps {} --duration {} --edit-share {}",
                self.reps, self.duration, self.edit_share
            ),
            Scenario::PullLoop => format!(
                "pull-loop --jobs {} --rate {} --duration {} --reps {}",
                self.jobs, self.rate, self.duration, self.reps
            ),
            Scenario::Idle => format!("idle --instances {n} --window {}", self.window),
            Scenario::Fleet => format!(
                "fleet --agents {} --rate {} --duration {}{}",
                self.agents,
                self.rate,
                self.duration,
                if self.in_step { " --in-step" } else { "" }
            ),
            Scenario::Flux => format!("flux --instances {n} --reps {}", self.reps),
        };
        let policy = if self.no_finalizer_policy {
            " --no-finalizer-policy"
        } else {
            ""
        };
        format!("cargo xtask bench {rest}{policy} --write")
    }

    /// The `docs/benchmarks.md` section this run replaces.
    fn section(&self) -> String {
        let id = self.section_id();
        if self.no_finalizer_policy {
            format!("{id}:no-finalizer-policy")
        } else {
            id
        }
    }

    fn section_id(&self) -> String {
        let n = self.instances();
        match self.scenario() {
            // The materialize sections predate the other scenarios; their ids stay.
            Scenario::Materialize => n.to_string(),
            Scenario::Memory => format!("memory:{n}"),
            Scenario::Churn => format!("churn:{n}:edit-share-{}", self.edit_share),
            Scenario::PullLoop => format!("pull-loop:{}", self.jobs),
            Scenario::Idle => format!("idle:{n}"),
            Scenario::Fleet if self.in_step => format!("fleet:{}:in-step", self.agents),
            Scenario::Fleet => format!("fleet:{}", self.agents),
            Scenario::Flux => format!("flux:{n}"),
        }
    }
}

/// What a scenario gets: the control plane's admin kubeconfig and a scratch directory.
pub struct Env {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    /// Full profile only: the Helm repository serving `testdata/charts`.
    pub helm_repository_url: Option<String>,
}

/// The cargo profile the benchmark binaries are built in: the one this process runs in.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// `cargo xtask` compiles in the dev profile; benchmarks measure a release build, so a
/// debug xtask hands the same command line to a release build of itself.
/// `VWORKSPACE_BENCH_DEBUG=1` keeps the debug build (quicker to build, slower to run).
fn reexec_release() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building xtask and the operator in the release profile");
    let status = std::process::Command::new(cargo)
        .current_dir(testkit::repo_root())
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .status()
        .context("running the release build of xtask")?;
    if !status.success() {
        bail!("the release benchmark run failed ({status})");
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    if cfg!(debug_assertions) && std::env::var_os("VWORKSPACE_BENCH_DEBUG").is_none() {
        return reexec_release();
    }
    if args.instances() == 0 && !matches!(args.scenario(), Scenario::PullLoop | Scenario::Fleet)
        || args.reps == 0
        || args.concurrency == 0
    {
        bail!("--instances, --reps and --concurrency must be positive");
    }
    let scenario = args.scenario();
    // Binaries first: cargo must not run while our runtime measures.
    let operator_bin = match scenario {
        Scenario::Memory | Scenario::PullLoop | Scenario::Idle => Some(kit::build_bin(
            "vworkspace-operator",
            "vworkspace-operator",
        )?),
        _ => None,
    };
    let mock_bin = match scenario {
        Scenario::Fleet => Some(kit::build_bin("mock-control-plane", "mock-control-plane")?),
        _ => None,
    };
    let dir = std::env::temp_dir().join(format!("vworkspace-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cluster = match scenario {
        Scenario::Fleet => None,
        _ => {
            println!("starting the test control plane");
            // Blocking and runtime-free: must run before our runtime starts.
            Some(testkit::start(&StartOptions {
                dir: dir.join("cluster"),
                lifetime: Lifetime::TiedToProcess,
                install_crds: true,
                profile: if scenario == Scenario::Flux {
                    testkit::Profile::Full
                } else {
                    // No Flux: the scenarios measure the operator against the bare apiserver.
                    testkit::Profile::Light
                },
            })?)
        }
    };
    let env = Env {
        kubeconfig: cluster
            .as_ref()
            .map(|c| c.kubeconfig.clone())
            .unwrap_or_default(),
        dir: dir.clone(),
        helm_repository_url: cluster
            .as_ref()
            .and_then(|c| c.full.as_ref())
            .map(|f| f.helm_repository_url.clone()),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        if cluster.is_some() && !args.no_finalizer_policy {
            kit::install_finalizer_policy(&env.kubeconfig).await?;
        }
        match scenario {
            Scenario::Materialize => materialize::run(args, &env).await,
            Scenario::Memory => memory::run(args, &env, bin(&operator_bin)?).await,
            Scenario::Churn => churn::run(args, &env).await,
            Scenario::PullLoop => pull_loop::run(args, &env, bin(&operator_bin)?).await,
            Scenario::Idle => idle::run(args, &env, bin(&operator_bin)?).await,
            Scenario::Fleet => fleet::run(args, bin(&mock_bin)?).await,
            Scenario::Flux => flux::run(args, &env).await,
        }
    });
    drop(runtime);
    if let Some(cluster) = &mut cluster {
        for child in cluster.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // `VWORKSPACE_BENCH_KEEP=1` keeps the work directory (the operator's log) for study.
    if std::env::var_os("VWORKSPACE_BENCH_KEEP").is_some() {
        println!("work directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = outcome?;
    println!("\n{report}");
    if args.write {
        stats::write_section(
            &testkit::repo_root().join("docs/benchmarks.md"),
            &args.section(),
            &args.command(),
            &report,
        )?;
        println!("written to docs/benchmarks.md");
    }
    Ok(())
}

fn bin(b: &Option<PathBuf>) -> Result<&Path> {
    match b {
        Some(b) => Ok(b),
        None => bail!("binary not built"),
    }
}
