//! Errors of decoding protocol payloads.

/// Why a job or payload could not be understood. The messages name the offending kind,
/// intent or field so they can go into a `failed` result as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unknown job kind {0:?}")]
    UnknownJobKind(String),
    #[error("unsupported intent {0:?}")]
    UnknownIntent(String),
    #[error("payload field {0:?} is missing or empty")]
    MissingField(&'static str),
    #[error("payload field {field:?} is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("unknown outcome {0:?}")]
    UnknownOutcome(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
}
