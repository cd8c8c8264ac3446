//! ApplicationInstance fixtures: objects as a person or the control plane writes them, and
//! the instance controller's status as the Operation controller and the agent read it.

use kube::api::Api;
use serde_json::{Value, json};
use testkit::fixtures::write_status_subresource;
use vworkspace_api::ApplicationInstance;

/// `spec.chart` for chart `name` at `version` in the example Helm repository.
pub fn helm_chart(name: &str, version: &str) -> Value {
    json!({"sourceType": "helm", "url": "https://charts.example.org", "name": name, "version": version})
}

/// A managed instance `ns/name` releasing `chart` as release `name` with `values`.
pub fn instance(ns: &str, name: &str, chart: Value, values: Value) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"appRef": {"catalogId": name}, "chart": chart,
                 "release": {"name": name, "namespace": ns}, "values": values}
    })
}

/// The common case: chart `wiki` at `version`, no values.
pub fn managed_instance(ns: &str, name: &str, version: &str) -> Value {
    instance(
        ns,
        name,
        helm_chart("wiki", version),
        json!({"source": "inline", "inline": {}}),
    )
}

/// A placeholder instance declaring `capabilities` (annotations `ops.vworkspace.io/<verb>`).
pub fn placeholder(ns: &str, name: &str, capabilities: Value) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns, "annotations": capabilities},
        "spec": {"appRef": {"catalogId": name}, "mode": "placeholder"}
    })
}

/// Plays the ApplicationInstance controller: it observed the current generation, applied
/// the spec's chart through HelmRelease `name`, and reports `Ready=<ready>`.
pub async fn instance_controller_reports(
    api: &Api<ApplicationInstance>,
    name: &str,
    ready: &str,
    reason: &str,
    message: &str,
) {
    let inst = api.get(name).await.unwrap();
    let generation = inst.metadata.generation;
    let ns = inst.metadata.namespace.clone().unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    write_status_subresource(
        api,
        name,
        json!({
            "observedGeneration": generation,
            "lastAppliedChart": inst.spec.chart,
            "helmReleaseRef": {"name": name, "namespace": ns},
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message,
                            "lastTransitionTime": now, "observedGeneration": generation}]}),
    )
    .await
    .unwrap();
}
