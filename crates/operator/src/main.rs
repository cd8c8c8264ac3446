//! `vworkspace-operator`: the cluster-side half of vWorkspace.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use vworkspace_operator::controller::{Context, application_instance};

#[derive(Parser)]
#[command(name = "vworkspace-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (default).
    Run {
        /// Watch only this namespace instead of the whole cluster.
        #[arg(long, env = "WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
    },
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crd,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run {
        watch_namespace: None,
    }) {
        Command::Crd => {
            std::io::stdout().write_all(vworkspace_api::crd_yaml().as_bytes())?;
            Ok(())
        }
        Command::Run { watch_namespace } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .json()
                .init();
            let client = kube::Client::try_default().await?;
            let ctx = Arc::new(Context::new(client));
            tracing::info!("starting controllers");
            application_instance::run(ctx, watch_namespace.as_deref()).await;
            Ok(())
        }
    }
}
