//! HTTP client of the Pull-mode agent API (spec §2), with the status-code reactions of
//! §2.11:
//!
//! | answer | reaction |
//! |---|---|
//! | 2xx | success; connectivity `Connected`; credentials `Accepted` |
//! | 401 | re-read the credentials Secret once and retry with a changed token; still 401 → credentials `Rejected` ([`ClientError::Unauthorized`]); nothing is sent again until the Secret content changes |
//! | 403 | credentials `Rejected` ([`ClientError::Forbidden`]), no retry |
//! | 404 on a job path | [`ClientError::JobGone`]: drop the job |
//! | 404 elsewhere | [`ClientError::EndpointNotFound`]: configuration error (base URL) |
//! | 409 on ack/result | success ([`Delivery::AlreadyClosed`]) |
//! | 429 | [`ClientError::RateLimited`] with the parsed `Retry-After` |
//! | 5xx, network, timeout | [`ClientError::Unavailable`]; callers back off (`backoff`) |
//!
//! Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` are honoured (reqwest's system proxy
//! support). Tokens appear only in the `Authorization` header, never in errors or logs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backoff::parse_retry_after;
use super::connectivity::{Connectivity, Windows};
use super::credentials::{AuthState, CredentialStore, Credentials, Token};
use super::wire::batch::{Batch, MAX_RESPONSE_BYTES, split_jobs};
use super::wire::{
    ErrorBody, Event, EventsRequest, JobResult, MEDIA_TYPE, RegisterRequest, RegisterResponse,
    RotateResponse, StatusUpdate,
};
use crate::metrics::Metrics;

/// Per-request timeout of agent calls (must exceed the 300 s long-poll cap).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Per-request timeout of registration.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no complete control-plane credentials")]
    NoCredentials,
    #[error("credentials rejected (401): {0}")]
    Unauthorized(String),
    #[error("forbidden (403): {0}")]
    Forbidden(String),
    #[error("job unknown or closed on the control plane (404)")]
    JobGone,
    #[error("control-plane endpoint not found (404): check the base URL: {0}")]
    EndpointNotFound(String),
    #[error("request rejected (400): {0}")]
    BadRequest(String),
    #[error("rate limited (429){}", .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Worth retrying after a backoff (the server may recover by itself).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::RateLimited { .. }
                | ClientError::Unavailable(_)
                | ClientError::Unexpected(_)
        )
    }

    /// Fixable only by new credentials.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized(_) | ClientError::Forbidden(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// Largest body read from any answer but a successful poll (errors, registration,
/// rotation): those are a few hundred bytes; anything beyond is not read.
pub const MAX_OTHER_BODY_BYTES: usize = 64 * 1024;

/// A response body read up to a cap.
pub struct Body {
    pub bytes: Vec<u8>,
    /// `false` when reading stopped at the cap (the rest was never read).
    pub complete: bool,
}

/// Reads at most `cap` bytes of the body, chunk by chunk, so a huge or endless answer
/// costs at most `cap` of memory; the connection is dropped with the rest unread.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Body, ClientError> {
    let mut bytes = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - bytes.len();
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    return Ok(Body {
                        bytes,
                        complete: false,
                    });
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Ok(Body {
                    bytes,
                    complete: true,
                });
            }
            Err(e) => return Err(ClientError::Unavailable(e.without_url().to_string())),
        }
    }
}

/// Which endpoint a request went to: decides 404/409 handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Register,
    Poll,
    Ack,
    Status,
    Result,
    Events,
    Rotate,
}

impl Endpoint {
    fn is_job_path(self) -> bool {
        matches!(self, Endpoint::Ack | Endpoint::Status | Endpoint::Result)
    }
}

/// A successful delivery of an ack or result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// `409`: already closed / result already recorded — success for the client.
    AlreadyClosed,
}

/// `agent API error (<status>): <error>: <message>` (spec §2.2).
pub fn format_error(prefix: &str, status: StatusCode, body: &str) -> String {
    let parsed: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let message = if parsed.message.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        parsed.message
    };
    let code = if parsed.error.is_empty() {
        status.as_str().to_string()
    } else {
        parsed.error
    };
    format!("{prefix} ({}): {code}: {message}", status.as_u16())
}

