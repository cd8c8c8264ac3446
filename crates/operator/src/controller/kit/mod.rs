//! The reconciler kit: what every controller needs around its decide step, written once.
//!
//! A controller holds a [`Kit`] in its context (implementing [`HasKit`]) and runs with
//!
//! ```ignore
//! Controller::new(api, config)
//!     .run(kit::reconciler(reconcile), kit::error_policy, ctx)
//!     .for_each(kit::report)
//! ```
//!
//! where `reconcile(obj, ctx) -> Result<Action, kit::Error>` is its observe → decide →
//! act pass. The kit then supplies:
//!
//! - **a span per pass** (`reconcile` with `controller` and `object` = kind/namespace/name)
//!   so every log line of the pass names the object, and a **deadline**
//!   ([`PASS_DEADLINE`]): a pass that hangs is cancelled and retried, not left holding
//!   its object;
//! - **metrics**: `controller_runtime_reconcile_total{controller,result}`,
//!   `controller_runtime_reconcile_errors_total{controller,category}` and the histogram
//!   `controller_runtime_reconcile_time_seconds{controller}`; `controller` is the
//!   lower-cased kind (`applicationinstance`, `operation`, `cluster`);
//! - **typed errors** ([`Error`], [`Stage`]): tag each fallible step with
//!   `.at(Stage::Observe | Apply | Status | Finalizer)`, or return
//!   [`Error::invalid_spec`]; the category feeds the error metric, `reason()` a condition;
//! - **[`error_policy`]**: per-object exponential backoff (1 s doubling to 1 min, reset by
//!   a successful pass, bounded map); an invalid spec waits for a change instead of
//!   requeueing;
//! - **[`Kit::apply_status`]**: the whole status written by server-side apply on the
//!   status subresource (field manager `vworkspace-operator`, forced), skipped when
//!   unchanged; fields the controller stops setting disappear without null lists. It then
//!   publishes one Event per condition transition (old vs new status) — the one event
//!   path, with [`Kit::notice`] for named events a plan asks for;
//! - **finalizers**: [`Kit::has_finalizer`], [`Kit::add_finalizer`],
//!   [`Kit::remove_finalizer`] (a JSON patch testing the list it replaces, so a
//!   concurrent change of the finalizers fails the pass — retried — instead of being
//!   clobbered, while other writes such as our own status do not; with no list yet, a
//!   merge patch carrying `resourceVersion`).
//!
//! Only the error categories, the backoff schedule and the transition diff hold logic;
//! they are unit-tested here and in `events`. The writers are proven by the integration
//! tests against a real apiserver.

mod backoff;
mod error;
mod ready;
mod relist;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

pub use backoff::{Backoff, Backoffs, TriggerBackoff};
pub use error::{AtStage, Cause, Error, Stage, category};
pub use ready::store_ready;
pub use relist::applied_after_list;
pub use status::Conditioned;

use super::events::{self, Notice};
use crate::metrics::Metrics;

/// Shared plumbing of the controllers: API client, event recorder, metrics, backoff.
pub struct Kit {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    backoff: Backoffs,
}

impl std::fmt::Debug for Kit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kit").finish_non_exhaustive()
    }
}

/// A controller context that carries a [`Kit`].
pub trait HasKit: Send + Sync + 'static {
    fn kit(&self) -> &Kit;
}

impl HasKit for Kit {
    fn kit(&self) -> &Kit {
        self
    }
}

/// `controller` label of an object kind: `ApplicationInstance` → `applicationinstance`.
pub fn controller_name<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_ascii_lowercase()
}

/// Backoff key of one object.
fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

