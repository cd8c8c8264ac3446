//! Developer commands for vworkspace-operator: `cargo xtask <command>`.

mod bench;
mod crdgen;
mod demo;
mod dev_cluster;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Developer commands for vworkspace-operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on an embedded default: a local control plane, the mock control plane
    /// and the operator, delivering an application through Pull mode.
    Demo {
        /// Keep everything running after the happy end until Ctrl-C, to look around.
        #[arg(long)]
        hold: bool,
    },
    /// Run the whole test suite against a real control plane (builds what it needs).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Benchmarks on the test control plane against a raw-client baseline (docs/benchmarks.md).
    Bench(bench::Args),
    /// Write the CRD manifests generated from the Rust types to config/ and the chart.
    Crdgen {
        /// Fail instead of writing when a committed copy differs.
        #[arg(long)]
        check: bool,
    },
    /// Build (or find in the cache) the control-plane binaries and print where they are.
    ControlPlane,
    /// Build (or find in the cache) the full profile's programs (Flux source- and
    /// helm-controller, kwok, the OCI registry, the chart server, the Helm CLI) and print where they are.
    Tools,
    /// Start, stop or use a background control plane for local development.
    DevCluster {
        #[command(subcommand)]
        action: dev_cluster::Action,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo { hold } => demo::run(hold),
        Command::Test { cargo_args } => test::run(&cargo_args),
        Command::Bench(args) => bench::run(&args),
        Command::Crdgen { check } => crdgen::run(check),
        Command::ControlPlane => {
            let bins = testkit::ensure_binaries()?;
            println!("{}", bins.dir.display());
            Ok(())
        }
        Command::Tools => {
            let started = std::time::Instant::now();
            let tools = testkit::ensure_tools()?;
            for (var, path) in tools.env() {
                println!("{var}={}", path.display());
            }
            eprintln!("ready in {:.1}s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Command::DevCluster { action } => dev_cluster::run(action),
    }
}
