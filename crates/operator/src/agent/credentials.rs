//! The credentials Secret (spec §3.2) and the in-process credential hand-off.
//!
//! [`CredentialStore`] owns the credentials in use and publishes them on a `watch`
//! channel: the poller, the event batcher and the heartbeat read the current value on
//! every request, so a rotated token is used by the very next request (connectivity
//! defect 3), and a long poll in flight is restarted when the credentials change.
//!
//! Tokens live in [`Token`], whose `Debug`/`Display` print `[REDACTED]`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use vworkspace_api::{Cluster, keys};

use crate::metrics::Metrics;

pub const DEFAULT_SECRET_NAME: &str = "vworkspace-agent-credentials";
pub const KEY_BASE_URL: &str = "control-plane-base-url";
/// Read-only legacy alias of [`KEY_BASE_URL`].
pub const KEY_LEGACY_BASE_URL: &str = "odoo-base-url";
pub const KEY_CLUSTER_ID: &str = "cluster-id";
pub const KEY_TOKEN: &str = "token";

/// A bearer or registration token. Never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into().trim().to_string())
    }

    /// The raw value, for the `Authorization` header and the Secret only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// First 16 hex characters of SHA-256: the only form that may be stored or shown.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

pub fn fingerprint(s: &str) -> String {
    let digest = Sha256::digest(s.trim().as_bytes());
    hex::encode(digest)[..16].to_string()
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Complete credentials, as read from the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Without a trailing `/`.
    pub base_url: String,
    pub cluster_id: String,
    pub token: Token,
}

/// Where the credentials Secret lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretLocation {
    pub namespace: String,
    pub name: String,
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned();
    from_data
        .or(from_string)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Reads the three keys; `Err` names what is missing (never a value).
pub fn parse_secret(secret: &Secret) -> Result<Credentials, String> {
    let base_url = value(secret, KEY_BASE_URL).or_else(|| value(secret, KEY_LEGACY_BASE_URL));
    let cluster_id = value(secret, KEY_CLUSTER_ID);
    let token = value(secret, KEY_TOKEN);
    let mut missing = Vec::new();
    if base_url.is_none() {
        missing.push(KEY_BASE_URL);
    }
    if cluster_id.is_none() {
        missing.push(KEY_CLUSTER_ID);
    }
    if token.is_none() {
        missing.push(KEY_TOKEN);
    }
    match (base_url, cluster_id, token) {
        (Some(b), Some(c), Some(t)) => Ok(Credentials {
            base_url: b.trim_end_matches('/').to_string(),
            cluster_id: c,
            token: Token::new(t),
        }),
        _ => Err(format!(
            "credentials Secret is incomplete: missing or empty {}",
            missing.join(", ")
        )),
    }
}

