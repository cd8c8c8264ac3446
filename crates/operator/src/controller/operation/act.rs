//! Act: runs the plan — engine writes through [`engine_io`], the status, the finalizer
//! and the events through the kit.

use kube::runtime::controller::Action;
use vworkspace_api::keys;
use vworkspace_api::operation::Operation;
use vworkspace_decide::operation::{self as decide, Decision, Observed, Plan};

use super::{Ctx, engine_io};
use crate::controller::kit::{AtStage, Error, HasKit, Stage};

/// Executes the plan.
pub(super) async fn act(
    ctx: &Ctx,
    o: &Observed,
    plan: Plan,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let op = &o.op;
    let kit = ctx.kit();
    match &plan.decision {
        Decision::Nothing => {}
        Decision::AddFinalizer => kit.add_finalizer(op, keys::FINALIZER_OPERATION).await?,
        Decision::Release {
            stop,
            remove_finalizer,
        } => {
            engine_io::apply_all(&ctx.base.client, stop)
                .await
                .at(Stage::Apply)?;
            if *remove_finalizer {
                kit.remove_finalizer(op, keys::FINALIZER_OPERATION).await?;
            }
        }
        Decision::Finish { stop, .. } => engine_io::apply_all(&ctx.base.client, stop)
            .await
            .at(Stage::Apply)?,
        Decision::Start(build) => {
            let outcome = engine_io::start(&ctx.base.client, op, build)
                .await
                .at(Stage::Apply)?;
            let next = decide::after_start(o, build, outcome, now);
            return finish_pass(ctx, op, next).await;
        }
        Decision::Block(_) | Decision::Wait => {}
    }
    finish_pass(ctx, op, plan).await
}

/// Writes the planned status (server-side apply; transitions become Events).
async fn finish_pass(ctx: &Ctx, op: &Operation, plan: Plan) -> Result<Action, Error> {
    if let Some(status) = &plan.status {
        ctx.kit().apply_status(op, status).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
