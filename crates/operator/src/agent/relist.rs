//! A watcher that re-lists when the API server has lost its resource version.
//!
//! kube-runtime's `watcher` (4.2) re-lists on a `410 Gone` that arrives as an `ERROR`
//! event inside an open watch — what kube-apiserver 1.36 sends after a restart with
//! compacted history (tests/reliability_apiserver.rs) — but not on a `410` answered as
//! the HTTP status of the watch request (a `Status` body, as aggregated API servers and
//! proxies may send): kube-client does not check the status of a watch request, so the
//! body surfaces as a failed stream item (`WatchFailed`), the watcher keeps its listed
//! state and watches again from the same stale version for ever, backoff or not.
//! [`relisting`] drops such a watcher and starts a fresh one, which lists first.

use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Error, Event, watcher};
use serde::de::DeserializeOwned;

/// Whether a watcher error means "your resource version is gone: list again".
pub fn is_gone(e: &Error) -> bool {
    // kube-client does not look at the HTTP status of a watch request: a `410` answer
    // reaches the watcher as a failed first line of the stream (`WatchFailed`), or as a
    // failed start when the request itself errors.
    matches!(e, Error::WatchStartFailed(kube::Error::Api(s)) | Error::WatchFailed(kube::Error::Api(s)) if s.code == 410)
}

/// `watcher(api, config)` with kube's default backoff, restarted from a fresh list after
/// a `410` on the watch request. The error is still passed on (for logging).
pub fn relisting<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    type Inner<K> = BoxStream<'static, Result<Event<K>, Error>>;
    futures::stream::unfold(None::<Inner<K>>, move |inner| {
        let (api, config) = (api.clone(), config.clone());
        async move {
            let mut inner = inner.unwrap_or_else(|| watcher(api, config).default_backoff().boxed());
            let item = inner.next().await?;
            let next = match &item {
                Err(e) if is_gone(e) => {
                    tracing::info!(error = %e, "watch resource version gone; listing again");
                    None
                }
                _ => Some(inner),
            };
            Some((item, next))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::http::Uri;
    use axum::response::IntoResponse;
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[derive(Default)]
    struct Counts {
        lists: AtomicUsize,
        watches: AtomicUsize,
    }

    /// An API server that lists fine but answers every watch request `410 Expired`, as a
    /// restarted kube-apiserver does for a resource version older than its watch cache.
    async fn forgetful_apiserver() -> (Arc<Counts>, kube::Client) {
        async fn configmaps(State(c): State<Arc<Counts>>, uri: Uri) -> axum::response::Response {
            let query = uri.query().unwrap_or_default();
            if query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1")
            {
                c.watches.fetch_add(1, Ordering::SeqCst);
                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": "too old resource version: 5 (9)",
                    "reason": "Expired", "code": 410});
                return (StatusCode::GONE, status.to_string()).into_response();
            }
            c.lists.fetch_add(1, Ordering::SeqCst);
            let list = serde_json::json!({"kind": "ConfigMapList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "5"}, "items": []});
            (StatusCode::OK, list.to_string()).into_response()
        }
        let counts = Arc::new(Counts::default());
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/ns/configmaps",
                axum::routing::get(configmaps),
            )
            .with_state(counts.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let config = kube::Config::new(url.parse().unwrap());
        (counts, kube::Client::try_from(config).unwrap())
    }

    async fn drive<S: Stream + Unpin>(mut s: S, items: usize) {
        for _ in 0..items {
            let _ = tokio::time::timeout(Duration::from_secs(20), s.next()).await;
        }
    }

    #[tokio::test]
    async fn kube_watcher_alone_never_lists_again_after_a_410_on_the_watch_request() {
        let (counts, client) = forgetful_apiserver().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        drive(watcher(api, watcher::Config::default()).boxed(), 12).await;
        // This is the behaviour worked around: one list, then only watch attempts.
        assert_eq!(counts.lists.load(Ordering::SeqCst), 1);
        assert!(counts.watches.load(Ordering::SeqCst) >= 5);
    }

    #[tokio::test]
    async fn relisting_lists_again_after_a_410_on_the_watch_request() {
        let (counts, client) = forgetful_apiserver().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        drive(relisting(api, watcher::Config::default()).boxed(), 12).await;
        let (lists, watches) = (
            counts.lists.load(Ordering::SeqCst),
            counts.watches.load(Ordering::SeqCst),
        );
        assert!(lists >= 3, "lists {lists}, watches {watches}");
        // Every failed watch start is followed by a list.
        assert!(lists + 1 >= watches, "lists {lists}, watches {watches}");
    }
}