/// When the Secret's token was written: our annotation, else the Secret's creation.
pub fn written_at(secret: &Secret) -> Option<Timestamp> {
    secret
        .annotations()
        .get(keys::ANNOTATION_CREDENTIALS_WRITTEN_AT)
        .and_then(|s| s.parse().ok())
        .or_else(|| secret.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// How the control plane last judged the credentials.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum AuthState {
    #[default]
    Unknown,
    Accepted,
    /// `401` after one reload, or `403`: stop until the Secret content changes.
    Rejected {
        status: u16,
        message: String,
        /// Fingerprint of the token that was rejected.
        token: String,
    },
}

/// The credentials in use, shared by poller, batcher, heartbeat and rotation.
pub struct CredentialStore {
    client: kube::Client,
    metrics: std::sync::Arc<Metrics>,
    default_location: SecretLocation,
    location: Mutex<SecretLocation>,
    tx: watch::Sender<Option<Credentials>>,
    auth: Mutex<AuthState>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading/writing the credentials Secret: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Incomplete(String),
}

impl CredentialStore {
    pub fn new(
        client: kube::Client,
        metrics: std::sync::Arc<Metrics>,
        default_location: SecretLocation,
    ) -> Self {
        let (tx, _) = watch::channel(None);
        CredentialStore {
            client,
            metrics,
            location: Mutex::new(default_location.clone()),
            default_location,
            tx,
            auth: Mutex::new(AuthState::Unknown),
        }
    }

    pub fn default_location(&self) -> &SecretLocation {
        &self.default_location
    }

    pub fn location(&self) -> SecretLocation {
        self.location
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_location(&self, loc: SecretLocation) {
        if let Ok(mut l) = self.location.lock() {
            *l = loc;
        }
    }

    pub fn current(&self) -> Option<Credentials> {
        self.tx.borrow().clone()
    }

    /// Whether credentials are held (without cloning them).
    pub fn has_credentials(&self) -> bool {
        self.tx.borrow().is_some()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Credentials>> {
        self.tx.subscribe()
    }

    /// Publishes new credentials (no-op when unchanged). A changed token clears a
    /// rejection: the poller resumes.
    pub fn publish(&self, creds: Option<Credentials>) -> bool {
        let changed = self.tx.send_if_modified(|cur| {
            if *cur == creds {
                return false;
            }
            *cur = creds.clone();
            true
        });
        if changed {
            if let Ok(mut a) = self.auth.lock() {
                *a = AuthState::Unknown;
            }
            if creds.is_none() {
                self.metrics.clear_credentials_time();
            }
        }
        changed
    }

    pub fn auth_state(&self) -> AuthState {
        self.auth.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn set_auth(&self, state: AuthState) {
        if let Ok(mut a) = self.auth.lock() {
            *a = state;
        }
    }

    /// Whether the current credentials were rejected (poller must wait for a change).
    pub fn is_rejected(&self) -> bool {
        matches!(self.auth_state(), AuthState::Rejected { .. })
    }

    /// Reads the Secret at the current location and publishes what it holds.
    /// `Ok(None)`: no Secret. `Err(Incomplete)`: present but incomplete (nothing
    /// published: the runtime keeps its state).
    pub async fn load(&self) -> Result<Option<Credentials>, CredentialsError> {
        let loc = self.location();
        let secret = Api::<Secret>::namespaced(self.client.clone(), &loc.namespace)
            .get_opt(&loc.name)
            .await?;
        self.apply_secret(secret.as_ref())
    }

    /// Publishes what `secret` (the Secret at the current location, as read or watched)
    /// holds, with [`load`](Self::load)'s results; no request is made.
    pub fn apply_secret(
        &self,
        secret: Option<&Secret>,
    ) -> Result<Option<Credentials>, CredentialsError> {
        let Some(secret) = secret else {
            self.publish(None);
            return Ok(None);
        };
        let creds = parse_secret(secret).map_err(CredentialsError::Incomplete)?;
        if let Some(at) = written_at(secret) {
            self.metrics.set_credentials_time(at);
        }
        self.publish(Some(creds.clone()));
        Ok(Some(creds))
    }

    /// The one reload a `401` earns (spec §2.11): re-reads the Secret; returns the new
    /// credentials when the token (or anything else) changed since `used`.
    pub async fn reload_after_unauthorized(&self, used: &Credentials) -> Option<Credentials> {
        match self.load().await {
            Ok(Some(c)) if c != *used => Some(c),
            _ => None,
        }
    }

    /// Writes the credentials Secret at the default location (create-or-update of our
    /// keys only), owned by `cluster` so it is garbage-collected with it, and publishes
    /// the new credentials at once.
    pub async fn write(
        &self,
        cluster: &Cluster,
        creds: &Credentials,
    ) -> Result<(), CredentialsError> {
        let loc = self.default_location.clone();
        let now = Timestamp::now();
        let owner = cluster.controller_owner_ref(&());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(loc.name.clone()),
                namespace: Some(loc.namespace.clone()),
                annotations: Some(BTreeMap::from([(
                    keys::ANNOTATION_CREDENTIALS_WRITTEN_AT.to_string(),
                    now.to_string(),
                )])),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            string_data: Some(BTreeMap::from([
                (KEY_BASE_URL.to_string(), creds.base_url.clone()),
                (KEY_CLUSTER_ID.to_string(), creds.cluster_id.clone()),
                (KEY_TOKEN.to_string(), creds.token.expose().to_string()),
            ])),
            ..Default::default()
        };
        let mut value = serde_json::to_value(&secret).unwrap_or_default();
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        Api::<Secret>::namespaced(self.client.clone(), &loc.namespace)
            .patch(
                &loc.name,
                &PatchParams::apply(keys::FIELD_MANAGER_CLUSTER).force(),
                &Patch::Apply(value),
            )
            .await?;
        self.set_location(loc);
        self.metrics.set_credentials_time(now);
        self.publish(Some(creds.clone()));
        Ok(())
    }

    /// Reads the Secret's written-at time (for scheduled rotation).
    pub async fn written_at(&self) -> Result<Option<Timestamp>, CredentialsError> {
        let loc = self.location();
        Ok(
            Api::<Secret>::namespaced(self.client.clone(), &loc.namespace)
                .get_opt(&loc.name)
                .await?
                .as_ref()
                .and_then(written_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn secret_parsing_trims_and_accepts_the_legacy_url_key() {
        let c = parse_secret(&secret(&[
            (KEY_LEGACY_BASE_URL, " http://cp:8080/ "),
            (KEY_CLUSTER_ID, "c-1\n"),
            (KEY_TOKEN, " tok "),
        ]))
        .unwrap();
        assert_eq!(c.base_url, "http://cp:8080");
        assert_eq!(c.cluster_id, "c-1");
        assert_eq!(c.token.expose(), "tok");
        let e = parse_secret(&secret(&[(KEY_BASE_URL, "http://x"), (KEY_TOKEN, " ")])).unwrap_err();
        assert!(e.contains("cluster-id") && e.contains("token"), "{e}");
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new("vwksp-reg-secret");
        assert_eq!(format!("{t} {t:?}"), "[REDACTED] [REDACTED]");
        let c = Credentials {
            base_url: "u".into(),
            cluster_id: "c".into(),
            token: t.clone(),
        };
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(t.fingerprint().len(), 16);
        assert_eq!(t.fingerprint(), fingerprint(" vwksp-reg-secret "));
    }
}
