//! Fixtures for the desired-state builder.

use serde_json::{Value, json};
use vworkspace_api::ApplicationInstance;

use super::*;

fn instance(spec: Value) -> ApplicationInstance {
    serde_json::from_value(json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "wiki", "namespace": "team1", "uid": "u-1",
                     "labels": {"app.vworkspace.io/cluster-id": "prod-eu-1", "team": "a"}},
        "spec": spec
    }))
    .unwrap()
}

fn managed(source_type: &str, url: &str, values: Value) -> ApplicationInstance {
    instance(json!({
        "appRef": {"catalogId": "wiki"},
        "chart": {"sourceType": source_type, "url": url, "name": "wiki", "version": "1.4.2"},
        "release": {"name": "wiki", "namespace": "team1"},
        "values": values
    }))
}

#[test]
fn helm_repository_with_inline_values() {
    let inst = managed(
        "helm",
        "https://charts.example.org",
        json!({"source": "inline", "inline": {"replicas": 2}}),
    );
    let FluxChildren {
        source,
        helm_release,
    } = desired_children(&inst).unwrap();
    let ChartSource::Helm(repo) = source else {
        panic!("expected HelmRepository")
    };
    assert_eq!(repo.metadata.name.as_deref(), Some("wiki-source"));
    assert_eq!(repo.spec.url, "https://charts.example.org");
    let owner = &repo.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ApplicationInstance", Some(true))
    );
    let hr = serde_json::to_value(&helm_release).unwrap();
    assert_eq!(
        hr["spec"]["chart"]["spec"],
        json!({"chart": "wiki", "version": "1.4.2",
        "sourceRef": {"kind": "HelmRepository", "name": "wiki-source"}})
    );
    assert_eq!(hr["spec"]["values"], json!({"replicas": 2}));
    assert!(hr["spec"].get("valuesFrom").is_none());
    assert_eq!(hr["spec"]["maxHistory"], json!(10));
    assert_eq!(
        hr["spec"]["upgrade"]["remediation"]["strategy"],
        json!("rollback")
    );
    assert_eq!(
        hr["metadata"]["labels"],
        json!({"app.vworkspace.io/managed-by": "vworkspace-operator",
               "app.vworkspace.io/application-instance": "wiki",
               "app.vworkspace.io/cluster-id": "prod-eu-1"})
    );
}

#[test]
fn oci_uses_oci_repository_and_chart_ref() {
    for url in [
        "oci://ghcr.io/acme/charts",
        "oci://ghcr.io/acme/charts/",
        "ghcr.io/acme/charts",
    ] {
        let inst = managed("oci", url, json!({"source": "inline", "inline": {}}));
        let children = desired_children(&inst).unwrap();
        let ChartSource::Oci(repo) = children.source else {
            panic!("expected OCIRepository")
        };
        assert_eq!(repo.spec.url, "oci://ghcr.io/acme/charts/wiki");
        assert_eq!(
            repo.spec.r#ref.as_ref().unwrap().tag.as_deref(),
            Some("1.4.2")
        );
        assert_eq!(
            repo.spec.layer_selector.as_ref().unwrap().media_type,
            HELM_CHART_LAYER
        );
        let hr = serde_json::to_value(&children.helm_release).unwrap();
        assert_eq!(
            hr["spec"]["chartRef"],
            json!({"kind": "OCIRepository", "name": "wiki-source"})
        );
        assert!(
            hr["spec"].get("chart").is_none(),
            "chartRef and chart are exclusive"
        );
    }
}

#[test]
fn secret_and_config_map_values_are_referenced_not_copied() {
    for (source, field, kind) in [
        ("secretRef", "secretRef", "Secret"),
        ("configMapRef", "configMapRef", "ConfigMap"),
    ] {
        let inst = managed(
            "helm",
            "https://charts.example.org",
            json!({"source": source, field: {"name": "wiki-values", "key": "values.yaml"}}),
        );
        let hr = serde_json::to_value(&desired_children(&inst).unwrap().helm_release).unwrap();
        assert_eq!(
            hr["spec"]["valuesFrom"],
            json!([{"kind": kind, "name": "wiki-values", "valuesKey": "values.yaml"}])
        );
        assert!(hr["spec"].get("values").is_none());
    }
}

#[test]
fn invalid_and_placeholder_specs_are_refused_with_a_reason() {
    let mut inst = managed(
        "helm",
        "https://charts.example.org",
        json!({"source": "inline", "inline": {}}),
    );
    inst.spec.release = None;
    assert_eq!(
        desired_children(&inst).unwrap_err(),
        "spec.release is required"
    );
    let placeholder =
        instance(json!({"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder"}));
    assert_eq!(
        desired_children(&placeholder).unwrap_err(),
        "spec.chart, spec.release and spec.values are required in managed mode"
    );
}

#[test]
fn instance_managed_by_is_kept_on_children() {
    let mut inst = managed(
        "helm",
        "https://c.example.org",
        json!({"source": "inline", "inline": {}}),
    );
    inst.metadata.labels.as_mut().unwrap().insert(
        "app.vworkspace.io/managed-by".into(),
        "control-plane".into(),
    );
    let labels = child_labels(&inst);
    assert_eq!(labels["app.vworkspace.io/managed-by"], "control-plane");
    assert!(
        !labels.contains_key("team"),
        "unrelated instance labels are not copied"
    );
}