/// Maps a non-2xx answer to the client's reaction (pure).
pub fn classify(
    endpoint: Endpoint,
    status: StatusCode,
    body: &str,
    retry_after: Option<&str>,
    now: Timestamp,
) -> Result<Delivery, ClientError> {
    let prefix = if endpoint == Endpoint::Register {
        "register API error"
    } else {
        "agent API error"
    };
    let text = || format_error(prefix, status, body);
    match status.as_u16() {
        200..=299 => Ok(Delivery::Accepted),
        409 if matches!(endpoint, Endpoint::Ack | Endpoint::Result) => Ok(Delivery::AlreadyClosed),
        400 => Err(ClientError::BadRequest(text())),
        401 => Err(ClientError::Unauthorized(text())),
        403 => Err(ClientError::Forbidden(text())),
        404 if endpoint.is_job_path() => Err(ClientError::JobGone),
        404 => Err(ClientError::EndpointNotFound(text())),
        429 => Err(ClientError::RateLimited {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        }),
        500..=599 => Err(ClientError::Unavailable(text())),
        _ => Err(ClientError::Unexpected(text())),
    }
}

/// Percent-escapes one path segment.
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The agent's HTTP client. Cheap to clone; all clones share credentials and the
/// connectivity record.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    store: Arc<CredentialStore>,
    connectivity: Arc<Mutex<Connectivity>>,
    metrics: Arc<Metrics>,
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("vworkspace-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl AgentClient {
    pub fn new(store: Arc<CredentialStore>, metrics: Arc<Metrics>, windows: Windows) -> Self {
        AgentClient {
            http: http_client(AGENT_TIMEOUT),
            store,
            connectivity: Arc::new(Mutex::new(Connectivity::new(windows))),
            metrics,
        }
    }

    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.store
    }

    /// A snapshot of the connectivity state machine.
    pub fn connectivity(&self) -> Connectivity {
        self.connectivity
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records that job polling pauses for `pause` (a `429`); see
    /// [`Connectivity::throttled_until`].
    pub fn throttled(&self, pause: Duration) {
        if let Ok(mut c) = self.connectivity.lock() {
            c.throttle(Timestamp::now(), pause);
        }
    }

    /// Re-evaluates the time windows (called on the Cluster reconcile cadence).
    pub fn tick_connectivity(&self) {
        if let Ok(mut c) = self.connectivity.lock() {
            c.tick(Timestamp::now());
            self.metrics.set_connectivity(c.gauge());
        }
    }

    fn record(&self, outcome: &Result<Delivery, ClientError>) {
        let Ok(mut c) = self.connectivity.lock() else {
            return;
        };
        match outcome {
            Err(e) if e.is_transient() => {
                c.failure(Timestamp::now(), e.to_string());
            }
            Err(ClientError::NoCredentials) => {}
            // Any other answer proves the server is reachable.
            _ => {
                c.success(Timestamp::now());
            }
        }
        self.metrics.set_connectivity(c.gauge());
    }

    async fn once(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &str,
        token: &Token,
        body: Option<&[u8]>,
    ) -> Result<(Delivery, Body), ClientError> {
        let mut req = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
            .header(ACCEPT, MEDIA_TYPE);
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, MEDIA_TYPE).body(b.to_vec());
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest errors carry the URL (no credentials) but never headers.
            ClientError::Unavailable(e.without_url().to_string())
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let cap = if endpoint == Endpoint::Poll && status.is_success() {
            MAX_RESPONSE_BYTES
        } else {
            MAX_OTHER_BODY_BYTES
        };
        let body = read_capped(resp, cap).await?;
        let text = String::from_utf8_lossy(&body.bytes);
        let d = classify(
            endpoint,
            status,
            &text,
            retry_after.as_deref(),
            Timestamp::now(),
        )?;
        Ok((d, body))
    }

    /// One authenticated call with the 401 → reload-once rule.
    async fn call(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(Delivery, Body), ClientError> {
        let creds = self.store.current().ok_or(ClientError::NoCredentials)?;
        if let AuthState::Rejected {
            status, message, ..
        } = self.store.auth_state()
        {
            return Err(if status == 403 {
                ClientError::Forbidden(message)
            } else {
                ClientError::Unauthorized(message)
            });
        }
        let url = |c: &Credentials| format!("{}{path}", c.base_url);
        let mut result = self
            .once(endpoint, method.clone(), &url(&creds), &creds.token, body)
            .await;
        let mut used = creds;
        if matches!(result, Err(ClientError::Unauthorized(_)))
            && let Some(fresh) = self.store.reload_after_unauthorized(&used).await
        {
            tracing::info!(
                "control plane answered 401; retrying once with the reloaded credentials"
            );
            result = self
                .once(endpoint, method, &url(&fresh), &fresh.token, body)
                .await;
            used = fresh;
        }
        self.record(&result.as_ref().map(|(d, _)| *d).map_err(Clone::clone));
        match &result {
            Ok(_) => {
                if self.store.auth_state() != AuthState::Accepted {
                    self.store.set_auth(AuthState::Accepted);
                }
            }
            Err(e @ (ClientError::Unauthorized(m) | ClientError::Forbidden(m))) => {
                // Only if the credentials did not change meanwhile.
                if self.store.current().as_ref() == Some(&used) {
                    self.store.set_auth(AuthState::Rejected {
                        status: if matches!(e, ClientError::Forbidden(_)) {
                            403
                        } else {
                            401
                        },
                        message: m.clone(),
                        token: used.token.fingerprint(),
                    });
                }
                tracing::warn!(error = %e, "control plane rejected the credentials; waiting for new credentials");
            }
            Err(_) => {}
        }
        result
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Unexpected(format!("undecodable response body: {e}")))
    }

    fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(v).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// `GET /api/agent/jobs?cluster=<id>&wait=<s>`: the jobs one by one (see
    /// [`split_jobs`]); the body is read up to [`MAX_RESPONSE_BYTES`].
    pub async fn poll(&self, wait_seconds: u64) -> Result<Batch, ClientError> {
        let creds = self.store.current().ok_or(ClientError::NoCredentials)?;
        let path = format!(
            "/api/agent/jobs?cluster={}&wait={wait_seconds}",
            escape_segment(&creds.cluster_id)
        );
        let (_, body) = self.call(Endpoint::Poll, Method::GET, &path, None).await?;
        split_jobs(&body.bytes, body.complete).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    pub async fn ack(&self, job_id: &str) -> Result<Delivery, ClientError> {
        let path = format!("/api/agent/jobs/{}/ack", escape_segment(job_id));
        Ok(self.call(Endpoint::Ack, Method::POST, &path, None).await?.0)
    }

    pub async fn status(&self, job_id: &str, update: &StatusUpdate) -> Result<(), ClientError> {
        let path = format!("/api/agent/jobs/{}/status", escape_segment(job_id));
        let body = Self::encode(update)?;
        self.call(Endpoint::Status, Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }

    pub async fn result(&self, job_id: &str, result: &JobResult) -> Result<Delivery, ClientError> {
        let path = format!("/api/agent/jobs/{}/result", escape_segment(job_id));
        let body = Self::encode(result)?;
        Ok(self
            .call(Endpoint::Result, Method::POST, &path, Some(&body))
            .await?
            .0)
    }

    /// `POST /api/agent/events`; an empty batch is not sent.
    pub async fn events(&self, events: &[Event]) -> Result<(), ClientError> {
        if events.is_empty() {
            return Ok(());
        }
        let body = Self::encode(&EventsRequest { events })?;
        self.call(
            Endpoint::Events,
            Method::POST,
            "/api/agent/events",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// `POST /api/agent/credentials/rotate`: the new token (not yet stored).
    pub async fn rotate(&self) -> Result<Token, ClientError> {
        let (_, body) = self
            .call(
                Endpoint::Rotate,
                Method::POST,
                "/api/agent/credentials/rotate",
                Some(b"{}"),
            )
            .await?;
        let r: RotateResponse = Self::decode(&body.bytes)?;
        let token = Token::new(r.token);
        if token.is_empty() {
            return Err(ClientError::Unexpected(
                "rotation returned an empty token".into(),
            ));
        }
        Ok(token)
    }
}

/// `POST /api/agent/register`: exchanges a one-time registration token.
pub async fn register(
    base_url: &str,
    registration_token: &Token,
    cluster_id: Option<&str>,
) -> Result<(String, Token), ClientError> {
    let http = http_client(REGISTER_TIMEOUT);
    let body = serde_json::to_vec(&RegisterRequest {
        registration_token: registration_token.expose().to_string(),
        cluster_id: cluster_id.unwrap_or_default().to_string(),
        display_name: String::new(),
    })
    .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    let url = format!(
        "{}/api/agent/register",
        base_url.trim().trim_end_matches('/')
    );
    let resp = http
        .post(url)
        .header(
            AUTHORIZATION,
            format!("Bearer {}", registration_token.expose()),
        )
        .header(ACCEPT, MEDIA_TYPE)
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .body(body)
        .send()
        .await
        .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bytes = read_capped(resp, MAX_OTHER_BODY_BYTES).await?.bytes;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&bytes);
        classify(
            Endpoint::Register,
            status,
            &text,
            retry_after.as_deref(),
            Timestamp::now(),
        )?;
        return Err(ClientError::Unexpected(format_error(
            "register API error",
            status,
            &text,
        )));
    }
    let r: RegisterResponse = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Unexpected(format!("undecodable register response: {e}")))?;
    let id = r.cluster_id.trim().to_string();
    let token = Token::new(r.token);
    if id.is_empty() || token.is_empty() {
        return Err(ClientError::Unexpected(
            "register response without clusterId or token".into(),
        ));
    }
    Ok((id, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn status_codes_map_to_reactions() {
        let c = |e, s: u16, ra: Option<&str>| {
            classify(
                e,
                StatusCode::from_u16(s).unwrap(),
                r#"{"error":"x","message":"why"}"#,
                ra,
                now(),
            )
        };
        assert_eq!(c(Endpoint::Poll, 200, None), Ok(Delivery::Accepted));
        assert_eq!(c(Endpoint::Ack, 204, None), Ok(Delivery::Accepted));
        assert_eq!(c(Endpoint::Ack, 409, None), Ok(Delivery::AlreadyClosed));
        assert_eq!(c(Endpoint::Result, 409, None), Ok(Delivery::AlreadyClosed));
        assert!(matches!(
            c(Endpoint::Events, 409, None),
            Err(ClientError::Unexpected(_))
        ));
        assert_eq!(c(Endpoint::Ack, 404, None), Err(ClientError::JobGone));
        assert_eq!(c(Endpoint::Status, 404, None), Err(ClientError::JobGone));
        assert!(matches!(
            c(Endpoint::Poll, 404, None),
            Err(ClientError::EndpointNotFound(_))
        ));
        assert!(matches!(
            c(Endpoint::Poll, 401, None),
            Err(ClientError::Unauthorized(_))
        ));
        assert!(matches!(
            c(Endpoint::Poll, 403, None),
            Err(ClientError::Forbidden(_))
        ));
        assert!(matches!(
            c(Endpoint::Result, 400, None),
            Err(ClientError::BadRequest(_))
        ));
        assert_eq!(
            c(Endpoint::Poll, 429, Some("3")),
            Err(ClientError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert_eq!(
            c(Endpoint::Poll, 429, Some("Thu, 01 Jan 2026 00:01:00 GMT")),
            Err(ClientError::RateLimited {
                retry_after: Some(Duration::from_secs(60))
            })
        );
        let e = c(Endpoint::Poll, 503, None).unwrap_err();
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "control plane unavailable: agent API error (503): x: why"
        );
    }

    #[test]
    fn error_text_falls_back_to_the_status_line() {
        assert_eq!(
            format_error("agent API error", StatusCode::BAD_GATEWAY, ""),
            "agent API error (502): 502: Bad Gateway"
        );
        assert_eq!(
            format_error(
                "register API error",
                StatusCode::UNAUTHORIZED,
                r#"{"error":"Unauthorized"}"#
            ),
            "register API error (401): Unauthorized: Unauthorized"
        );
    }

    #[test]
    fn job_ids_are_one_segment() {
        assert_eq!(escape_segment("job-1"), "job-1");
        assert_eq!(escape_segment("a/b c?"), "a%2Fb%20c%3F");
    }
}
