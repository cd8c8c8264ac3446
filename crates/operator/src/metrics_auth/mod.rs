//! `--metrics-secure`: Prometheus metrics over TLS, readable only by callers the
//! Kubernetes API authenticates (TokenReview) and authorizes to `get` the non-resource
//! URL `/metrics` (SubjectAccessReview) — the same contract as controller-runtime's
//! secure metrics filter, so existing scrape RBAC works unchanged.
//!
//! Answers: no or unknown bearer token → `401`; authenticated but not allowed → `403`;
//! the API unreachable for the reviews → `503` (Prometheus retries on the next scrape).
//! Nothing is cached: a scrape every 15–60 s costs two small API calls.

pub mod authz;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use authz::{Authorizer, Decision};
pub use tls::CertSource;

async fn guard(State(auth): State<Arc<Authorizer>>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(header, req.uri().path()).await {
        Decision::Allow => next.run(req).await,
        Decision::Unauthenticated(why) => (StatusCode::UNAUTHORIZED, why).into_response(),
        Decision::Forbidden(why) => (StatusCode::FORBIDDEN, why).into_response(),
        Decision::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Puts `router` behind the TokenReview + SubjectAccessReview check.
pub fn protect(router: Router, auth: Arc<Authorizer>) -> Router {
    router.layer(middleware::from_fn_with_state(auth, guard))
}

/// Binds `addr` (`:8443` style accepted) and serves `router` over TLS behind the check
/// until `shutdown`. Fails on an unreadable certificate or an unusable address.
pub async fn serve(
    addr: &str,
    router: Router,
    auth: Arc<Authorizer>,
    cert: &CertSource,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let config = tls::server_config(cert)?;
    let addr = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    let listener = tls::TlsListener::bind(&addr, config, shutdown.clone()).await?;
    let local = listener.addr();
    let app = protect(router, auth);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "secure metrics server stopped");
        }
    });
    Ok(local)
}
