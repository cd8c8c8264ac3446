//! Job kinds, outcomes and the typed payloads of `delete` and `intent` jobs (§2.12).
//!
//! `Job::kind` and `JobResult::outcome` stay plain strings on the wire types so that one
//! unknown value never breaks decoding of a whole poll response; these types are the
//! checked view of them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ProtocolError;

/// Payload family of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// `payload` is a complete object manifest, server-side applied.
    Apply,
    /// `payload` is a [`DeletePayload`].
    Delete,
    /// `payload` is an [`Intent`].
    Intent,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Apply => "apply",
            JobKind::Delete => "delete",
            JobKind::Intent => "intent",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apply" => Ok(JobKind::Apply),
            "delete" => Ok(JobKind::Delete),
            "intent" => Ok(JobKind::Intent),
            other => Err(ProtocolError::UnknownJobKind(other.to_string())),
        }
    }
}

/// Terminal outcome of a job (lower case on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Noop,
    Conflict,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Noop => "noop",
            Outcome::Conflict => "conflict",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "succeeded" => Ok(Outcome::Succeeded),
            "failed" => Ok(Outcome::Failed),
            "noop" => Ok(Outcome::Noop),
            "conflict" => Ok(Outcome::Conflict),
            other => Err(ProtocolError::UnknownOutcome(other.to_string())),
        }
    }
}

impl From<Outcome> for String {
    fn from(o: Outcome) -> String {
        o.as_str().to_string()
    }
}

/// Payload of a `delete` job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletePayload {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `None` (or absent/empty on the wire) for cluster-scoped objects.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub namespace: Option<String>,
}

fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

fn required_str(
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<String, ProtocolError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(ProtocolError::MissingField(field)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ProtocolError::MissingField(field)),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ProtocolError::InvalidField {
            field,
            reason: "must be a string".into(),
        }),
    }
}

fn optional_str(
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ProtocolError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Some(_) => Err(ProtocolError::InvalidField {
            field,
            reason: "must be a string".into(),
        }),
    }
}

/// A full object under `field` that carries `apiVersion` and `kind`.
fn required_object(
    obj: &serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<Value, ProtocolError> {
    let v = match obj.get(field) {
        None | Some(Value::Null) => return Err(ProtocolError::MissingField(field)),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ProtocolError::InvalidField {
                field,
                reason: "must be an object".into(),
            });
        }
    };
    for key in ["apiVersion", "kind"] {
        if v.get(key)
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(ProtocolError::InvalidField {
                field,
                reason: format!("{key} is required"),
            });
        }
    }
    Ok(v.clone())
}

impl DeletePayload {
    /// Decodes and checks a `delete` payload: `apiVersion`, `kind` and `name` required.
    pub fn parse(payload: &Value) -> Result<DeletePayload, ProtocolError> {
        let obj = payload.as_object().ok_or(ProtocolError::NotAnObject)?;
        Ok(DeletePayload {
            api_version: required_str(obj, "apiVersion")?,
            kind: required_str(obj, "kind")?,
            name: required_str(obj, "name")?,
            namespace: optional_str(obj, "namespace")?,
        })
    }
}

/// Intent names (`payload.intent`).
pub const INTENT_ENSURE_APPLICATION_INSTANCE: &str = "ensure-application-instance";
pub const INTENT_REQUEST_OPERATION: &str = "request-operation";
pub const INTENT_DELETE_APPLICATION_INSTANCE: &str = "delete-application-instance";
/// Ask the agent to rotate its own bootstrap credential (no extra fields).
pub const INTENT_ROTATE_OPERATOR_CREDENTIALS: &str = "rotate-operator-credentials";

/// Payload of an `intent` job: `{"intent": "<name>", ...}`.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    /// `applicationInstance`: a full ApplicationInstance object (with apiVersion and kind).
    EnsureApplicationInstance { application_instance: Value },
    /// `operation`: a full Operation object (with apiVersion and kind).
    RequestOperation { operation: Value },
    /// Delete the named ApplicationInstance (absent counts as done).
    DeleteApplicationInstance {
        name: String,
        namespace: Option<String>,
    },
    /// Rotate the operator's own bootstrap token.
    RotateOperatorCredentials,
}

