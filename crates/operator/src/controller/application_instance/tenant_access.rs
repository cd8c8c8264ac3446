//! Values Secrets/ConfigMaps without cluster-wide secret access.
//!
//! The chart grants `get/list/watch` on Secrets and ConfigMaps only through RoleBindings
//! in tenant namespaces (see docs/install.md, "RBAC model"). So instead of one
//! cluster-wide metadata watch, a watch of gated namespaces (label
//! `managed-by=vworkspace`) starts one metadata watch per gated namespace and merges
//! their events into one trigger stream; a namespace that loses the label or goes away
//! stops its watch. A gated namespace without the RoleBinding yields a 403, reported once
//! with the permission that is missing.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::AbortHandle;
use vworkspace_api::keys;

/// Label selector of the namespaces the operator may read values references in.
pub(super) fn gate_selector() -> String {
    format!(
        "{}={}",
        keys::LABEL_NAMESPACE_GATE,
        keys::NAMESPACE_GATE_VALUE
    )
}

/// The message for a denied read of a values reference: which verb on which resource in
/// which namespace is missing, and how the chart grants it. `None` unless `err` is a 403.
pub(super) fn forbidden(
    err: &kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Option<String> {
    match err {
        kube::Error::Api(s) if s.code == 403 => {
            Some(missing_permission(verb, resource, namespace, name))
        }
        _ => None,
    }
}

fn missing_permission(verb: &str, resource: &str, namespace: &str, name: &str) -> String {
    format!(
        "forbidden: the operator's ServiceAccount lacks `{verb}` on {resource} in namespace \
         {namespace} (reading {resource}/{name}); values references are readable only in \
         tenant namespaces: label the namespace {} and list it in the chart's \
         `tenantNamespaces` so the `<release>-tenant` ClusterRole is bound there",
        gate_selector()
    )
}

/// Metadata events of kind `K` in every gated namespace, as one stream. The watches run
/// on their own tasks; they stop when the returned stream is dropped.
pub(super) fn in_gated_namespaces<K>(
    client: kube::Client,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync,
    K: 'static,
    K::DynamicType: Default,
{
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(follow_namespaces::<K>(client, tx));
    // Dropping the stream aborts the namespace task, which aborts the per-namespace ones.
    let guard = AbortOnDrop(task.abort_handle());
    rx.map(move |m| {
        let _keep = &guard;
        Ok(m)
    })
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow_namespaces<K>(client: kube::Client, tx: mpsc::Sender<PartialObjectMeta<K>>)
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync,
    K: 'static,
    K::DynamicType: Default,
{
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&gate_selector());
    let events = watcher(namespaces, config).default_backoff();
    futures::pin_mut!(events);
    let mut running: HashMap<String, AbortOnDrop> = HashMap::new();
    let mut relisted: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        if tx.is_closed() {
            return;
        }
        match event {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(ns)) => {
                relisted.insert(ns.name_any());
                start(&client, &tx, &mut running, &ns.name_any());
            }
            Ok(watcher::Event::InitDone) => {
                // Ungated or deleted while the watch was down.
                running.retain(|name, _| relisted.contains(name));
            }
            Ok(watcher::Event::Apply(ns)) => {
                if ns.metadata.deletion_timestamp.is_some() {
                    running.remove(&ns.name_any());
                } else {
                    start(&client, &tx, &mut running, &ns.name_any());
                }
            }
            // Also sent when the label is removed: the namespace left the selector.
            Ok(watcher::Event::Delete(ns)) => {
                running.remove(&ns.name_any());
            }
            Err(e) => tracing::warn!(error = %e, "watching gated namespaces"),
        }
    }
}

fn start<K>(
    client: &kube::Client,
    tx: &mpsc::Sender<PartialObjectMeta<K>>,
    running: &mut HashMap<String, AbortOnDrop>,
    namespace: &str,
) where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync,
    K: 'static,
    K::DynamicType: Default,
{
    if running.contains_key(namespace) {
        return;
    }
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(client.clone(), namespace);
    let mut tx = tx.clone();
    let ns = namespace.to_string();
    let task = tokio::spawn(async move {
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects();
        futures::pin_mut!(events);
        let mut reported = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(m) => {
                    reported = false;
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let resource = K::plural(&Default::default()).to_string();
                    let denied = match &e {
                        watcher::Error::InitialListFailed(k)
                        | watcher::Error::WatchStartFailed(k)
                        | watcher::Error::WatchFailed(k) => {
                            forbidden(k, "list/watch", &resource, &ns, "*")
                        }
                        _ => None,
                    };
                    // The watch retries with backoff; say it once per outage.
                    match denied {
                        Some(msg) if !reported => tracing::error!(namespace = %ns, "{msg}"),
                        Some(_) => {}
                        None => tracing::warn!(namespace = %ns, error = %e, "values watch"),
                    }
                    reported = true;
                }
            }
        }
    });
    running.insert(namespace.to_string(), AbortOnDrop(task.abort_handle()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status {
                code,
                message: "denied".into(),
                reason: "Forbidden".into(),
                ..Default::default()
            }
            .into(),
        )
    }

    #[test]
    fn a_403_names_the_verb_resource_namespace_and_the_fix() {
        let msg = forbidden(&status(403), "get", "secrets", "shop", "db").unwrap();
        assert!(msg.contains("`get` on secrets in namespace shop"), "{msg}");
        assert!(msg.contains("secrets/db"), "{msg}");
        assert!(msg.contains("managed-by=vworkspace"), "{msg}");
        assert!(msg.contains("tenantNamespaces"), "{msg}");
    }

    #[test]
    fn other_errors_are_not_permission_errors() {
        assert!(forbidden(&status(404), "get", "secrets", "shop", "db").is_none());
        assert!(forbidden(&status(500), "get", "secrets", "shop", "db").is_none());
    }
}
