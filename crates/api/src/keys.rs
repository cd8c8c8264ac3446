//! Well-known labels, annotations, finalizers and field managers (spec §1, §6).

/// Ownership marker on custom resources and every child object.
pub const LABEL_MANAGED_BY: &str = "app.vworkspace.io/managed-by";
/// Cluster identity stamped by the Pull-mode applier and copied onto children.
pub const LABEL_CLUSTER_ID: &str = "app.vworkspace.io/cluster-id";
/// "Everything for this instance" selector on children.
pub const LABEL_APPLICATION_INSTANCE: &str = "app.vworkspace.io/application-instance";
/// Operation UID on every Operation workload: proof of ownership.
pub const LABEL_OPERATION: &str = "ops.vworkspace.io/operation";
/// Hook name on helmHookJob workloads.
pub const LABEL_HOOK_NAME: &str = "ops.vworkspace.io/hook-name";
/// Namespace gate label (bare key) and its value.
pub const LABEL_NAMESPACE_GATE: &str = "managed-by";
pub const NAMESPACE_GATE_VALUE: &str = "vworkspace";

/// `managed-by` value on resources applied from the control plane.
pub const MANAGED_BY_CONTROL_PLANE: &str = "control-plane";
/// `managed-by` value on children the operator creates.
pub const MANAGED_BY_OPERATOR: &str = "vworkspace-operator";

/// Prefix of capability annotations: `ops.vworkspace.io/<verb>: <engine>`.
pub const CAPABILITY_PREFIX: &str = "ops.vworkspace.io/";
/// Namespace allow-list of Operation types (comma-separated).
pub const ANNOTATION_ALLOWED_TYPES: &str = "ops.vworkspace.io/allowed-types";
/// Request re-registration of a Cluster.
pub const ANNOTATION_ROTATE_CREDENTIALS: &str = "ops.vworkspace.io/rotate-credentials";
/// Written on helmHookJob Jobs for traceability.
pub const ANNOTATION_HELM_HOOK: &str = "helm.sh/hook";
pub const ANNOTATION_REPORTED_MANAGED_STORAGE_KEY: &str =
    "vworkspace.io/reported-managed-storage-key";
pub const ANNOTATION_APPLIED_INTENT_HASH: &str = "vworkspace.io/applied-intent-hash";
pub const ANNOTATION_LAST_APPLIED_GENERATION: &str = "vworkspace.io/last-applied-generation";
pub const ANNOTATION_OVERRIDE_FORBIDDEN: &str = "apps.vworkspace.io/override-forbidden";

pub const FINALIZER_APPLICATION_INSTANCE: &str = "apps.vworkspace.io/finalizer";
pub const FINALIZER_OPERATION: &str = "ops.vworkspace.io/finalizer";
pub const FINALIZER_CLUSTER: &str = "ops.vworkspace.io/cluster-cleanup";

/// Field manager of the reconcilers' server-side applies.
pub const FIELD_MANAGER_OPERATOR: &str = "vworkspace-operator";
/// Field manager of objects applied from Pull-mode jobs.
pub const FIELD_MANAGER_AGENT: &str = "vworkspace-agent";

/// The capability annotation key for an Operation verb (`backup`, `runcommand`, ...).
pub fn capability_annotation(verb: &str) -> String {
    format!("{CAPABILITY_PREFIX}{verb}")
}

/// On the Pull-mode credentials Secret: RFC 3339 instant the token was last written
/// (registration or rotation). Drives the credential-age metric and scheduled rotation.
pub const ANNOTATION_CREDENTIALS_WRITTEN_AT: &str = "ops.vworkspace.io/credentials-written-at";
/// Field manager of the Cluster controller's writes (credentials Secret, Cluster status).
pub const FIELD_MANAGER_CLUSTER: &str = "vworkspace-operator-cluster";
