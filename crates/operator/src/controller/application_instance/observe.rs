//! Observe: what [`decide::reads`] names, read once. Only key names of the values
//! Secret/ConfigMap are looked at; their values never leave the API response.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};
use vworkspace_decide::instance::{self as decide, Child, Observed, ValuesState};
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use super::cache::Cache;
use super::stored::Slim;
use super::tenant_access;
use crate::controller::Context;
use crate::controller::kit::{self, Cause};

/// Reads what the decision needs ([`decide::reads`]): key presence of the values
/// Secret/ConfigMap (never their values), the children left at deletion, the
/// release's Ingresses (from the watch's store).
pub(super) async fn observe(
    ctx: &Context,
    cache: &Cache,
    inst: &ApplicationInstance,
) -> Result<Observed, Cause> {
    let reads = decide::reads(inst);
    let namespace = inst.namespace().unwrap_or_default();
    let mut o = Observed::of(inst.clone());
    if let Some((kind, name, key)) = &reads.values {
        let (state, revision) = values_state(ctx, &namespace, *kind, name, key).await?;
        o.values = Some(state);
        o.values_revision = revision;
    }
    for child in reads.children {
        if child_exists(ctx, cache, &namespace, &child).await? {
            o.children.push(child);
        }
    }
    if let Some((ns, selector)) = &reads.ingresses {
        // From the watch's store. The selector is `label=value`.
        let (label, value) = selector.split_once('=').unwrap_or((selector, ""));
        o.ingresses = cache
            .ingresses
            .state()
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
            .filter(|i| i.labels().get(label).map(String::as_str) == Some(value))
            .map(|i| (**i).clone())
            .collect();
    }
    Ok(o)
}

/// A denied read (no tenant RoleBinding in that namespace) fails the pass with a message
/// naming the missing permission rather than a bare 403.
async fn values_state(
    ctx: &Context,
    namespace: &str,
    kind: ValuesSource,
    name: &str,
    key: &str,
) -> Result<(ValuesState, Option<String>), Cause> {
    let resource = match kind {
        ValuesSource::SecretRef => "secrets",
        _ => "configmaps",
    };
    let denied =
        |e: kube::Error| match tenant_access::forbidden(&e, "get", resource, namespace, name) {
            Some(msg) => Cause::Other(msg),
            None => Cause::Kube(e),
        };
    let found = match kind {
        ValuesSource::SecretRef => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(denied)?
            .map(|s| {
                let has = s.data.as_ref().is_some_and(|d| d.contains_key(key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(key));
                (has, s.metadata.resource_version)
            }),
        _ => Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(denied)?
            .map(|c| {
                let has = c.data.as_ref().is_some_and(|d| d.contains_key(key));
                (has, c.metadata.resource_version)
            }),
    };
    Ok(match found {
        None => (ValuesState::Missing, None),
        Some((false, _)) => (ValuesState::KeyMissing, None),
        Some((true, revision)) => (ValuesState::Present, revision),
    })
}

/// Whether `child` exists. The store answers once its first list is in (the pass waits
/// for that); a child a pass applied that the store does not show yet — its watch event
/// still on the way — is asked of the apiserver, so a lagging store never lets the
/// instance go before Flux uninstalled.
async fn child_exists(
    ctx: &Context,
    cache: &Cache,
    namespace: &str,
    child: &Child,
) -> Result<bool, kube::Error> {
    match child {
        Child::HelmRelease(n) => {
            exists::<HelmRelease>(ctx, cache, &cache.releases, namespace, n).await
        }
        Child::HelmRepository(n) => {
            exists::<HelmRepository>(ctx, cache, &cache.helm_repositories, namespace, n).await
        }
        Child::OCIRepository(n) => {
            exists::<OCIRepository>(ctx, cache, &cache.oci_repositories, namespace, n).await
        }
    }
}

async fn exists<K: Slim>(
    ctx: &Context,
    cache: &Cache,
    store: &Store<K::Stored>,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    if !kit::store_ready(store).await {
        return Err(kube::Error::Service(
            "the child watch stopped before its first list".into(),
        ));
    }
    if store.get(&ObjectRef::new(name).within(namespace)).is_some() {
        return Ok(true);
    }
    if !cache.applied::<K::Stored>(namespace, name) {
        return Ok(false);
    }
    Ok(Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?
        .is_some())
}
