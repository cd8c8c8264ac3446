//! Mapping a watched HelmRelease onto the instance's conditions (spec §7.4, corrected:
//! a failed release is `Ready=False`, and Flux's Ready is trusted only once Flux has
//! observed the HelmRelease's current generation).
//!
//! What real helm-controller (v1.4) does, and this mapping relies on:
//! - While it retries a failing install or upgrade it leaves `status.observedGeneration`
//!   at its old value (-1 before the first success) and writes the generation it acted
//!   on into the `Ready` condition's own `observedGeneration`. That field decides
//!   whether Ready is current; the status field is only a fallback.
//! - `Stalled=True` means it stopped retrying (retries exhausted, invalid chart
//!   reference): terminal until the spec changes, so not "reconciling".
//! - `Released=False` is the last Helm action failing; `Remediated=True` says it rolled
//!   back or uninstalled; `TestSuccess=False` says the chart's tests failed.
//!
//! - `Ready=False` with `SourceNotReady` or `DependencyNotReady` is waiting (the chart
//!   artifact is still being fetched right after every create), not failing.
//! - A chart from an `OCIRepository` (`chartRef`) changes version without changing the
//!   HelmRelease's generation (only the source's tag changes), so Ready of the current
//!   generation can still describe the old chart: Ready=True counts only once Flux's
//!   release history shows the version the instance asks for (`X.Y.Z+<digest>` for OCI).
//!
//! Flux's own reason travels in the message (`InstallFailed: …`): our reasons are a
//! fixed vocabulary, Flux's are what a person searches for.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use vworkspace_api::conditions::{Desired, FALSE, TRUE, UNKNOWN, app_reasons as r, find, types};

use crate::kinds::flux::HelmRelease;

fn with_reason(c: &Condition) -> String {
    match (c.reason.is_empty(), c.message.is_empty()) {
        (true, _) => c.message.clone(),
        (false, true) => c.reason.clone(),
        (false, false) => format!("{}: {}", c.reason, c.message),
    }
}

/// Ready=False reasons with which helm-controller says it waits for something.
const WAITING_REASONS: &[&str] = &["SourceNotReady", "DependencyNotReady"];

/// `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, `1.2.3+build` without build metadata and `v`; `None`
/// for ranges and anything else that is not one exact version.
fn exact_version(v: &str) -> Option<&str> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let v = v.split('+').next().unwrap_or(v);
    let core = v.split('-').next().unwrap_or(v);
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let clean = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    (numeric && clean).then_some(v)
}

/// When Flux's latest release is not of the version the instance wants: a message.
fn version_pending(hr: &HelmRelease, desired: Option<&str>) -> Option<String> {
    let desired = exact_version(desired?)?;
    let latest = hr
        .status
        .as_ref()
        .and_then(|s| s.history.as_ref())
        .and_then(|h| h.first())?;
    let installed = latest.chart_version.clone()?;
    // helm-controller records the release before Helm has applied it
    // (`pending-install`/`pending-upgrade`): the chart's objects may still be the old ones.
    let in_progress = latest
        .status
        .as_deref()
        .is_some_and(|st| st.starts_with("pending"));
    match exact_version(&installed) {
        Some(v) if v == desired && in_progress => Some(format!(
            "Flux is releasing chart version {desired} ({})",
            latest.status.as_deref().unwrap_or_default()
        )),
        Some(v) if v == desired => None,
        _ => Some(format!(
            "Flux has not released chart version {desired} yet (latest release: {installed})"
        )),
    }
}

