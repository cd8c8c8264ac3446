//! The Pull-mode wire format between the operator's agent and the control plane, shared
//! by the agent and the mock control plane. Types follow the JSON field by field:
//! unknown fields are ignored, optional fields are omitted when empty,
//! `0001-01-01T00:00:00Z` reads as unset, `"jobs": null` reads as no jobs.

pub mod signing;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Agent media type (`Accept` and `Content-Type`).
pub const MEDIA_TYPE: &str = "application/vnd.vworkspace.agent.v1+json";

/// Event kinds.
pub const EVENT_CONDITION_TRANSITION: &str = "ConditionTransition";
pub const EVENT_CLUSTER_HEARTBEAT: &str = "ClusterHeartbeat";
pub const EVENT_CREDENTIAL_ROTATED: &str = "CredentialRotated";

/// Outcomes.
pub const OUTCOME_SUCCEEDED: &str = "succeeded";
pub const OUTCOME_FAILED: &str = "failed";
pub const OUTCOME_NOOP: &str = "noop";
pub const OUTCOME_CONFLICT: &str = "conflict";

/// `0001-01-01T00:00:00Z` (and anything before 1970) reads as unset.
fn opt_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<Timestamp>().ok())
        .filter(|t| t.as_second() > 0))
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, deserialize_with = "opt_time")]
    pub last_transition_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub observed_generation: i64,
}

impl From<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> for Condition {
    fn from(c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> Self {
        Condition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: Some(c.last_transition_time.0).filter(|t| t.as_second() > 0),
            observed_generation: c.observed_generation.unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub request_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    #[serde(default)]
    pub registration_token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub token: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResponse {
    #[serde(default)]
    pub token: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(
        default,
        deserialize_with = "opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<Timestamp>,
    #[serde(
        default,
        deserialize_with = "opt_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_payload: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsResponse {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub jobs: Vec<Job>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub timestamp: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ref: Option<ObjectRef>,
    pub timestamp: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_key: String,
    pub kind: String,
    pub resource_ref: ObjectRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    pub timestamp: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsRequest<'a> {
    pub events: &'a [Event],
}

/// The server's view of an events POST.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct EventsBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<Event>,
}

/// Event keys (spec §2.9), made unique per transition (connectivity defect 7): the
/// documented prefix is kept so servers can still group by it, and a suffix
/// `#<lastTransitionTime>/<reason hash>` distinguishes a repeated flip to the same status
/// and a reason/message change under the same status.
pub mod event_key {
    use sha2::{Digest, Sha256};

    use super::{Condition, ObjectRef};

    fn or_underscore(s: &str) -> &str {
        if s.is_empty() { "_" } else { s }
    }

    fn short_hash(parts: &[&str]) -> String {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..4])
    }

    /// `condition/<apiVersion>/<kind>/<ns|_>/<name>/<uid|_>/<type>/<status>@<generation>#<ltt>/<h>`.
    pub fn condition_key(r: &ObjectRef, c: &Condition) -> String {
        let ltt = c
            .last_transition_time
            .map(|t| t.as_millisecond().to_string())
            .unwrap_or_else(|| "_".into());
        format!(
            "condition/{}/{}/{}/{}/{}/{}/{}@{}#{}/{}",
            r.api_version,
            r.kind,
            or_underscore(&r.namespace),
            r.name,
            or_underscore(&r.uid),
            c.type_,
            c.status,
            r.generation,
            ltt,
            short_hash(&[&c.reason, &c.message])
        )
    }

    /// `<kind>/<uid>/<firstConditionType>#<unique>`: `unique` distinguishes every
    /// occurrence (e.g. each rotation).
    pub fn audit_key(kind: &str, r: &ObjectRef, first_type: &str, unique: &str) -> String {
        format!("{kind}/{}/{first_type}#{unique}", or_underscore(&r.uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jobs_null_and_unset_times() {
        let r: JobsResponse = serde_json::from_value(json!({"jobs": null})).unwrap();
        assert!(r.jobs.is_empty());
        let r: JobsResponse = serde_json::from_value(json!({})).unwrap();
        assert!(r.jobs.is_empty());
        let r: JobsResponse = serde_json::from_value(json!({"jobs": [{
            "id": "j1", "kind": "apply", "payload": {}, "idempotencyKey": "",
            "createdAt": "2026-01-01T00:00:00.123456789Z", "expiresAt": "0001-01-01T00:00:00Z",
            "extra": 1}]}))
        .unwrap();
        assert_eq!(r.jobs[0].expires_at, None);
        assert!(r.jobs[0].created_at.is_some());
    }

    #[test]
    fn serialisation_omits_empty_fields() {
        let res = JobResult {
            outcome: OUTCOME_NOOP.into(),
            error: String::new(),
            applied_ref: None,
            timestamp: Timestamp::from_second(0).unwrap(),
        };
        assert_eq!(
            serde_json::to_value(&res).unwrap(),
            json!({"outcome": "noop", "timestamp": "1970-01-01T00:00:00Z"})
        );
        let r = ObjectRef {
            api_version: "v1".into(),
            kind: "K".into(),
            name: "n".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"apiVersion": "v1", "kind": "K", "namespace": "", "name": "n"})
        );
    }

    #[test]
    fn condition_keys_are_unique_per_transition() {
        let r = ObjectRef {
            api_version: "apps.vworkspace.io/v1alpha1".into(),
            kind: "ApplicationInstance".into(),
            namespace: "org".into(),
            name: "wiki".into(),
            uid: "u1".into(),
            generation: 7,
        };
        let at = |s| Some(Timestamp::from_second(s).unwrap());
        let c = |status: &str, reason: &str, t| Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: t,
            observed_generation: 7,
        };
        let k1 = event_key::condition_key(&r, &c("True", "A", at(10)));
        assert!(k1.starts_with(
            "condition/apps.vworkspace.io/v1alpha1/ApplicationInstance/org/wiki/u1/Ready/True@7#"
        ));
        // Same status again later, and a reason change: new keys.
        let k2 = event_key::condition_key(&r, &c("True", "A", at(20)));
        let k3 = event_key::condition_key(&r, &c("True", "B", at(10)));
        assert!(k1 != k2 && k1 != k3 && k2 != k3);
        assert_eq!(k1, event_key::condition_key(&r, &c("True", "A", at(10))));
        assert_ne!(
            event_key::audit_key("CredentialRotated", &r, "Authenticated", "1"),
            event_key::audit_key("CredentialRotated", &r, "Authenticated", "2")
        );
    }
}
