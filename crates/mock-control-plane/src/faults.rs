//! Fault injection: the next `count` requests to an endpoint get a chosen status code
//! (optionally with `Retry-After`), a delay, or a dropped connection.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// `register`, `jobs`, `ack`, `status`, `result`, `events`, `rotate`, or `*`.
    pub endpoint: String,
    /// Answer with this status instead of handling the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` value sent with `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Wait this long before answering (or before handling, without `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Close the connection without sending any response.
    #[serde(default)]
    pub drop_connection: bool,
    /// How many matching requests it applies to.
    pub count: u32,
}

impl Fault {
    pub fn status(endpoint: &str, status: u16, count: u32) -> Fault {
        Fault {
            endpoint: endpoint.into(),
            status: Some(status),
            count,
            ..Default::default()
        }
    }
}

#[derive(Default)]
pub struct Faults(Mutex<Vec<Fault>>);

/// What a request must suffer.
pub struct Injected {
    pub delay: Option<Duration>,
    pub response: Option<Response<Body>>,
    /// Close the connection without any response.
    pub drop_connection: bool,
}

/// Endpoint names a fault may target.
pub const FAULT_ENDPOINTS: &[&str] = &[
    "register", "jobs", "ack", "status", "result", "events", "rotate", "*",
];

/// Ends the current request by unwinding its connection task: the server drops the
/// socket without writing a byte, which is what a client sees when a proxy or the network
/// cuts the connection. `resume_unwind` skips the panic hook, so nothing is printed; the
/// connection task is the only thing that ends (axum serves each connection in its own
/// task).
pub fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("fault injection: connection dropped"))
}

/// Which fault endpoint name a request path belongs to.
pub fn endpoint_of(method: &str, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/api/agent/")?;
    Some(match (method, rest) {
        ("POST", "register") => "register",
        ("GET", "jobs") => "jobs",
        ("POST", "events") => "events",
        ("POST", "credentials/rotate") => "rotate",
        ("POST", r) if r.starts_with("jobs/") && r.ends_with("/ack") => "ack",
        ("POST", r) if r.starts_with("jobs/") && r.ends_with("/status") => "status",
        ("POST", r) if r.starts_with("jobs/") && r.ends_with("/result") => "result",
        _ => return None,
    })
}

impl Faults {
    pub fn add(&self, fault: Fault) {
        if let Ok(mut f) = self.0.lock() {
            f.push(fault);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut f) = self.0.lock() {
            f.clear();
        }
    }

    /// Takes one use of the first fault matching `endpoint`.
    pub fn take(&self, endpoint: &str) -> Option<Injected> {
        let mut faults = self.0.lock().ok()?;
        let i = faults
            .iter()
            .position(|f| f.count > 0 && (f.endpoint == endpoint || f.endpoint == "*"))?;
        let fault = faults[i].clone();
        faults[i].count -= 1;
        if faults[i].count == 0 {
            faults.remove(i);
        }
        let delay = fault.delay_ms.map(Duration::from_millis);
        let response = if fault.drop_connection {
            None
        } else {
            fault.status.map(|code| {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = serde_json::json!({"error": "InjectedFault", "message": format!("fault injection: {code}")});
                let mut resp = Response::builder()
                    .status(status)
                    .header("content-type", vworkspace_protocol::MEDIA_TYPE)
                    .body(Body::from(body.to_string()))
                    .unwrap_or_default();
                if let Some(ra) = fault
                    .retry_after
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok())
                {
                    resp.headers_mut().insert("retry-after", ra);
                }
                resp
            })
        };
        Some(Injected {
            delay,
            response,
            drop_connection: fault.drop_connection,
        })
    }
}
