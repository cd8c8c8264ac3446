//! The admission webhook's decisions (spec §9), built from the same checks the
//! controllers run (`operation::gates`, `instance::policy`), so a rule cannot drift
//! between the two layers. The webhook reads what a review needs (the target, the
//! registered cluster ids, which kinds are served) and calls these.
//!
//! Object-only rules (required fields, immutability, placeholder shape) live in the
//! API server (CRD CEL and ValidatingAdmissionPolicy); this layer holds the rules that
//! need other objects, secrets or operator configuration. Conflicting Operations are
//! admitted on purpose: the controller parks them as `Blocked/ConflictingOperation`, so
//! the attempt stays visible.

use kube_core::ApiResource;
use serde_json::Value;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::operation::Operation;

use crate::engines::Settings;
use crate::instance::policy;
use crate::operation::gates;

/// Spec §9.3: an UPDATE of an object being deleted, or one that leaves `spec` as it was
/// (finalizers, labels, status), skips every lookup rule, so the controller can always
/// let an object go. `new`/`old` are the raw objects of the review.
pub fn skips_lookups(new: &Value, old: Option<&Value>) -> bool {
    let deleting = new
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    let spec_unchanged = old.is_some_and(|old| old.get("spec") == new.get("spec"));
    deleting || spec_unchanged
}

/// An Operation UPDATE whose stored phase is past Pending: the gates no longer apply
/// (parameters are frozen by layer 1), so the lookups are skipped.
pub fn operation_started(old: Option<&Value>) -> bool {
    matches!(
        old.and_then(|o| o.pointer("/status/phase"))
            .and_then(Value::as_str),
        Some("Running" | "Succeeded" | "Failed" | "Cancelled")
    )
}

/// What an Operation review needs besides the object.
pub struct OperationFacts<'a> {
    /// `spec.targetRef.name` in the Operation's namespace, when it exists.
    pub target: Option<&'a ApplicationInstance>,
    /// HMAC key of approval claims; empty rejects every claim.
    pub approval_secret: &'a str,
    pub now_seconds: i64,
    pub settings: &'a Settings,
    /// Whether an API resource is served by the cluster.
    pub served: &'a dyn Fn(&ApiResource) -> bool,
}

/// Operation CREATE, or UPDATE that changes `spec` (spec §9.2, in order; the first
/// failure is the message). A missing claim on an approval-requiring Operation and a
/// conflicting Operation are admitted: the controller keeps them Pending with a reason.
pub fn review_operation(op: &Operation, facts: &OperationFacts<'_>) -> Result<(), String> {
    // A cancelled Operation never runs: cancelling must work even when its target is
    // gone or its claim expired.
    if op.spec.cancel == Some(true) {
        return Ok(());
    }
    let template = gates::validate(op).map_err(|b| b.message)?;
    let target = gates::target_found(op, facts.target).map_err(|b| {
        format!(
            "spec.targetRef.name: {}; create it first or fix the name",
            b.message
        )
    })?;
    gates::capability(op, template, target).map_err(|b| {
        format!(
            "spec.targetRef: missing capability: {}; annotate the target or pick another engine",
            b.message
        )
    })?;
    if !gates::claim(op).is_empty() {
        gates::verify_claim(op, facts.approval_secret, facts.now_seconds)
            .map_err(|b| format!("spec.approvals.claim: {}", b.message))?;
    }
    gates::engine_installed(template, facts.settings, facts.served)
        .map_err(|b| format!("spec.engine: {}", b.message))?;
    Ok(())
}

/// What an ApplicationInstance review needs besides the object.
pub struct InstanceFacts<'a> {
    /// `spec.clusterId` of the cluster's `Cluster` objects.
    pub registered_cluster_ids: &'a [String],
    /// Allowed chart URL prefixes; empty allows all.
    pub allowed_chart_urls: &'a [String],
}

