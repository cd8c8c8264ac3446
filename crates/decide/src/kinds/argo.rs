//! Argo Workflows `argoproj.io/v1alpha1` Workflow and WorkflowTemplate.
//!
//! Handled as dynamic objects: the operator writes a handful of spec fields
//! (`workflowTemplateRef`, `arguments`, `serviceAccountName`, `ttlStrategy`,
//! `activeDeadlineSeconds`, `shutdown`) and reads `status.phase`, `status.message` and
//! `status.outputs.parameters`.

use kube_core::{ApiResource, GroupVersionKind};

pub const API_VERSION: &str = "argoproj.io/v1alpha1";

pub fn workflow() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
        "workflows",
    )
}

pub fn workflow_template() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate"),
        "workflowtemplates",
    )
}
