//! The HTTP surface: agent endpoints (`/api/agent/*`) and the admin API (`/api/admin/*`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::Notify;
use vworkspace_protocol::{
    EventsBody, Job, JobResult, JobsResponse, MEDIA_TYPE, RegisterRequest, RegisterResponse,
    RotateResponse, StatusUpdate,
};

use crate::ADMIN_HEADER;
use crate::capture::{Capture, CapturedRequest, MAX_CAPTURED_BODY};
use crate::faults::{FAULT_ENDPOINTS, Fault, Faults, endpoint_of};
use crate::store::{Registration, ResultWrite, Store, now_ms};

/// Mock settings; [`MockConfig::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Registration token accepted once (empty: none seeded).
    pub registration_token: String,
    /// Cluster id bound to that token.
    pub cluster_id: String,
    /// Pre-seeded long-lived token for that cluster.
    pub bootstrap_token: Option<String>,
    /// Required in `X-Mock-Control-Plane-Admin-Token` on `/api/admin/*` when set.
    pub admin_token: Option<String>,
    /// How long a handed-out job stays invisible before it is handed out again unless acked.
    pub lease: Duration,
    /// How long a rotated-away token keeps working (0: revoked at once).
    pub rotation_grace: Duration,
    /// Lifetime of seeded registration tokens.
    pub registration_ttl: Duration,
    /// SQLite file; `None` keeps state in memory.
    pub db_path: Option<PathBuf>,
    /// Behave as leniently as the original Go server of this design (see
    /// [`MockConfig::lenient`]).
    pub lenient: bool,
}

impl MockConfig {
    /// The original Go server's leniency, for compatibility tests: a bad token on the
    /// poll gets `403` (not `401`); there is no job registry (ack, status and result of
    /// an unknown job are accepted); a job is handed out once and never again, acked or
    /// not; a rotated-away token stops working at once.
    pub fn lenient(self) -> MockConfig {
        MockConfig {
            lenient: true,
            rotation_grace: Duration::ZERO,
            ..self
        }
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            registration_token: "dev-registration-token".into(),
            cluster_id: "cluster-dev-1".into(),
            bootstrap_token: None,
            admin_token: None,
            lease: Duration::from_secs(30),
            rotation_grace: Duration::from_secs(24 * 3600),
            registration_ttl: Duration::from_secs(24 * 3600),
            db_path: None,
            lenient: false,
        }
    }
}

pub(crate) struct Shared {
    config: MockConfig,
    store: Store,
    faults: Faults,
    /// Requests received per fault endpoint name, faulted ones included (in memory only).
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Wakes a cluster's long polls when a job is enqueued for it. One per cluster: a
    /// single shared one woke every open poll of every cluster on each enqueue (10,000
    /// agents: 10,000 store queries per job, seconds of delivery latency).
    enqueued: Mutex<HashMap<String, Arc<Notify>>>,
    /// Bodies of agent requests, for scans of what left the cluster.
    captured: Capture,
}

type S = Arc<Shared>;

impl Shared {
    /// The notifier of `cluster`'s long polls (created on its first poll).
    fn wake_for(&self, cluster: &str) -> Arc<Notify> {
        match self.enqueued.lock() {
            Ok(mut m) => m.entry(cluster.to_string()).or_default().clone(),
            // A poisoned map only costs the wake-up: the poll still ends at its deadline.
            Err(_) => Arc::new(Notify::new()),
        }
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": code, "message": message.into()});
    (status, [("content-type", MEDIA_TYPE)], body.to_string()).into_response()
}

/// Decodes a JSON request body; a malformed one is answered `400 InvalidJSON`.
// Early-return responses are the handler idiom; these are not hot paths.
#[allow(clippy::result_large_err)]
fn parse_json<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Response> {
    serde_json::from_str(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "InvalidJSON", e.to_string()))
}

fn internal(e: anyhow::Error) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("{e:#}"),
    )
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => (status, [("content-type", MEDIA_TYPE)], body).into_response(),
        Err(e) => internal(e.into()),
    }
}

