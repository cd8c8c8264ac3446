//! `helm install --wait` of the chart into the full-profile cluster, where the scheduler
//! places the operator's pods and kwok plays their kubelet: the Deployment as rendered
//! (two replicas, topology spread, restricted pod security, probes) is schedulable and
//! becomes Available, and its PodDisruptionBudget allows exactly one disruption.
//! The operator's behaviour under the chart's RBAC is `install_helm.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::FullCluster;
use testkit::fixtures::create_namespace;
use vworkspace_api::ApplicationInstance;

const VWC: &str = "vworkspace-operator-validating";
const POLICIES: [&str; 2] = ["vworkspace-operation", "vworkspace-applicationinstance"];

#[tokio::test]
async fn helm_install_waits_for_two_ready_replicas_and_a_pdb() {
    let full = FullCluster::get().await.unwrap();
    let started = std::time::Instant::now();
    let client = full.client().await.unwrap();
    let ns = "vworkspace-kwok";
    create_namespace(&client, ns).await.unwrap();
    let home = std::env::temp_dir().join(format!("vworkspace-helm-{}", std::process::id()));
    let helm = |args: &[&str]| {
        let out = Command::new(testkit::ensure_helm().unwrap())
            .args(args)
            .current_dir(testkit::repo_root())
            .env("KUBECONFIG", &full.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A gated tenant namespace with an instance that exists before admission does, held
    // by a finalizer so its deletion has a second step.
    let tenant = "kwok-tenant";
    create_namespace(&client, tenant).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
        )
        .await
        .unwrap();
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), tenant);
    let mut wiki = support::managed_instance(tenant, "wiki", "1.0.0");
    wiki["metadata"]["finalizers"] = json!(["install-kwok.test.vworkspace.io/hold"]);
    let wiki: ApplicationInstance = serde_json::from_value(wiki).unwrap();
    apps.create(&PostParams::default(), &wiki).await.unwrap();
    // The cluster has the CRDs already (testkit, no Helm ownership). Everything else is
    // the chart's defaults, admission included.
    eprintln!("full cluster up");
    helm(&[
        "install",
        "vworkspace-operator",
        "charts/vworkspace-operator",
        "--namespace",
        ns,
        "--set",
        "crds.install=false",
        "--wait",
        "--timeout",
        "3m",
    ]);
    eprintln!(
        "helm install --wait done at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("vworkspace-operator")
        .await
        .unwrap();
    let status = dep.status.unwrap();
    assert_eq!(
        (status.ready_replicas, status.available_replicas),
        (Some(2), Some(2))
    );
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=vworkspace-operator"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);
    for pod in &pods.items {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(testkit::NODE_NAME));
        assert_eq!(
            spec.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let allowed = testkit::fixtures::eventually(
        "the PDB counts both pods",
        std::time::Duration::from_secs(30),
        || async {
            let s = pdbs.get("vworkspace-operator").await.unwrap().status?;
            (s.current_healthy == Some(2)).then_some(s.disruptions_allowed)
        },
    )
    .await;
    assert_eq!(allowed, Some(1));
    eprintln!(
        "installed and checked in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Admission objects as rendered by default, accepted by the apiserver.
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc = vwcs.get(VWC).await.unwrap();
    let hooks = vwc.webhooks.unwrap_or_default();
    assert_eq!(hooks.len(), 2);
    for w in &hooks {
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        let svc = w.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.namespace.as_str()),
            ("vworkspace-operator-webhook", ns)
        );
    }
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for p in POLICIES {
        vaps.get(p).await.unwrap();
        bindings.get(p).await.unwrap();
    }
    // The webhook is down (kwok pods serve nothing): failurePolicy Fail refuses a spec
    // change, naming the webhook...
    let change = Patch::Merge(json!({"spec": {"chart": {"version": "1.1.0"}}}));
    let err = apps
        .patch("wiki", &PatchParams::default(), &change)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("vapplicationinstance.kb.io"), "{err}");
    // ...but never wedges: metadata-only updates, deletion and finalizer removal pass.
    apps.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "docs"}}})),
    )
    .await
    .unwrap();
    apps.delete("wiki", &DeleteParams::default()).await.unwrap();
    apps.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(apps.get_opt("wiki").await.unwrap().is_none());
    eprintln!(
        "admission checked at {:.1}s",
        started.elapsed().as_secs_f64()
    );

    helm(&["uninstall", "vworkspace-operator", "--namespace", ns]);
    eprintln!("uninstalled at {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt("vworkspace-operator")
            .await
            .unwrap()
            .is_none()
    );
    // Uninstall removed the admission objects (nothing holds them).
    assert!(vwcs.get_opt(VWC).await.unwrap().is_none());
    for p in POLICIES {
        assert!(vaps.get_opt(p).await.unwrap().is_none(), "{p}");
        assert!(bindings.get_opt(p).await.unwrap().is_none(), "{p}");
    }
}
