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
