//! `vworkspace-operator`: the cluster-side half of vWorkspace.

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vworkspace-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            std::io::stdout().write_all(vworkspace_api::crd_yaml().as_bytes())?;
            Ok(())
        }
    }
}
