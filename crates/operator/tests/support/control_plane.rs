//! The vWorkspace control plane side: the project's mock and the jobs it hands out.

use std::time::Duration;

use mock_control_plane::{MockConfig, MockServer};
use serde_json::{Value, json};
use vworkspace_protocol::Job;

/// A job as the control plane enqueues it.
pub fn job(id: &str, kind: &str, key: &str, payload: Value) -> Job {
    serde_json::from_value(json!({
        "id": id, "kind": kind, "payload": payload, "idempotencyKey": key,
        "createdAt": jiff::Timestamp::now().to_string()
    }))
    .unwrap()
}

/// The mock control plane, strict: `registration_token` registers `cluster_id` once, a
/// rotated-away token stops working at once, an unacknowledged job is handed out again
/// after 5 s.
pub async fn mock(registration_token: &str, cluster_id: &str) -> MockServer {
    MockServer::start(MockConfig {
        registration_token: registration_token.into(),
        cluster_id: cluster_id.into(),
        admin_token: Some("test-admin".into()),
        lease: Duration::from_secs(5),
        rotation_grace: Duration::ZERO,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// Registers this cluster as an installer would: the one-time token in Secret
/// `registration` of `op_ns` and the `Cluster` pointing at `endpoint`; returns once the
/// operator reports `Connected=True`.
pub async fn register_cluster(
    client: &kube::Client,
    op_ns: &str,
    endpoint: &str,
    cluster_id: &str,
    registration_token: &str,
) -> kube::Api<vworkspace_api::Cluster> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, ObjectMeta, PostParams};

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("registration".into()),
            ..Default::default()
        },
        string_data: Some(
            [(
                "registrationToken".to_string(),
                registration_token.to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), op_ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let cluster: vworkspace_api::Cluster = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "this-cluster"},
        "spec": {"controlPlaneEndpoint": endpoint, "clusterId": cluster_id,
                 "registrationTokenSecretRef": {"name": "registration"}}
    }))
    .unwrap();
    let clusters: Api<vworkspace_api::Cluster> = Api::all(client.clone());
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    testkit::fixtures::eventually("Connected=True", Duration::from_secs(180), || async {
        let c = clusters.get("this-cluster").await.unwrap();
        vworkspace_api::conditions::is_true(&c.status?.conditions, "Connected").then_some(())
    })
    .await;
    clusters
}
