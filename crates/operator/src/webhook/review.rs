//! AdmissionReview handling: decode, the spec §9.3 short cuts (DELETE, deletion,
//! unchanged spec), the lookups, then `vworkspace_decide::admission`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, Operation as Verb,
};
use serde_json::Value;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::operation::Operation;
use vworkspace_decide::admission::{self, InstanceFacts, OperationFacts};
use vworkspace_decide::engines::{self, Settings};

use super::lookups::Lookups;
use super::{INSTANCE_PATH, OPERATION_PATH, WebhookConfig};

/// What every review shares.
pub struct Reviewer {
    lookups: Lookups,
    approval_secret: String,
    allowed_chart_urls: Vec<String>,
    settings: Settings,
}

impl Reviewer {
    pub fn new(client: kube::Client, config: &WebhookConfig) -> Self {
        Reviewer {
            lookups: Lookups::new(client),
            approval_secret: config.approval_secret.clone(),
            allowed_chart_urls: config.allowed_chart_urls.clone(),
            settings: Settings {
                velero_namespace: config.velero_namespace.clone(),
            },
        }
    }
}

pub fn router(state: Arc<Reviewer>) -> axum::Router {
    axum::Router::new()
        .route(OPERATION_PATH, post(operation))
        .route(INSTANCE_PATH, post(instance))
        // A review carries the object and its old version, each up to etcd's 1.5 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(state)
}

type Review = AdmissionReview<DynamicObject>;

/// The request's object (and old object) when the lookup rules apply to it; `None`
/// when the request passes without them (DELETE, CONNECT, deletion, unchanged spec).
fn needs_rules(req: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    if !matches!(req.operation, Verb::Create | Verb::Update) {
        return None;
    }
    let new = serde_json::to_value(req.object.as_ref()?).ok()?;
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok());
    if req.operation == Verb::Update && admission::skips_lookups(&new, old.as_ref()) {
        return None;
    }
    Some(new)
}

fn respond(
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
    verdict: Result<(), String>,
) -> Json<Review> {
    let response = AdmissionResponse::from(req);
    let response = match verdict {
        Ok(()) => response,
        Err(message) => {
            tracing::info!(
                kind,
                namespace = req.namespace.as_deref().unwrap_or_default(),
                name = %req.name,
                message = %message,
                "admission denied"
            );
            // 403 Forbidden, as the apiserver's own policy denials: `kubectl` prints
            // "Error from server (Forbidden): ... denied the request: <message>".
            let mut denied = response.deny(message);
            denied.result.code = 403;
            denied.result.reason = "Forbidden".into();
            denied
        }
    };
    Json(response.into_review())
}

fn invalid(message: String) -> Json<Review> {
    Json(AdmissionResponse::invalid(message).into_review())
}

#[derive(Clone, Copy)]
enum Kind {
    Operation,
    Instance,
}

async fn operation(State(s): State<Arc<Reviewer>>, Json(review): Json<Review>) -> Json<Review> {
    handle(&s, review, Kind::Operation).await
}

async fn instance(State(s): State<Arc<Reviewer>>, Json(review): Json<Review>) -> Json<Review> {
    handle(&s, review, Kind::Instance).await
}

async fn handle(s: &Reviewer, review: Review, kind: Kind) -> Json<Review> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return invalid(format!("malformed AdmissionReview: {e}")),
    };
    let old = req
        .old_object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok());
    let verdict = match (needs_rules(&req), kind) {
        (None, _) => Ok(()),
        (Some(_), Kind::Operation) if admission::operation_started(old.as_ref()) => Ok(()),
        (Some(new), Kind::Operation) => review_operation(s, new).await,
        (Some(new), Kind::Instance) => review_instance(s, new).await,
    };
    let name = match kind {
        Kind::Operation => "Operation",
        Kind::Instance => "ApplicationInstance",
    };
    respond(&req, name, verdict)
}

async fn review_operation(s: &Reviewer, new: Value) -> Result<(), String> {
    let op: Operation =
        serde_json::from_value(new).map_err(|e| format!("spec: not a valid Operation: {e}"))?;
    let ns = op.namespace().unwrap_or_default();
    let target = s
        .lookups
        .instance(&ns, &op.spec.target_ref.name)
        .await
        .map_err(|e| format!("admission could not check spec.targetRef ({e}); retry"))?;
    let resources: Vec<_> = engines::template(op.spec.r#type, op.spec.engine)
        .map(|t| {
            t.runner
                .resources(&s.settings)
                .into_iter()
                .map(|(ar, _)| ar)
                .collect()
        })
        .unwrap_or_default();
    let served = s.lookups.served(&resources).await;
    let is_served = |ar: &kube::core::ApiResource| {
        served
            .iter()
            .find(|(a, _)| a == ar)
            .is_none_or(|(_, served)| *served)
    };
    admission::review_operation(
        &op,
        &OperationFacts {
            target: target.as_ref(),
            approval_secret: &s.approval_secret,
            now_seconds: jiff::Timestamp::now().as_second(),
            settings: &s.settings,
            served: &is_served,
        },
    )
}

async fn review_instance(s: &Reviewer, new: Value) -> Result<(), String> {
    let inst: ApplicationInstance = serde_json::from_value(new)
        .map_err(|e| format!("spec: not a valid ApplicationInstance: {e}"))?;
    // Only an instance that carries the label needs the Clusters read.
    let labelled = inst
        .labels()
        .get(vworkspace_api::keys::LABEL_CLUSTER_ID)
        .is_some_and(|v| !v.trim().is_empty());
    let ids = if labelled {
        s.lookups
            .cluster_ids()
            .await
            .map_err(|e| format!("admission could not check the cluster-id label ({e}); retry"))?
    } else {
        Vec::new()
    };
    admission::review_instance(
        &inst,
        &InstanceFacts {
            registered_cluster_ids: &ids,
            allowed_chart_urls: &s.allowed_chart_urls,
        },
    )
}