/// ApplicationInstance CREATE, or UPDATE that changes `spec` (spec §9.4 #4 and the
/// documented lookup rules of §11 item 17).
pub fn review_instance(
    inst: &ApplicationInstance,
    facts: &InstanceFacts<'_>,
) -> Result<(), String> {
    policy::inline_secrets(&inst.spec)?;
    policy::cluster_id_matches(
        inst.metadata.labels.as_ref().unwrap_or(&Default::default()),
        facts.registered_cluster_ids,
    )?;
    policy::chart_url_allowed(&inst.spec, facts.allowed_chart_urls)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn lookups_skipped_for_deletion_and_unchanged_spec() {
        let new = json!({"metadata": {"finalizers": []}, "spec": {"a": 1}});
        let old = json!({"metadata": {"finalizers": ["f"]}, "spec": {"a": 1}});
        assert!(skips_lookups(&new, Some(&old)));
        assert!(!skips_lookups(&new, None));
        let changed = json!({"spec": {"a": 2}});
        assert!(!skips_lookups(&changed, Some(&old)));
        let deleting =
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"a": 2}});
        assert!(skips_lookups(&deleting, Some(&old)));
    }

    fn op(v: Value) -> Operation {
        serde_json::from_value(v).unwrap()
    }

    fn target(annotations: Value) -> ApplicationInstance {
        serde_json::from_value(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "n", "annotations": annotations},
            "spec": {"appRef": {"catalogId": "wiki"}}
        }))
        .unwrap()
    }

    fn backup(claim: Option<&str>) -> Operation {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": "b1", "namespace": "n"},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                     "type": "Backup", "engine": "velero"}
        });
        if let Some(c) = claim {
            v["spec"]["approvals"] = json!({"claim": c});
        }
        op(v)
    }

    #[test]
    fn cancel_and_started_operations_skip_the_lookups() {
        let settings = Settings::default();
        let all = |_: &ApiResource| true;
        let f = OperationFacts {
            target: None,
            approval_secret: "",
            now_seconds: 0,
            settings: &settings,
            served: &all,
        };
        let mut op = backup(None);
        assert!(review_operation(&op, &f).is_err());
        op.spec.cancel = Some(true);
        assert_eq!(review_operation(&op, &f), Ok(()));
        assert!(operation_started(Some(
            &json!({"status": {"phase": "Running"}})
        )));
        assert!(!operation_started(Some(
            &json!({"status": {"phase": "Pending"}})
        )));
        assert!(!operation_started(None));
    }

    #[test]
    fn operation_rules_in_order() {
        let settings = Settings::default();
        let all = |_: &ApiResource| true;
        let none = |_: &ApiResource| false;
        let good = target(json!({"ops.vworkspace.io/backup": "velero"}));
        let f = OperationFacts {
            target: Some(&good),
            approval_secret: "s3cret",
            now_seconds: 100,
            settings: &settings,
            served: &all,
        };
        assert_eq!(review_operation(&backup(None), &f), Ok(()));
        let missing = OperationFacts { target: None, ..f };
        let err = review_operation(&backup(None), &missing).unwrap_err();
        assert!(
            err.contains("ApplicationInstance \"wiki\" not found in namespace \"n\""),
            "{err}"
        );
        let bare = target(json!({}));
        let err = review_operation(
            &backup(None),
            &OperationFacts {
                target: Some(&bare),
                ..f
            },
        )
        .unwrap_err();
        assert!(
            err.contains("missing capability") && err.contains("ops.vworkspace.io/backup"),
            "{err}"
        );
        let err = review_operation(&backup(Some("vws1.x.y")), &f).unwrap_err();
        assert!(
            err.starts_with("spec.approvals.claim: invalid approval claim"),
            "{err}"
        );
        let claim = crate::approval::issue("s3cret", "b1", "alice", 1000);
        assert_eq!(review_operation(&backup(Some(&claim)), &f), Ok(()));
        let no_secret = OperationFacts {
            approval_secret: "",
            ..f
        };
        assert!(review_operation(&backup(Some(&claim)), &no_secret).is_err());
        let err =
            review_operation(&backup(None), &OperationFacts { served: &none, ..f }).unwrap_err();
        assert!(err.contains("is not served by this cluster"), "{err}");
    }
}
