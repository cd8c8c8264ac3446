//! The operate surface of the operator binary against the real apiserver:
//! - `--metrics-secure` (the default): HTTPS, TokenReview + SubjectAccessReview — a token
//!   allowed to `get /metrics` reads metrics, one without that RBAC gets 403, none or a
//!   bogus one 401. The operator runs under the chart's rules plus
//!   `files/metrics-auth-rules.yaml`.
//! - JSON logs with the documented fields, and the level changed at runtime through
//!   `--log-level-file` + SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;
use support::{Operator, chart_rules, eventually};
use testkit::ControlPlane;
use testkit::fixtures::create_namespace;

const WAIT: Duration = Duration::from_secs(60);

async fn token_for(
    cp: &ControlPlane,
    admin: &Client,
    ns: &str,
    name: &str,
    rules: Vec<PolicyRule>,
) -> String {
    // Creates the ServiceAccount and binds `rules` to it cluster-wide.
    cp.client_for_service_account(ns, name, rules)
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            name,
            &PostParams::default(),
            &request,
        )
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap()
}

#[tokio::test]
async fn secure_metrics_need_a_token_allowed_to_get_metrics() {
    let cp = ControlPlane::get().await.unwrap();
    let admin = cp.client().await.unwrap();
    let ns = "vworkspace-metrics";
    create_namespace(&admin, ns).await.unwrap();
    create_namespace(&admin, "monitoring").await.unwrap();

    let mut cluster_rules = chart_rules("manager-rules.yaml");
    cluster_rules.extend(chart_rules("metrics-auth-rules.yaml"));
    let kubeconfig = cp
        .kubeconfig_for_service_account(
            ns,
            "vworkspace-operator",
            cluster_rules,
            chart_rules("namespace-rules.yaml"),
        )
        .await
        .unwrap();
    let port = support::free_port();
    let op = Operator::start_with(
        kubeconfig,
        ns,
        &[&format!("--metrics-bind-address=127.0.0.1:{port}")],
    );

    let reader: Vec<PolicyRule> =
        serde_yaml::from_str("- nonResourceURLs: [\"/metrics\"]\n  verbs: [\"get\"]\n").unwrap();
    let allowed = token_for(cp, &admin, "monitoring", "prometheus", reader).await;
    let denied = token_for(cp, &admin, "monitoring", "nosy", Vec::new()).await;

    // Self-signed by default: the scraper skips verification, as a Prometheus job with
    // `insecure_skip_verify` does.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/metrics");
    let get = |token: Option<String>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut req = http.get(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.ok()?;
            let code = resp.status().as_u16();
            Some((code, resp.text().await.unwrap_or_default()))
        }
    };
    let (code, body) = eventually("metrics over TLS", WAIT, || get(Some(allowed.clone()))).await;
    assert_eq!(code, 200, "{body}\n{}", op.log());
    assert!(
        body.contains("vworkspace_operator_connectivity_state{mode=\"pull\"}"),
        "{body}"
    );
    assert!(
        body.contains("vworkspace_operator_event_buffer_occupancy"),
        "{body}"
    );

    let (code, body) = get(Some(denied)).await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:monitoring:nosy"),
        "{body}"
    );
    let (code, _) = get(None).await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = get(Some("not-a-token".into())).await.unwrap();
    assert_eq!(code, 401);
    // Plain HTTP on the TLS port gets no metrics.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
    eprintln!("secure metrics: allowed → 200, no RBAC → 403, no token / bogus token → 401");
    // The token never reaches the log.
    assert!(!op.log().contains(&allowed));
}

