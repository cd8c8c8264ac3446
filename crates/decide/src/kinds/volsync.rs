//! VolSync `volsync.backube/v1alpha1` ReplicationSource.
//!
//! Handled as a dynamic object: the operator writes `spec.sourcePVC`, `spec.trigger.manual`,
//! `spec.restic` and `spec.paused`, and reads `status.lastManualSync`,
//! `status.lastSyncTime`, `status.latestMoverStatus` and `status.conditions`.

use kube_core::{ApiResource, GroupVersionKind};

pub const API_VERSION: &str = "volsync.backube/v1alpha1";

pub fn replication_source() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("volsync.backube", "v1alpha1", "ReplicationSource"),
        "replicationsources",
    )
}
