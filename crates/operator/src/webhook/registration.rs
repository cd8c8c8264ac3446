//! The ValidatingWebhookConfiguration of the operator (spec §9.1). The chart and
//! `config/webhook/` ship the same rules; tests register this one against a webhook on
//! loopback.
//!
//! Never wedge: DELETE is not registered; the status subresource is not matched; the
//! `matchConditions` send neither objects being deleted nor updates that leave `spec`
//! unchanged (finalizer, label and annotation edits), so the controller can always let
//! an object go even while the webhook is down; the namespace selector keeps
//! kube-system and the operator's own namespace out.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

pub const OPERATION_PATH: &str = "/validate-ops-vworkspace-io-v1alpha1-operation";
pub const INSTANCE_PATH: &str = "/validate-apps-vworkspace-io-v1alpha1-applicationinstance";
pub const OPERATION_WEBHOOK: &str = "voperation.kb.io";
pub const INSTANCE_WEBHOOK: &str = "vapplicationinstance.kb.io";

/// CEL of the `matchConditions` (the same strings are in the chart and `config/webhook/`).
pub const MATCH_NOT_DELETING: &str = "!has(object.metadata.deletionTimestamp)";
pub const MATCH_SPEC_CHANGED: &str = "request.operation != 'UPDATE' || \
     (has(object.spec) != has(oldObject.spec)) || \
     (has(object.spec) && object.spec != oldObject.spec)";

/// Operation webhook only: setting `spec.cancel: true` is never sent (a cancelled
/// Operation never runs, so there is nothing to check, and cancelling must not depend on
/// the webhook).
pub const MATCH_NOT_CANCELLED: &str =
    "!has(object.spec) || !has(object.spec.cancel) || object.spec.cancel != true";

/// Where the apiserver reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `https://<host:port>` (tests on loopback; out-of-cluster operators).
    Url(String),
    /// A Service (the chart): namespace, name, port.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// The knobs of the registration.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM of the CA(s) that sign the serving certificate.
    pub ca_bundle: Vec<u8>,
    /// Which namespaces are reviewed (the chart excludes kube-system and its own).
    pub namespace_selector: LabelSelector,
    /// `Fail` (spec §9.1) or `Ignore`.
    pub failure_policy: String,
    pub timeout_seconds: i32,
}

fn client_config(r: &Registration, path: &str) -> WebhookClientConfig {
    let mut cc = WebhookClientConfig {
        ca_bundle: Some(k8s_openapi::ByteString(r.ca_bundle.clone())),
        ..Default::default()
    };
    match &r.endpoint {
        Endpoint::Url(base) => cc.url = Some(format!("{}{path}", base.trim_end_matches('/'))),
        Endpoint::Service {
            namespace,
            name,
            port,
        } => {
            cc.service = Some(
                k8s_openapi::api::admissionregistration::v1::ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(*port),
                },
            )
        }
    }
    cc
}

fn webhook(
    r: &Registration,
    name: &str,
    path: &str,
    group: &str,
    plural: &str,
) -> ValidatingWebhook {
    let mut conditions = vec![
        MatchCondition {
            name: "not-deleting".into(),
            expression: MATCH_NOT_DELETING.into(),
        },
        MatchCondition {
            name: "spec-changed".into(),
            expression: MATCH_SPEC_CHANGED.into(),
        },
    ];
    if plural == "operations" {
        conditions.push(MatchCondition {
            name: "not-cancelled".into(),
            expression: MATCH_NOT_CANCELLED.into(),
        });
    }
    ValidatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(r, path),
        failure_policy: Some(r.failure_policy.clone()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(r.timeout_seconds),
        namespace_selector: Some(r.namespace_selector.clone()),
        match_conditions: Some(conditions),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![group.into()]),
            api_versions: Some(vec!["v1alpha1".into()]),
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            resources: Some(vec![plural.into()]),
            scope: Some("Namespaced".into()),
        }]),
        ..Default::default()
    }
}

/// Both webhooks of spec §9.1.
pub fn configuration(r: &Registration) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![
            webhook(
                r,
                OPERATION_WEBHOOK,
                OPERATION_PATH,
                "ops.vworkspace.io",
                "operations",
            ),
            webhook(
                r,
                INSTANCE_WEBHOOK,
                INSTANCE_PATH,
                "apps.vworkspace.io",
                "applicationinstances",
            ),
        ]),
    }
}
