//! Kubernetes Events on condition transitions.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;
use vworkspace_api::conditions::{Condition, FALSE, types};

/// Publishes one Event per condition whose status flipped. Messages are ours or Flux's
/// and never carry values, so they are safe to publish.
pub async fn publish_transitions(
    recorder: &Recorder,
    reference: &ObjectReference,
    flipped: &[Condition],
) {
    for c in flipped {
        let warning = (c.type_ == types::READY && c.status == FALSE)
            || ([types::BLOCKED, types::DEGRADED].contains(&c.type_.as_str())
                && c.status == "True");
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(
                format!("{}={}: {}", c.type_, c.status, c.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: format!("Set{}", c.type_),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            warn!(error = %e, "could not record event");
        }
    }
}
