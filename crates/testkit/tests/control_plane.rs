//! The harness itself against the real control plane it starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use testkit::{ControlPlane, fresh_namespace};

fn cm(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn third_party_and_own_crds_are_installed() {
    let cp = ControlPlane::get().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await.unwrap());
    for name in [
        "helmreleases.helm.toolkit.fluxcd.io",
        "helmrepositories.source.toolkit.fluxcd.io",
        "ocirepositories.source.toolkit.fluxcd.io",
        "backups.velero.io",
        "restores.velero.io",
        "workflows.argoproj.io",
        "workflowtemplates.argoproj.io",
        "volumesnapshots.snapshot.storage.k8s.io",
        "volumesnapshotclasses.snapshot.storage.k8s.io",
        "replicationsources.volsync.backube",
        "replicationdestinations.volsync.backube",
        "applicationinstances.apps.vworkspace.io",
        "operations.ops.vworkspace.io",
        "clusters.ops.vworkspace.io",
    ] {
        crds.get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn garbage_collector_deletes_dependents() {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    let ns = fresh_namespace(&client, "gc").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let owner = api
        .create(&PostParams::default(), &cm("owner", None))
        .await
        .unwrap();
    let oref = owner.controller_owner_ref(&()).unwrap();
    api.create(&PostParams::default(), &cm("child", Some(oref)))
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt("child").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "garbage collector did not delete the dependent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn service_account_client_has_only_its_rules() {
    let cp = ControlPlane::get().await.unwrap();
    let admin = cp.client().await.unwrap();
    let ns = fresh_namespace(&admin, "rbac").await.unwrap();
    let rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec!["get".into(), "list".into()],
        ..Default::default()
    }];
    let limited = cp
        .client_for_service_account(&ns, "reader", rules)
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(limited.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let err = Api::<Secret>::namespaced(limited, &ns)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "expected 403, got {err}"
    );
}