/// The JSON lines of `op`'s log (non-JSON lines, e.g. a panic, are skipped).
fn lines(op: &Operator) -> Vec<Value> {
    op.log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn count(op: &Operator, msg: &str) -> usize {
    lines(op).iter().filter(|l| l["msg"] == msg).count()
}

fn hangup(op: &Operator) {
    let pid = op.child.id().unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

#[tokio::test]
async fn json_logs_and_a_level_changed_at_runtime() {
    let cp = ControlPlane::get().await.unwrap();
    let admin = cp.client().await.unwrap();
    let ns = "vworkspace-logging";
    create_namespace(&admin, ns).await.unwrap();
    let dir = std::env::temp_dir().join(format!("vws-loglevel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("level");
    let metrics_port = support::free_port();
    let op = Operator::start(
        cp,
        ns,
        &[
            &format!("--log-level-file={}", file.display()),
            "--connectivity-mode=gitops",
            &format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
            "--metrics-secure=false",
        ],
    )
    .await;

    let start = eventually("the start line", WAIT, || async {
        lines(&op)
            .into_iter()
            .find(|l| l["msg"] == "starting controllers")
    })
    .await;
    for key in ["ts", "level", "msg", "logger", "operator_version"] {
        assert!(start.get(key).is_some(), "{key} missing in {start}");
    }
    assert_eq!(start["level"], "info");
    assert_eq!(start["connectivity_mode"], "gitops");
    assert_eq!(start["operator_version"], env!("CARGO_PKG_VERSION"));
    start["ts"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    // GitOps labels the gauge with its mode, and only that mode.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vworkspace_operator_connectivity_state{mode=\"gitops\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("mode=\"pull\""), "{metrics}");

    // debug, by SIGHUP.
    std::fs::write(&file, "debug\n").unwrap();
    hangup(&op);
    eventually("level debug", WAIT, || async {
        lines(&op)
            .iter()
            .any(|l| l["msg"] == "log level changed" && l["log_level"] == "debug")
            .then_some(())
    })
    .await;
    // error: announced before it takes effect; afterwards SIGHUP's own info line is gone.
    std::fs::write(&file, "error\n").unwrap();
    hangup(&op);
    eventually("level error", WAIT, || async {
        lines(&op)
            .iter()
            .any(|l| l["msg"] == "log level changing" && l["to"] == "error")
            .then_some(())
    })
    .await;
    let sighups = count(&op, "SIGHUP: re-reading the log level");
    assert!(sighups >= 1, "{}", op.log());
    hangup(&op);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&op, "SIGHUP: re-reading the log level"),
        sighups,
        "info lines are off at level error"
    );
    // A bad value is refused with an error line; the level stays.
    std::fs::write(&file, "chatty\n").unwrap();
    hangup(&op);
    eventually("bad level refused", WAIT, || async {
        lines(&op)
            .iter()
            .any(|l| {
                l["msg"] == "log level file ignored"
                    && l["level"] == "error"
                    && l["error"].as_str().unwrap_or_default().contains("chatty")
            })
            .then_some(())
    })
    .await;
    // Back to info: visible again.
    std::fs::write(&file, "info\n").unwrap();
    hangup(&op);
    eventually("level info", WAIT, || async {
        lines(&op)
            .iter()
            .any(|l| l["msg"] == "log level changed" && l["log_level"] == "info")
            .then_some(())
    })
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Every file a kustomization lists under `dir`, recursively, as `(path, object)`.
fn kustomize_tree(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Value)>) {
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    for entry in k["resources"].as_array().unwrap() {
        let path = dir.join(entry.as_str().unwrap());
        assert!(
            path.exists(),
            "{} lists missing {}",
            dir.display(),
            path.display()
        );
        if path.is_dir() {
            kustomize_tree(&path, out);
        } else {
            let obj = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.push((path, obj));
        }
    }
}

/// The GitOps samples (docs/operate.md) are what the API server accepts: the repository
/// tree's objects against our CRDs, the Flux sources against source-controller's CRDs.
/// kustomize-controller is not part of the test cluster, so the Flux `Kustomization`
/// itself and kustomize's rendering are checked only for shape here.
#[tokio::test]
async fn gitops_samples_apply() {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::discovery::{Discovery, Scope};

    let cp = ControlPlane::get().await.unwrap();
    let admin = cp.client().await.unwrap();
    testkit::install_crds(&admin, &testkit::flux_crd_files().unwrap())
        .await
        .unwrap();
    let root = testkit::repo_root().join("config/samples/gitops");
    let mut objects = Vec::new();
    let cluster_dir = root.join("repository/clusters/5b0f7c1e-e2e0-4c6a-9d51-3f2a8e7b6c40");
    kustomize_tree(&cluster_dir, &mut objects);
    assert!(objects.len() >= 2, "{objects:?}");
    let mut namespaces: Vec<String> = Vec::new();
    for (path, obj) in &objects {
        // clusters/<cluster-id>/namespaces/<ns>/<kind>-<name>.yaml
        let ns = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(obj["metadata"]["namespace"], ns, "{}", path.display());
        assert_eq!(
            obj["metadata"]["labels"]["app.vworkspace.io/cluster-id"],
            "5b0f7c1e-e2e0-4c6a-9d51-3f2a8e7b6c40",
            "{}",
            path.display()
        );
        let file = path.file_name().unwrap().to_str().unwrap();
        let kind = obj["kind"].as_str().unwrap().to_ascii_lowercase();
        let name = obj["metadata"]["name"].as_str().unwrap();
        assert_eq!(file, format!("{kind}-{name}.yaml"));
        if !namespaces.contains(&ns.to_string()) {
            create_namespace(&admin, ns).await.unwrap();
            namespaces.push(ns.to_string());
        }
    }
    let flux = ["gitrepository.yaml", "ocirepository.yaml"]
        .iter()
        .map(|f| {
            let p = root.join(f);
            let obj = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, obj)
        });
    objects.extend(flux);
    create_namespace(&admin, "flux-system").await.unwrap();

    let discovery = Discovery::new(admin.clone()).run().await.unwrap();
    for (path, obj) in &objects {
        let (group, version) = obj["apiVersion"].as_str().unwrap().split_once('/').unwrap();
        let kind = obj["kind"].as_str().unwrap();
        let (ar, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| ar.group == group && ar.version == version && ar.kind == kind)
            .unwrap_or_else(|| panic!("{group}/{version} {kind} not served"));
        assert_eq!(caps.scope, Scope::Namespaced);
        let ns = obj["metadata"]["namespace"].as_str().unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &ar);
        let typed: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
        api.patch(
            obj["metadata"]["name"].as_str().unwrap(),
            &PatchParams::apply("vworkspace-gitops-sample").dry_run(),
            &Patch::Apply(&typed),
        )
        .await
        .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
    }
    // The Flux Kustomization: its shape only (no kustomize-controller CRD here).
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("kustomization.yaml")).unwrap())
            .unwrap();
    assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
    assert_eq!(
        k["spec"]["path"],
        "./clusters/5b0f7c1e-e2e0-4c6a-9d51-3f2a8e7b6c40"
    );
    assert_eq!(k["spec"]["sourceRef"]["name"], "vworkspace-intent");
    eprintln!(
        "gitops samples: {} objects accepted by the API server",
        objects.len()
    );
}
