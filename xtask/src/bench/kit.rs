//! What the scenarios share: clients, the operator binary, the benchmark instance, the
//! watches convergence is judged on, and the apiserver's request counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::json;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_operator::kinds::flux::{HelmRelease, HelmRepository};
use vworkspace_operator::metrics::Metrics;

use super::stats::{Requests, parse_requests};

/// Quiet time after convergence before the operator's requests are counted.
pub const SETTLE: Duration = Duration::from_secs(3);
/// A run that has not converged after this long fails the benchmark.
pub const TIMEOUT: Duration = Duration::from_secs(900);

/// Builds binary `bin` of package `package` in the profile xtask runs in and returns its path.
pub fn build_bin(package: &str, bin: &str) -> Result<PathBuf> {
    let root = testkit::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args((super::profile() == "release").then_some("--release"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {bin} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target.join(super::profile()).join(bin))
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// JSON bytes of every object of kind `K` in `ns` as a store holds it (no managedFields).
pub async fn cached_bytes<K>(client: &Client, ns: &str) -> Result<usize>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize,
{
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    let mut total = 0;
    for mut obj in list.items {
        obj.meta_mut().managed_fields = None;
        total += serde_json::to_vec(&obj)?.len();
    }
    Ok(total)
}

/// The memory scenario: the operator binary watching one namespace; RSS idle, then after
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?)
}

/// Requests one client sent, by (verb, resource, subresource) as the apiserver counts
/// them, so the operator's own share of the apiserver's totals is known.
pub type Own = Arc<Mutex<BTreeMap<(String, String, String), u64>>>;

/// The apiserver's verb and resource of a request path: `/api/v1/...` or
/// `/apis/<group>/<version>/...`, optionally `namespaces/<ns>/`, then
/// `<resource>[/<name>[/<subresource>]]`.
pub fn classify(method: &str, path: &str, query: &str, apply: bool) -> (String, String, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segs.first() {
        Some(&"api") => segs.get(2..).unwrap_or_default(),
        Some(&"apis") => segs.get(3..).unwrap_or_default(),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, more @ ..] if !more.is_empty() => more,
        r => r,
    };
    let resource = rest.first().copied().unwrap_or_default().to_string();
    let named = rest.len() > 1;
    let sub = rest.get(2).copied().unwrap_or_default().to_string();
    let verb = match method {
        "GET" if query.split('&').any(|kv| kv == "watch=true") => "WATCH",
        "GET" if named => "GET",
        "GET" => "LIST",
        "PATCH" if apply => "APPLY",
        m => m,
    };
    (verb.to_string(), resource, sub)
}

/// A client like [`client`] that also counts what it sends into `own`.
pub async fn counting_client(kubeconfig: &Path, own: Own) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let apply = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let key = classify(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query().unwrap_or_default(),
            apply,
        );
        if let Ok(mut o) = own.lock() {
            *o.entry(key).or_default() += 1;
        }
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

/// A managed instance as the control plane writes it (chart `wiki`, inline values).
pub fn instance(ns: &str, name: &str, finalizer: bool) -> Result<ApplicationInstance> {
    let mut v = json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.vworkspace.io/cluster-id": "bench"}},
        "spec": {"appRef": {"catalogId": "wiki"},
                 "chart": {"sourceType": "helm", "url": "https://charts.example.org",
                           "name": "wiki", "version": "1.0.0"},
                 "release": {"name": name, "namespace": ns},
                 "values": {"source": "inline", "inline": {"replicas": 1}}}
    });
    if finalizer {
        v["metadata"]["finalizers"] = json!([keys::FINALIZER_APPLICATION_INSTANCE]);
    }
    Ok(serde_json::from_value(v)?)
}

/// Stores of what convergence is judged on, filled by watches started before the clock.
pub struct Watched {
    pub instances: Store<ApplicationInstance>,
    pub releases: Store<HelmRelease>,
    pub repositories: Store<HelmRepository>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn watch<K>(api: Api<K>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tasks.push(tokio::spawn(async move {
        let _ = stream.try_for_each(|_| async { Ok(()) }).await;
    }));
    reader
}

impl Watched {
    pub async fn start(client: &Client, ns: &str) -> Result<Self> {
        let mut tasks = Vec::new();
        let instances = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        let releases = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        let repositories = watch(Api::namespaced(client.clone(), ns), &mut tasks);
        for ready in [
            instances.wait_until_ready().await,
            releases.wait_until_ready().await,
            repositories.wait_until_ready().await,
        ] {
            ready.context("benchmark watch")?;
        }
        Ok(Watched {
            instances,
            releases,
            repositories,
            tasks,
        })
    }

    pub fn gone(&self) -> bool {
        self.instances.state().is_empty()
            && self.releases.state().is_empty()
            && self.repositories.state().is_empty()
    }

    pub fn converged(&self, n: usize) -> bool {
        let current = self
            .instances
            .state()
            .iter()
            .filter(|i| {
                i.metadata.generation.is_some()
                    && i.status.as_ref().and_then(|s| s.observed_generation)
                        == i.metadata.generation
            })
            .count();
        current == n && self.releases.state().len() == n && self.repositories.state().len() == n
    }
}
/// Waits until the controller has made no pass for [`SETTLE`]; returns its pass count.
pub async fn settle(metrics: &Metrics, started: Instant) -> u64 {
    let mut last = reconcile_count(metrics);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = reconcile_count(metrics);
        if now == last || started.elapsed() > TIMEOUT {
            return now;
        }
        last = now;
    }
}

pub fn reconcile_count(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                && l.contains("controller=\"applicationinstance\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `apiserver_request_total` from the apiserver's `/metrics`.
pub async fn scrape(client: &Client) -> Result<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(parse_requests(&text))
}

#[cfg(test)]
mod tests {
    use super::classify;

    fn c(m: &str, p: &str, q: &str, apply: bool) -> (String, String, String) {
        classify(m, p, q, apply)
    }

    #[test]
    fn request_paths_map_to_the_apiservers_verbs_and_resources() {
        let t = |v: &str, r: &str, s: &str| (v.to_string(), r.to_string(), s.to_string());
        let inst = "/apis/apps.vworkspace.io/v1alpha1/namespaces/ns/applicationinstances";
        assert_eq!(
            c("GET", inst, "", false),
            t("LIST", "applicationinstances", "")
        );
        assert_eq!(
            c("GET", inst, "watch=true&resourceVersion=1", false),
            t("WATCH", "applicationinstances", "")
        );
        assert_eq!(
            c("GET", &format!("{inst}/a"), "", false),
            t("GET", "applicationinstances", "")
        );
        assert_eq!(
            c("PATCH", &format!("{inst}/a/status"), "fieldManager=x", true),
            t("APPLY", "applicationinstances", "status")
        );
        assert_eq!(
            c("POST", "/api/v1/namespaces/ns/events", "", false),
            t("POST", "events", "")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces", "", false),
            t("LIST", "namespaces", "")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/ns", "", false),
            t("GET", "namespaces", "")
        );
    }
}
