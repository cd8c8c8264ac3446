//! CRD manifests generated from the Rust types, completed with what derive macros cannot
//! say: CEL cross-field rules, defaults and list-map markers.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;
use serde_json::{Value, json};

use crate::{ApplicationInstance, Cluster, Operation};

/// A CEL rule with the message kubectl shows and the field it blames.
fn rule(rule: &str, message: &str, field_path: &str, reason: &str) -> Value {
    json!({ "rule": rule, "message": message, "fieldPath": field_path, "reason": reason })
}

fn schema_root(crd: &mut Value) -> Option<&mut Value> {
    crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema")
}

fn add_rules(crd: &mut Value, pointer: &str, rules: Vec<Value>) {
    if let Some(node) = schema_root(crd).and_then(|s| s.pointer_mut(pointer))
        && let Some(obj) = node.as_object_mut()
    {
        obj.insert("x-kubernetes-validations".into(), Value::Array(rules));
    }
}

fn set(crd: &mut Value, pointer: &str, key: &str, value: Value) {
    if let Some(obj) = schema_root(crd)
        .and_then(|s| s.pointer_mut(pointer))
        .and_then(Value::as_object_mut)
    {
        obj.insert(key.into(), value);
    }
}

const MANAGED: &str = "(!has(self.mode) || self.mode == 'managed')";
const PLACEHOLDER: &str = "(has(self.mode) && self.mode == 'placeholder')";

fn application_instance() -> Value {
    let mut crd = serde_json::to_value(ApplicationInstance::crd()).unwrap_or_default();
    set(
        &mut crd,
        "/properties/spec/properties/mode",
        "default",
        json!("managed"),
    );
    let required = |field: &str| {
        rule(
            &format!("!{MANAGED} || has(self.{field})"),
            &format!("spec.{field} is required when spec.mode is managed"),
            &format!(".{field}"),
            "FieldValueRequired",
        )
    };
    let forbidden = |field: &str| {
        rule(
            &format!("!{PLACEHOLDER} || !has(self.{field})"),
            &format!("spec.{field} must not be set in placeholder mode"),
            &format!(".{field}"),
            "FieldValueForbidden",
        )
    };
    add_rules(
        &mut crd,
        "/properties/spec",
        vec![
            required("chart"),
            required("release"),
            required("values"),
            forbidden("chart"),
            forbidden("values"),
        ],
    );
    let source = |field: &str, value: &str| {
        rule(
            &format!("has(self.{field}) == (self.source == '{value}')"),
            &format!(
                "spec.values.{field} must be set when, and only when, spec.values.source is {value}"
            ),
            &format!(".{field}"),
            "FieldValueInvalid",
        )
    };
    add_rules(
        &mut crd,
        "/properties/spec/properties/values",
        vec![
            source("inline", "inline"),
            source("secretRef", "secretRef"),
            source("configMapRef", "configMapRef"),
        ],
    );
    crd
}

fn operation() -> Value {
    let mut crd = serde_json::to_value(Operation::crd()).unwrap_or_default();
    let immutable = |field: &str| {
        rule(
            &format!("self.{field} == oldSelf.{field}"),
            &format!("spec.{field} is immutable"),
            &format!(".{field}"),
            "FieldValueForbidden",
        )
    };
    add_rules(
        &mut crd,
        "/properties/spec",
        vec![
            rule(
                "self.targetRef.apiVersion == 'apps.vworkspace.io/v1alpha1'",
                "spec.targetRef.apiVersion must be apps.vworkspace.io/v1alpha1",
                ".targetRef.apiVersion",
                "FieldValueInvalid",
            ),
            rule(
                "self.targetRef.kind == 'ApplicationInstance'",
                "spec.targetRef.kind must be ApplicationInstance",
                ".targetRef.kind",
                "FieldValueInvalid",
            ),
            immutable("targetRef"),
            immutable("type"),
            immutable("engine"),
        ],
    );
    crd
}

fn cluster() -> Value {
    serde_json::to_value(Cluster::crd()).unwrap_or_default()
}

/// The three CRDs: ApplicationInstance, Operation, Cluster.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [application_instance(), operation(), cluster()]
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// `<group>_<plural>.yaml`, the file name used in `config/crd/bases/`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    let plural = crd.spec.names.plural.as_str();
    format!("{}_{plural}.yaml", crd.spec.group)
}

fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_yaml::to_string(crd).unwrap_or_default()
}

/// One (file name, YAML) pair per CRD.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|c| (crd_file_name(c), to_yaml(c)))
        .collect()
}

/// All CRDs as one multi-document YAML stream.
pub fn crd_yaml() -> String {
    crds()
        .iter()
        .map(|c| format!("---\n{}", to_yaml(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_crds_with_markers() {
        let all = crds();
        assert_eq!(all.len(), 3);
        let text = serde_json::to_string(&all).unwrap();
        for needle in [
            "\"x-kubernetes-list-type\":\"map\"",
            "\"x-kubernetes-list-map-keys\":[\"type\"]",
            "spec.chart is required when spec.mode is managed",
            "spec.targetRef is immutable",
            "\"appinst\"",
            "\"op\"",
            "\"x-kubernetes-preserve-unknown-fields\":true",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        let names: Vec<_> = all.iter().map(crd_file_name).collect();
        assert_eq!(
            names,
            [
                "apps.vworkspace.io_applicationinstances.yaml",
                "ops.vworkspace.io_operations.yaml",
                "ops.vworkspace.io_clusters.yaml"
            ]
        );
        assert_eq!(all[2].spec.scope, "Cluster");
    }
}
