//! Mapping a watched HelmRelease onto the instance's conditions (spec §7.4, corrected:
//! a failed release is `Ready=False`, and Flux's Ready is trusted only once Flux has
//! observed the HelmRelease's current generation).

use vworkspace_api::conditions::{Desired, FALSE, TRUE, UNKNOWN, app_reasons as r, find, types};

use crate::kinds::flux::HelmRelease;

/// Ready, Reconciling, Degraded and Suspended for a managed instance.
pub fn release_conditions(hr: Option<&HelmRelease>) -> Vec<Desired<'static>> {
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
    let status = hr.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let current = match (hr.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if !current || conditions.is_empty() {
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
    let ready = find(&conditions, "Ready");
    let reconciling = find(&conditions, "Reconciling").filter(|c| c.status == TRUE);
    let released_false = find(&conditions, "Released").filter(|c| c.status == FALSE);
    let reconciling_cond = match reconciling {
        Some(c) => Desired::new(
            types::RECONCILING,
            TRUE,
            r::HELM_RELEASE_INSTALLING,
            c.message.clone(),
        ),
        None => Desired::new(types::RECONCILING, FALSE, r::STABLE, ""),
    };
    let mut out = Vec::new();
    match ready.map(|c| c.status.as_str()) {
        Some(TRUE) => {
            let msg = ready.map(|c| c.message.clone()).unwrap_or_default();
            out.push(Desired::new(types::READY, TRUE, r::HELM_RELEASE_READY, msg));
            out.push(Desired::new(types::DEGRADED, FALSE, r::RECOVERED, ""));
        }
        Some(FALSE) => {
            let msg = ready.map(|c| c.message.clone()).unwrap_or_default();
            out.push(Desired::new(
                types::READY,
                FALSE,
                r::HELM_RELEASE_FAILED,
                msg.clone(),
            ));
            let degraded_msg = released_false.map(|c| c.message.clone()).unwrap_or(msg);
            out.push(Desired::new(
                types::DEGRADED,
                TRUE,
                r::HELM_RELEASE_DEGRADED,
                degraded_msg,
            ));
        }
        _ => {
            let msg = reconciling
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "release in progress".into());
            out.push(Desired::new(
                types::READY,
                UNKNOWN,
                r::HELM_RELEASE_INSTALLING,
                msg,
            ));
            match released_false {
                Some(c) => out.push(Desired::new(
                    types::DEGRADED,
                    TRUE,
                    r::HELM_RELEASE_DEGRADED,
                    c.message.clone(),
                )),
                None => out.push(Desired::new(types::DEGRADED, FALSE, r::RECOVERED, "")),
            }
        }
    }
    out.push(reconciling_cond);
    out.push(suspended);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn get<'a>(list: &'a [Desired<'static>], t: &str) -> &'a Desired<'static> {
        list.iter().find(|d| d.type_ == t).unwrap()
    }

    #[test]
    fn absent_and_stale_are_unknown() {
        assert_eq!(get(&release_conditions(None), types::READY).status, UNKNOWN);
        let stale = hr(
            2,
            1,
            json!([cond("Ready", "True", "InstallSucceeded", "ok")]),
        );
        assert_eq!(
            get(&release_conditions(Some(&stale)), types::READY).status,
            UNKNOWN
        );
    }

    #[test]
    fn ready_true_and_failed_false() {
        let ok = release_conditions(Some(&hr(
            1,
            1,
            json!([cond(
                "Ready",
                "True",
                "UpgradeSucceeded",
                "Helm upgrade succeeded"
            )]),
        )));
        let ready = get(&ok, types::READY);
        assert_eq!(
            (ready.status, ready.reason, ready.message.as_str()),
            (TRUE, r::HELM_RELEASE_READY, "Helm upgrade succeeded")
        );
        assert_eq!(get(&ok, types::DEGRADED).status, FALSE);
        let failed = release_conditions(Some(&hr(
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
        )));
        let ready = get(&failed, types::READY);
        assert_eq!(
            (ready.status, ready.reason),
            (FALSE, r::HELM_RELEASE_FAILED)
        );
        assert_eq!(get(&failed, types::DEGRADED).message, "timed out waiting");
    }

    #[test]
    fn in_progress_is_reconciling() {
        let list = release_conditions(Some(&hr(
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
        )));
        assert_eq!(get(&list, types::READY).status, UNKNOWN);
        assert_eq!(get(&list, types::RECONCILING).status, TRUE);
        assert_eq!(get(&list, types::SUSPENDED).status, FALSE);
    }
}