fn bearer(h: &HeaderMap) -> Option<String> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The cluster of a valid bootstrap token, or the 401 to send.
// Early-return responses are the handler idiom; these are not hot paths.
#[allow(clippy::result_large_err)]
fn authenticate(s: &Shared, h: &HeaderMap) -> Result<String, Response> {
    let unauthorized = || {
        error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing, unknown, expired or revoked token",
        )
    };
    let token = bearer(h).ok_or_else(unauthorized)?;
    match s.store.cluster_for_token(&token) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(internal(e)),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // Never expected; fall back to time so tokens still differ.
        let t = jiff::Timestamp::now().as_nanosecond().to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t[i % t.len()];
        }
    }
    hex::encode(buf)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn register(State(s): State<S>, h: HeaderMap, body: String) -> Response {
    let accepts = h
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("vworkspace.agent.v1"));
    if !accepts {
        return error(
            StatusCode::BAD_REQUEST,
            "UnsupportedMediaType",
            format!("Accept must be {MEDIA_TYPE}"),
        );
    }
    let Some(bearer) = bearer(&h) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "registration token required",
        );
    };
    let req: RegisterRequest = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let token = if req.registration_token.trim().is_empty() {
        bearer
    } else {
        req.registration_token.trim().to_string()
    };
    let want = Some(req.cluster_id.trim()).filter(|c| !c.is_empty());
    let cluster = match s.store.consume_registration_token(&token, want) {
        Ok(Registration::Accepted(c)) => c,
        Ok(Registration::Invalid) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "RegistrationTokenInvalid",
                "registration token unknown, used or expired",
            );
        }
        Ok(Registration::ClusterMismatch) => {
            return error(
                StatusCode::FORBIDDEN,
                "ClusterMismatch",
                "the registration token is bound to another cluster",
            );
        }
        Err(e) => return internal(e),
    };
    let bootstrap = format!("bootstrap-{cluster}-{}", random_hex(16));
    if let Err(e) = s.store.add_token(&bootstrap, &cluster) {
        return internal(e);
    }
    tracing::info!(cluster_id = %cluster, "cluster registered");
    json(
        StatusCode::OK,
        &RegisterResponse {
            cluster_id: cluster,
            token: bootstrap,
            expires_at: None,
        },
    )
}

#[derive(Deserialize)]
struct PollQuery {
    cluster: Option<String>,
    wait: Option<String>,
}

fn parse_wait(w: Option<&str>) -> u64 {
    match w.map(|w| w.trim().trim_end_matches('s')) {
        None | Some("") => 30,
        Some(w) => w
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map_or(30, |n| n.min(300) as u64),
    }
}

async fn jobs(State(s): State<S>, h: HeaderMap, Query(q): Query<PollQuery>) -> Response {
    let Some(cluster) = q.cluster.filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingCluster",
            "query parameter cluster is required",
        );
    };
    let owner = match authenticate(&s, &h) {
        Ok(c) => c,
        Err(_) if s.config.lenient => {
            return error(StatusCode::FORBIDDEN, "Forbidden", "invalid token");
        }
        Err(r) => return r,
    };
    if owner != cluster {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the token belongs to another cluster",
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(parse_wait(q.wait.as_deref()));
    // Lenient: handed out once, never again (a lease that does not end).
    let lease = if s.config.lenient {
        i64::MAX / 4
    } else {
        i64::try_from(s.config.lease.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    };
    loop {
        // Register interest before looking, so an enqueue in between is not missed.
        let wake = s.wake_for(&cluster);
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match s.store.take_jobs(&cluster, lease) {
            Ok(jobs) if !jobs.is_empty() => return json(StatusCode::OK, &JobsResponse { jobs }),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return json(StatusCode::OK, &JobsResponse { jobs: Vec::new() });
        }
        // Sleep until an enqueue, the end of the earliest running lease (that job is then
        // deliverable again), or the end of the wait, whichever comes first.
        let wake = match s.store.next_lease_end(&cluster) {
            Ok(Some(end_ms)) => {
                let in_ms = u64::try_from(end_ms.saturating_sub(now_ms())).unwrap_or(0);
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(in_ms))
            }
            Ok(None) => deadline,
            Err(e) => return internal(e),
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Checks the token and that the job exists and belongs to the token's cluster.
#[allow(clippy::result_large_err)]
fn job_access(s: &Shared, h: &HeaderMap, id: &str) -> Result<crate::store::JobState, Response> {
    let cluster = authenticate(s, h)?;
    match s.store.job_state(id) {
        Ok(Some((owner, state))) if owner == cluster => Ok(state),
        Ok(Some(_)) => Err(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the job belongs to another cluster",
        )),
        // Lenient: no job registry; anything goes.
        Ok(None) if s.config.lenient => Ok(crate::store::JobState::Acked),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("job {id} is unknown"),
        )),
        Err(e) => Err(internal(e)),
    }
}

