//! `helm install --wait` of the chart into the full-profile cluster, where the scheduler
//! places the operator's pods and kwok plays their kubelet: the Deployment as rendered
//! (two replicas, topology spread, restricted pod security, probes) is schedulable and
//! becomes Available, and its PodDisruptionBudget allows exactly one disruption.
//! The operator's behaviour under the chart's RBAC is `install_helm.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use testkit::FullCluster;
use testkit::fixtures::create_namespace;

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
    // The cluster has the CRDs already (testkit, no Helm ownership).
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
    helm(&["uninstall", "vworkspace-operator", "--namespace", ns]);
    eprintln!("uninstalled at {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt("vworkspace-operator")
            .await
            .unwrap()
            .is_none()
    );
}
