//! What a Namespace's own labels and annotations allow (spec §6.1, §6.2, §9.2 rule 3):
//! the `managed-by=vworkspace` gate for ApplicationInstances and the allow-list of
//! Operation types. The API-server layer of admission enforces the same rules as CEL
//! (`charts/vworkspace-operator/files/admission-policies.yaml`); the admission test
//! compares its verdicts with these functions so the two cannot drift.

use std::collections::BTreeMap;

use vworkspace_api::keys;
use vworkspace_api::operation::OperationType;

use crate::engines;

/// The namespace gate: ApplicationInstances are created only in namespaces labelled
/// `managed-by=vworkspace` (reason `NamespaceNotGated` otherwise).
pub fn gated(namespace: &str, labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.get(keys::LABEL_NAMESPACE_GATE).map(String::as_str)
        == Some(keys::NAMESPACE_GATE_VALUE)
    {
        return Ok(());
    }
    Err(format!(
        "metadata.namespace: namespace {namespace} is not managed by vworkspace (NamespaceNotGated); label it {}={}",
        keys::LABEL_NAMESPACE_GATE,
        keys::NAMESPACE_GATE_VALUE
    ))
}

/// The namespace's `ops.vworkspace.io/allowed-types` allow-list: absent or blank allows
/// every type; otherwise `type` must be one of the comma-separated, trimmed items
/// (case-sensitive).
pub fn allows_type(
    namespace: &str,
    annotations: &BTreeMap<String, String>,
    t: OperationType,
) -> Result<(), String> {
    let list = annotations
        .get(keys::ANNOTATION_ALLOWED_TYPES)
        .map(|v| v.trim())
        .unwrap_or("");
    let name = engines::type_name(t);
    if list.is_empty() || list.split(',').any(|item| item.trim() == name) {
        return Ok(());
    }
    Err(format!(
        "spec.type: {name} is not allowed in namespace {namespace} (annotation {}: {list}): use an allowed type or extend the annotation",
        keys::ANNOTATION_ALLOWED_TYPES
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn gate_needs_the_exact_label() {
        assert!(gated("team1", &map(&[("managed-by", "vworkspace")])).is_ok());
        for labels in [
            map(&[]),
            map(&[("managed-by", "Vworkspace")]),
            map(&[("app.vworkspace.io/managed-by", "vworkspace")]),
        ] {
            let err = gated("team1", &labels).unwrap_err();
            assert!(err.contains("NamespaceNotGated"), "{err}");
            assert!(err.contains("managed-by=vworkspace"), "{err}");
        }
    }

    #[test]
    fn allow_list_is_trimmed_and_case_sensitive() {
        let ann = |v: &str| map(&[(keys::ANNOTATION_ALLOWED_TYPES, v)]);
        assert!(allows_type("n", &map(&[]), OperationType::Restore).is_ok());
        assert!(allows_type("n", &ann("  "), OperationType::Restore).is_ok());
        assert!(allows_type("n", &ann(" Backup , Restore "), OperationType::Restore).is_ok());
        let err = allows_type("n", &ann("Backup"), OperationType::Restore).unwrap_err();
        assert!(
            err.starts_with("spec.type: Restore is not allowed in namespace n"),
            "{err}"
        );
        assert!(
            err.contains("ops.vworkspace.io/allowed-types: Backup"),
            "{err}"
        );
        assert!(allows_type("n", &ann("backup"), OperationType::Backup).is_err());
    }
}
