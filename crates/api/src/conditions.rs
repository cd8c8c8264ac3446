//! Condition bookkeeping with Kubernetes semantics, and the condition vocabulary of
//! spec §5.
//!
//! `lastTransitionTime` moves only when `status` changes; reason, message and
//! `observedGeneration` are updated in place. Every condition carries the generation it
//! was computed from.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// What [`set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Identical condition already present.
    Unchanged,
    /// Reason, message or generation changed; status did not.
    Updated,
    /// New condition type, or its status flipped: a transition worth an Event.
    Transitioned,
}

/// The desired state of one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
    pub message: String,
}

impl<'a> Desired<'a> {
    pub fn new(
        type_: &'a str,
        status: &'a str,
        reason: &'a str,
        message: impl Into<String>,
    ) -> Self {
        Desired {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Upserts a condition by type.
pub fn set(
    conditions: &mut Vec<Condition>,
    want: Desired<'_>,
    generation: Option<i64>,
    now: &Time,
) -> Change {
    match conditions.iter_mut().find(|c| c.type_ == want.type_) {
        Some(c) => {
            let flipped = c.status != want.status;
            let same = !flipped
                && c.reason == want.reason
                && c.message == want.message
                && c.observed_generation == generation;
            if same {
                return Change::Unchanged;
            }
            if flipped {
                c.last_transition_time = now.clone();
                c.status = want.status.to_string();
            }
            c.reason = want.reason.to_string();
            c.message = want.message;
            c.observed_generation = generation;
            if flipped {
                Change::Transitioned
            } else {
                Change::Updated
            }
        }
        None => {
            conditions.push(Condition {
                type_: want.type_.to_string(),
                status: want.status.to_string(),
                reason: want.reason.to_string(),
                message: want.message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            });
            Change::Transitioned
        }
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const DEGRADED: &str = "Degraded";
    pub const SUSPENDED: &str = "Suspended";
    pub const BLOCKED: &str = "Blocked";
    pub const DELETING: &str = "Deleting";
    pub const ACCEPTED: &str = "Accepted";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const CANCELLED: &str = "Cancelled";
    pub const CONNECTED: &str = "Connected";
    pub const DISCONNECTED: &str = "Disconnected";
    pub const AUTHENTICATED: &str = "Authenticated";
    pub const CONTROLLERS_HEALTHY: &str = "ControllersHealthy";
    pub const BUFFER_OVERFLOW: &str = "BufferOverflow";
}

/// ApplicationInstance reasons (§5.2), including those reserved by the documentation.
pub mod app_reasons {
    pub const HELM_RELEASE_READY: &str = "HelmReleaseReady";
    pub const HELM_RELEASE_READY_WITH_WARNINGS: &str = "HelmReleaseReadyWithWarnings";
    pub const HELM_RELEASE_FAILED: &str = "HelmReleaseFailed";
    pub const HELM_RELEASE_DEGRADED: &str = "HelmReleaseDegraded";
    pub const HELM_RELEASE_INSTALLING: &str = "HelmReleaseInstalling";
    pub const HELM_RELEASE_UPGRADING: &str = "HelmReleaseUpgrading";
    pub const PLACEHOLDER: &str = "Placeholder";
    pub const RECONCILING: &str = "Reconciling";
    pub const STABLE: &str = "Stable";
    pub const RECOVERED: &str = "Recovered";
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    pub const MISSING_DEPENDENCIES: &str = "MissingDependencies";
    pub const WAITING_FOR_SECRET: &str = "WaitingForSecret";
    pub const MISSING_CHART_SOURCE: &str = "MissingChartSource";
    pub const CHART_UNREACHABLE: &str = "ChartUnreachable";
    pub const CHART_SOURCE_SYNCING: &str = "ChartSourceSyncing";
    pub const UNBLOCKED: &str = "Unblocked";
    pub const UNINSTALLING: &str = "Uninstalling";
    pub const DELETING: &str = "Deleting";
    pub const WAITING_FOR_CHILD_RESOURCES: &str = "WaitingForChildResources";
    pub const MANUALLY_SUSPENDED: &str = "ManuallySuspended";
    pub const ACTIVE: &str = "Active";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const UPGRADE_FAILED: &str = "UpgradeFailed";
}

/// Operation reasons (§5.3).
pub mod op_reasons {
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const TARGET_NOT_READY: &str = "TargetNotReady";
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    pub const CONFLICTING_OPERATION: &str = "ConflictingOperation";
    pub const DEPENDENCY_MISSING: &str = "DependencyMissing";
    pub const CAPABILITY_MISSING: &str = "CapabilityMissing";
    pub const ENGINE_NOT_INSTALLED: &str = "EngineNotInstalled";
    pub const UNBLOCKED: &str = "Unblocked";
    pub const ADMISSION_PASSED: &str = "AdmissionPassed";
    pub const ENGINE_STARTED: &str = "EngineStarted";
    pub const ENGINE_NOT_STARTED: &str = "EngineNotStarted";
    pub const ENGINE_COMPLETED: &str = "EngineCompleted";
    pub const ENGINE_FAILED: &str = "EngineFailed";
    pub const TIMEOUT: &str = "Timeout";
    pub const HOOK_NOT_FOUND: &str = "HookNotFound";
    pub const USER_CANCELLED: &str = "UserCancelled";
    pub const HOOK_REQUIRES_RELEASE: &str = "HookRequiresRelease";
    pub const SOURCE_PVC_NOT_FOUND: &str = "SourcePvcNotFound";
    pub const WORKFLOW_FAILED: &str = "WorkflowFailed";
    pub const WORKFLOW_ERROR: &str = "WorkflowError";
    pub const HELM_HOOK_JOB_FAILED: &str = "HelmHookJobFailed";
    pub const HELM_UPGRADE_FAILED: &str = "HelmUpgradeFailed";
    pub const VOLUME_SNAPSHOT_FAILED: &str = "VolumeSnapshotFailed";
    pub const VOLSYNC_SYNC_FAILED: &str = "VolSyncSyncFailed";
    pub const WORKLOAD_MISSING: &str = "WorkloadMissing";
}

/// Cluster reasons (§5.4).
pub mod cluster_reasons {
    pub const TOKEN_SECRET_MISSING: &str = "TokenSecretMissing";
    pub const REGISTRATION_FAILED: &str = "RegistrationFailed";
    pub const REGISTRATION_COMPLETE: &str = "RegistrationComplete";
    pub const ROTATION_FAILED: &str = "RotationFailed";
    pub const CREDENTIAL_MISSING: &str = "CredentialMissing";
    pub const CREDENTIAL_REJECTED: &str = "CredentialRejected";
    pub const CREDENTIAL_ACCEPTED: &str = "CredentialAccepted";
    pub const REGISTRATION_PENDING: &str = "RegistrationPending";
    pub const CONTROL_PLANE_REACHABLE: &str = "ControlPlaneReachable";
    pub const CONTROL_PLANE_UNREACHABLE: &str = "ControlPlaneUnreachable";
    pub const ROUND_TRIP_OK: &str = "RoundTripOK";
    pub const NO_RECENT_ROUND_TRIP: &str = "NoRecentRoundTrip";
    pub const EVENT_BUFFER_FULL: &str = "EventBufferFull";
    pub const BUFFER_DRAINED: &str = "BufferDrained";
    pub const ALL_CONTROLLERS_READY: &str = "AllControllersReady";
    pub const CONTROLLER_MISSING: &str = "ControllerMissing";
    pub const CONTROLLER_DEGRADED: &str = "ControllerDegraded";
    pub const CREDENTIAL_ROTATED: &str = "CredentialRotated";
    pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
    pub const CREDENTIAL_REVOKED: &str = "CredentialRevoked";
    pub const REGISTRATION_TOKEN_INVALID: &str = "RegistrationTokenInvalid";
    pub const CONTROL_PLANE_AUTHENTICATION_FAILED: &str = "ControlPlaneAuthenticationFailed";
    /// `Disconnected=False` reason.
    pub const CONNECTED: &str = "Connected";
    /// A second `Cluster` object: only the oldest is served.
    pub const DUPLICATE_CLUSTER: &str = "DuplicateCluster";
    /// The control plane answered 404 outside job paths: wrong base URL.
    pub const ENDPOINT_NOT_FOUND: &str = "EndpointNotFound";
    /// Failures persist but the 5-minute disconnect window has not elapsed.
    pub const RECONNECTING: &str = "Reconnecting";
}

/// Cluster `status.phase` values (§5.4).
pub mod cluster_phases {
    pub const PENDING: &str = "Pending";
    pub const REGISTERING: &str = "Registering";
    pub const CONNECTED: &str = "Connected";
    pub const DISCONNECTED: &str = "Disconnected";
    pub const ERROR: &str = "Error";
    pub const TERMINATING: &str = "Terminating";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut list = Vec::new();
        let d = |status, reason, msg: &str| Desired::new(types::READY, status, reason, msg);
        assert_eq!(
            set(&mut list, d(FALSE, "A", "m"), Some(1), &at(10)),
            Change::Transitioned
        );
        assert_eq!(
            set(&mut list, d(FALSE, "A", "m"), Some(1), &at(20)),
            Change::Unchanged
        );
        assert_eq!(
            set(&mut list, d(FALSE, "B", "other"), Some(2), &at(30)),
            Change::Updated
        );
        let c = find(&list, types::READY).unwrap();
        assert_eq!(c.last_transition_time, at(10));
        assert_eq!(
            (c.reason.as_str(), c.message.as_str(), c.observed_generation),
            ("B", "other", Some(2))
        );
        assert_eq!(
            set(&mut list, d(TRUE, "B", "other"), Some(2), &at(40)),
            Change::Transitioned
        );
        assert_eq!(
            find(&list, types::READY).unwrap().last_transition_time,
            at(40)
        );
        assert!(is_true(&list, types::READY));
        assert_eq!(list.len(), 1);
    }
}
