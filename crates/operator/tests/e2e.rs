//! End to end: the operator *binary*, running under the Helm chart's RBAC, against the
//! real apiserver (and, for Pull mode, the mock control plane).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::{ControlPlane, fresh_namespace};
use tokio::process::{Child, Command};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::HelmRelease;

fn chart_rules(file: &str) -> Vec<PolicyRule> {
    let path = testkit::repo_root()
        .join("charts/vworkspace-operator/files")
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator binary as the chart runs it: its own namespace, its own ServiceAccount
/// bound to `files/manager-rules.yaml` and `files/namespace-rules.yaml`.
struct Operator {
    child: Child,
    probe_port: u16,
    log: PathBuf,
}

impl Operator {
    async fn start(cp: &ControlPlane, namespace: &str, extra: &[&str]) -> Operator {
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

    fn start_with(kubeconfig: PathBuf, namespace: &str, extra: &[&str]) -> Operator {
        let probe_port = free_port();
        let log = std::env::temp_dir().join(format!(
            "vworkspace-e2e-{}-{namespace}.log",
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
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", format!("operator-{namespace}"))
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
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn probe(&self, path: &str) -> Option<(u16, String)> {
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

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(prefix: &str) -> (&'static ControlPlane, Client, String) {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = fresh_namespace(&client, prefix).await.unwrap();
    (cp, client, ns)
}

#[tokio::test]
async fn binary_under_chart_rbac_delivers_an_instance_and_gets_ready() {
    let (cp, client, ns) = setup("e2e-rbac").await;
    let op = Operator::start(cp, &ns, &[]).await;
    let (code, body) = eventually("/readyz 200", Duration::from_secs(60), || async {
        op.probe("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(op.probe("/healthz").await.unwrap().0, 200);

    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), &ns);
    let inst: ApplicationInstance = serde_json::from_value(json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "wiki", "namespace": ns},
        "spec": {"appRef": {"catalogId": "wiki"},
                 "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": "1.0.0"},
                 "release": {"name": "wiki", "namespace": ns},
                 "values": {"source": "inline", "inline": {}}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &inst).await.unwrap();
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), &ns);
    let hr = eventually("HelmRelease", Duration::from_secs(30), || async {
        hrs.get_opt("wiki").await.unwrap()
    })
    .await;
    let status = json!({"status": {"observedGeneration": hr.metadata.generation, "conditions": [
        {"type": "Ready", "status": "True", "reason": "InstallSucceeded", "message": "ok",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    hrs.patch_status("wiki", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    eventually("instance Ready", Duration::from_secs(30), || async {
        let i = apps.get("wiki").await.unwrap();
        i.status
            .filter(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
            .map(|_| ())
    })
    .await;
    let log = op.log();
    assert!(
        !log.contains("Forbidden"),
        "RBAC denial in the operator log:\n{log}"
    );
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "errors in the operator log:\n{log}"
    );
    drop(op.child);
}