/// Whether Flux's conditions describe the HelmRelease's current generation.
fn is_current(hr: &HelmRelease, ready: Option<&Condition>) -> bool {
    let status_observed = hr.status.as_ref().and_then(|s| s.observed_generation);
    let observed = ready
        .and_then(|c| c.observed_generation)
        .filter(|g| *g > 0)
        .or(status_observed);
    match (hr.metadata.generation, observed) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// Ready, Reconciling, Degraded and Suspended for a managed instance whose chart version
/// is `desired_version` (the instance's `spec.chart.version`).
pub fn release_conditions(
    hr: Option<&HelmRelease>,
    desired_version: Option<&str>,
) -> Vec<Desired<'static>> {
    let Some(hr) = hr else {
        return vec![
            Desired::new(
                types::READY,
                UNKNOWN,
                r::RECONCILING,
                "waiting for the HelmRelease to be created",
            ),
            Desired::new(
                types::RECONCILING,
                TRUE,
                r::HELM_RELEASE_INSTALLING,
                "ensuring HelmRelease",
            ),
            Desired::new(types::DEGRADED, FALSE, r::RECOVERED, ""),
            Desired::new(types::SUSPENDED, FALSE, r::ACTIVE, ""),
        ];
    };
    let suspended = if hr.spec.suspend == Some(true) {
        Desired::new(
            types::SUSPENDED,
            TRUE,
            r::MANUALLY_SUSPENDED,
            "the HelmRelease is suspended",
        )
    } else {
        Desired::new(types::SUSPENDED, FALSE, r::ACTIVE, "")
    };
    let conditions = hr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ready = find(&conditions, "Ready");
    if !is_current(hr, ready) || conditions.is_empty() {
        return vec![
            Desired::new(
                types::READY,
                UNKNOWN,
                r::RECONCILING,
                "waiting for Flux to observe the HelmRelease",
            ),
            Desired::new(
                types::RECONCILING,
                TRUE,
                r::HELM_RELEASE_INSTALLING,
                "Flux has not reconciled this revision yet",
            ),
            Desired::new(types::DEGRADED, FALSE, r::RECOVERED, ""),
            suspended,
        ];
    }
    let on = |t: &str, status: &str| find(&conditions, t).filter(|c| c.status == status);
    let stalled = on("Stalled", TRUE);
    let reconciling = on("Reconciling", TRUE);
    let released_false = on("Released", FALSE);
    let remediated = on("Remediated", TRUE);
    let tests_failed = on("TestSuccess", FALSE);

    let waiting =
        ready.filter(|c| c.status == FALSE && WAITING_REASONS.contains(&c.reason.as_str()));
    let pending = version_pending(hr, desired_version);
    let ready_cond = match (stalled, ready.map(|c| c.status.as_str())) {
        (Some(c), _) => Desired::new(
            types::READY,
            FALSE,
            r::HELM_RELEASE_FAILED,
            format!("Flux stopped retrying: {}", with_reason(c)),
        ),
        (None, Some(TRUE)) => match &pending {
            None => Desired::new(
                types::READY,
                TRUE,
                r::HELM_RELEASE_READY,
                ready.map(|c| c.message.clone()).unwrap_or_default(),
            ),
            Some(msg) => Desired::new(
                types::READY,
                UNKNOWN,
                r::HELM_RELEASE_UPGRADING,
                msg.clone(),
            ),
        },
        (None, Some(FALSE)) if waiting.is_none() => Desired::new(
            types::READY,
            FALSE,
            r::HELM_RELEASE_FAILED,
            ready.map(with_reason).unwrap_or_default(),
        ),
        (None, _) => Desired::new(
            types::READY,
            UNKNOWN,
            r::HELM_RELEASE_INSTALLING,
            waiting
                .map(with_reason)
                .or_else(|| reconciling.map(|c| c.message.clone()))
                .unwrap_or_else(|| "release in progress".into()),
        ),
    };
    let ready_false = ready_cond.status == FALSE;
    // Most specific first: a rollback, a failed Helm action, failed tests, a failed Ready.
    let degraded = if let Some(c) = remediated.filter(|c| c.reason.contains("Rollback")) {
        Desired::new(types::DEGRADED, TRUE, r::ROLLED_BACK, with_reason(c))
    } else if let Some(c) = released_false.or(remediated) {
        Desired::new(
            types::DEGRADED,
            TRUE,
            r::HELM_RELEASE_DEGRADED,
            with_reason(c),
        )
    } else if let Some(c) = tests_failed {
        Desired::new(
            types::DEGRADED,
            TRUE,
            r::HELM_RELEASE_DEGRADED,
            format!("Helm tests failed: {}", with_reason(c)),
        )
    } else if ready_false {
        Desired::new(
            types::DEGRADED,
            TRUE,
            r::HELM_RELEASE_DEGRADED,
            ready_cond.message.clone(),
        )
    } else {
        Desired::new(types::DEGRADED, FALSE, r::RECOVERED, "")
    };
    let reconciling_cond = match (reconciling.filter(|_| stalled.is_none()), &pending) {
        (Some(c), _) => Desired::new(
            types::RECONCILING,
            TRUE,
            r::HELM_RELEASE_INSTALLING,
            c.message.clone(),
        ),
        (None, Some(msg)) if stalled.is_none() && ready_cond.status == UNKNOWN => Desired::new(
            types::RECONCILING,
            TRUE,
            r::HELM_RELEASE_UPGRADING,
            msg.clone(),
        ),
        _ if waiting.is_some() && stalled.is_none() => Desired::new(
            types::RECONCILING,
            TRUE,
            r::HELM_RELEASE_INSTALLING,
            ready_cond.message.clone(),
        ),
        _ => Desired::new(types::RECONCILING, FALSE, r::STABLE, ""),
    };
    vec![ready_cond, degraded, reconciling_cond, suspended]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What helm-controller v1.4.3 wrote while retrying a failing first install (status
    /// copied from a real run, messages shortened).
    fn retrying_install() -> HelmRelease {
        serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "broken", "namespace": "t", "generation": 1},
            "spec": {"interval": "5m0s"},
            "status": {"observedGeneration": -1, "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "ProgressingWithRetry",
                 "message": "retrying after failure", "observedGeneration": 1,
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "False", "reason": "InstallFailed",
                 "message": "Helm install failed for release t/broken: ConfigMap is invalid",
                 "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Released", "status": "False", "reason": "InstallFailed",
                 "message": "Helm install failed: ConfigMap is invalid",
                 "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        }))
        .unwrap()
    }

    fn hr(generation: i64, observed: i64, conditions: serde_json::Value) -> HelmRelease {
        serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "wiki", "namespace": "t", "generation": generation},
            "spec": {"interval": "5m0s"},
            "status": {"observedGeneration": observed, "conditions": conditions}
        }))
        .unwrap()
    }

    fn cond(t: &str, s: &str, reason: &str, msg: &str) -> serde_json::Value {
        json!({"type": t, "status": s, "reason": reason, "message": msg, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    fn of(hr: HelmRelease) -> Vec<Desired<'static>> {
        release_conditions(Some(&hr), None)
    }

    fn get<'a>(list: &'a [Desired<'static>], t: &str) -> &'a Desired<'static> {
        list.iter().find(|d| d.type_ == t).unwrap()
    }

    #[test]
    fn absent_and_stale_are_unknown() {
        assert_eq!(
            get(&release_conditions(None, None), types::READY).status,
            UNKNOWN
        );
        let stale = hr(
            2,
            1,
            json!([cond("Ready", "True", "InstallSucceeded", "ok")]),
        );
        assert_eq!(
            get(&release_conditions(Some(&stale), None), types::READY).status,
            UNKNOWN
        );
    }

    #[test]
    fn ready_true_and_failed_false() {
        let ok = of(hr(
            1,
            1,
            json!([cond(
                "Ready",
                "True",
                "UpgradeSucceeded",
                "Helm upgrade succeeded"
            )]),
        ));
        let ready = get(&ok, types::READY);
        assert_eq!(
            (ready.status, ready.reason, ready.message.as_str()),
            (TRUE, r::HELM_RELEASE_READY, "Helm upgrade succeeded")
        );
        assert_eq!(get(&ok, types::DEGRADED).status, FALSE);
        let failed = of(hr(
            1,
            1,
            json!([
                cond(
                    "Ready",
                    "False",
                    "InstallFailed",
                    "install retries exhausted"
                ),
                cond("Released", "False", "InstallFailed", "timed out waiting"),
            ]),
        ));
        let ready = get(&failed, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (FALSE, r::HELM_RELEASE_FAILED)
        );
        assert_eq!(
            get(&failed, types::DEGRADED).message,
            "InstallFailed: timed out waiting"
        );
    }

    #[test]
    fn in_progress_is_reconciling() {
        let list = of(hr(
            1,
            1,
            json!([
                cond(
                    "Ready",
                    "Unknown",
                    "Progressing",
                    "Fulfilling prerequisites"
                ),
                cond(
                    "Reconciling",
                    "True",
                    "Progressing",
                    "Fulfilling prerequisites"
                ),
            ]),
        ));
        assert_eq!(get(&list, types::READY).status, UNKNOWN);
        assert_eq!(get(&list, types::RECONCILING).status, TRUE);
        assert_eq!(get(&list, types::SUSPENDED).status, FALSE);
    }

    #[test]
    fn a_retrying_install_is_failed_at_once_not_unknown() {
        let list = release_conditions(Some(&retrying_install()), None);
        let ready = get(&list, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (FALSE, r::HELM_RELEASE_FAILED)
        );
        assert!(
            ready.message.starts_with("InstallFailed: "),
            "{}",
            ready.message
        );
        let degraded = get(&list, types::DEGRADED);
        assert_eq!(degraded.status, TRUE);
        assert_eq!(
            degraded.message,
            "InstallFailed: Helm install failed: ConfigMap is invalid"
        );
        // Flux is still retrying.
        assert_eq!(get(&list, types::RECONCILING).status, TRUE);
    }

    #[test]
    fn ready_of_an_older_generation_is_not_trusted() {
        let mut newer = retrying_install();
        newer.metadata.generation = Some(2);
        let list = release_conditions(Some(&newer), None);
        assert_eq!(get(&list, types::READY).status, UNKNOWN);
        // Without observedGeneration on the condition, the status field decides.
        let old = hr(
            3,
            3,
            json!([cond("Ready", "True", "UpgradeSucceeded", "ok")]),
        );
        assert_eq!(
            get(&release_conditions(Some(&old), None), types::READY).status,
            TRUE
        );
    }

    #[test]
    fn stalled_is_failed_and_not_reconciling() {
        let list = of(hr(
            1,
            1,
            json!([
                cond(
                    "Stalled",
                    "True",
                    "RetriesExceeded",
                    "Failed to install after 4 attempt(s)"
                ),
                cond("Ready", "False", "InstallFailed", "install failed"),
                cond("Reconciling", "True", "ProgressingWithRetry", "stale"),
            ]),
        ));
        let ready = get(&list, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (FALSE, r::HELM_RELEASE_FAILED)
        );
        assert!(
            ready.message.contains("RetriesExceeded"),
            "{}",
            ready.message
        );
        assert_eq!(get(&list, types::RECONCILING).status, FALSE);
        assert_eq!(get(&list, types::DEGRADED).status, TRUE);
    }

    #[test]
    fn rollback_and_failed_tests_degrade() {
        let rolled = of(hr(
            2,
            2,
            json!([
                cond("Ready", "False", "UpgradeFailed", "upgrade failed"),
                cond("Released", "False", "UpgradeFailed", "upgrade failed"),
                cond(
                    "Remediated",
                    "True",
                    "RollbackSucceeded",
                    "Helm rollback to 1 succeeded"
                ),
            ]),
        ));
        let degraded = get(&rolled, types::DEGRADED);
        assert_eq!((degraded.status, degraded.reason), (TRUE, r::ROLLED_BACK));
        let tested = of(hr(
            1,
            1,
            json!([
                cond("Ready", "True", "InstallSucceeded", "ok"),
                cond("Released", "True", "InstallSucceeded", "ok"),
                cond("TestSuccess", "False", "TestFailed", "test hook failed"),
            ]),
        ));
        assert_eq!(get(&tested, types::READY).status, TRUE);
        let degraded = get(&tested, types::DEGRADED);
        assert_eq!(degraded.status, TRUE);
        assert!(
            degraded.message.contains("TestFailed"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn source_not_ready_is_waiting_not_failed() {
        // What helm-controller writes right after create, while the chart is fetched.
        let list = of(hr(
            1,
            -1,
            json!([{"type": "Ready", "status": "False", "reason": "SourceNotReady",
                    "message": "HelmChart 't/t-wiki' is not ready: latest generation of object has not been reconciled",
                    "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]),
        ));
        let ready = get(&list, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (UNKNOWN, r::HELM_RELEASE_INSTALLING)
        );
        assert!(
            ready.message.starts_with("SourceNotReady: "),
            "{}",
            ready.message
        );
        assert_eq!(get(&list, types::RECONCILING).status, TRUE);
        assert_eq!(get(&list, types::DEGRADED).status, FALSE);
    }

    #[test]
    fn ready_counts_only_for_the_wanted_chart_version() {
        let mut release = hr(
            1,
            1,
            json!([cond(
                "Ready",
                "True",
                "InstallSucceeded",
                "Helm install succeeded"
            )]),
        );
        release.status.as_mut().unwrap().history = Some(vec![crate::kinds::flux::Snapshot {
            chart_version: Some("0.1.0+74703006eecc".into()),
            status: Some("deployed".into()),
        }]);
        // OCI: Flux's version carries the digest; the same version is Ready.
        let same = release_conditions(Some(&release), Some("0.1.0"));
        assert_eq!(get(&same, types::READY).status, TRUE);
        // The instance asks for 0.2.0 (only the OCIRepository tag changed): not yet.
        let newer = release_conditions(Some(&release), Some("0.2.0"));
        let ready = get(&newer, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (UNKNOWN, r::HELM_RELEASE_UPGRADING)
        );
        assert!(ready.message.contains("0.2.0"), "{}", ready.message);
        assert_eq!(get(&newer, types::RECONCILING).status, TRUE);
        // Recorded but not applied yet: not Ready at the new version.
        release.status.as_mut().unwrap().history = Some(vec![crate::kinds::flux::Snapshot {
            chart_version: Some("0.2.0+1c2d3e4f5a6b".into()),
            status: Some("pending-upgrade".into()),
        }]);
        let pending = release_conditions(Some(&release), Some("0.2.0"));
        assert_eq!(get(&pending, types::READY).status, UNKNOWN);
        release.status.as_mut().unwrap().history = Some(vec![crate::kinds::flux::Snapshot {
            chart_version: Some("0.2.0+1c2d3e4f5a6b".into()),
            status: Some("deployed".into()),
        }]);
        let deployed = release_conditions(Some(&release), Some("0.2.0"));
        assert_eq!(get(&deployed, types::READY).status, TRUE);
        // A range cannot be compared: Flux's Ready decides.
        let range = release_conditions(Some(&release), Some(">=0.1.0"));
        assert_eq!(get(&range, types::READY).status, TRUE);
    }

    #[test]
    fn exact_versions() {
        assert_eq!(exact_version("v1.2.3"), Some("1.2.3"));
        assert_eq!(exact_version("1.2.3+abc"), Some("1.2.3"));
        assert_eq!(exact_version("1.2.3-rc.1"), Some("1.2.3-rc.1"));
        assert_eq!(exact_version("1.2.x"), None);
        assert_eq!(exact_version("^1.2.3"), None);
        assert_eq!(exact_version(""), None);
    }
}
