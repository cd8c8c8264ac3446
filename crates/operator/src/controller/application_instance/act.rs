//! Act: applies the Flux children, deletes what deletion asks for, and writes the
//! status, the finalizer and the events through the kit.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use tracing::{info, warn};
use vworkspace_api::application_instance::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_decide::flux::{ChartSource, FluxChildren};
use vworkspace_decide::instance::{self as decide, Child, Decision, Observed, Plan};
use vworkspace_decide::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

use crate::controller::Context;
use crate::controller::kit::{AtStage, Error, HasKit, Stage};

/// Executes the plan.
pub(super) async fn act(
    ctx: &Context,
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
            let live = apply(ctx, inst, children).await.at(Stage::Apply)?;
            let next = decide::after_apply(o, children, &live, now);
            return finish_pass(ctx, inst, next).await;
        }
        Decision::Release {
            delete,
            remove_finalizer,
        } => {
            let namespace = inst.namespace().unwrap_or_default();
            for child in delete {
                delete_child(ctx, &namespace, child)
                    .await
                    .at(Stage::Apply)?;
            }
            if let Some(status) = &plan.status {
                kit.apply_status(inst, status).await?;
            }
            if *remove_finalizer {
                if !delete.is_empty() {
                    warn!(instance = %inst.name_any(), "releasing instance with Flux children still present");
                }
                kit.remove_finalizer(inst, finalizer).await?;
            } else if !delete.is_empty() {
                info!(instance = %inst.name_any(), "waiting for Flux children to go");
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

/// Applies the chart source and the HelmRelease (server-side apply), removes a source
/// of the other kind, and returns the live HelmRelease.
async fn apply(
    ctx: &Context,
    inst: &ApplicationInstance,
    children: &FluxChildren,
) -> Result<HelmRelease, kube::Error> {
    let namespace = inst.namespace().unwrap_or_default();
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    match &children.source {
        ChartSource::Helm(src) => {
            Api::<HelmRepository>::namespaced(ctx.client.clone(), &namespace)
                .patch(&src.name_any(), &pp, &Patch::Apply(src))
                .await?;
        }
        ChartSource::Oci(src) => {
            Api::<OCIRepository>::namespaced(ctx.client.clone(), &namespace)
                .patch(&src.name_any(), &pp, &Patch::Apply(src))
                .await?;
        }
    }
    delete_child(ctx, &namespace, &decide::stale_source(children)).await?;
    Api::<HelmRelease>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &children.helm_release.name_any(),
            &pp,
            &Patch::Apply(&children.helm_release),
        )
        .await
}

/// Deletes one child with background propagation; one already gone is fine.
async fn delete_child(ctx: &Context, namespace: &str, child: &Child) -> Result<(), kube::Error> {
    let dp = DeleteParams::background();
    let client = ctx.client.clone();
    let result = match child {
        Child::HelmRelease(n) => Api::<HelmRelease>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
        Child::HelmRepository(n) => Api::<HelmRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
        Child::OCIRepository(n) => Api::<OCIRepository>::namespaced(client, namespace)
            .delete(n, &dp)
            .await
            .map(|_| ()),
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}
