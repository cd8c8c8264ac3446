//! `mock-control-plane`: the server side of the Pull protocol for development, demos and
//! tests. See docs/protocol.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use mock_control_plane::{MockConfig, router};

#[derive(Parser)]
#[command(name = "mock-control-plane", version, about)]
struct Args {
    /// Listen address (plain HTTP).
    #[arg(long, default_value = ":8080")]
    addr: String,
    /// One-time registration token accepted by /api/agent/register.
    #[arg(long, default_value = "dev-registration-token")]
    registration_token: String,
    /// Cluster id bound to the registration token.
    #[arg(long, default_value = "cluster-dev-1")]
    cluster_id: String,
    /// Pre-seed a long-lived token for that cluster.
    #[arg(long)]
    bootstrap_token: Option<String>,
    /// When set, required in X-Mock-Control-Plane-Admin-Token on /api/admin/*.
    #[arg(long)]
    admin_token: Option<String>,
    /// SQLite database file; state survives restarts. Default: in memory.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Seconds an unacknowledged job stays invisible before it is handed out again.
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// Seconds a rotated-away token keeps working (0 revokes at once).
    #[arg(long, default_value_t = 86400)]
    rotation_grace_seconds: u64,
    /// Lifetime of the seeded registration token in seconds.
    #[arg(long, default_value_t = 86400)]
    registration_ttl_seconds: u64,
    /// Be as lenient as the original Go server: 403 on a bad poll token, no job
    /// registry, no redelivery, no rotation grace (overrides --rotation-grace-seconds).
    #[arg(long)]
    lenient: bool,
}

/// Accepts the single-dash spellings of the original mock (`-addr :8080`,
/// `-cluster-id=x`) by rewriting known long flags to `--flag` before clap sees them.
fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let longs: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(String::from))
        .collect();
    let mut out = Vec::new();
    let mut rest = false;
    for a in args {
        if a == "--" {
            rest = true;
        }
        let single = !rest && a.starts_with('-') && !a.starts_with("--");
        let name = a.trim_start_matches('-').split('=').next().unwrap_or("");
        if single && longs.iter().any(|l| l == name) {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse_from(normalize_args(std::env::args()));
    let addr = if args.addr.starts_with(':') {
        format!("0.0.0.0{}", args.addr)
    } else {
        args.addr.clone()
    };
    let config = MockConfig {
        registration_token: args.registration_token.clone(),
        cluster_id: args.cluster_id.clone(),
        bootstrap_token: args.bootstrap_token,
        admin_token: args.admin_token,
        lease: Duration::from_secs(args.lease_seconds),
        rotation_grace: Duration::from_secs(args.rotation_grace_seconds),
        registration_ttl: Duration::from_secs(args.registration_ttl_seconds),
        db_path: args.db,
        lenient: false,
    };
    let app = router(if args.lenient {
        config.lenient()
    } else {
        config
    })?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // The registration token is a dev credential of this mock; printing it is the point.
    tracing::info!(
        address = %listener.local_addr()?,
        cluster_id = %args.cluster_id,
        registration_token = %args.registration_token,
        "mock control plane listening"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn single_dash_flags_are_accepted() {
        let argv = |v: &[&str]| normalize_args(v.iter().map(|s| s.to_string()));
        let a = Args::try_parse_from(argv(&[
            "mock-control-plane",
            "-addr",
            ":9090",
            "-cluster-id=c-7",
            "--admin-token",
            "adm",
            "-lease-seconds",
            "5",
        ]))
        .unwrap();
        assert_eq!(a.addr, ":9090");
        assert_eq!(a.cluster_id, "c-7");
        assert_eq!(a.admin_token.as_deref(), Some("adm"));
        assert_eq!(a.lease_seconds, 5);
        assert_eq!(a.rotation_grace_seconds, 86400);
        // Values are left alone, unknown single-dash words too.
        assert_eq!(
            argv(&["x", "--registration-token", "-abc"]),
            ["x", "--registration-token", "-abc"]
        );
    }
}
