//! What the agent sent: the body of every request to an agent endpoint, kept in memory so
//! tests can scan everything that left the cluster (secret canaries, issue 11).

use std::sync::Mutex;

use serde::Serialize;

/// Bodies longer than this are not read into memory; they are counted as uncaptured
/// (the agent's own requests are far smaller: results are capped at 64 KiB).
pub const MAX_CAPTURED_BODY: usize = 1024 * 1024;
/// Total bytes kept; later bodies are counted as uncaptured instead.
const MAX_CAPTURED_TOTAL: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CapturedRequest {
    /// The fault endpoint name (`register`, `jobs`, `ack`, `status`, `result`, `events`,
    /// `rotate`).
    pub endpoint: String,
    pub method: String,
    /// Path and query string.
    pub path: String,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

#[derive(Default)]
pub struct Capture {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    requests: Vec<CapturedRequest>,
    bytes: usize,
    /// Requests whose body was too large (or unknown in length) to keep.
    uncaptured: u64,
}

impl Capture {
    pub fn keep(&self, request: CapturedRequest) {
        if let Ok(mut k) = self.inner.lock() {
            if k.bytes + request.body.len() > MAX_CAPTURED_TOTAL {
                k.uncaptured += 1;
                return;
            }
            k.bytes += request.body.len();
            k.requests.push(request);
        }
    }

    pub fn skip(&self) {
        if let Ok(mut k) = self.inner.lock() {
            k.uncaptured += 1;
        }
    }

    pub fn snapshot(&self) -> (Vec<CapturedRequest>, u64) {
        self.inner
            .lock()
            .map(|k| (k.requests.clone(), k.uncaptured))
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut k) = self.inner.lock() {
            *k = Kept::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str) -> CapturedRequest {
        CapturedRequest {
            endpoint: "events".into(),
            method: "POST".into(),
            path: "/api/agent/events".into(),
            body: body.into(),
        }
    }

    #[test]
    fn keeps_until_the_total_cap_then_counts() {
        let c = Capture::default();
        c.keep(req("a"));
        let big = "x".repeat(MAX_CAPTURED_TOTAL);
        c.keep(req(&big));
        c.skip();
        let (kept, uncaptured) = c.snapshot();
        assert_eq!(kept, vec![req("a")]);
        assert_eq!(uncaptured, 2);
        c.clear();
        assert_eq!(c.snapshot(), (vec![], 0));
    }
}
