//! The Pull-mode wire format between the operator's agent and the control plane, shared
//! by the agent and the mock control plane (spec: connectivity §2; as implemented:
//! docs/protocol.md).
//!
//! Decoding is lenient where the contract says so: unknown fields are ignored, optional
//! fields may be absent, `0001-01-01T00:00:00Z` / `null` / `""` read as an unset time,
//! `"jobs": null` reads as no jobs, and a job of an unknown kind still decodes (its
//! [`Job::parsed_kind`] reports the problem). Encoding omits empty optional fields as the
//! contract specifies.

pub mod batch;
pub mod error;
pub mod payload;
pub mod secret;
pub mod signing;
pub mod time;

pub use error::ProtocolError;
pub use payload::{
    DeletePayload, INTENT_DELETE_APPLICATION_INSTANCE, INTENT_ENSURE_APPLICATION_INSTANCE,
    INTENT_REQUEST_OPERATION, INTENT_ROTATE_OPERATOR_CREDENTIALS, Intent, JobKind, Outcome,
};
pub use secret::{SecretString, Token};

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Agent media type (`Accept` on every call, `Content-Type` on calls with a body).
pub const MEDIA_TYPE: &str = "application/vnd.vworkspace.agent.v1+json";
/// Path prefix of every agent endpoint.
pub const API_PREFIX: &str = "/api/agent/";

/// Event kinds (`Event::kind`).
pub const CONDITION_TRANSITION: &str = "ConditionTransition";
pub const CLUSTER_HEARTBEAT: &str = "ClusterHeartbeat";
pub const CREDENTIAL_ROTATED: &str = "CredentialRotated";
/// Wire-reserved Operation audit kinds (accepted by the server, not emitted today).
pub const OPERATION_ACCEPTED: &str = "OperationAccepted";
pub const OPERATION_BLOCKED: &str = "OperationBlocked";
pub const OPERATION_RUNNING: &str = "OperationRunning";
pub const OPERATION_SUCCEEDED: &str = "OperationSucceeded";
pub const OPERATION_FAILED: &str = "OperationFailed";

/// Older names of the event-kind constants.
pub const EVENT_CONDITION_TRANSITION: &str = CONDITION_TRANSITION;
pub const EVENT_CLUSTER_HEARTBEAT: &str = CLUSTER_HEARTBEAT;
pub const EVENT_CREDENTIAL_ROTATED: &str = CREDENTIAL_ROTATED;

/// Outcomes as strings (see [`Outcome`] for the checked form).
pub const OUTCOME_SUCCEEDED: &str = "succeeded";
pub const OUTCOME_FAILED: &str = "failed";
pub const OUTCOME_NOOP: &str = "noop";
pub const OUTCOME_CONFLICT: &str = "conflict";

/// Error code (`ErrorBody::error`) the agent puts on signature failures.
pub use signing::SIGNATURE_INVALID;

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Object reference (`appliedRef`, `resourceRef`). `namespace` is always serialised (`""`
/// for cluster-scoped objects); `uid` is omitted when empty, `generation` when 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespace: String,
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub uid: String,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_as_default"
    )]
    pub generation: i64,
}

impl ObjectRef {
    /// `uid` as an option (`None` when empty).
    pub fn uid(&self) -> Option<&str> {
        Some(self.uid.as_str()).filter(|u| !u.is_empty())
    }

    /// `generation` as an option (`None` when 0).
    pub fn generation(&self) -> Option<i64> {
        Some(self.generation).filter(|g| *g != 0)
    }
}

/// Kubernetes-shaped condition. `lastTransitionTime` is serialised as `null` when unset
/// (audit events may carry `null`); `observedGeneration` is omitted when 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub reason: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    #[serde(default, with = "time::opt")]
    pub last_transition_time: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_as_default"
    )]
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

/// Body of every error response. All fields are optional for the reader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "null_as_default")]
    pub error: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub request_id: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: code.into(),
            message: message.into(),
            request_id: String::new(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.error.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.error, self.message),
            (false, true) => f.write_str(&self.error),
            _ => f.write_str(&self.message),
        }
    }
}

/// `POST /api/agent/register` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    #[serde(default, deserialize_with = "null_as_default")]
    pub registration_token: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cluster_id: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub display_name: String,
}

/// `POST /api/agent/register` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub cluster_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
    #[serde(default, with = "time::opt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `POST /api/agent/credentials/rotate` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateResponse {
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
    #[serde(default, with = "time::opt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A unit of work from the poll. `kind` stays a string so a job of an unknown kind does
/// not break decoding of the whole response; see [`Job::parsed_kind`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, deserialize_with = "null_as_default")]
    pub idempotency_key: String,
    #[serde(default, with = "time::opt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, with = "time::opt", skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_payload: Option<String>,
}

impl Job {
    /// The checked kind.
    pub fn parsed_kind(&self) -> Result<JobKind, ProtocolError> {
        self.kind.parse()
    }

    /// Whether the job has an expiry that lies before `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e < now)
    }
}

