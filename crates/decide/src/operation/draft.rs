//! The status of an Operation being assembled during one pass.

use vworkspace_api::conditions::types;
use vworkspace_api::conditions::{self, Desired, FALSE, TRUE, Time, op_reasons as r};
use vworkspace_api::operation::{Operation, OperationStatus, Phase};

use crate::engines::helm;

/// Status being assembled during one pass. The transitions worth an Event are found
/// by the controller's kit when it writes (old vs new conditions).
#[derive(Clone, Debug)]
pub struct Draft {
    pub status: OperationStatus,
    original: Option<OperationStatus>,
    generation: Option<i64>,
    pub now: Time,
}

impl Draft {
    pub fn new(op: &Operation, now: Time) -> Self {
        Draft {
            status: op.status.clone().unwrap_or_default(),
            original: op.status.clone(),
            generation: op.metadata.generation,
            now,
        }
    }

    pub fn set(&mut self, t: &str, s: &str, reason: &str, message: impl Into<String>) {
        conditions::set(
            &mut self.status.conditions,
            Desired::new(t, s, reason, message),
            self.generation,
            &self.now,
        );
    }

    /// Pending, `Blocked=True` and `Accepted=False`, both with `reason`.
    pub fn blocked(&mut self, reason: &str, message: String) {
        self.status.phase = Some(Phase::Pending);
        self.set(types::BLOCKED, TRUE, reason, message.clone());
        self.set(types::ACCEPTED, FALSE, reason, message);
    }

    /// The terminal transition: `phase`, `finishedAt`, the phase's condition, Running
    /// and Blocked cleared, bookkeeping outputs dropped.
    pub fn terminal(&mut self, phase: Phase, reason: &str, message: String) {
        if let Some(outputs) = self.status.outputs.as_mut() {
            helm::public_outputs(outputs);
        }
        self.status.phase = Some(phase);
        self.status.finished_at = Some(self.now.clone());
        let (t, running_msg) = match phase {
            Phase::Succeeded => (types::SUCCEEDED, "completed"),
            Phase::Cancelled => (types::CANCELLED, "cancelled"),
            _ => (types::FAILED, "finished with failure"),
        };
        self.set(t, TRUE, reason, message);
        self.set(types::RUNNING, FALSE, r::ENGINE_NOT_STARTED, running_msg);
        self.set(types::BLOCKED, FALSE, r::UNBLOCKED, "");
    }

    /// The status to write, or `None` when it is unchanged.
    pub fn finish(self) -> Option<OperationStatus> {
        (self.original.as_ref() != Some(&self.status)).then_some(self.status)
    }
}
