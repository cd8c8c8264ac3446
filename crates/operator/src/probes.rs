//! Liveness/readiness probes and the metrics endpoint.
//!
//! `/healthz` is a plain liveness ping. `/readyz` answers `503` with a JSON summary until
//! the operator can do its job: our CRDs are served and the operator's RBAC lets it list
//! them, and — once a `Cluster` with credentials exists — the Pull-mode agent has made a
//! successful round trip to the control plane. A cluster that was never registered is
//! still ready: in-cluster reconciliation does not depend on the control plane.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster, Operation};

/// Pull-mode connectivity as readiness sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentState {
    /// No Cluster / credentials: nothing to wait for.
    NotConfigured = 0,
    /// Configured, no successful round trip yet.
    Waiting = 1,
    /// At least one successful round trip since start.
    Connected = 2,
}

#[derive(Default)]
pub struct Readiness {
    api: RwLock<Vec<ApiCheck>>,
    agent: AtomicU8,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiCheck {
    pub kind: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
struct Summary {
    ready: bool,
    api: Vec<ApiCheck>,
    agent: AgentState,
}

impl Readiness {
    pub fn set_agent(&self, state: AgentState) {
        self.agent.store(state as u8, Ordering::Relaxed);
    }

    pub fn agent(&self) -> AgentState {
        match self.agent.load(Ordering::Relaxed) {
            1 => AgentState::Waiting,
            2 => AgentState::Connected,
            _ => AgentState::NotConfigured,
        }
    }

    async fn summary(&self) -> Summary {
        let api = self.api.read().await.clone();
        let agent = self.agent();
        Summary {
            ready: !api.is_empty() && api.iter().all(|c| c.ok) && agent != AgentState::Waiting,
            api,
            agent,
        }
    }

    /// Lists each of our kinds (limit 1): proves the CRD is served and RBAC allows it.
    pub async fn check_api(&self, client: &Client) {
        async fn one<K>(client: &Client, kind: &'static str) -> ApiCheck
        where
            K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
            K::DynamicType: Default,
        {
            let r = Api::<K>::all(client.clone())
                .list_metadata(&ListParams::default().limit(1))
                .await;
            ApiCheck {
                kind,
                ok: r.is_ok(),
                error: r.err().map(|e| e.to_string()),
            }
        }
        let checks = vec![
            one::<ApplicationInstance>(client, "ApplicationInstance").await,
            one::<Operation>(client, "Operation").await,
            one::<Cluster>(client, "Cluster").await,
        ];
        *self.api.write().await = checks;
    }
}

/// Re-checks the API every 10 s until shutdown.
pub async fn watch_api(readiness: Arc<Readiness>, client: Client, shutdown: CancellationToken) {
    loop {
        readiness.check_api(&client).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(r): State<Arc<Readiness>>) -> Response {
    let summary = r.summary().await;
    let code = if summary.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(summary)).into_response()
}

pub fn probe_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Serves `encode()` as Prometheus text on `/metrics`.
pub fn metrics_router(encode: Arc<dyn Fn() -> String + Send + Sync>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = encode();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    )
}

/// Binds `addr` (`:8081` style accepted) and serves until shutdown.
pub async fn serve(
    addr: &str,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let addr = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    let listener = TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "probe/metrics server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_rules() {
        let r = Readiness::default();
        assert!(!r.summary().await.ready, "ready before any API check");
        *r.api.write().await = vec![ApiCheck {
            kind: "ApplicationInstance",
            ok: true,
            error: None,
        }];
        assert!(r.summary().await.ready);
        r.set_agent(AgentState::Waiting);
        assert!(!r.summary().await.ready);
        r.set_agent(AgentState::Connected);
        assert!(r.summary().await.ready);
        r.api.write().await[0].ok = false;
        assert!(!r.summary().await.ready);
    }
}
