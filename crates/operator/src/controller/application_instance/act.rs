//! Act: applies the Flux children, deletes what deletion asks for, and writes the
//! status, the finalizer and the events through the kit.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_decide::flux::{ChartSource, FluxChildren};
use vworkspace_decide::instance::{self as decide, Child, Decision, Observed, Plan};
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use super::cache::{Cache, desired_hash};
use super::stored::{Slim, StoredRelease, StoredSource};
use crate::controller::Context;
use crate::controller::kit::{AtStage, Error, HasKit, Stage};

/// Executes the plan.
pub(super) async fn act(
    ctx: &Context,
    cache: &Arc<Cache>,
    o: &Observed,
    plan: Plan,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let inst = &o.inst;
    let kit = ctx.kit();
    let finalizer = keys::FINALIZER_APPLICATION_INSTANCE;
    match &plan.decision {
        Decision::Nothing | Decision::Block { .. } | Decision::Placeholder | Decision::Applied => {}
        Decision::AddFinalizer => kit.add_finalizer(inst, finalizer).await?,
        Decision::Apply(children) => {
            let (live, missed) = apply(ctx, cache, inst, children).await.at(Stage::Apply)?;
            let next = decide::after_apply(o, children, &live.to_release(), now);
            let action = finish_pass(ctx, inst, next).await?;
            // A child changed while it was being applied: look again.
            return Ok(if missed {
                Action::requeue(std::time::Duration::ZERO)
            } else {
                action
            });
        }
        Decision::Release {
            delete,
            remove_finalizer,
        } => {
            let namespace = inst.namespace().unwrap_or_default();
            let mut all_gone = true;
            for child in delete {
                // A child gone now: this pass releases the instance or waits for another
                // child; either way its deletion event needs no pass of its own.
                let deleting = cache.deleting(&namespace, child);
                let gone = delete_child(ctx, &namespace, child)
                    .await
                    .at(Stage::Apply)?;
                all_gone &= deleting.done(gone);
            }
            // No child was held back (no Flux finalizer, nothing to uninstall): release
            // now instead of writing a `Deleting` status and waiting for the deletions'
            // watch events to start a second pass.
            let at_once = !delete.is_empty() && all_gone;
            if !at_once && let Some(status) = &plan.status {
                kit.apply_status(inst, status).await?;
            }
            if *remove_finalizer || at_once {
                if !all_gone {
                    warn!(instance = %inst.name_any(), "releasing instance with Flux children still present");
                }
                kit.remove_finalizer(inst, finalizer).await?;
                return Ok(Action::await_change());
            }
            if !delete.is_empty() {
                info!(instance = %inst.name_any(), "waiting for Flux to uninstall the children");
            }
            return Ok(plan
                .requeue
                .map_or_else(Action::await_change, Action::requeue));
        }
    }
    finish_pass(ctx, inst, plan).await
}

/// Writes the planned status (server-side apply; transitions become Events).
async fn finish_pass(
    ctx: &Context,
    inst: &ApplicationInstance,
    plan: Plan,
) -> Result<Action, Error> {
    if let Some(status) = &plan.status {
        ctx.kit().apply_status(inst, status).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Applies the chart source and the HelmRelease (server-side apply) unless the last
/// apply of the same objects still stands, removes a source of the other kind when the
/// store shows one, and returns the live HelmRelease and whether a child changed while
/// it was applied. The requests are independent (the HelmRelease names its source, which
/// Flux resolves whenever it appears), so they go out together: one round trip per pass
/// instead of three.
async fn apply(
    ctx: &Context,
    cache: &Arc<Cache>,
    inst: &ApplicationInstance,
    children: &FluxChildren,
) -> Result<(StoredRelease, bool), kube::Error> {
    let namespace = inst.namespace().unwrap_or_default();
    let client = &ctx.client;
    let source = async {
        match &children.source {
            ChartSource::Helm(src) => {
                ensure(client, cache, &cache.helm_repositories, &namespace, src)
                    .await
                    .map(|(_, missed)| missed)
            }
            ChartSource::Oci(src) => {
                ensure(client, cache, &cache.oci_repositories, &namespace, src)
                    .await
                    .map(|(_, missed)| missed)
            }
        }
    };
    let stale = decide::stale_source(children);
    // Stored, or applied by an earlier pass and not yet in the store.
    let present = match &stale {
        Child::HelmRepository(n) => {
            cache
                .helm_repositories
                .get(&ObjectRef::new(n).within(&namespace))
                .is_some()
                || cache.applied::<StoredSource<HelmRepository>>(&namespace, n)
        }
        Child::OCIRepository(n) => {
            cache
                .oci_repositories
                .get(&ObjectRef::new(n).within(&namespace))
                .is_some()
                || cache.applied::<StoredSource<OCIRepository>>(&namespace, n)
        }
        Child::HelmRelease(_) => false,
    };
    let stale_gone = async {
        if present {
            delete_child(ctx, &namespace, &stale).await.map(|_| ())
        } else {
            Ok(())
        }
    };
    let release = ensure(
        client,
        cache,
        &cache.releases,
        &namespace,
        &children.helm_release,
    );
    let (source_missed, (), (live, release_missed)) =
        futures::try_join!(source, stale_gone, release)?;
    Ok((live, source_missed || release_missed))
}

/// One child: the stored object when the last apply of `desired` still stands,
/// otherwise the slim form of what applying it returned.
async fn ensure<K: Slim>(
    client: &kube::Client,
    cache: &Arc<Cache>,
    store: &Store<K::Stored>,
    namespace: &str,
    desired: &K,
) -> Result<(K::Stored, bool), kube::Error> {
    let name = desired.name_any();
    let hash = desired_hash(desired);
    if let Some(live) = cache.unchanged(store, namespace, &name, hash) {
        return Ok((live, false));
    }
    let applying = cache.applying::<K::Stored>(namespace, &name);
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    let live = Api::<K>::namespaced(client.clone(), namespace)
        .patch(&name, &pp, &Patch::Apply(desired))
        .await?
        .slim();
    let missed = applying.done(hash, &live);
    Ok((live, missed))
}

/// Deletes one child with background propagation; returns whether it is gone (one
/// already gone is fine).
async fn delete_child(ctx: &Context, namespace: &str, child: &Child) -> Result<bool, kube::Error> {
    let dp = DeleteParams::background();
    let client = ctx.client.clone();
    let result = match child {
        Child::HelmRelease(n) => Api::<HelmRelease>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|a| gone(a.left().as_ref().map(Resource::meta))),
        Child::HelmRepository(n) => Api::<HelmRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|a| gone(a.left().as_ref().map(Resource::meta))),
        Child::OCIRepository(n) => Api::<OCIRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|a| gone(a.left().as_ref().map(Resource::meta))),
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        other => other,
    }
}

/// Whether a DELETE answer means the object is gone: the apiserver answers a `Status`
/// (`None` here) or, for custom resources, the deleted object itself. An object that
/// still carries finalizers (Flux's uninstall) was only marked for deletion.
fn gone(answer: Option<&ObjectMeta>) -> bool {
    answer.is_none_or(|m| m.finalizers.as_ref().is_none_or(Vec::is_empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_answer_with_finalizers_is_not_gone() {
        assert!(gone(None), "a Status answer");
        assert!(gone(Some(&ObjectMeta::default())));
        let mut m = ObjectMeta {
            finalizers: Some(Vec::new()),
            ..ObjectMeta::default()
        };
        assert!(gone(Some(&m)));
        m.finalizers = Some(vec!["finalizers.fluxcd.io".into()]);
        assert!(!gone(Some(&m)), "Flux still has to uninstall");
    }
}
