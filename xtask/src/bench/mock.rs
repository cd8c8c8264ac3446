//! The mock control plane served in this process behind a recording layer, and the
//! cluster registration the pull-loop and idle scenarios share.
//!
//! The layer counts the agent's requests by endpoint and notes when each job's result
//! arrived and with which outcome, so latencies cost no admin-API polling.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use mock_control_plane::{AdminClient, MockConfig};
use serde_json::{Value, json};
use vworkspace_protocol::Job;

pub const CLUSTER_ID: &str = "0b3e6c7d-bench-4f1a-8e2d-5c9a7b1d3e20";
const REGISTRATION_TOKEN: &str = "vwksp-reg-bench000000000000000000000000001";

/// What the recording layer saw.
#[derive(Default)]
pub struct Seen {
    /// Agent requests by endpoint (`poll`, `ack`, `status`, `result`, `events`, …).
    pub counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Job id → (when its result was accepted, outcome).
    pub results: Mutex<HashMap<String, (Instant, String)>>,
}

impl Seen {
    pub fn agent_requests(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn endpoint(method: &axum::http::Method, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/api/agent/")?;
    Some(match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["jobs"] if method == axum::http::Method::GET => "poll",
        ["jobs", _, "ack"] => "ack",
        ["jobs", _, "status"] => "status",
        ["jobs", _, "result"] => "result",
        ["events"] => "events",
        ["register"] => "register",
        ["credentials", "rotate"] => "rotate",
        _ => "other",
    })
}

async fn record(State(seen): State<Arc<Seen>>, req: Request, next: Next) -> Response {
    let Some(ep) = endpoint(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if let Ok(mut c) = seen.counts.lock() {
        *c.entry(ep).or_default() += 1;
    }
    if ep != "result" {
        return next.run(req).await;
    }
    let id = req
        .uri()
        .path()
        .split('/')
        .nth(4)
        .unwrap_or_default()
        .to_string();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let outcome = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("outcome")?.as_str().map(String::from))
        .unwrap_or_default();
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if resp.status().is_success()
        && let Ok(mut r) = seen.results.lock()
    {
        r.entry(id).or_insert((Instant::now(), outcome));
    }
    resp
}

pub struct Mock {
    pub url: String,
    pub admin: AdminClient,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    pub async fn start() -> Result<Mock> {
        let seen = Arc::new(Seen::default());
        let router = mock_control_plane::router(MockConfig {
            registration_token: REGISTRATION_TOKEN.into(),
            cluster_id: CLUSTER_ID.into(),
            ..MockConfig::default()
        })?
        .layer(axum::middleware::from_fn_with_state(seen.clone(), record));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Mock {
            admin: AdminClient::new(url.clone(), None),
            url,
            seen,
            task,
        })
    }
}

/// A job as the control plane enqueues it.
pub fn job(id: &str, kind: &str, key: &str, payload: Value) -> Result<Job> {
    Ok(serde_json::from_value(json!({
        "id": id, "kind": kind, "payload": payload, "idempotencyKey": key,
        "createdAt": jiff::Timestamp::now().to_string()
    }))?)
}

/// A placeholder instance (no chart; the controller marks it Ready at once).
pub fn placeholder(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"appRef": {"catalogId": name}, "mode": "placeholder"}
    })
}

/// Registers this cluster as an installer would (token Secret + `Cluster`) and waits for
/// `Connected=True`.
pub async fn register(client: &Client, op_ns: &str, mock: &Mock) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("registration".into()),
            ..Default::default()
        },
        string_data: Some(
            [(
                "registrationToken".to_string(),
                REGISTRATION_TOKEN.to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), op_ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let cluster: vworkspace_api::Cluster = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "this-cluster"},
        "spec": {"controlPlaneEndpoint": mock.url, "clusterId": CLUSTER_ID,
                 "registrationTokenSecretRef": {"name": "registration"}}
    }))?;
    let clusters: Api<vworkspace_api::Cluster> = Api::all(client.clone());
    clusters.create(&PostParams::default(), &cluster).await?;
    let started = Instant::now();
    loop {
        let c = clusters.get("this-cluster").await?;
        if c.status
            .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Connected"))
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(180) {
            anyhow::bail!("the Cluster did not become Connected in 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator binary, all controllers and the agent, logging to `log`.
pub fn spawn_operator(
    bin: &Path,
    kubeconfig: &Path,
    op_ns: &str,
    extra: &[String],
    log: &Path,
) -> Result<tokio::process::Child> {
    let log = std::fs::File::create(log)?;
    tokio::process::Command::new(bin)
        .args(["run", "--health-probe-bind-address=127.0.0.1:0"])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", op_ns)
        // `VWORKSPACE_BENCH_OPERATOR_LOG` (a RUST_LOG value) to see where time goes.
        .env(
            "RUST_LOG",
            std::env::var("VWORKSPACE_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) as f64 / hz)
}
