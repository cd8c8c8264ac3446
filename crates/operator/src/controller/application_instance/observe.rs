//! Observe: what [`decide::reads`] names, read once. Only key names of the values
//! Secret/ConfigMap are looked at; their values never leave the API response.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};
use vworkspace_decide::instance::{self as decide, Child, Observed, ValuesState};

use super::cache::Cache;
use crate::controller::Context;

/// Reads what the decision needs ([`decide::reads`]): key presence of the values
/// Secret/ConfigMap (never their values), the children left at deletion, the
/// release's Ingresses (from the watch's store).
pub(super) async fn observe(
    ctx: &Context,
    cache: &Cache,
    inst: &ApplicationInstance,
) -> Result<Observed, kube::Error> {
    let reads = decide::reads(inst);
    let namespace = inst.namespace().unwrap_or_default();
    let mut o = Observed::of(inst.clone());
    if let Some((kind, name, key)) = &reads.values {
        o.values = Some(values_state(ctx, &namespace, *kind, name, key).await?);
    }
    for child in reads.children {
        if child_exists(cache, &namespace, &child).await? {
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

async fn values_state(
    ctx: &Context,
    namespace: &str,
    kind: ValuesSource,
    name: &str,
    key: &str,
) -> Result<ValuesState, kube::Error> {
    let has_key = match kind {
        ValuesSource::SecretRef => Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|s| {
                s.data.as_ref().is_some_and(|d| d.contains_key(key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
            }),
        _ => Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(|c| c.data.as_ref().is_some_and(|d| d.contains_key(key))),
    };
    Ok(match has_key {
        None => ValuesState::Missing,
        Some(false) => ValuesState::KeyMissing,
        Some(true) => ValuesState::Present,
    })
}

/// Whether the store holds `child`. The stores are complete once their first list is
/// in; until then the pass waits (a child missing from an unfilled store would let the
/// instance go before Flux uninstalled).
async fn child_exists(cache: &Cache, namespace: &str, child: &Child) -> Result<bool, kube::Error> {
    let ready = match child {
        Child::HelmRelease(_) => cache.releases.wait_until_ready().await,
        Child::HelmRepository(_) => cache.helm_repositories.wait_until_ready().await,
        Child::OCIRepository(_) => cache.oci_repositories.wait_until_ready().await,
    };
    ready.map_err(|e| kube::Error::Service(Box::new(e)))?;
    Ok(match child {
        Child::HelmRelease(n) => cache
            .releases
            .get(&ObjectRef::new(n).within(namespace))
            .is_some(),
        Child::HelmRepository(n) => cache
            .helm_repositories
            .get(&ObjectRef::new(n).within(namespace))
            .is_some(),
        Child::OCIRepository(n) => cache
            .oci_repositories
            .get(&ObjectRef::new(n).within(namespace))
            .is_some(),
    })
}
