//! The operator binary as the chart runs it.

use std::path::PathBuf;
use std::process::Stdio;

use k8s_openapi::api::rbac::v1::PolicyRule;
use testkit::ControlPlane;
use tokio::process::{Child, Command};

pub fn chart_rules(file: &str) -> Vec<PolicyRule> {
    let path = testkit::repo_root()
        .join("charts/vworkspace-operator/files")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Installs the chart with the real Helm CLI (release `vworkspace-operator` in `op_ns`,
/// CRDs left to testkit, admission objects off, `tenants` as `tenantNamespaces`) and
/// returns a kubeconfig with a token of the ServiceAccount that install created: the
/// operator then runs under the RBAC as Helm rendered it, not a copy of the rule files.
pub async fn chart_identity(cp: &ControlPlane, op_ns: &str, tenants: &[&str]) -> PathBuf {
    let home = std::env::temp_dir().join(format!("vworkspace-helm-{}", std::process::id()));
    let mut helm = std::process::Command::new(testkit::ensure_helm().unwrap());
    helm.args([
        "install",
        "vworkspace-operator",
        "charts/vworkspace-operator",
    ])
    .args(["--namespace", op_ns, "--set", "crds.install=false"])
    // The chart's defaults also register a ValidatingWebhookConfiguration (failurePolicy
    // Fail, pointing at a Service nothing serves here: the test runs the binary outside
    // the cluster) and cluster-wide admission policies (namespace gate). In a control
    // plane shared by the whole test binary they would refuse other tests' objects, so
    // they are off; the admission tests register and exercise them on their own.
    .args(["--set", "webhooks.enabled=false"])
    .args(["--set", "admissionPolicies.enabled=false"]);
    if !tenants.is_empty() {
        helm.arg("--set")
            .arg(format!("tenantNamespaces={{{}}}", tenants.join(",")));
    }
    let out = helm
        .current_dir(testkit::repo_root())
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.kubeconfig_for_existing_service_account(op_ns, "vworkspace-operator")
        .await
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator binary as the chart runs it: its own namespace, its own ServiceAccount
/// bound to `files/manager-rules.yaml` and `files/namespace-rules.yaml`.
pub struct Operator {
    pub child: Child,
    pub probe_port: u16,
    pub log: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub extra: Vec<String>,
}

impl Operator {
    pub async fn start(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Operator {
        let kubeconfig = cp
            .kubeconfig_for_service_account(
                namespace,
                "vworkspace-operator",
                chart_rules("manager-rules.yaml"),
                chart_rules("namespace-rules.yaml"),
            )
            .await
            .unwrap();
        Self::start_with(kubeconfig, namespace, extra)
    }

    pub fn start_with(kubeconfig: PathBuf, namespace: &str, extra: &[&str]) -> Operator {
        let probe_port = free_port();
        let log = std::env::temp_dir().join(format!(
            "vworkspace-e2e-{}-{namespace}.log",
            std::process::id()
        ));
        // Appended to, so a restarted operator's log follows the first one; but emptied
        // at this process's first start: the name repeats when a pid is reused, and an
        // old run's lines would be read as this one's.
        static STARTED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let first = {
            let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
            let first = !started.contains(&log);
            if first {
                started.push(log.clone());
            }
            first
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!first)
            .write(true)
            .truncate(first)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vworkspace-operator"))
            .arg("run")
            .arg(format!(
                "--health-probe-bind-address=127.0.0.1:{probe_port}"
            ))
            .arg("--leader-elect")
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", format!("operator-{namespace}"))
            // `VWORKSPACE_TEST_OPERATOR_LOG` (a RUST_LOG value) to see more of a failed run.
            .env(
                "RUST_LOG",
                std::env::var("VWORKSPACE_TEST_OPERATOR_LOG")
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
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

    /// SIGKILL, as a node failure would; nothing is flushed.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// A new process with the same identity, kubeconfig and flags.
    pub fn restart(&self) -> Operator {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Self::start_with(self.kubeconfig.clone(), &self.namespace, &extra)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn probe(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.probe_port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Some((code, body))
    }
}
