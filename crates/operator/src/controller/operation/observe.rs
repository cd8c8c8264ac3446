//! Observe: everything one pass decides on, read once.

use kube::ResourceExt;
use kube::api::Api;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::operation::{Operation, Phase};
use vworkspace_decide::operation::{self as decide, Observed};

use super::{Ctx, engine_io, phase};
use crate::controller::kit::{self, AtStage, Error, Stage};

/// Everything the decision needs, read once.
pub(super) async fn observe(
    ctx: &Ctx,
    op: &Operation,
    now: jiff::Timestamp,
) -> Result<Observed, Error> {
    let mut o = Observed::of(op.clone(), ctx.config.clone());
    let settled =
        op.metadata.deletion_timestamp.is_some() || phase(op).is_some_and(Phase::is_terminal);
    if settled {
        return Ok(o);
    }
    let ns = op.namespace().unwrap_or_default();
    o.target = Api::<ApplicationInstance>::namespaced(ctx.base.client.clone(), &ns)
        .get_opt(&op.spec.target_ref.name)
        .await
        .at(Stage::Observe)?;
    // An empty cache before the first list would let a conflicting Operation through.
    if kit::store_ready(&ctx.peers).await {
        o.peers = ctx
            .peers
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .map(|p| (**p).clone())
            .collect();
    }
    for query in decide::prerequisites(&o, now) {
        let found = engine_io::read(&ctx.base.client, &query)
            .await
            .at(Stage::Observe)?;
        o.prerequisites.push(found);
    }
    if let Some(query) = decide::workload_query(op) {
        o.workload = engine_io::read(&ctx.base.client, &query)
            .await
            .at(Stage::Observe)?;
    }
    Ok(o)
}
