//! Velero `velero.io/v1` Backup and Restore.
//!
//! Handled as dynamic objects (the builders live in `engines::velero`): Velero's CRDs
//! have no status subresource, and the operator reads `status.phase`,
//! `status.failureReason`, `status.validationErrors`, `status.warnings`, `status.errors`.

use kube_core::{ApiResource, GroupVersionKind};

pub const API_VERSION: &str = "velero.io/v1";

/// `Backup` or `Restore`.
pub fn api_resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("velero.io", "v1", kind), &plural)
}
