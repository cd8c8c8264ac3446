//! Gates of a Pending Operation that need no client: target readiness and the
//! concurrency matrix (which types wait for which, first come first served).

use kube_core::ResourceExt;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{self, FALSE, types};
use vworkspace_api::operation::{Operation, OperationType, Phase};

fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

/// Whether the target can take this Operation now (§11 item 14): not while it is being
/// deleted, and not while it reports `Ready=False` — except for Restore and Upgrade,
/// which are how a broken instance is repaired. A target without a Ready condition yet
/// (or a placeholder) is not held back.
pub fn target_not_ready(target: &ApplicationInstance, t: OperationType) -> Option<String> {
    if target.metadata.deletion_timestamp.is_some() {
        return Some(format!(
            "ApplicationInstance {:?} is being deleted",
            target.name_any()
        ));
    }
    if matches!(t, OperationType::Restore | OperationType::Upgrade) {
        return None;
    }
    let ready = conditions::find(
        target
            .status
            .as_ref()
            .map_or(&[][..], |s| &s.conditions[..]),
        types::READY,
    )?;
    (ready.status == FALSE).then(|| {
        format!(
            "ApplicationInstance {:?} is not Ready ({}: {})",
            target.name_any(),
            ready.reason,
            ready.message
        )
    })
}

/// Which existing types block an incoming one (same target, same namespace).
pub fn blocked_by(incoming: OperationType) -> &'static [OperationType] {
    match incoming {
        OperationType::Upgrade => &[OperationType::Upgrade],
        OperationType::Restore => &[OperationType::Upgrade, OperationType::Backup],
        OperationType::Backup => &[OperationType::Restore],
        _ => &[],
    }
}

/// The Operation `op` must wait for, if any: a conflicting one that is Running, or
/// Pending and older (first come, first served — two Pending Operations never wait for
/// each other).
pub fn conflict<'a>(op: &Operation, others: &'a [Operation]) -> Option<&'a Operation> {
    let order = |o: &Operation| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.name_any(),
        )
    };
    others.iter().find(|other| {
        other.uid() != op.uid()
            && other.spec.target_ref.name == op.spec.target_ref.name
            && blocked_by(op.spec.r#type).contains(&other.spec.r#type)
            && match phase(other) {
                Some(Phase::Running) => true,
                Some(Phase::Pending) | None => {
                    other.metadata.deletion_timestamp.is_none() && order(other) < order(op)
                }
                Some(_) => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(name: &str, t: &str, phase: Option<&str>, created: &str) -> Operation {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": "n", "uid": name, "creationTimestamp": created},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                     "type": t, "engine": "velero"}
        });
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn concurrency_matrix_and_no_mutual_deadlock() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:00:01Z";
        // Restore blocked by a running Backup; Backup by a running Restore; Upgrade by Upgrade.
        let running_backup = op("b", "Backup", Some("Running"), t0);
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                std::slice::from_ref(&running_backup)
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                &[op("r", "Restore", Some("Running"), t0)]
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("u2", "Upgrade", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_some()
        );
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_some()
        );
        // Not blocked: Backup by Backup or Upgrade, anything by terminal ones, RunCommand never.
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                std::slice::from_ref(&running_backup)
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("b2", "Backup", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("r", "Restore", None, t1),
                &[op("b", "Backup", Some("Succeeded"), t0)]
            )
            .is_none()
        );
        assert!(
            conflict(
                &op("c", "RunCommand", None, t1),
                &[op("u", "Upgrade", Some("Running"), t0)]
            )
            .is_none()
        );
        // Two Pending conflicting Operations: only the younger waits.
        let older = op("b", "Backup", Some("Pending"), t0);
        let younger = op("r", "Restore", Some("Pending"), t1);
        assert!(conflict(&younger, std::slice::from_ref(&older)).is_some());
        assert!(conflict(&older, std::slice::from_ref(&younger)).is_none());
    }
}
