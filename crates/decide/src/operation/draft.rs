//! The status of an Operation being assembled during one pass.

use vworkspace_api::conditions::types;
use vworkspace_api::conditions::{self, Condition, Desired, FALSE, TRUE, Time, op_reasons as r};
use vworkspace_api::operation::{Operation, OperationStatus, Phase};

use crate::engines::helm;

/// A status to write, and the conditions whose status flipped (worth an Event).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub status: OperationStatus,
    pub flipped: Vec<Condition>,
}

/// Status being assembled, plus the condition types that flipped.
#[derive(Clone, Debug)]
pub struct Draft {
    pub status: OperationStatus,
    original: Option<OperationStatus>,
    generation: Option<i64>,
    pub now: Time,
    flipped: Vec<String>,
}

impl Draft {
    pub fn new(op: &Operation, now: Time) -> Self {
        Draft {
            status: op.status.clone().unwrap_or_default(),
            original: op.status.clone(),
            generation: op.metadata.generation,
            now,
            flipped: Vec::new(),
        }
    }

    pub fn set(&mut self, t: &str, s: &str, reason: &str, message: impl Into<String>) {
        let change = conditions::set(
            &mut self.status.conditions,
            Desired::new(t, s, reason, message),
            self.generation,
            &self.now,
        );
        if change == conditions::Change::Transitioned {
            self.flipped.push(t.to_string());
        }
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

    /// The update to write, or `None` when the status is unchanged.
    pub fn finish(self) -> Option<StatusUpdate> {
        if self.original.as_ref() == Some(&self.status) {
            return None;
        }
        let flipped = self
            .flipped
            .iter()
            .filter_map(|t| conditions::find(&self.status.conditions, t).cloned())
            .collect();
        Some(StatusUpdate {
            status: self.status,
            flipped,
        })
    }
}
