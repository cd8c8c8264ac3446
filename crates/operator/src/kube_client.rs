//! The operator's Kubernetes client: kube's default service stack, with a bounded idle pool.
//!
//! Why: `kube::Client::try_default()` builds hyper-util's legacy client with its pool
//! defaults (no limit on idle connections per host, and no pool timer, so an idle
//! connection is only dropped when a later checkout finds it expired). The
//! ApplicationInstance controller runs 64 passes at once, each holding a TLS connection; after
//! a burst those connections and their buffers stayed idle in the pool (~7 MiB at 10,000
//! instances in heaptrack). Here at most [`POOL_MAX_IDLE_PER_HOST`] stay idle, and a timer
//! closes any idle longer than [`POOL_IDLE_TIMEOUT`].
//!
//! Everything else follows kube 4.2's own stack (`ClientBuilder::try_from(Config)`) through
//! its public API: rustls connector from the Config (CA, client identity, TLS server name),
//! the Config's connect/read/write timeouts (read is `None` from `Config::infer`, which our
//! long watches on the shared client need), base URI, retry of server errors when
//! `default_retry`, auth (static or refreshable token, exec), extra headers. Left out: kube's
//! debug-level tracing spans per request, and gzip decompression (kube's `gzip` feature is not
//! enabled here). A Config with a proxy URL goes to kube's own builder unchanged.

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Builder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt as _;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// Idle connections kept per API server. Bursts may open more; the rest close when released.
pub const POOL_MAX_IDLE_PER_HOST: usize = 16;

/// How long an idle connection is kept (hyper-util's default is 90 s, with no timer).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Infers the Config (in-cluster or KUBECONFIG) and builds the client, like
/// `kube::Client::try_default()` but with the bounded pool.
pub async fn try_default() -> kube::Result<Client> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    try_from_config(config)
}

/// Builds a client from `config` with the bounded idle pool.
pub fn try_from_config(config: Config) -> kube::Result<Client> {
    if config.proxy_url.is_some() {
        // kube's builder reports which proxy feature it lacks; we add nothing there.
        return Client::try_from(config);
    }

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);

    let http_client = Builder::new(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Without a timer hyper-util never evicts idle connections on its own.
        .pool_timer(TokioTimer::new())
        .build::<_, kube::client::Body>(connector);

    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The auth filter and the retry policy work on boxed errors.
        .map_err(BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
}
