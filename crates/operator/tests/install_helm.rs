//! The chart as a platform team uses it: the real Helm CLI (built from its pinned Go
//! module by testkit) lints and renders `charts/vworkspace-operator`, installs, upgrades
//! and uninstalls it in the test cluster, and the operator binary then runs with a token
//! of the ServiceAccount that install created — under exactly the RBAC Helm rendered.
//! `kubectl auth can-i` checks that RBAC against an allowed list and a must-deny list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Operator, eventually, helm_chart, instance, placeholder};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports};
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_operator::kinds::flux::HelmRelease;

const CHART: &str = "charts/vworkspace-operator";
const WAIT: Duration = Duration::from_secs(60);
const CLUSTER_ID: &str = "9d4e2a10-57c1-4b0e-a3f6-2c8d1e0b7a55";
const REG_TOKEN: &str = "vwksp-reg-install000000000000000000000001";

fn helm_bin() -> PathBuf {
    testkit::ensure_helm().expect("building the Helm CLI (tools/helm)")
}

/// `helm <args>` with its own config/cache dirs (nothing of the user's), in the repo root.
fn helm(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("vworkspace-helm-{}", std::process::id()));
    let mut cmd = Command::new(helm_bin());
    cmd.args(args)
        .current_dir(testkit::repo_root())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.output().expect("running helm")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The objects of a multi-document YAML stream (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "vworkspace-operator",
        CHART,
        "--namespace",
        "vworkspace-system",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    objects(&ok(helm(None, &args), &format!("helm template {sets:?}")))
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

/// Every documented toggle (chart README), as `--set` lists; each must lint and render.
const TOGGLES: &[&[&str]] = &[
    &["crds.install=false"],
    &["crds.keep=false"],
    &["rbac.create=false"],
    &[
        "serviceAccount.create=false",
        "serviceAccount.name=platform-sa",
    ],
    &["tenantNamespaces={shop,wiki}"],
    &["tenantNamespaces={shop}", "operationRunner.create=false"],
    &["manager.metricsBindAddress=:8443"],
    &[
        "manager.metricsBindAddress=:8443",
        "manager.metricsSecure=false",
    ],
    &[
        "manager.metricsBindAddress=:8443",
        "metrics.serviceMonitor.enabled=true",
    ],
    &[
        "manager.metricsBindAddress=0.0.0.0:9090",
        "manager.metricsSecure=false",
        "metrics.serviceMonitor.enabled=true",
    ],
    &["manager.connectivityMode=push"],
    &["manager.connectivityMode=gitops"],
    &["manager.healthProbeBindAddress=0.0.0.0:9091"],
    &["podDisruptionBudget.enabled=false"],
    &["replicaCount=1"],
    &["topologySpread.enabled=false"],
    &["webhooks.enabled=false"],
    &["webhooks.certificate.mode=certManager"],
    &[
        "webhooks.certificate.mode=certManager",
        "webhooks.certificate.issuerRef.name=corp-ca",
        "webhooks.certificate.issuerRef.kind=ClusterIssuer",
    ],
    &[
        "webhooks.failurePolicy=Ignore",
        "webhooks.timeoutSeconds=2",
        "webhooks.port=10250",
        "webhooks.allowedChartUrls={https://charts.example.org,oci://registry.example.org/apps}",
        "webhooks.excludedNamespaces={sandbox}",
    ],
    &["admissionPolicies.enabled=false"],
    &[
        "controlPlaneIdentity.enabled=true",
        "controlPlaneIdentity.namespaces={shop,wiki}",
        "controlPlaneIdentity.readHelmReleases=true",
    ],
];

#[test]
fn helm_lint_passes_and_bad_values_fail_the_schema() {
    let out = ok(helm(None, &["lint", "--strict", CHART]), "helm lint");
    eprintln!("helm lint --strict:\n{out}");
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
    // Every documented toggle lints cleanly too (the schema and the templates agree).
    for toggle in TOGGLES {
        let mut args = vec!["lint", "--strict", CHART];
        for s in *toggle {
            args.extend(["--set", s]);
        }
        let out = ok(helm(None, &args), &format!("helm lint --strict {toggle:?}"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{toggle:?}: {out}"
        );
    }
    // Each of these must be refused by values.schema.json before anything renders.
    for bad in [
        "replicaCount=0",
        "image.pullPolicy=Sometimes",
        "unknownKey=1",
        "tenantNamespaces[0]=Not_A_Namespace",
        "manager.metricsBindAddress=everywhere",
        "topologySpread.whenUnsatisfiable=Maybe",
        "agent.pollIntervalSeconds=0",
        "manager.metricsSecure=sometimes",
        "manager.connectivityMode=carrier-pigeon",
        "webhooks.enabled=yes",
        "webhooks.port=80",
        "webhooks.unknown=1",
        "webhooks.certificate.mode=vault",
        "webhooks.certificate.validity=1y",
        "webhooks.certificate.issuerRef.kind=Vault",
        "webhooks.certificate.issuerRef.name=",
        "webhooks.failurePolicy=Never",
        "webhooks.timeoutSeconds=0",
        "webhooks.timeoutSeconds=31",
        "webhooks.allowedChartUrls[0]=ftp://charts.example.org",
        "webhooks.excludedNamespaces[0]=Not_A_Namespace",
        "admissionPolicies.enabled=maybe",
        "admissionPolicies.unknown=1",
        "controlPlaneIdentity.enabled=1",
        "controlPlaneIdentity.serviceAccountName=Control_Plane",
        "controlPlaneIdentity.namespaces[0]=Not_A_Namespace",
        "controlPlaneIdentity.readHelmReleases=maybe",
        "controlPlaneIdentity.unknown=1",
    ] {
        let out = helm(None, &["lint", CHART, "--set", bad]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{bad} was accepted:\n{text}");
        assert!(
            text.contains("schema"),
            "{bad}: not a schema error:\n{text}"
        );
    }
}

#[test]
fn helm_template_defaults_and_every_toggle() {
    let d = render(&[]);
    assert_eq!(
        kinds(&d),
        [
            "ClusterRole/vworkspace-operator-manager",
            "ClusterRole/vworkspace-operator-tenant",
            "ClusterRole/vworkspace-operator-webhook-cabundle",
            "ClusterRoleBinding/vworkspace-operator-manager",
            "ClusterRoleBinding/vworkspace-operator-webhook-cabundle",
            "CustomResourceDefinition/applicationinstances.apps.vworkspace.io",
            "CustomResourceDefinition/clusters.ops.vworkspace.io",
            "CustomResourceDefinition/operations.ops.vworkspace.io",
            "Deployment/vworkspace-operator",
            "PodDisruptionBudget/vworkspace-operator",
            "Role/vworkspace-operator-local",
            "RoleBinding/vworkspace-operator-local",
            "Service/vworkspace-operator-webhook",
            "ServiceAccount/vworkspace-operator",
            "ValidatingAdmissionPolicy/vworkspace-applicationinstance",
            "ValidatingAdmissionPolicy/vworkspace-operation",
            "ValidatingAdmissionPolicyBinding/vworkspace-applicationinstance",
            "ValidatingAdmissionPolicyBinding/vworkspace-operation",
            "ValidatingWebhookConfiguration/vworkspace-operator-validating",
        ]
    );
    // Admission is on by default: the webhook (generated certificate) and the policies.
    let vwc = find(
        &d,
        "ValidatingWebhookConfiguration",
        "vworkspace-operator-validating",
    )
    .unwrap();
    let hooks = vwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    for w in hooks {
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(
            w["clientConfig"]["service"]["name"],
            "vworkspace-operator-webhook"
        );
        assert_eq!(
            w["clientConfig"]["service"]["namespace"],
            "vworkspace-system"
        );
        assert_eq!(
            w["rules"][0]["operations"],
            json!(["CREATE", "UPDATE"]),
            "DELETE is never sent"
        );
        let skipped = &w["namespaceSelector"]["matchExpressions"][0]["values"];
        assert_eq!(skipped, &json!(["kube-system", "vworkspace-system"]));
    }
    assert!(vwc["metadata"]["annotations"].is_null(), "no CA injection");
    let svc = find(&d, "Service", "vworkspace-operator-webhook").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
    let cabundle = find(&d, "ClusterRole", "vworkspace-operator-webhook-cabundle").unwrap();
    assert_eq!(
        cabundle["rules"][0]["resourceNames"],
        json!(["vworkspace-operator-validating"])
    );
    for name in ["vworkspace-operation", "vworkspace-applicationinstance"] {
        let b = find(&d, "ValidatingAdmissionPolicyBinding", name).unwrap();
        assert_eq!(b["spec"]["policyName"], name);
        assert_eq!(b["spec"]["validationActions"], json!(["Deny"]));
    }
    let dep = find(&d, "Deployment", "vworkspace-operator").unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let a = args(&d);
    for want in [
        "--leader-elect=true",
        "--health-probe-bind-address=:8081",
        "--metrics-bind-address=0",
        "--metrics-secure=true",
        "--connectivity-mode=pull",
        "--webhooks-enabled=true",
        "--webhook-port=9443",
        "--webhook-configuration-name=vworkspace-operator-validating",
        "--webhook-service-name=vworkspace-operator-webhook",
        "--webhook-cert-validity=720h",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
    }
    // Generated mode: the certificate lives in memory, nothing is mounted.
    assert!(
        !a.iter().any(|x| x.starts_with("--webhook-cert-dir")),
        "{a:?}"
    );
    assert!(pod["volumes"].is_null() && c["volumeMounts"].is_null());
    assert_eq!(
        ports(&d),
        [("health".to_string(), 8081), ("webhook".to_string(), 9443)]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["image"], "vworkspace/vworkspace-operator:v0.1.0");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let crd = find(&d, "CustomResourceDefinition", "clusters.ops.vworkspace.io").unwrap();
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // No cluster-wide Secret/ConfigMap access anywhere in the ClusterRole bound cluster-wide.
    let manager = find(&d, "ClusterRole", "vworkspace-operator-manager").unwrap();
    for rule in manager["rules"].as_array().unwrap() {
        let res = rule["resources"].as_array().unwrap();
        assert!(
            !res.contains(&json!("secrets")) && !res.contains(&json!("configmaps")),
            "{rule}"
        );
    }

    // Each toggle, and what it must change.
    let t = render(&["crds.install=false"]);
    assert!(
        !kinds(&t)
            .iter()
            .any(|k| k.starts_with("CustomResourceDefinition/"))
    );
    let t = render(&["crds.keep=false"]);
    let crd = find(&t, "CustomResourceDefinition", "clusters.ops.vworkspace.io").unwrap();
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    let t = render(&["rbac.create=false"]);
    assert!(
        !kinds(&t).iter().any(|k| k.contains("Role")),
        "{:?}",
        kinds(&t)
    );
    let t = render(&["rbac.create=false", "manager.metricsBindAddress=:8443"]);
    assert!(!kinds(&t).iter().any(|k| k.contains("Role")));
    let t = render(&[
        "serviceAccount.create=false",
        "serviceAccount.name=platform-sa",
    ]);
    assert!(find(&t, "ServiceAccount", "vworkspace-operator").is_none());
    let dep = find(&t, "Deployment", "vworkspace-operator").unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-sa"
    );
    let t = render(&["tenantNamespaces={shop,wiki}"]);
    for ns in ["shop", "wiki"] {
        let rb = t
            .iter()
            .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == ns)
            .unwrap();
        assert_eq!(rb["roleRef"]["name"], "vworkspace-operator-tenant");
        assert!(t.iter().any(|o| o["kind"] == "ServiceAccount"
            && o["metadata"]["name"] == "vworkspace-operation-runner"
            && o["metadata"]["namespace"] == ns));
    }
    let t = render(&["tenantNamespaces={shop}", "operationRunner.create=false"]);
    assert!(find(&t, "ServiceAccount", "vworkspace-operation-runner").is_none());
    let t = render(&["manager.metricsBindAddress=:8443"]);
    let svc = find(&t, "Service", "vworkspace-operator-metrics").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
    assert!(ports(&t).contains(&("metrics".to_string(), 8443)));
    assert!(find(&t, "ServiceMonitor", "vworkspace-operator-metrics").is_none());
    // Secure metrics (the default): the operator's own TokenReview/SAR RBAC and a reader
    // role for scrapers.
    assert!(find(&t, "ClusterRole", "vworkspace-operator-metrics-auth").is_some());
    assert!(find(&t, "ClusterRole", "vworkspace-operator-metrics-reader").is_some());
    let t = render(&[
        "manager.metricsBindAddress=:8443",
        "metrics.serviceMonitor.enabled=true",
    ]);
    let sm = find(&t, "ServiceMonitor", "vworkspace-operator-metrics").unwrap();
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["scheme"], "https");
    assert_eq!(
        ep["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    assert_eq!(ep["tlsConfig"]["insecureSkipVerify"], true);
    // Plain metrics on a host:port address: http, no token, no auth RBAC.
    let t = render(&[
        "manager.metricsBindAddress=0.0.0.0:9090",
        "manager.metricsSecure=false",
        "metrics.serviceMonitor.enabled=true",
    ]);
    let ep =
        &find(&t, "ServiceMonitor", "vworkspace-operator-metrics").unwrap()["spec"]["endpoints"][0];
    assert_eq!(ep["scheme"], "http");
    assert!(ep["bearerTokenFile"].is_null() && ep["tlsConfig"].is_null());
    assert!(find(&t, "ClusterRole", "vworkspace-operator-metrics-auth").is_none());
    assert!(args(&t).contains(&"--metrics-secure=false".to_string()));
    assert!(ports(&t).contains(&("metrics".to_string(), 9090)));
    let svc = find(&t, "Service", "vworkspace-operator-metrics").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);
    for mode in ["push", "gitops"] {
        let t = render(&[&format!("manager.connectivityMode={mode}")]);
        assert!(args(&t).contains(&format!("--connectivity-mode={mode}")));
    }

    // Admission toggles.
    let t = render(&["webhooks.enabled=false"]);
    assert!(
        !kinds(&t)
            .iter()
            .any(|k| k.contains("webhook") || k.starts_with("ValidatingWebhookConfiguration/")),
        "{:?}",
        kinds(&t)
    );
    assert!(!args(&t).iter().any(|a| a.starts_with("--webhook")));
    assert_eq!(ports(&t), [("health".to_string(), 8081)]);
    assert!(find(&t, "ValidatingAdmissionPolicy", "vworkspace-operation").is_some());
    let t = render(&["admissionPolicies.enabled=false"]);
    assert!(
        !kinds(&t)
            .iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "{:?}",
        kinds(&t)
    );
    assert!(
        find(
            &t,
            "ValidatingWebhookConfiguration",
            "vworkspace-operator-validating"
        )
        .is_some()
    );
    // cert-manager mode: the chart's private CA, the serving Certificate mounted where
    // --webhook-cert-dir points, CA injection instead of the operator's caBundle RBAC.
    let t = render(&["webhooks.certificate.mode=certManager"]);
    for (kind, name) in [
        ("Issuer", "vworkspace-operator-selfsigned"),
        ("Certificate", "vworkspace-operator-webhook-ca"),
        ("Issuer", "vworkspace-operator-webhook-ca"),
        ("Certificate", "vworkspace-operator-webhook"),
    ] {
        assert!(find(&t, kind, name).is_some(), "{kind}/{name}");
    }
    assert!(find(&t, "ClusterRole", "vworkspace-operator-webhook-cabundle").is_none());
    let cert = find(&t, "Certificate", "vworkspace-operator-webhook").unwrap();
    assert_eq!(
        cert["spec"]["secretName"],
        "vworkspace-operator-webhook-tls"
    );
    assert_eq!(cert["spec"]["duration"], "720h");
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("vworkspace-operator-webhook.vworkspace-system.svc"))
    );
    let vwc = find(
        &t,
        "ValidatingWebhookConfiguration",
        "vworkspace-operator-validating",
    )
    .unwrap();
    assert_eq!(
        vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "vworkspace-system/vworkspace-operator-webhook"
    );
    let pod = &find(&t, "Deployment", "vworkspace-operator").unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "vworkspace-operator-webhook-tls"
    );
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["name"], pod["volumes"][0]["name"]);
    assert_eq!(mount["readOnly"], true);
    let dir = format!(
        "--webhook-cert-dir={}",
        mount["mountPath"].as_str().unwrap()
    );
    assert!(args(&t).contains(&dir), "{dir}");
    let t = render(&[
        "webhooks.certificate.mode=certManager",
        "webhooks.certificate.issuerRef.name=corp-ca",
        "webhooks.certificate.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(find(&t, "Issuer", "vworkspace-operator-selfsigned").is_none());
    let cert = find(&t, "Certificate", "vworkspace-operator-webhook").unwrap();
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer"})
    );
    let t = render(&[
        "webhooks.failurePolicy=Ignore",
        "webhooks.timeoutSeconds=2",
        "webhooks.port=10250",
        "webhooks.allowedChartUrls={https://charts.example.org,oci://registry.example.org/apps}",
        "webhooks.excludedNamespaces={sandbox}",
    ]);
    let vwc = find(
        &t,
        "ValidatingWebhookConfiguration",
        "vworkspace-operator-validating",
    )
    .unwrap();
    for w in vwc["webhooks"].as_array().unwrap() {
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(w["timeoutSeconds"], 2);
        assert_eq!(
            w["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-system", "vworkspace-system", "sandbox"])
        );
    }
    let a = args(&t);
    assert!(a.contains(&"--webhook-port=10250".to_string()));
    assert!(a.contains(
        &"--webhook-allowed-chart-urls=https://charts.example.org,oci://registry.example.org/apps"
            .to_string()
    ));
    assert!(ports(&t).contains(&("webhook".to_string(), 10250)));

    // Push-mode identity: namespaced Roles only where listed, HelmRelease reads on request.
    let t = render(&["controlPlaneIdentity.enabled=true"]);
    assert!(find(&t, "ServiceAccount", "vworkspace-control-plane").is_some());
    assert!(!t.iter().any(
        |o| o["kind"] == "Role" && o["metadata"]["name"] == "vworkspace-operator-control-plane"
    ));
    let t = render(&[
        "controlPlaneIdentity.enabled=true",
        "controlPlaneIdentity.namespaces={shop,wiki}",
        "controlPlaneIdentity.readHelmReleases=true",
    ]);
    let sa = find(&t, "ServiceAccount", "vworkspace-control-plane").unwrap();
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(find(&t, "ClusterRole", "vworkspace-operator-control-plane").is_some());
    for ns in ["shop", "wiki"] {
        let role = t
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == ns)
            .unwrap();
        let rules = role["rules"].as_array().unwrap();
        assert!(
            rules.iter().any(|r| r["resources"]
                .as_array()
                .unwrap()
                .contains(&json!("helmreleases"))),
            "{role}"
        );
        let rb = t
            .iter()
            .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == ns)
            .unwrap();
        assert_eq!(rb["subjects"][0]["name"], "vworkspace-control-plane");
    }
    let t = render(&[
        "controlPlaneIdentity.enabled=true",
        "controlPlaneIdentity.namespaces={shop}",
    ]);
    let role = t
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "shop")
        .unwrap();
    assert!(!role["rules"].as_array().unwrap().iter().any(|r| {
        r["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("helmreleases"))
    }));
    let t = render(&["manager.healthProbeBindAddress=0.0.0.0:9091"]);
    assert_eq!(ports(&t)[0], ("health".to_string(), 9091));
    assert!(args(&t).contains(&"--health-probe-bind-address=0.0.0.0:9091".to_string()));
    let t = render(&["podDisruptionBudget.enabled=false"]);
    assert!(find(&t, "PodDisruptionBudget", "vworkspace-operator").is_none());
    let t = render(&["replicaCount=1"]);
    assert!(find(&t, "PodDisruptionBudget", "vworkspace-operator").is_none());
    let t = render(&["topologySpread.enabled=false"]);
    let dep = find(&t, "Deployment", "vworkspace-operator").unwrap();
    assert!(dep["spec"]["template"]["spec"]["topologySpreadConstraints"].is_null());
    let t = render(&[
        "manager.watchNamespace=shop",
        "manager.approvalClaimSecret.name=claims",
        "manager.leaderElect=false",
        "image.tag=v9.9.9",
        "priorityClassName=system-cluster-critical",
        "imagePullSecrets[0].name=mirror",
    ]);
    let pod = &find(&t, "Deployment", "vworkspace-operator").unwrap()["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&json!("--watch-namespace=shop")));
    assert!(args.contains(&json!("--leader-elect=false")));
    assert_eq!(
        pod["containers"][0]["image"],
        "vworkspace/vworkspace-operator:v9.9.9"
    );
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "mirror");
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "VWORKSPACE_APPROVAL_CLAIM_SECRET"
                && e["valueFrom"]["secretKeyRef"]["name"] == "claims")
    );
}

