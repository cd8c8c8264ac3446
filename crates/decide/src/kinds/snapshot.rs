//! CSI snapshots: `snapshot.storage.k8s.io/v1` VolumeSnapshot (namespaced) and
//! VolumeSnapshotClass (cluster-scoped).
//!
//! Handled as dynamic objects: the operator writes `spec.source.persistentVolumeClaimName`
//! and `spec.volumeSnapshotClassName`, and reads `status.readyToUse`, `status.error`,
//! `status.restoreSize` and `status.boundVolumeSnapshotContentName`.

use kube_core::{ApiResource, GroupVersionKind};

pub const API_VERSION: &str = "snapshot.storage.k8s.io/v1";

pub fn volume_snapshot() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

pub fn volume_snapshot_class() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    )
}
