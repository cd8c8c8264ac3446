//! When an applied object counts as done (spec §2.8 Target, connectivity defect 1): the
//! job is `succeeded` only once the object reports success for the applied generation.
//!
//! | kind | succeeded | failed | otherwise |
//! |---|---|---|---|
//! | ApplicationInstance | `Ready=True` | `Blocked=True`, or `Ready=False/HelmReleaseFailed` | pending |
//! | Operation | `Succeeded=True` or phase `Succeeded` | `Failed=True`/phase `Failed`, `Cancelled=True`/phase `Cancelled` | pending |
//! | velero BackupStorageLocation | phase `Available` | phase `Unavailable` | pending |
//!
//! Conditions computed for an older generation (`observedGeneration` below the applied
//! one) are ignored, so re-applying a changed spec to a Ready instance waits for the new
//! generation.

use serde_json::Value;

use super::applier::Readiness;
use super::wire::Condition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Succeeded(String),
    Failed(String),
    Pending { phase: String, message: String },
}

pub fn conditions(obj: &Value) -> Vec<Condition> {
    obj.pointer("/status/conditions")
        .and_then(|c| serde_json::from_value::<Vec<Condition>>(c.clone()).ok())
        .unwrap_or_default()
}

fn current<'a>(list: &'a [Condition], type_: &str, generation: i64) -> Option<&'a Condition> {
    list.iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.observed_generation == 0 || c.observed_generation >= generation)
}

fn describe(c: &Condition) -> String {
    if c.message.is_empty() {
        c.reason.clone()
    } else {
        format!("{}: {}", c.reason, c.message)
    }
}

pub fn evaluate(kind: Readiness, obj: &Value, generation: i64) -> Verdict {
    let list = conditions(obj);
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let is = |t: &str, s: &str| current(&list, t, generation).filter(|c| c.status == s);
    match kind {
        Readiness::None => Verdict::Succeeded(String::new()),
        Readiness::ApplicationInstance => {
            if let Some(c) = is("Ready", "True") {
                return Verdict::Succeeded(describe(c));
            }
            if let Some(c) = is("Blocked", "True") {
                return Verdict::Failed(format!("Blocked: {}", describe(c)));
            }
            if let Some(c) = is("Ready", "False").filter(|c| c.reason == "HelmReleaseFailed") {
                return Verdict::Failed(format!("Ready=False: {}", describe(c)));
            }
            Verdict::Pending {
                phase: "Reconciling".into(),
                message: current(&list, "Ready", generation)
                    .map(describe)
                    .unwrap_or_else(|| "waiting for the instance to become Ready".into()),
            }
        }
        Readiness::Operation => {
            if let Some(c) = is("Succeeded", "True") {
                return Verdict::Succeeded(describe(c));
            }
            if phase == "Succeeded" {
                return Verdict::Succeeded("phase Succeeded".into());
            }
            if let Some(c) = is("Failed", "True") {
                return Verdict::Failed(format!("Operation failed: {}", describe(c)));
            }
            if let Some(c) = is("Cancelled", "True") {
                return Verdict::Failed(format!("Operation cancelled: {}", describe(c)));
            }
            if phase == "Failed" || phase == "Cancelled" {
                return Verdict::Failed(format!("Operation phase {phase}"));
            }
            Verdict::Pending {
                phase: if phase.is_empty() {
                    "Pending".into()
                } else {
                    phase
                },
                message: list
                    .iter()
                    .find(|c| c.status == "True" && (c.type_ == "Blocked" || c.type_ == "Running"))
                    .map(|c| format!("{}: {}", c.type_, describe(c)))
                    .unwrap_or_default(),
            }
        }
        Readiness::BackupStorageLocation => match phase.as_str() {
            "Available" => Verdict::Succeeded("Available".into()),
            "Unavailable" => Verdict::Failed(format!(
                "BackupStorageLocation Unavailable: {}",
                obj.pointer("/status/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )),
            _ => Verdict::Pending {
                phase: "Reconciling".into(),
                message: "waiting for the BackupStorageLocation to become Available".into(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(conds: Value) -> Value {
        json!({"status": {"conditions": conds}})
    }

    #[test]
    fn instance_verdicts() {
        let ready = |s, r, g| json!({"type": "Ready", "status": s, "reason": r, "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": g});
        assert_eq!(
            evaluate(
                Readiness::ApplicationInstance,
                &inst(json!([ready("True", "HelmReleaseReady", 2)])),
                2
            ),
            Verdict::Succeeded("HelmReleaseReady: m".into())
        );
        // Stale generation: still pending.
        assert!(matches!(
            evaluate(
                Readiness::ApplicationInstance,
                &inst(json!([ready("True", "HelmReleaseReady", 1)])),
                2
            ),
            Verdict::Pending { .. }
        ));
        assert!(matches!(
            evaluate(
                Readiness::ApplicationInstance,
                &inst(json!([ready("False", "HelmReleaseFailed", 2)])),
                2
            ),
            Verdict::Failed(_)
        ));
        let blocked = json!([ready("False", "ValidationFailed", 2), {"type": "Blocked", "status": "True", "reason": "ValidationFailed", "message": "bad chart", "lastTransitionTime": null}]);
        assert_eq!(
            evaluate(Readiness::ApplicationInstance, &inst(blocked), 2),
            Verdict::Failed("Blocked: ValidationFailed: bad chart".into())
        );
        assert!(matches!(
            evaluate(Readiness::ApplicationInstance, &json!({}), 1),
            Verdict::Pending { .. }
        ));
    }

    #[test]
    fn operation_and_bsl_verdicts() {
        let op = |c: Value, phase: &str| json!({"status": {"phase": phase, "conditions": c}});
        assert!(matches!(
            evaluate(
                Readiness::Operation,
                &op(
                    json!([{"type": "Succeeded", "status": "True", "reason": "EngineCompleted", "message": ""}]),
                    "Succeeded"
                ),
                1
            ),
            Verdict::Succeeded(_)
        ));
        assert!(matches!(
            evaluate(
                Readiness::Operation,
                &op(
                    json!([{"type": "Failed", "status": "True", "reason": "EngineFailed", "message": "x"}]),
                    "Failed"
                ),
                1
            ),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            evaluate(Readiness::Operation, &op(json!([]), "Running"), 1),
            Verdict::Pending { .. }
        ));
        assert!(matches!(
            evaluate(
                Readiness::BackupStorageLocation,
                &json!({"status": {"phase": "Unavailable"}}),
                1
            ),
            Verdict::Failed(_)
        ));
    }
}
