//! More than one operator process in one namespace (leader election): each with its own
//! identity (`POD_NAME`) and log file, sharing the kubeconfig.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::binary::{Operator, free_port};

/// Starts replica `identity` of the operator binary with `--leader-elect` and `extra`.
/// Unlike [`Operator::restart`], nothing is shared with another replica but the
/// kubeconfig and the namespace.
pub fn start_replica(
    kubeconfig: PathBuf,
    namespace: &str,
    identity: &str,
    extra: &[&str],
) -> Operator {
    let probe_port = free_port();
    let log = std::env::temp_dir().join(format!(
        "vworkspace-replica-{}-{namespace}-{identity}.log",
        std::process::id()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vworkspace-operator"))
        .arg("run")
        .arg(format!(
            "--health-probe-bind-address=127.0.0.1:{probe_port}"
        ))
        .arg("--leader-elect")
        .args(extra)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", namespace)
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info,kube=warn")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Operator {
        child,
        probe_port,
        log,
        kubeconfig,
        namespace: namespace.to_string(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}
