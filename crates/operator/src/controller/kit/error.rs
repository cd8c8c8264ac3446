//! Typed reconcile errors: every failure names the stage it happened in, and that stage
//! is the `category` label of `controller_runtime_reconcile_errors_total` and the reason
//! a controller may put on a condition.

use std::fmt;

/// Where in a reconcile pass a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading what the decision needs (the object, referenced objects, discovery).
    Observe,
    /// Creating, patching or deleting children, or calling the control plane.
    Apply,
    /// Writing `.status`.
    Status,
    /// Adding or removing the finalizer.
    Finalizer,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Observe => "observe",
            Stage::Apply => "apply",
            Stage::Status => "status",
            Stage::Finalizer => "finalizer",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong underneath a stage.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl From<String> for Cause {
    fn from(s: String) -> Self {
        Cause::Other(s)
    }
}

impl From<&str> for Cause {
    fn from(s: &str) -> Self {
        Cause::Other(s.to_string())
    }
}

/// The error of every reconciler built on the kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure that a retry may fix (API error, timeout, conflict, remote call).
    #[error("{stage}: {cause}")]
    Stage { stage: Stage, cause: Cause },
    /// The object cannot be reconciled as written. Retrying cannot help: the error
    /// policy waits for a change of the object (or of a watched reference) instead.
    #[error("invalid spec ({reason}): {message}")]
    InvalidSpec {
        reason: &'static str,
        message: String,
    },
    /// The pass did not finish within the kit's deadline and was cancelled; retried.
    #[error("pass cancelled after {0:?} (deadline)")]
    Deadline(std::time::Duration),
}

/// Metric `category` values.
pub mod category {
    pub const OBSERVE: &str = "observe";
    pub const APPLY: &str = "apply";
    pub const STATUS: &str = "status";
    pub const FINALIZER: &str = "finalizer";
    pub const INVALID_SPEC: &str = "invalid_spec";
    pub const DEADLINE: &str = "deadline";
}

impl Error {
    pub fn new(stage: Stage, cause: impl Into<Cause>) -> Self {
        Error::Stage {
            stage,
            cause: cause.into(),
        }
    }

    pub fn invalid_spec(reason: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            reason,
            message: message.into(),
        }
    }

    /// Low-cardinality label for metrics: the stage, or `invalid_spec`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Stage { stage, .. } => stage.as_str(),
            Error::InvalidSpec { .. } => category::INVALID_SPEC,
            Error::Deadline(_) => category::DEADLINE,
        }
    }

    /// Condition reason for this failure (CamelCase, valid for `Condition.reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Stage { stage, .. } => match stage {
                Stage::Observe => "ObserveFailed",
                Stage::Apply => "ApplyFailed",
                Stage::Status => "StatusWriteFailed",
                Stage::Finalizer => "FinalizerFailed",
            },
            Error::InvalidSpec { reason, .. } => reason,
            Error::Deadline(_) => "PassDeadlineExceeded",
        }
    }

    /// True when retrying on a timer cannot help.
    pub fn waits_for_change(&self) -> bool {
        matches!(self, Error::InvalidSpec { .. })
    }

    /// The Kubernetes API status code underneath, if any.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Error::Stage {
                cause: Cause::Kube(kube::Error::Api(s)),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

/// Tags a fallible step with its stage: `api.get_opt(n).await.at(Stage::Observe)?`.
pub trait AtStage<T> {
    fn at(self, stage: Stage) -> Result<T, Error>;
}

impl<T, E: Into<Cause>> AtStage<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, Error> {
        self.map_err(|e| Error::new(stage, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Conflict")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn every_stage_has_its_own_category_and_reason() {
        let cases = [
            (Stage::Observe, "observe", "ObserveFailed"),
            (Stage::Apply, "apply", "ApplyFailed"),
            (Stage::Status, "status", "StatusWriteFailed"),
            (Stage::Finalizer, "finalizer", "FinalizerFailed"),
        ];
        for (stage, category, reason) in cases {
            let e: Result<(), _> = Err::<(), _>(api(409)).at(stage);
            let e = e.unwrap_err();
            assert_eq!(e.category(), category);
            assert_eq!(e.reason(), reason);
            assert_eq!(e.api_code(), Some(409));
            assert!(!e.waits_for_change());
            assert!(e.to_string().starts_with(category), "{e}");
        }
    }

    #[test]
    fn invalid_spec_waits_for_a_change_and_keeps_its_reason() {
        let e = Error::invalid_spec("ValidationFailed", "spec.chart.url is empty");
        assert_eq!(e.category(), category::INVALID_SPEC);
        assert_eq!(e.reason(), "ValidationFailed");
        assert!(e.waits_for_change());
        assert_eq!(e.api_code(), None);
        assert!(e.to_string().contains("spec.chart.url is empty"));
    }

    #[test]
    fn a_deadline_is_retried_and_has_its_own_category() {
        let e = Error::Deadline(std::time::Duration::from_secs(120));
        assert_eq!(e.category(), category::DEADLINE);
        assert_eq!(e.reason(), "PassDeadlineExceeded");
        assert!(!e.waits_for_change());
        assert_eq!(e.api_code(), None);
    }

    #[test]
    fn plain_messages_are_causes_too() {
        let e = Err::<(), _>("control plane answered 502".to_string())
            .at(Stage::Apply)
            .unwrap_err();
        assert_eq!(e.category(), "apply");
        assert_eq!(e.to_string(), "apply: control plane answered 502");
    }
}