/// `GET /api/agent/jobs` answer; `null` or missing `jobs` reads as empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobsResponse {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub jobs: Vec<Job>,
}

/// `POST /api/agent/jobs/{id}/status` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    #[serde(default, deserialize_with = "null_as_default")]
    pub phase: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub conditions: Vec<Condition>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub message: String,
    pub timestamp: Timestamp,
}

/// `POST /api/agent/jobs/{id}/result` body. `outcome` is one of the [`Outcome`] names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub outcome: String,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_ref: Option<ObjectRef>,
    pub timestamp: Timestamp,
}

impl JobResult {
    pub fn new(outcome: Outcome, error: impl Into<String>, applied_ref: Option<ObjectRef>) -> Self {
        JobResult {
            outcome: outcome.into(),
            error: error.into(),
            applied_ref,
            timestamp: Timestamp::now(),
        }
    }

    /// The checked outcome.
    pub fn parsed_outcome(&self) -> Result<Outcome, ProtocolError> {
        self.outcome.parse()
    }
}

/// A reachable service URL of an application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
}

/// A job-independent status, condition or audit event. (`managedStorage` is deliberately
/// not modelled: it would carry a secret access key on the audit channel.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub event_key: String,
    pub kind: String,
    pub resource_ref: ObjectRef,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub conditions: Vec<Condition>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub endpoints: Vec<Endpoint>,
    pub timestamp: Timestamp,
}

/// `POST /api/agent/events` body as the agent writes it (borrowed batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsRequest<'a> {
    pub events: &'a [Event],
}

/// `POST /api/agent/events` body as a server reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsBody {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub events: Vec<Event>,
}

/// Event keys (connectivity §2.9), made unique per transition (defect 7).
///
/// Condition keys keep the documented prefix
/// `condition/<apiVersion>/<kind>/<ns|_>/<name>/<uid|_>/<type>/<status>@<generation>`
/// so a server can still group by it, and append
/// `#<lastTransitionTime in Unix milliseconds, or _>/<first 4 bytes of SHA-256 over
/// reason NUL message NUL, in hex>`. A repeated flip to the same status (new transition
/// time) and a reason or message change under the same status therefore produce new
/// keys, while re-sending the same condition (e.g. the snapshot after a reconnect)
/// produces the same key and is de-duplicated.
///
/// Audit keys are `<kind>/<uid|_>/<firstConditionType>#<unique>`, where the caller picks
/// `unique` per occurrence (e.g. the rotation time), so each rotation is its own event.
pub mod event_key {
    use sha2::{Digest, Sha256};

    use super::{Condition, ObjectRef};

    /// Anything an audit key can take the UID from: an [`ObjectRef`] or the UID itself.
    pub trait Uid {
        fn uid_str(&self) -> &str;
    }

    impl Uid for ObjectRef {
        fn uid_str(&self) -> &str {
            &self.uid
        }
    }

    impl Uid for str {
        fn uid_str(&self) -> &str {
            self
        }
    }

    impl Uid for String {
        fn uid_str(&self) -> &str {
            self
        }
    }

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

    /// `condition/<apiVersion>/<kind>/<ns|_>/<name>/<uid|_>/<type>/<status>@<generation>#<ltt ms|_>/<hash>`.
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

    /// `<kind>/<uid|_>/<firstConditionType>#<unique>`; `uid` is an [`ObjectRef`] or a
    /// UID string.
    pub fn audit_key<U: Uid + ?Sized>(
        kind: &str,
        uid: &U,
        first_type: &str,
        unique: &str,
    ) -> String {
        format!(
            "{kind}/{}/{first_type}#{unique}",
            or_underscore(uid.uid_str())
        )
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

    #[test]
    fn unknown_kinds_and_fields_do_not_break_a_poll() {
        let r: JobsResponse = serde_json::from_value(json!({"jobs": [
            {"id": "a", "kind": "apply", "payload": {"kind": "ConfigMap"}, "future": {"x": 1}},
            {"id": "b", "kind": "teleport", "payload": null, "idempotencyKey": null},
            {"id": "c"}
        ], "cursor": "opaque"}))
        .unwrap();
        assert_eq!(r.jobs.len(), 3);
        assert_eq!(r.jobs[0].parsed_kind().unwrap(), JobKind::Apply);
        assert_eq!(
            r.jobs[1].parsed_kind().unwrap_err().to_string(),
            "unknown job kind \"teleport\""
        );
        assert_eq!(r.jobs[2].payload, Value::Null);
        assert_eq!(r.jobs[2].idempotency_key, "");
        assert!(r.jobs[2].parsed_kind().is_err());
    }

    #[test]
    fn round_trips() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let job = Job {
            id: "j1".into(),
            kind: "intent".into(),
            payload: json!({"intent": "delete-application-instance", "name": "a"}),
            idempotency_key: "k".into(),
            created_at: Some(t("2026-01-01T00:00:00Z")),
            expires_at: Some(t("2026-01-01T00:10:00.5Z")),
            signature: Some("c2ln".into()),
            encrypted_payload: None,
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["expiresAt"], "2026-01-01T00:10:00.5Z");
        assert!(v.get("encryptedPayload").is_none());
        assert_eq!(serde_json::from_value::<Job>(v).unwrap(), job);
        assert!(job.is_expired_at(t("2026-01-01T00:11:00Z")));
        assert!(!job.is_expired_at(t("2026-01-01T00:01:00Z")));

        let reference = ObjectRef {
            api_version: "apps.vworkspace.io/v1alpha1".into(),
            kind: "ApplicationInstance".into(),
            namespace: "org".into(),
            name: "wiki".into(),
            uid: "u".into(),
            generation: 3,
        };
        let cond = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "HelmReleaseReady".into(),
            message: "ok".into(),
            last_transition_time: None,
            observed_generation: 0,
        };
        let ev = Event {
            event_key: event_key::condition_key(&reference, &cond),
            kind: CONDITION_TRANSITION.into(),
            resource_ref: reference.clone(),
            conditions: vec![cond.clone()],
            endpoints: vec![Endpoint {
                name: "web".into(),
                url: "https://wiki.example".into(),
            }],
            timestamp: t("2026-01-01T00:00:00Z"),
        };
        let v = serde_json::to_value(EventsRequest {
            events: std::slice::from_ref(&ev),
        })
        .unwrap();
        assert_eq!(
            v["events"][0]["conditions"][0],
            json!({"type": "Ready", "status": "True", "reason": "HelmReleaseReady",
                "message": "ok", "lastTransitionTime": null})
        );
        assert!(v["events"][0].get("managedStorage").is_none());
        let back: EventsBody = serde_json::from_value(v).unwrap();
        assert_eq!(back.events, vec![ev]);
        assert!(
            serde_json::from_value::<EventsBody>(json!({"events": null}))
                .unwrap()
                .events
                .is_empty()
        );