impl Kit {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "vworkspace-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Kit {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            backoff: Backoffs::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn backoffs(&self) -> &Backoffs {
        &self.backoff
    }

    /// Writes `desired` as the object's whole status by server-side apply, unless it
    /// equals the current one; then publishes the condition transitions. Returns whether
    /// it wrote.
    pub async fn apply_status<K>(&self, obj: &K, desired: &K::Status) -> Result<bool, Error>
    where
        K: Resource<DynamicType = ()> + kube::core::object::HasStatus,
        K::Status: serde::Serialize + PartialEq + Conditioned,
    {
        let current = obj.status();
        if current == Some(desired) {
            return Ok(false);
        }
        status::apply::<K>(&self.client, obj, desired)
            .await
            .at(Stage::Status)?;
        let old = current.map(Conditioned::conditions).unwrap_or_default();
        let reference = obj.object_ref(&());
        for c in events::transitions(old, desired.conditions()) {
            let (notice, action) = events::transition_notice(c);
            events::publish(&self.recorder, &reference, &notice, &action).await;
        }
        Ok(true)
    }

    /// Publishes a named Event about `reference` (see [`events::Notice`]).
    pub async fn notice(&self, reference: &ObjectReference, notice: &Notice) {
        events::publish(&self.recorder, reference, notice, &notice.reason).await;
    }

    pub fn has_finalizer<K: Resource>(obj: &K, finalizer: &str) -> bool {
        obj.finalizers().iter().any(|f| f == finalizer)
    }

    /// Adds `finalizer` (no-op when present).
    pub async fn add_finalizer<K>(&self, obj: &K, finalizer: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
    {
        if Self::has_finalizer(obj, finalizer) {
            return Ok(());
        }
        let mut list = obj.finalizers().to_vec();
        list.push(finalizer.to_string());
        self.set_finalizers(obj, list).await
    }

    /// Removes `finalizer` (no-op when absent).
    pub async fn remove_finalizer<K>(&self, obj: &K, finalizer: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
    {
        if !Self::has_finalizer(obj, finalizer) {
            return Ok(());
        }
        let list = obj
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        match self.set_finalizers(obj, list).await {
            // The object is gone, and its finalizer with it: a pass that ran on a store
            // still showing it (its deletion event on the way) has nothing left to do.
            Err(Error::Stage {
                cause: Cause::Kube(kube::Error::Api(s)),
                ..
            }) if s.code == 404 => Ok(()),
            other => other,
        }
    }

    async fn set_finalizers<K>(&self, obj: &K, list: Vec<String>) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
    {
        let current = obj.finalizers();
        if current.is_empty() {
            // No list to test against: resourceVersion makes the patch fail instead of
            // clobbering a concurrent change.
            let patch = json!({"metadata": {"finalizers": list, "resourceVersion": obj.resource_version()}});
            return status::merge_patch::<K>(&self.client, obj, &patch)
                .await
                .at(Stage::Finalizer);
        }
        // Fails only when the finalizers changed since `obj` was read, not on any other
        // write (our own status updates made the resourceVersion guard conflict).
        let patch = finalizers_patch(current, &list).at(Stage::Finalizer)?;
        status::json_patch::<K>(&self.client, obj, &patch)
            .await
            .at(Stage::Finalizer)
    }
}

/// JSON patch replacing the finalizer list `current` by `list`, if it still is `current`.
fn finalizers_patch(current: &[String], list: &[String]) -> Result<json_patch::Patch, kube::Error> {
    let ops = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": current},
        {"op": "replace", "path": "/metadata/finalizers", "value": list},
    ]);
    serde_json::from_value(ops).map_err(kube::Error::SerdeError)
}

/// Longest a pass may take before it is cancelled and retried. A healthy pass takes
/// milliseconds to seconds; a pass stuck on a request that never answers (the client has
/// no read timeout, since watches share it) would otherwise hold its object forever: the
/// controller starts no other pass for an object while one runs.
pub const PASS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Wraps a reconcile function with the span, the metrics and the backoff reset.
pub fn reconciler<K, C, F, Fut>(
    f: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, Error>>
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    C: HasKit,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let f = f.clone();
        async move { instrument(obj, ctx, f).await }.boxed()
    }
}

/// One pass of `f` inside the span, counted and timed.
pub async fn instrument<K, C, F, Fut>(obj: Arc<K>, ctx: Arc<C>, f: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    C: HasKit,
    F: FnOnce(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let controller = controller_name::<K>();
    let key = object_key(&*obj);
    let span = tracing::info_span!("reconcile", controller = %controller, object = %key);
    let started = Instant::now();
    let result = async {
        tracing::debug!("pass started");
        let result = match tokio::time::timeout(PASS_DEADLINE, f(obj, ctx.clone())).await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!(
                    deadline_s = PASS_DEADLINE.as_secs(),
                    "pass did not finish by its deadline; cancelled, will retry"
                );
                Err(Error::Deadline(PASS_DEADLINE))
            }
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "pass finished"
        );
        result
    }
    .instrument(span)
    .await;
    let kit = ctx.kit();
    kit.metrics.record_reconcile(
        &controller,
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    if result.is_ok() {
        kit.backoff.succeeded(&key);
    }
    result
}

/// Sink for the stream of `Controller::run`: `.for_each(kit::report)`. Reconcile
/// failures were logged by [`error_policy`]; what is left (watch and queue errors) is
/// logged here.
pub async fn report<T, Q: std::error::Error>(
    res: Result<T, kube::runtime::controller::Error<Error, Q>>,
) {
    if let Err(e) = res
        && !matches!(e, kube::runtime::controller::Error::ReconcilerFailed(..))
    {
        tracing::warn!(error = %e, "controller");
    }
}

/// Retry policy of every controller: exponential backoff per object; an invalid spec
/// waits for a change of the object or of something it references.
pub fn error_policy<K, C>(obj: Arc<K>, err: &Error, ctx: Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    C: HasKit,
{
    let key = object_key(&*obj);
    if err.waits_for_change() {
        tracing::warn!(object = %key, error = %err, "invalid spec; waiting for a change");
        ctx.kit().backoff.succeeded(&key);
        return Action::await_change();
    }
    let (attempt, delay) = ctx.kit().backoff.failed(&key);
    tracing::warn!(
        object = %key,
        error = %err,
        category = err.category(),
        attempt,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed; will retry"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_finalizer_patch_tests_the_list_it_replaces() {
        let current = vec!["a".to_string(), "b".to_string()];
        let patch = finalizers_patch(&current, &["a".to_string()]).unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a", "b"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": ["a"]},
            ])
        );
    }
}
