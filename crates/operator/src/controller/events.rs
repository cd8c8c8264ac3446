//! The one path to Kubernetes Events: condition transitions (found by comparing the old
//! and the new status) and the few named notices a controller plans (`ConnectivityLost`,
//! `CredentialRotated`, `DeprecatedField`, …). Messages are ours or Flux's and never
//! carry values, so they are safe to publish.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;
use vworkspace_api::conditions::{Condition, FALSE, TRUE, types};

/// A named Event a controller decided to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl Notice {
    pub fn normal(reason: &str, note: impl Into<String>) -> Self {
        Notice {
            warning: false,
            reason: reason.into(),
            note: note.into(),
        }
    }

    pub fn warning(reason: &str, note: impl Into<String>) -> Self {
        Notice {
            warning: true,
            reason: reason.into(),
            note: note.into(),
        }
    }
}

/// Conditions of `new` whose status differs from `old`, and conditions first set in
/// `new` in their bad state or to `True` (an outcome such as `Ready`, `Succeeded`,
/// `Failed`, `Suspended`). A condition first set to a neutral default (`Degraded=False`,
/// `Ready=Unknown`, the progress marker `Reconciling=True`) is no transition: publishing
/// those made five Events per new instance.
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| match old.iter().find(|o| o.type_ == n.type_) {
            Some(o) => o.status != n.status,
            None => is_warning(n) || (n.status == TRUE && n.type_ != types::RECONCILING),
        })
        .collect()
}

/// A condition in its bad state: `Ready`, `Connected`, `Authenticated` or
/// `ControllersHealthy` False; `Blocked`, `Degraded`, `Disconnected` or `BufferOverflow`
/// True.
pub fn is_warning(c: &Condition) -> bool {
    let bad_when_false = [
        types::READY,
        types::CONNECTED,
        types::AUTHENTICATED,
        types::CONTROLLERS_HEALTHY,
    ];
    let bad_when_true = [
        types::BLOCKED,
        types::DEGRADED,
        types::DISCONNECTED,
        types::BUFFER_OVERFLOW,
    ];
    (c.status == FALSE && bad_when_false.contains(&c.type_.as_str()))
        || (c.status == TRUE && bad_when_true.contains(&c.type_.as_str()))
}

/// The notice for one condition transition.
pub fn transition_notice(c: &Condition) -> (Notice, String) {
    (
        Notice {
            warning: is_warning(c),
            reason: c.reason.clone(),
            note: format!("{}={}: {}", c.type_, c.status, c.message),
        },
        format!("Set{}", c.type_),
    )
}

/// Publishes one Event; failures are logged, never returned (Events are best effort).
pub async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    notice: &Notice,
    action: &str,
) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason.clone(),
        note: Some(notice.note.chars().take(1000).collect()),
        action: action.chars().take(128).collect(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, reference).await {
        warn!(error = %e, reason = %notice.reason, "could not record event");
    }
}

/// Publishes one Event per condition in `flipped`.
pub async fn publish_transitions(
    recorder: &Recorder,
    reference: &ObjectReference,
    flipped: &[Condition],
) {
    for c in flipped {
        let (notice, action) = transition_notice(c);
        publish(recorder, reference, &notice, &action).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_api::conditions::Time;

    fn c(t: &str, s: &str, reason: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: reason.into(),
            message: "m".into(),
            observed_generation: None,
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn only_flipped_or_notable_new_conditions_are_transitions() {
        let old = [c("Ready", "False", "A"), c("Blocked", "True", "B")];
        let new = [
            c("Ready", "False", "Changed"),
            c("Blocked", "False", "Unblocked"),
            c("Degraded", "False", "Recovered"),
            c("Suspended", "True", "ManuallySuspended"),
            c("Failed", "True", "Boom"),
        ];
        let got: Vec<&str> = transitions(&old, &new)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(got, ["Blocked", "Suspended", "Failed"]);
        assert!(transitions(&new, &new).is_empty());
        // First set: only a bad state or an outcome is worth an Event.
        let first = [
            c("Ready", "Unknown", "Reconciling"),
            c("Reconciling", "True", "Installing"),
            c("Degraded", "True", "Failed"),
            c("Blocked", "False", "Unblocked"),
        ];
        let got: Vec<&str> = transitions(&[], &first)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(got, ["Degraded"]);
        let ready = [c("Ready", "True", "Placeholder")];
        assert_eq!(transitions(&[], &ready).len(), 1);
    }

    #[test]
    fn warnings_follow_each_condition_polarity() {
        for (t, s, warning) in [
            ("Ready", "False", true),
            ("Ready", "True", false),
            ("Blocked", "True", true),
            ("Degraded", "True", true),
            ("Connected", "False", true),
            ("Authenticated", "False", true),
            ("ControllersHealthy", "False", true),
            ("Disconnected", "True", true),
            ("Disconnected", "False", false),
            ("BufferOverflow", "True", true),
            ("Succeeded", "True", false),
            ("Failed", "True", false),
        ] {
            assert_eq!(is_warning(&c(t, s, "R")), warning, "{t}={s}");
        }
        let (n, action) = transition_notice(&c("Connected", "False", "ControlPlaneUnreachable"));
        assert!(n.warning);
        assert_eq!(n.reason, "ControlPlaneUnreachable");
        assert_eq!(n.note, "Connected=False: m");
        assert_eq!(action, "SetConnected");
    }
}
