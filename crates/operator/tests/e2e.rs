//! End to end: the operator *binary*, running under the Helm chart's RBAC (installed by
//! Helm), against the
//! real apiserver. Pull mode end to end is in `e2e_pull.rs` (its own control plane: the
//! `Cluster` is cluster-scoped and one per cluster).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::api::{Api, PostParams};
use support::{Operator, eventually, managed_instance};
use testkit::fixtures::{TestNamespace, helm_controller_reports, test_namespace};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::HelmRelease;

#[tokio::test]
async fn binary_under_chart_rbac_delivers_an_instance_and_gets_ready() {
    let TestNamespace { cp, client, ns } = test_namespace("e2e-rbac").await.unwrap();
    // The ServiceAccount and RBAC of a real `helm install` of the chart.
    let kubeconfig = support::chart_identity(cp, &ns, &[]).await;
    let op = Operator::start_with(kubeconfig, &ns, &[]);
    let (code, body) = eventually("/readyz 200", Duration::from_secs(60), || async {
        op.probe("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(op.probe("/healthz").await.unwrap().0, 200);

    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), &ns);
    let inst: ApplicationInstance =
        serde_json::from_value(managed_instance(&ns, "wiki", "1.0.0")).unwrap();
    apps.create(&PostParams::default(), &inst).await.unwrap();
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), &ns);
    eventually("HelmRelease", Duration::from_secs(30), || async {
        hrs.get_opt("wiki").await.unwrap()
    })
    .await;
    helm_controller_reports(&hrs, "wiki", "True", "InstallSucceeded", "ok")
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
        !log.contains("\"level\":\"error\""),
        "errors in the operator log:\n{log}"
    );
    drop(op.child);
}