async fn ack(State(s): State<S>, h: HeaderMap, Path(id): Path<String>) -> Response {
    match job_access(&s, &h, &id) {
        Err(r) => r,
        Ok(crate::store::JobState::Done) => StatusCode::CONFLICT.into_response(),
        Ok(_) => match s.store.ack(&id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => internal(e),
        },
    }
}

async fn status(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = job_access(&s, &h, &id) {
        return r;
    }
    let update: StatusUpdate = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match s.store.add_status(&id, &update) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn result(
    State(s): State<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = job_access(&s, &h, &id) {
        return r;
    }
    let result: JobResult = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = result.parsed_outcome() {
        return error(StatusCode::BAD_REQUEST, "InvalidOutcome", e.to_string());
    }
    match s.store.store_result(&id, &result) {
        Ok(ResultWrite::Stored) => StatusCode::NO_CONTENT.into_response(),
        Ok(ResultWrite::AlreadyStored) => StatusCode::CONFLICT.into_response(),
        Ok(ResultWrite::UnknownJob) if s.config.lenient => StatusCode::NO_CONTENT.into_response(),
        Ok(ResultWrite::UnknownJob) => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("job {id} is unknown"),
        ),
        Err(e) => internal(e),
    }
}

async fn events(State(s): State<S>, h: HeaderMap, body: String) -> Response {
    let cluster = match authenticate(&s, &h) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let batch: EventsBody = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match s.store.add_events(&cluster, &batch.events) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn rotate(State(s): State<S>, h: HeaderMap, body: String) -> Response {
    let cluster = match authenticate(&s, &h) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // The body is `{}` (no fields yet); anything else but an empty body is refused
    // before a token changes.
    if !body.trim().is_empty() {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if v.is_object() => {}
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidJSON",
                    "the rotate body must be a JSON object",
                );
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidJSON", e.to_string()),
        }
    }
    let token = format!("bootstrap-{cluster}-{}", random_hex(16));
    let grace = i64::try_from(s.config.rotation_grace.as_millis()).unwrap_or(i64::MAX);
    match s.store.rotate(&cluster, &token, grace) {
        Ok(()) => json(
            StatusCode::OK,
            &RotateResponse {
                token,
                expires_at: None,
            },
        ),
        Err(e) => internal(e),
    }
}

// ---- admin ----