impl Intent {
    /// Decodes an intent payload. Unknown intents fail with
    /// [`ProtocolError::UnknownIntent`] naming the intent, missing fields with
    /// [`ProtocolError::MissingField`] naming the field.
    pub fn parse(payload: &Value) -> Result<Intent, ProtocolError> {
        let obj = payload.as_object().ok_or(ProtocolError::NotAnObject)?;
        let name = required_str(obj, "intent")?;
        match name.as_str() {
            INTENT_ENSURE_APPLICATION_INSTANCE => Ok(Intent::EnsureApplicationInstance {
                application_instance: required_object(obj, "applicationInstance")?,
            }),
            INTENT_REQUEST_OPERATION => Ok(Intent::RequestOperation {
                operation: required_object(obj, "operation")?,
            }),
            INTENT_DELETE_APPLICATION_INSTANCE => Ok(Intent::DeleteApplicationInstance {
                name: required_str(obj, "name")?,
                namespace: optional_str(obj, "namespace")?,
            }),
            INTENT_ROTATE_OPERATOR_CREDENTIALS => Ok(Intent::RotateOperatorCredentials),
            _ => Err(ProtocolError::UnknownIntent(name)),
        }
    }

    /// The wire name of the intent.
    pub fn name(&self) -> &'static str {
        match self {
            Intent::EnsureApplicationInstance { .. } => INTENT_ENSURE_APPLICATION_INSTANCE,
            Intent::RequestOperation { .. } => INTENT_REQUEST_OPERATION,
            Intent::DeleteApplicationInstance { .. } => INTENT_DELETE_APPLICATION_INSTANCE,
            Intent::RotateOperatorCredentials => INTENT_ROTATE_OPERATOR_CREDENTIALS,
        }
    }

    /// The payload this intent travels as.
    pub fn to_payload(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("intent".into(), self.name().into());
        match self {
            Intent::EnsureApplicationInstance {
                application_instance,
            } => {
                m.insert("applicationInstance".into(), application_instance.clone());
            }
            Intent::RequestOperation { operation } => {
                m.insert("operation".into(), operation.clone());
            }
            Intent::DeleteApplicationInstance { name, namespace } => {
                m.insert("name".into(), name.clone().into());
                if let Some(ns) = namespace {
                    m.insert("namespace".into(), ns.clone().into());
                }
            }
            Intent::RotateOperatorCredentials => {}
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_and_outcomes() {
        assert_eq!("delete".parse::<JobKind>().unwrap(), JobKind::Delete);
        assert_eq!(
            "patch".parse::<JobKind>().unwrap_err(),
            ProtocolError::UnknownJobKind("patch".into())
        );
        for o in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::Noop,
            Outcome::Conflict,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), json!(o.as_str()));
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), o);
        }
        assert!("Succeeded".parse::<Outcome>().is_err());
    }

    #[test]
    fn delete_payloads() {
        let d = DeletePayload::parse(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "name": "a", "namespace": "", "extra": 1}))
        .unwrap();
        assert_eq!(d.namespace, None);
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "a"})
        );
        let e =
            DeletePayload::parse(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap_err();
        assert_eq!(e, ProtocolError::MissingField("name"));
        assert!(e.to_string().contains("\"name\""));
        assert_eq!(
            DeletePayload::parse(&json!([])).unwrap_err(),
            ProtocolError::NotAnObject
        );
    }

    #[test]
    fn intents() {
        let ai = json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki"}});
        let p = json!({"intent": "ensure-application-instance", "applicationInstance": ai});
        let i = Intent::parse(&p).unwrap();
        assert_eq!(
            i,
            Intent::EnsureApplicationInstance {
                application_instance: ai.clone()
            }
        );
        assert_eq!(i.to_payload(), p);
        let d = Intent::parse(
            &json!({"intent": "delete-application-instance", "name": "wiki",
            "namespace": "org"}),
        )
        .unwrap();
        assert_eq!(
            d,
            Intent::DeleteApplicationInstance {
                name: "wiki".into(),
                namespace: Some("org".into())
            }
        );
        assert!(matches!(
            Intent::parse(
                &json!({"intent": "request-operation", "operation": {"kind": "Operation"}})
            ),
            Err(ProtocolError::InvalidField {
                field: "operation",
                ..
            })
        ));
        let r = json!({"intent": "rotate-operator-credentials"});
        assert_eq!(
            Intent::parse(&r).unwrap(),
            Intent::RotateOperatorCredentials
        );
        assert_eq!(Intent::RotateOperatorCredentials.to_payload(), r);
        let e = Intent::parse(&json!({"intent": "reboot-cluster"})).unwrap_err();
        assert_eq!(e.to_string(), "unsupported intent \"reboot-cluster\"");
        assert_eq!(
            Intent::parse(&json!({"intent": "request-operation"})).unwrap_err(),
            ProtocolError::MissingField("operation")
        );
        assert_eq!(
            Intent::parse(&json!({"name": "x"})).unwrap_err(),
            ProtocolError::MissingField("intent")
        );
    }
}