        let res = JobResult::new(Outcome::Conflict, "owned by kubectl", Some(reference));
        let back: JobResult = serde_json::from_value(serde_json::to_value(&res).unwrap()).unwrap();
        assert_eq!(back, res);
        assert_eq!(back.parsed_outcome().unwrap(), Outcome::Conflict);

        let st = StatusUpdate {
            phase: "Reconciling".into(),
            conditions: Vec::new(),
            message: String::new(),
            timestamp: t("2026-01-01T00:00:00Z"),
        };
        assert_eq!(
            serde_json::to_value(&st).unwrap(),
            json!({"phase": "Reconciling", "timestamp": "2026-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn registration_rotation_and_errors() {
        let req = RegisterRequest {
            registration_token: "vwksp-reg-1".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"registrationToken": "vwksp-reg-1"})
        );
        let r: RegisterResponse = serde_json::from_value(
            json!({"clusterId": "c", "token": "t", "expiresAt": "0001-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!((r.cluster_id.as_str(), r.expires_at), ("c", None));
        let r: RotateResponse =
            serde_json::from_value(json!({"token": "t2", "expiresAt": "2027-01-01T00:00:00Z"}))
                .unwrap();
        assert!(r.expires_at.is_some());
        assert_eq!(
            serde_json::to_value(RotateResponse {
                token: "t".into(),
                expires_at: None
            })
            .unwrap(),
            json!({"token": "t"})
        );
        let e = ErrorBody::new("NotFound", "job x is unknown");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"error": "NotFound", "message": "job x is unknown"})
        );
        assert_eq!(e.to_string(), "NotFound: job x is unknown");
        let e: ErrorBody =
            serde_json::from_value(json!({"message": null, "requestId": "rq-1"})).unwrap();
        assert_eq!((e.error.as_str(), e.request_id.as_str()), ("", "rq-1"));
    }

    #[test]
    fn audit_keys_take_a_ref_or_a_uid() {
        let r = ObjectRef {
            uid: "u9".into(),
            ..Default::default()
        };
        assert_eq!(
            event_key::audit_key(CREDENTIAL_ROTATED, &r, "Authenticated", "5"),
            "CredentialRotated/u9/Authenticated#5"
        );
        assert_eq!(
            event_key::audit_key(CREDENTIAL_ROTATED, "u9", "Authenticated", "5"),
            "CredentialRotated/u9/Authenticated#5"
        );
        assert_eq!(
            event_key::audit_key(CREDENTIAL_ROTATED, "", "Authenticated", "5"),
            "CredentialRotated/_/Authenticated#5"
        );
        let k = event_key::condition_key(
            &ObjectRef {
                api_version: "ops.vworkspace.io/v1alpha1".into(),
                kind: "Cluster".into(),
                name: "c".into(),
                ..Default::default()
            },
            &Condition {
                type_: "Connected".into(),
                status: "True".into(),
                last_transition_time: Some(Timestamp::from_millisecond(1500).unwrap()),
                ..Default::default()
            },
        );
        assert!(
            k.starts_with(
                "condition/ops.vworkspace.io/v1alpha1/Cluster/_/c/_/Connected/True@0#1500/"
            ),
            "{k}"
        );
        assert_eq!(k.rsplit('/').next().map(str::len), Some(8));
    }
}