async fn admin_auth(State(s): State<S>, req: Request, next: Next) -> Response {
    if let Some(want) = s.config.admin_token.as_deref().filter(|t| !t.is_empty()) {
        let got = req
            .headers()
            .get(ADMIN_HEADER)
            .and_then(|v| v.to_str().ok());
        if got != Some(want) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                format!("{ADMIN_HEADER} required"),
            );
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnqueueBody {
    #[serde(default)]
    cluster_id: String,
    job: Job,
}

async fn admin_enqueue(State(s): State<S>, body: String) -> Response {
    let req: EnqueueBody = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if req.cluster_id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingCluster",
            "clusterId is required",
        );
    }
    if req.job.id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingJobID",
            "job.id is required",
        );
    }
    match s.store.enqueue(&req.cluster_id, &req.job) {
        Ok(()) => {
            if let Some(wake) = s
                .enqueued
                .lock()
                .ok()
                .and_then(|m| m.get(&req.cluster_id).cloned())
            {
                wake.notify_waiters();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ClusterQuery {
    cluster: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

async fn admin_jobs(State(s): State<S>, Query(q): Query<ClusterQuery>) -> Response {
    match s.store.jobs(q.cluster.as_deref()) {
        Ok(jobs) => json(StatusCode::OK, &serde_json::json!({ "jobs": jobs })),
        Err(e) => internal(e),
    }
}

async fn admin_result(State(s): State<S>, Path(id): Path<String>) -> Response {
    match s.store.result(&id) {
        Ok(Some(r)) => json(StatusCode::OK, &r),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no result for job {id}"),
        ),
        Err(e) => internal(e),
    }
}

async fn admin_status(State(s): State<S>, Path(id): Path<String>) -> Response {
    match s.store.status_updates(&id) {
        Ok(u) => json(StatusCode::OK, &serde_json::json!({ "statusUpdates": u })),
        Err(e) => internal(e),
    }
}

async fn admin_events(State(s): State<S>, Query(q): Query<ClusterQuery>) -> Response {
    let Some(cluster) = q.cluster.filter(|c| !c.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingCluster",
            "query parameter cluster is required",
        );
    };
    match s.store.events(
        &cluster,
        q.kind.as_deref(),
        q.namespace.as_deref(),
        q.name.as_deref(),
    ) {
        Ok(events) => json(StatusCode::OK, &serde_json::json!({ "events": events })),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    token: String,
    cluster_id: String,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

async fn admin_registration_token(State(s): State<S>, body: String) -> Response {
    let req: TokenBody = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ttl_ms = match req.ttl_seconds {
        Some(secs) => secs.saturating_mul(1000),
        None => i64::try_from(s.config.registration_ttl.as_millis()).unwrap_or(i64::MAX),
    };
    match s
        .store
        .add_registration_token(&req.token, &req.cluster_id, ttl_ms)
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn admin_rotate(State(s): State<S>, Path(cluster): Path<String>) -> Response {
    let token = format!("bootstrap-{cluster}-{}", random_hex(16));
    let grace = i64::try_from(s.config.rotation_grace.as_millis()).unwrap_or(i64::MAX);
    match s.store.rotate(&cluster, &token, grace) {
        Ok(()) => json(
            StatusCode::OK,
            &RotateResponse {
                token,
                expires_at: None,
            },
        ),
        Err(e) => internal(e),
    }
}

async fn admin_revoke(State(s): State<S>, Path(cluster): Path<String>) -> Response {
    match s.store.revoke(&cluster) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn admin_faults(State(s): State<S>, body: String) -> Response {
    let fault: Fault = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !FAULT_ENDPOINTS.contains(&fault.endpoint.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidFault",
            format!("endpoint must be one of {}", FAULT_ENDPOINTS.join(", ")),
        );
    }
    if fault.count == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidFault",
            "count must be at least 1",
        );
    }
    if let Some(code) = fault.status
        && StatusCode::from_u16(code).is_err()
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidFault",
            format!("bad status {code}"),
        );
    }
    s.faults.add(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_clear_faults(State(s): State<S>) -> Response {
    s.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_requests(State(s): State<S>) -> Response {
    let counts = s.requests.lock().map(|r| r.clone()).unwrap_or_default();
    json(StatusCode::OK, &serde_json::json!({ "requests": counts }))
}

async fn admin_request_bodies(State(s): State<S>) -> Response {
    let (requests, uncaptured) = s.captured.snapshot();
    json(
        StatusCode::OK,
        &serde_json::json!({ "requests": requests, "uncaptured": uncaptured }),
    )
}

async fn admin_reset(State(s): State<S>) -> Response {
    s.faults.clear();
    if let Ok(mut r) = s.requests.lock() {
        r.clear();
    }
    s.captured.clear();
    match s.store.reset() {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(e),
    }
}

async fn inject(State(s): State<S>, req: Request, next: Next) -> Response<Body> {
    let endpoint = endpoint_of(req.method().as_str(), req.uri().path());
    if let (Some(e), Ok(mut counts)) = (endpoint, s.requests.lock()) {
        *counts.entry(e).or_default() += 1;
    }
    let req = match endpoint {
        Some(e) => capture(&s, e, req).await,
        None => req,
    };
    let Some(injected) = endpoint.and_then(|e| s.faults.take(e)) else {
        return next.run(req).await;
    };
    if let Some(d) = injected.delay {
        tokio::time::sleep(d).await;
    }
    if injected.drop_connection {
        crate::faults::drop_connection();
    }
    match injected.response {
        Some(r) => r,
        None => next.run(req).await,
    }
}

/// Keeps a copy of the body when its declared length is small enough; the request goes
/// on unchanged (bodies of unknown or large length pass through uncaptured, so the
/// mock's own size limits still answer them).
async fn capture(s: &Shared, endpoint: &str, req: Request) -> Request {
    let declared = req.headers().get("content-length");
    let chunked = req.headers().contains_key("transfer-encoding");
    // No length and not chunked: HTTP/1.1 says there is no body (polls are GETs).
    let len = match declared {
        None if !chunked => Some(0),
        d => d
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok()),
    };
    let Some(len) = len.filter(|l| *l <= MAX_CAPTURED_BODY) else {
        s.captured.skip();
        return req;
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, len).await {
        Ok(b) => b,
        Err(_) => {
            // The body did not match its length; the handler sees an empty one.
            s.captured.skip();
            return Request::from_parts(parts, Body::empty());
        }
    };
    s.captured.keep(CapturedRequest {
        endpoint: endpoint.to_string(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    });
    Request::from_parts(parts, Body::from(bytes))
}

/// The whole application, for embedding.
pub fn router(config: MockConfig) -> anyhow::Result<Router> {
    Ok(build(config)?.0)
}

fn build(config: MockConfig) -> anyhow::Result<(Router, S)> {
    let store = Store::open(config.db_path.as_deref())?;
    if !config.registration_token.is_empty() {
        store.add_registration_token(
            &config.registration_token,
            &config.cluster_id,
            i64::try_from(config.registration_ttl.as_millis()).unwrap_or(i64::MAX),
        )?;
    }
    if let Some(t) = config.bootstrap_token.as_deref().filter(|t| !t.is_empty()) {
        store.add_token(t, &config.cluster_id)?;
    }
    let shared: S = Arc::new(Shared {
        config,
        store,
        faults: Faults::default(),
        requests: Mutex::default(),
        enqueued: Mutex::new(HashMap::new()),
        captured: Capture::default(),
    });
    let admin = Router::new()
        .route("/api/admin/enqueue", post(admin_enqueue))
        .route("/api/admin/jobs", get(admin_jobs))
        .route("/api/admin/jobs/{id}/result", get(admin_result))
        .route("/api/admin/jobs/{id}/status", get(admin_status))
        .route("/api/admin/events", get(admin_events))
        .route(
            "/api/admin/registration-tokens",
            post(admin_registration_token),
        )
        .route("/api/admin/clusters/{id}/rotate", post(admin_rotate))
        .route("/api/admin/clusters/{id}/revoke", post(admin_revoke))
        .route(
            "/api/admin/faults",
            post(admin_faults).delete(admin_clear_faults),
        )
        .route("/api/admin/requests", get(admin_requests))
        .route("/api/admin/requests/bodies", get(admin_request_bodies))
        .route("/api/admin/reset", post(admin_reset))
        .layer(middleware::from_fn_with_state(shared.clone(), admin_auth));
    let agent = Router::new()
        .route("/api/agent/register", post(register))
        .route("/api/agent/jobs", get(jobs))
        .route("/api/agent/jobs/{id}/ack", post(ack))
        .route("/api/agent/jobs/{id}/status", post(status))
        .route("/api/agent/jobs/{id}/result", post(result))
        .route("/api/agent/events", post(events))
        .route("/api/agent/credentials/rotate", post(rotate))
        .layer(middleware::from_fn_with_state(shared.clone(), inject));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .merge(agent)
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "NotFound", "unknown endpoint") })
        .with_state(shared.clone());
    Ok((app, shared))
}

/// A mock served in-process on a free loopback port (tests, demos).
pub struct MockServer {
    url: String,
    admin_token: Option<String>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl MockServer {
    pub async fn start(config: MockConfig) -> anyhow::Result<MockServer> {
        Self::start_on("127.0.0.1:0", config).await
    }

    /// Binds `addr` (e.g. a port freed by an earlier instance, to restart on the same URL).
    pub async fn start_on(addr: &str, config: MockConfig) -> anyhow::Result<MockServer> {
        let admin_token = config.admin_token.clone();
        let (app, _) = build(config)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(MockServer {
            url,
            admin_token,
            shutdown,
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn admin(&self) -> crate::AdminClient {
        crate::AdminClient::new(self.url.clone(), self.admin_token.clone())
    }

    /// Stops serving (open long polls are answered as the server shuts down).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
