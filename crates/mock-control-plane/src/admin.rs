//! HTTP client of the admin API, usable against the in-process server or the binary.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vworkspace_protocol::{Event, Job, JobResult, RotateResponse, StatusUpdate};

use crate::{ADMIN_HEADER, CapturedRequest, Fault, JobInfo};

#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct JobInfoWire {
    id: String,
    #[serde(rename = "clusterId")]
    cluster_id: String,
    state: String,
    deliveries: i64,
    #[serde(rename = "resultPosts")]
    result_posts: i64,
    job: Job,
}

impl AdminClient {
    pub fn new(base_url: impl Into<String>, admin_token: Option<String>) -> AdminClient {
        AdminClient {
            base: base_url.into().trim_end_matches('/').to_string(),
            token: admin_token.filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header(ADMIN_HEADER, t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<Option<reqwest::Response>> {
        let resp = r.send().await.context("admin API unreachable")?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            s => bail!(
                "admin API answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.send(self.req(reqwest::Method::GET, path)).await? {
            Some(r) => Ok(Some(r.json().await?)),
            None => Ok(None),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Option<reqwest::Response>> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn enqueue(&self, cluster_id: &str, job: &Job) -> Result<()> {
        self.post(
            "/api/admin/enqueue",
            &json!({"clusterId": cluster_id, "job": job}),
        )
        .await?
        .context("enqueue endpoint missing")?;
        Ok(())
    }

    pub async fn result(&self, job_id: &str) -> Result<Option<JobResult>> {
        self.get(&format!("/api/admin/jobs/{}/result", urlencode(job_id)))
            .await
    }

    /// Polls every 200 ms until the job has a result or `timeout` passes.
    pub async fn wait_for_result(&self, job_id: &str, timeout: Duration) -> Result<JobResult> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.result(job_id).await? {
                return Ok(r);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no result for job {job_id} within {}s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn jobs(&self, cluster_id: Option<&str>) -> Result<Vec<JobInfo>> {
        let path = match cluster_id {
            Some(c) => format!("/api/admin/jobs?cluster={}", urlencode(c)),
            None => "/api/admin/jobs".into(),
        };
        let v: Value = self.get(&path).await?.unwrap_or_default();
        let wire: Vec<JobInfoWire> =
            serde_json::from_value(v.get("jobs").cloned().unwrap_or(json!([])))?;
        Ok(wire
            .into_iter()
            .map(|w| JobInfo {
                id: w.id,
                cluster_id: w.cluster_id,
                state: match w.state.as_str() {
                    "leased" => crate::JobState::Leased,
                    "acked" => crate::JobState::Acked,
                    "done" => crate::JobState::Done,
                    _ => crate::JobState::Queued,
                },
                deliveries: w.deliveries,
                result_posts: w.result_posts,
                job: w.job,
            })
            .collect())
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobInfo>> {
        Ok(self.jobs(None).await?.into_iter().find(|j| j.id == job_id))
    }

    pub async fn was_acked(&self, job_id: &str) -> Result<bool> {
        Ok(self
            .job(job_id)
            .await?
            .is_some_and(|j| matches!(j.state, crate::JobState::Acked | crate::JobState::Done)))
    }

    pub async fn pending_count(&self, cluster_id: &str) -> Result<usize> {
        Ok(self
            .jobs(Some(cluster_id))
            .await?
            .iter()
            .filter(|j| matches!(j.state, crate::JobState::Queued | crate::JobState::Leased))
            .count())
    }

    pub async fn status_updates(&self, job_id: &str) -> Result<Vec<StatusUpdate>> {
        let v: Value = self
            .get(&format!("/api/admin/jobs/{}/status", urlencode(job_id)))
            .await?
            .unwrap_or_default();
        Ok(serde_json::from_value(
            v.get("statusUpdates").cloned().unwrap_or(json!([])),
        )?)
    }

    pub async fn events(
        &self,
        cluster_id: &str,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Event>> {
        let mut path = format!("/api/admin/events?cluster={}", urlencode(cluster_id));
        for (k, v) in [("kind", kind), ("namespace", namespace), ("name", name)] {
            if let Some(v) = v {
                path.push_str(&format!("&{k}={}", urlencode(v)));
            }
        }
        let v: Value = self.get(&path).await?.unwrap_or_default();
        Ok(serde_json::from_value(
            v.get("events").cloned().unwrap_or(json!([])),
        )?)
    }

    pub async fn add_registration_token(
        &self,
        token: &str,
        cluster_id: &str,
        ttl: Duration,
    ) -> Result<()> {
        self.post(
            "/api/admin/registration-tokens",
            &json!({"token": token, "clusterId": cluster_id, "ttlSeconds": ttl.as_secs()}),
        )
        .await?;
        Ok(())
    }

    pub async fn rotate(&self, cluster_id: &str) -> Result<String> {
        let r = self
            .post(
                &format!("/api/admin/clusters/{}/rotate", urlencode(cluster_id)),
                &json!({}),
            )
            .await?
            .context("rotate endpoint missing")?;
        Ok(r.json::<RotateResponse>().await?.token)
    }

    pub async fn revoke(&self, cluster_id: &str) -> Result<()> {
        self.post(
            &format!("/api/admin/clusters/{}/revoke", urlencode(cluster_id)),
            &json!({}),
        )
        .await?;
        Ok(())
    }

    pub async fn inject_fault(&self, fault: Fault) -> Result<()> {
        self.post("/api/admin/faults", &serde_json::to_value(fault)?)
            .await?;
        Ok(())
    }

    /// Removes every injected fault, used up or not.
    pub async fn clear_faults(&self) -> Result<()> {
        self.send(self.req(reqwest::Method::DELETE, "/api/admin/faults"))
            .await?;
        Ok(())
    }

    /// How many requests reached agent endpoint `endpoint` (a [`Fault`] endpoint name),
    /// faulted ones included, since the start or the last reset.
    pub async fn request_count(&self, endpoint: &str) -> Result<u64> {
        let v: Value = self.get("/api/admin/requests").await?.unwrap_or_default();
        Ok(v["requests"][endpoint].as_u64().unwrap_or(0))
    }

    /// Every agent request body received since the start or the last reset, and how many
    /// requests were too large to keep (see `capture::MAX_CAPTURED_BODY`).
    pub async fn request_bodies(&self) -> Result<(Vec<CapturedRequest>, u64)> {
        let v: Value = self
            .get("/api/admin/requests/bodies")
            .await?
            .unwrap_or_default();
        let requests = serde_json::from_value(v["requests"].clone())?;
        Ok((requests, v["uncaptured"].as_u64().unwrap_or(0)))
    }

    /// Clears jobs, results, status updates, events, faults and request counts (tokens stay).
    pub async fn reset(&self) -> Result<()> {
        self.post("/api/admin/reset", &json!({})).await?;
        Ok(())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