/// The manager container's args in a rendering.
fn args(objs: &[Value]) -> Vec<String> {
    let dep = find(objs, "Deployment", "vworkspace-operator").unwrap();
    dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The manager container's (name, containerPort) pairs in a rendering.
fn ports(objs: &[Value]) -> Vec<(String, u64)> {
    let dep = find(objs, "Deployment", "vworkspace-operator").unwrap();
    dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Drops what only one of the two tools adds, so the rest must match exactly.
fn normalise(mut o: Value) -> Value {
    if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
        a.remove("helm.sh/resource-policy");
    }
    // An empty (or YAML-null) annotations map is no annotation.
    if o["metadata"]["annotations"]
        .as_object()
        .is_none_or(|a| a.is_empty())
    {
        o["metadata"].as_object_mut().unwrap().remove("annotations");
    }
    o
}

fn kustomize(dir: &str) -> Vec<Value> {
    let kubectl = testkit::ensure_binaries().unwrap().dir.join("kubectl");
    let out = Command::new(kubectl)
        .args(["kustomize", dir])
        .current_dir(testkit::repo_root())
        .output()
        .unwrap();
    objects(&ok(out, &format!("kubectl kustomize {dir}")))
}

/// `kind/namespace/name` → normalised object, sorted by key.
fn keyed(objs: Vec<Value>) -> Vec<(String, Value)> {
    let key = |o: &Value| {
        format!(
            "{}/{}/{}",
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let mut v: Vec<(String, Value)> = objs.into_iter().map(|o| (key(&o), normalise(o))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Same object set, and each object equal after `normalise`.
fn assert_same_objects(helm: Vec<Value>, kustomize: Vec<Value>, what: &str) {
    let (h, k) = (keyed(helm), keyed(kustomize));
    let names = |v: &[(String, Value)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&h), names(&k), "{what}: different object sets");
    for ((name, a), (_, b)) in h.iter().zip(&k) {
        assert_eq!(a, b, "{what}: {name} differs between helm and kustomize");
    }
}

#[test]
fn kustomize_default_renders_the_same_objects_as_helm() {
    // Defaults include admission: both layers must be in config/default as well.
    let kustomized = kustomize("config/default");
    for kind in [
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kustomized.iter().any(|o| o["kind"] == kind), "{kind}");
    }
    assert_same_objects(render(&[]), kustomized, "config/default");
}

/// config/webhook is a rendering of templates/webhook.yaml (like config/admission is a
/// copy of files/admission-policies.yaml): a chart change must be copied over.
#[test]
fn config_webhook_matches_the_charts_webhook_objects() {
    let args = [
        "template",
        "vworkspace-operator",
        CHART,
        "--namespace",
        "vworkspace-system",
        "--show-only",
        "templates/webhook.yaml",
    ];
    let chart = objects(&ok(helm(None, &args), "helm template --show-only webhook"));
    assert_eq!(chart.len(), 4, "{:?}", kinds(&chart));
    assert_same_objects(chart, kustomize("config/webhook"), "config/webhook");
}

/// `kubectl auth can-i` as `sa` (admin credentials, impersonating): true when allowed.
fn can_i(cp: &ControlPlane, sa: &str, args: &[&str]) -> bool {
    let out = Command::new(cp.bin_dir.join("kubectl"))
        .args(["auth", "can-i"])
        .args(args)
        .args(["--as", sa])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn gated_namespace(client: &kube::Client, name: &str) {
    create_namespace(client, name).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
        )
        .await
        .unwrap();
}

async fn values_secret(client: &kube::Client, ns: &str) {
    named_values_secret(client, ns, "values").await
}

async fn named_values_secret(client: &kube::Client, ns: &str, name: &str) {
    let s = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some([("values.yaml".to_string(), "replicas: 1\n".to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

fn secret_ref_instance(ns: &str, name: &str) -> ApplicationInstance {
    referencing(ns, name, "values")
}

fn referencing(ns: &str, name: &str, secret: &str) -> ApplicationInstance {
    serde_json::from_value(instance(
        ns,
        name,
        helm_chart("wiki", "1.0.0"),
        json!({"source": "secretRef", "secretRef": {"name": secret, "key": "values.yaml"}}),
    ))
    .unwrap()
}

/// Install → can-i matrix → the operator under the installed identity drives its
/// controllers → the one-verb-removed negative → upgrade → uninstall.
#[tokio::test]
async fn helm_install_grants_exactly_what_the_operator_needs() {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    let (op_ns, tenant, other, unlisted) =
        ("vworkspace-system", "shop", "payroll", "gated-unlisted");
    create_namespace(&client, op_ns).await.unwrap();
    gated_namespace(&client, tenant).await;
    create_namespace(&client, other).await.unwrap();
    gated_namespace(&client, unlisted).await;
    let release = "vworkspace-operator";
    // values.schema.json is enforced by `helm install` itself, before anything is applied.
    let refused = helm(
        Some(&cp.kubeconfig),
        &[
            "install",
            release,
            CHART,
            "--namespace",
            op_ns,
            "--set",
            "replicaCount=0",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("schema"));
    // testkit installed the CRDs already (no Helm ownership): leave them out here; their
    // rendering is checked by the template tests.
    let out = helm(
        Some(&cp.kubeconfig),
        &[
            "install",
            release,
            CHART,
            "--namespace",
            op_ns,
            "--set",
            "crds.install=false",
            // The default webhook (failurePolicy Fail) points at the in-cluster Service,
            // which nothing serves here (the operator runs outside the cluster), so it
            // would refuse the objects below; install_kwok.rs installs the defaults.
            "--set",
            "webhooks.enabled=false",
            "--set",
            "admissionPolicies.enabled=false",
            "--set",
            &format!("tenantNamespaces={{{tenant}}}"),
        ],
    );
    eprintln!("{}", ok(out, "helm install"));
    let deps: Api<Deployment> = Api::namespaced(client.clone(), op_ns);
    assert_eq!(
        deps.get(release).await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    Api::<ServiceAccount>::namespaced(client.clone(), tenant)
        .get("vworkspace-operation-runner")
        .await
        .unwrap();

    // The can-i matrix, as the ServiceAccount the chart created.
    let sa = format!("system:serviceaccount:{op_ns}:{release}");
    let allowed: &[&[&str]] = &[
        &[
            "list",
            "applicationinstances.apps.vworkspace.io",
            "--all-namespaces",
        ],
        &[
            "patch",
            "applicationinstances.apps.vworkspace.io/status",
            "-n",
            tenant,
        ],
        &["watch", "operations.ops.vworkspace.io", "--all-namespaces"],
        &["update", "clusters.ops.vworkspace.io/status"],
        &[
            "create",
            "helmreleases.helm.toolkit.fluxcd.io",
            "-n",
            tenant,
        ],
        &["create", "jobs.batch", "-n", tenant],
        &["get", "secrets", "-n", tenant],
        &["watch", "configmaps", "-n", tenant],
        &["create", "secrets", "-n", op_ns],
        &["watch", "secrets", "-n", op_ns],
        &["update", "leases.coordination.k8s.io", "-n", op_ns],
        &["create", "events", "-n", tenant],
        &["watch", "namespaces"],
    ];
    let denied: &[&[&str]] = &[
        &["get", "secrets", "-n", other],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "--all-namespaces"],
        &["watch", "configmaps", "--all-namespaces"],
        &["get", "secrets", "-n", unlisted],
        &["create", "secrets", "-n", tenant],
        &["create", "leases.coordination.k8s.io", "-n", tenant],
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            tenant,
        ],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["bind", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["list", "nodes"],
        &["create", "pods/exec", "-n", tenant],
        &["create", "pods", "-n", tenant],
        &["impersonate", "users"],
        &["impersonate", "serviceaccounts", "-n", op_ns],
        &["delete", "namespaces"],
        &["create", "tokenreviews.authentication.k8s.io"],
    ];
    let mut matrix = String::new();
    let mut wrong = Vec::new();
    for (want, list) in [(true, allowed), (false, denied)] {
        for args in list {
            let got = can_i(cp, &sa, args);
            matrix.push_str(&format!(
                "{:<5} {}\n",
                if got { "yes" } else { "no" },
                args.join(" ")
            ));
            if got != want {
                wrong.push(args.join(" "));
            }
        }
    }
    eprintln!("can-i matrix for {sa}:\n{matrix}");
    assert!(
        wrong.is_empty(),
        "unexpected can-i answers: {wrong:?}\n{matrix}"
    );

    // The operator binary with a token of the installed ServiceAccount.
    let kubeconfig = cp
        .kubeconfig_for_existing_service_account(op_ns, release)
        .await
        .unwrap();
    let op = Operator::start_with(kubeconfig, op_ns, &["--agent-poll-interval=5s"]);
    eventually("/readyz 200", WAIT, || async {
        op.probe("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;

    // ApplicationInstance with a values Secret in the tenant namespace: delivered.
    values_secret(&client, tenant).await;
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), tenant);
    apps.create(&PostParams::default(), &secret_ref_instance(tenant, "wiki"))
        .await
        .unwrap();
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), tenant);
    eventually("HelmRelease from a secretRef instance", WAIT, || async {
        hrs.get_opt("wiki").await.unwrap()
    })
    .await;
    helm_controller_reports(&hrs, "wiki", "True", "InstallSucceeded", "ok")
        .await
        .unwrap();
    eventually("instance Ready", WAIT, || async {
        let i = apps.get("wiki").await.unwrap();
        i.status
            .filter(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
            .map(|_| ())
    })
    .await;

    // The per-namespace metadata watch: a values Secret created after its instance
    // unblocks it at once (the Blocked recheck alone would take five minutes).
    apps.create(
        &PostParams::default(),
        &referencing(tenant, "late", "late-values"),
    )
    .await
    .unwrap();
    eventually("late blocked on its Secret", WAIT, || async {
        let i = apps.get("late").await.unwrap();
        let c = i.status?.conditions;
        c.iter()
            .any(|c| c.reason == "WaitingForSecret")
            .then_some(())
    })
    .await;
    named_values_secret(&client, tenant, "late-values").await;
    eventually(
        "late delivered once its Secret exists",
        Duration::from_secs(20),
        || async { hrs.get_opt("late").await.unwrap() },
    )
    .await;

    // Operation controller: a runCommand Job in the tenant namespace, as the runner SA.
    let tools: ApplicationInstance = serde_json::from_value(placeholder(
        tenant,
        "tools",
        json!({"ops.vworkspace.io/runcommand": "job"}),
    ))
    .unwrap();
    apps.create(&PostParams::default(), &tools).await.unwrap();
    let ops: Api<Operation> = Api::namespaced(client.clone(), tenant);
    let op_obj: Operation = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": "hello", "namespace": tenant},
        "spec": {"type": "RunCommand", "engine": "job",
                 "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                               "kind": "ApplicationInstance", "name": "tools"},
                 "parameters": {"image": "busybox:1.36", "command": ["true"]}}
    }))
    .unwrap();
    ops.create(&PostParams::default(), &op_obj).await.unwrap();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), tenant);
    let job = eventually("runner Job", WAIT, || async {
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        job.spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name
            .as_deref(),
        Some("vworkspace-operation-runner")
    );

    // Cluster controller and a Pull-mode path: register with the mock control plane, then
    // a control-plane `apply` job delivers a secretRef instance into the tenant namespace.
    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin = mock.admin();
    support::register_cluster(&client, op_ns, &mock.url(), CLUSTER_ID, REG_TOKEN).await;
    let pulled = serde_json::to_value(secret_ref_instance(tenant, "pulled")).unwrap();
    admin
        .enqueue(
            CLUSTER_ID,
            &support::job(
                "apply-pulled",
                "apply",
                "applicationinstance/shop/pulled@1",
                pulled,
            ),
        )
        .await
        .unwrap();
    eventually("HelmRelease of the pulled instance", WAIT, || async {
        hrs.get_opt("pulled").await.unwrap()
    })
    .await;
    helm_controller_reports(&hrs, "pulled", "True", "InstallSucceeded", "ok")
        .await
        .unwrap();
    let r = admin.wait_for_result("apply-pulled", WAIT).await.unwrap();
    assert_eq!(r.outcome, "succeeded", "{r:?}");

    // A gated namespace the chart does not list: a clear error naming the permission.
    values_secret(&client, unlisted).await;
    Api::<ApplicationInstance>::namespaced(client.clone(), unlisted)
        .create(
            &PostParams::default(),
            &secret_ref_instance(unlisted, "wiki"),
        )
        .await
        .unwrap();
    let expect = format!("lacks `get` on secrets in namespace {unlisted}");
    eventually("the missing permission in the log", WAIT, || async {
        op.log().contains(&expect).then_some(())
    })
    .await;
    assert!(
        op.log().contains(&format!(
            "lacks `list/watch` on secrets in namespace {unlisted}"
        )),
        "{}",
        op.log()
    );

    // Negative: remove one needed verb (`get` on secrets) from the tenant role; the
    // values path in the tenant namespace now fails, naming exactly that permission.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let tenant_role = format!("{release}-tenant");
    roles
        .patch(
            &tenant_role,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
            ]})),
        )
        .await
        .unwrap();
    assert!(!can_i(cp, &sa, &["get", "secrets", "-n", tenant]));
    apps.create(&PostParams::default(), &secret_ref_instance(tenant, "blog"))
        .await
        .unwrap();
    let expect = format!("lacks `get` on secrets in namespace {tenant} (reading secrets/values)");
    eventually("the removed verb named in the log", WAIT, || async {
        op.log().contains(&expect).then_some(())
    })
    .await;
    assert!(hrs.get_opt("blog").await.unwrap().is_none());

    // Upgrade restores the role (Helm owns it) and adds a tenant namespace.
    let out = helm(
        Some(&cp.kubeconfig),
        &[
            "upgrade",
            release,
            CHART,
            "--namespace",
            op_ns,
            // The hand edit above is another field manager's; the chart's rules win.
            "--force-conflicts",
            "--set",
            "crds.install=false",
            "--set",
            "webhooks.enabled=false",
            "--set",
            "admissionPolicies.enabled=false",
            "--set",
            &format!("tenantNamespaces={{{tenant},{other}}}"),
        ],
    );
    ok(out, "helm upgrade");
    assert!(can_i(cp, &sa, &["get", "secrets", "-n", tenant]));
    assert!(can_i(cp, &sa, &["get", "secrets", "-n", other]));
    eventually("blog delivered after the upgrade", WAIT, || async {
        hrs.get_opt("blog").await.unwrap()
    })
    .await;
    drop(op);

    ok(
        helm(
            Some(&cp.kubeconfig),
            &["uninstall", release, "--namespace", op_ns],
        ),
        "helm uninstall",
    );
    assert!(roles.get_opt(&tenant_role).await.unwrap().is_none());
    assert!(
        Api::<RoleBinding>::namespaced(client.clone(), tenant)
            .get_opt(&tenant_role)
            .await
            .unwrap()
            .is_none()
    );
    assert!(deps.get_opt(release).await.unwrap().is_none());
    assert!(!can_i(
        cp,
        &sa,
        &["list", "applicationinstances.apps.vworkspace.io", "-A"]
    ));
}
