//! `cargo xtask dev-cluster up|down|env|status`: one background cluster for a person —
//! the full profile (scheduler, kwok node, Flux, chart sources) unless `--light`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use testkit::{Lifetime, Profile, StartOptions};

#[derive(Subcommand)]
pub enum Action {
    /// Start the full test cluster: control plane, kube-scheduler, kwok with a simulated
    /// node, Flux source- and helm-controller, a Helm repository and an OCI registry with
    /// the test charts.
    Up {
        /// Only etcd, kube-apiserver and kube-controller-manager with all CRDs (no pods
        /// run, no charts install; starts in seconds and builds no Flux).
        #[arg(long)]
        light: bool,
    },
    /// Stop the processes and delete the cluster's data.
    Down,
    /// Print shell lines for `eval "$(cargo xtask dev-cluster env)"`.
    Env,
    /// Say whether it is running.
    Status,
}

fn dir() -> PathBuf {
    testkit::repo_root().join(".dev-cluster")
}

fn pid_file() -> PathBuf {
    dir().join("pids")
}

fn read_pids() -> Vec<i32> {
    std::fs::read_to_string(pid_file())
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only probes for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn running() -> bool {
    let pids = read_pids();
    !pids.is_empty() && pids.iter().all(|p| alive(*p))
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up { light } => up(light),
        Action::Down => down(),
        Action::Env => env(),
        Action::Status => {
            if running() {
                println!(
                    "dev cluster running (pids {:?}) in {}",
                    read_pids(),
                    dir().display()
                );
                print!(
                    "{}",
                    std::fs::read_to_string(dir().join("about")).unwrap_or_default()
                );
            } else {
                println!("dev cluster not running");
            }
            Ok(())
        }
    }
}

fn up(light: bool) -> Result<()> {
    if running() {
        println!("dev cluster already running; `cargo xtask dev-cluster env` prints how to use it");
        return Ok(());
    }
    down()?;
    let started = Instant::now();
    let opts = StartOptions {
        dir: dir(),
        lifetime: Lifetime::Detached,
        install_crds: true,
        profile: if light { Profile::Light } else { Profile::Full },
    };
    let cp = testkit::start(&opts)?;
    let pids: Vec<String> = cp.pids().iter().map(u32::to_string).collect();
    std::fs::write(pid_file(), pids.join(" "))?;
    std::fs::write(
        dir().join("bin-dir"),
        cp.binaries.dir.to_string_lossy().as_bytes(),
    )?;
    println!(
        "dev cluster up in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        cp.server
    );
    if let Some(full) = &cp.full {
        let about = format!(
            "Helm repository (HTTP): {}\nOCI registry: {} (charts: {}/<name>)\nsimulated node: {}\ncharts: webapp and broken, 0.1.0 and 0.2.0 each (testdata/charts)\nlogs: {}\n",
            full.helm_repository_url,
            full.oci_registry,
            full.oci_chart_url(),
            full.node,
            dir().display()
        );
        print!("{about}");
        std::fs::write(dir().join("about"), about)?;
    }
    println!("use it with:  eval \"$(cargo xtask dev-cluster env)\" && kubectl get nodes,crds");
    Ok(())
}

fn down() -> Result<()> {
    let pids = read_pids();
    for pid in pids.iter().rev() {
        // SAFETY: plain signal delivery to processes this command started.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids.iter().filter(|p| alive(**p)) {
        // SAFETY: as above; the process ignored SIGTERM.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if dir().exists() {
        std::fs::remove_dir_all(dir()).context("removing .dev-cluster")?;
        if !pids.is_empty() {
            println!("dev cluster stopped");
        }
    }
    Ok(())
}

fn env() -> Result<()> {
    if !running() {
        bail!("dev cluster is not running; start it with `cargo xtask dev-cluster up`");
    }
    let bin_dir = std::fs::read_to_string(dir().join("bin-dir"))?;
    println!(
        "export KUBECONFIG='{}'",
        dir().join("admin.kubeconfig").display()
    );
    println!("export PATH='{}':\"$PATH\"", bin_dir.trim());
    Ok(())
}
