//! Gates of a Pending Operation that need no client: target readiness and the
//! concurrency matrix (which types wait for which, first come first served).

use kube_core::ResourceExt;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{self, FALSE, op_reasons as r, types};
use vworkspace_api::keys;
use vworkspace_api::operation::{Operation, OperationType, Phase};

use crate::approval;
use crate::engines::{self, Template, params};

/// Why an Operation stays Pending: the `Blocked`/`Accepted` reason and an actionable
/// message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub reason: &'static str,
    pub message: String,
}

fn block(reason: &'static str, message: impl Into<String>) -> Block {
    Block {
        reason,
        message: message.into(),
    }
}

/// Spec checks that need no other object; the template on success.
pub fn validate(op: &Operation) -> Result<&'static Template, Block> {
    let tr = &op.spec.target_ref;
    if tr.api_version != "apps.vworkspace.io/v1alpha1" || tr.kind != "ApplicationInstance" {
        return Err(block(
            r::VALIDATION_FAILED,
            "spec.targetRef must be apps.vworkspace.io/v1alpha1 ApplicationInstance",
        ));
    }
    let Some(template) = engines::template(op.spec.r#type, op.spec.engine) else {
        let pairs: Vec<String> = engines::TEMPLATES
            .iter()
            .map(|t| {
                format!(
                    "{}+{}",
                    engines::type_name(t.r#type),
                    engines::engine_name(t.engine)
                )
            })
            .collect();
        return Err(block(
            r::VALIDATION_FAILED,
            format!(
                "spec.type {} cannot run on spec.engine {} (runnable pairs: {})",
                engines::type_name(op.spec.r#type),
                engines::engine_name(op.spec.engine),
                pairs.join(", ")
            ),
        ));
    };
    params::validate(template, op.spec.parameters.as_ref())
        .map_err(|m| block(r::VALIDATION_FAILED, m))?;
    if !template.implemented {
        return Err(block(
            r::DEPENDENCY_MISSING,
            format!(
                "engine {} ({}) is not implemented in this build",
                engines::engine_name(op.spec.engine),
                template.name
            ),
        ));
    }
    if let Some(t) = op.spec.timeout_seconds
        && t < 1
    {
        return Err(block(
            r::VALIDATION_FAILED,
            "spec.timeoutSeconds: must be at least 1",
        ));
    }
    Ok(template)
}

/// The gates of a Pending Operation, in order: the target exists and can take it, a
/// required approval claim verifies, no conflicting Operation is ahead of it, and the
/// target declares the capability. `peers`: the Operations of its namespace.
pub fn admit<'a>(
    op: &Operation,
    template: &Template,
    target: Option<&'a ApplicationInstance>,
    peers: &[Operation],
    approval_secret: &str,
    now_seconds: i64,
) -> Result<&'a ApplicationInstance, Block> {
    let target = target_found(op, target)?;
    if let Some(why) = target_not_ready(target, op.spec.r#type) {
        return Err(block(r::TARGET_NOT_READY, why));
    }
    approval_gate(op, template, approval_secret, now_seconds)?;
    if let Some(other) = conflict(op, peers) {
        return Err(block(
            r::CONFLICTING_OPERATION,
            format!(
                "conflicts with operation {:?} ({})",
                other.name_any(),
                engines::type_name(other.spec.r#type)
            ),
        ));
    }
    capability(op, template, target)?;
    Ok(target)
}

/// The target ApplicationInstance exists (spec §9.2 #5); shared by the controller's
/// gate and the admission webhook.
pub fn target_found<'a>(
    op: &Operation,
    target: Option<&'a ApplicationInstance>,
) -> Result<&'a ApplicationInstance, Block> {
    let ns = op.namespace().unwrap_or_default();
    target.ok_or_else(|| {
        block(
            r::TARGET_NOT_FOUND,
            format!(
                "ApplicationInstance {:?} not found in namespace {ns:?}",
                op.spec.target_ref.name
            ),
        )
    })
}

/// The target declares `ops.vworkspace.io/<verb>: <engine>` (spec §9.2 #6).
pub fn capability(
    op: &Operation,
    template: &Template,
    target: &ApplicationInstance,
) -> Result<(), Block> {
    let key = format!("{}{}", keys::CAPABILITY_PREFIX, template.verb);
    let engine = engines::engine_name(op.spec.engine);
    let declared = target.annotations().get(&key).map(|v| v.trim().to_string());
    if declared.as_deref() == Some(engine.as_str()) {
        return Ok(());
    }
    Err(block(
        r::CAPABILITY_MISSING,
        format!(
            "ApplicationInstance {:?} does not declare {key}: {engine} (found {})",
            target.name_any(),
            declared.map_or("nothing".to_string(), |d| format!("{d:?}"))
        ),
    ))
}

/// The engine's workload kinds are served (`EngineNotInstalled`): `served` answers for
/// one API resource (discovery in the webhook, the apiserver's 404 in the controller).
pub fn engine_installed(
    template: &Template,
    settings: &engines::Settings,
    served: impl Fn(&kube_core::ApiResource) -> bool,
) -> Result<(), Block> {
    match template
        .runner
        .resources(settings)
        .into_iter()
        .find(|(ar, _)| !served(ar))
    {
        Some((ar, _)) => Err(not_served(&ar.kind, &ar.api_version)),
        None => Ok(()),
    }
}

/// The block of an Operation whose workload kind is not served by the cluster.
pub fn not_served(kind: &str, api_version: &str) -> Block {
    block(
        r::ENGINE_NOT_INSTALLED,
        format!(
            "{kind} ({api_version}) is not served by this cluster: install its controller and CRDs"
        ),
    )
}

/// Approval (spec §8.11): required by the template or `spec.approvals.required`; the
/// claim must verify against the secret and match the Operation's bindings.
fn approval_gate(
    op: &Operation,
    template: &Template,
    secret: &str,
    now_seconds: i64,
) -> Result<(), Block> {
    let approvals = op.spec.approvals.as_ref();
    let required =
        template.approval_by_default || approvals.and_then(|a| a.required).unwrap_or(false);
    if !required {
        return Ok(());
    }
    if claim(op).is_empty() {
        return Err(block(
            r::AWAITING_APPROVAL,
            "approval claim required in spec.approvals.claim",
        ));
    }
    verify_claim(op, secret, now_seconds)
}

/// `spec.approvals.claim`, trimmed ("" when absent).
pub fn claim(op: &Operation) -> &str {
    op.spec
        .approvals
        .as_ref()
        .and_then(|a| a.claim.as_deref())
        .map(str::trim)
        .unwrap_or("")
}

/// Verifies the Operation's claim and its bindings (spec §8.11): the controller's gate
/// for a required approval, and admission for any present claim (§9.2 #8).
pub fn verify_claim(op: &Operation, secret: &str, now_seconds: i64) -> Result<(), Block> {
    let approvals = op.spec.approvals.as_ref();
    let ns = op.namespace().unwrap_or_default();
    let uid = op.uid().unwrap_or_default();
    let op_type = engines::type_name(op.spec.r#type);
    approval::verify(claim(op), secret, &op.name_any(), now_seconds)
        .and_then(|claims| {
            approval::check_binding(
                &claims,
                &approval::Binding {
                    namespace: &ns,
                    uid: &uid,
                    op_type: &op_type,
                    target: &op.spec.target_ref.name,
                    approved_by: approvals.and_then(|a| a.approved_by.as_deref()),
                },
            )
        })
        .map_err(|why| {
            block(
                r::AWAITING_APPROVAL,
                format!("invalid approval claim: {why}"),
            )
        })
}

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
