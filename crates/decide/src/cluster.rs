//! The Cluster state machine as a pure function (spec connectivity §3.10–§3.11, api §4,
//! §5.4): registration, adoption, re-registration, requested and scheduled rotation,
//! heartbeat on its own cadence, the connectivity phase (grace and disconnect windows are
//! tracked by the agent's connectivity machine; this reads its state), the duplicate
//! Cluster, and the finalizer.
//!
//! [`decide`] returns either one remote [`Call`] (exchange, rotate, heartbeat) — the
//! caller runs it, records the result in [`Observed::outcomes`] and decides again — or
//! the final list of [`Effect`]s in the order they must run, with the requeue.
//!
//! Heartbeats: one per `heartbeat_period`, counted from the later of `status.lastHeartbeat`
//! and the last attempt. The reconcile that the heartbeat's own status write triggers
//! finds nothing due, computes the same status and writes nothing, so there is no
//! heartbeat storm.

use std::time::Duration;

use jiff::Timestamp;
use vworkspace_api::cluster::{ClusterStatus, CredentialStatus, CredentialsSecretRef};
use vworkspace_api::conditions::{
    self, Condition, Desired, FALSE, TRUE, Time, cluster_phases as phase, cluster_reasons as r,
    types,
};

/// Retry cadence after a failed registration or an unresolvable token.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(30);
/// Retry cadence after a failed rotation (at most).
pub const ROTATION_RETRY: Duration = Duration::from_secs(60);
/// Re-check of a duplicate Cluster.
pub const DUPLICATE_RECHECK: Duration = Duration::from_secs(300);
/// Pass right after a registration (heartbeat with the new credentials).
pub const AFTER_REGISTRATION: Duration = Duration::from_secs(1);
/// A heartbeat due within this much is sent now, so a timer firing a little early does
/// not schedule a second wake-up milliseconds later.
pub const HEARTBEAT_SLACK: Duration = Duration::from_secs(1);

/// `Connected=True` reason while job polling is paused by a `429` (docs/agent.md): the
/// control plane answers, so the Cluster stays connected, but jobs wait until the
/// `Retry-After` (capped) has passed. Spec §5.4 defines no reason for this.
pub const POLLING_THROTTLED: &str = "PollingThrottled";

/// `Connected=False` reason in GitOps mode without control-plane credentials: intent
/// arrives through Git, so no link is expected (spec connectivity §5 defines no reason).
pub const GITOPS_MODE: &str = "GitOpsMode";

/// How intent reaches the cluster (spec connectivity §5), `--connectivity-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConnectivityMode {
    /// The agent long-polls the control plane for jobs.
    #[default]
    Pull,
    /// The control plane writes our objects through the cluster API; the agent only
    /// posts events and heartbeats.
    Push,
    /// Flux (or Argo CD) applies our objects from Git; there is no operator-to-server
    /// link to lose, so no `Disconnected` condition.
    Gitops,
}

impl ConnectivityMode {
    /// The flag value and the `mode` label of the connectivity gauge.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectivityMode::Pull => "pull",
            ConnectivityMode::Push => "push",
            ConnectivityMode::Gitops => "gitops",
        }
    }

    /// Whether the agent polls the control plane for jobs.
    pub fn polls_jobs(self) -> bool {
        self == ConnectivityMode::Pull
    }
}

impl std::fmt::Display for ConnectivityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConnectivityMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pull" => Ok(ConnectivityMode::Pull),
            "push" => Ok(ConnectivityMode::Push),
            "gitops" => Ok(ConnectivityMode::Gitops),
            other => Err(format!(
                "unknown connectivity mode {other:?}: use pull, push or gitops"
            )),
        }
    }
}

/// The registration token as resolved from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// Neither a Secret ref nor an inline token.
    None,
    /// The Secret ref is set but unusable; the message says why.
    Unresolvable(String),
    Resolved {
        /// First 16 hex chars of the token's SHA-256.
        fingerprint: String,
        /// From the deprecated inline field.
        inline: bool,
    },
}

/// The agent's connectivity state (spec §3.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Unknown,
    Connected,
    /// Failing, inside the grace window.
    Reconnecting,
    Disconnected,
    /// Disconnected, succeeding again but not yet for the recovery window.
    Recovering,
}

/// Why a token exchange failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// The control plane refused the token (401/403).
    Rejected(String),
    Failed(String),
}

/// Why a heartbeat failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatFailure {
    /// 404 outside job paths: the base URL is wrong.
    EndpointNotFound(String),
    Other(String),
}

/// Results of the remote calls made during this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// The cluster id the server issued, or why the exchange failed.
    pub exchange: Option<Result<String, ExchangeFailure>>,
    pub rotation: Option<Result<(), String>>,
    pub heartbeat: Option<Result<(), HeartbeatFailure>>,
}

/// Settings the decision depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat_period: Duration,
    /// Zero disables scheduled rotation.
    pub rotation_period: Duration,
    /// The connectivity grace window (for the `ConnectivityLost` message).
    pub disconnect_after: Duration,
    /// Where the credentials Secret is written: `(name, namespace)`.
    pub credentials_secret: (String, String),
    /// The ceiling the agent puts on a `Retry-After` (for the `PollingThrottled` message).
    pub max_retry_after: Duration,
    /// GitOps never raises `Disconnected`; Pull and Push decide alike.
    pub mode: ConnectivityMode,
}

/// Everything one decision needs, gathered by the controller's observe step.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub name: String,
    pub generation: Option<i64>,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub status: ClusterStatus,
    /// The Cluster the agent serves (the oldest one); `None` when unknown.
    pub active: Option<String>,
    pub token: TokenSource,
    /// Annotation `ops.vworkspace.io/rotate-credentials`: exchange the token again.
    pub reregister: bool,
    /// `spec.rotateCredentials`.
    pub rotate_requested: bool,
    pub cluster_id_set: bool,
    /// Stored credentials exist (in memory or in the Secret).
    pub credentials: bool,
    /// When the credentials Secret was last written.
    pub credentials_written_at: Option<Timestamp>,
    /// The last heartbeat attempt of this process, and its result.
    pub last_heartbeat: Option<(Timestamp, Result<(), HeartbeatFailure>)>,
    /// Events dropped since the buffer last drained.
    pub overflow: Option<u64>,
    /// Third-party CRDs served, with the message to show.
    pub controllers: (bool, String),
    pub link: Link,
    pub link_error: Option<String>,
    /// The control plane rejected the credentials: "answered {code}: {message}".
    pub rejected: Option<String>,
    /// Job polling is paused until then because the control plane answered `429`.
    pub poll_throttled_until: Option<Timestamp>,
    pub settings: Settings,
    pub outcomes: Outcomes,
}

/// A remote call whose result the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// Exchange the registration token and write the credentials Secret.
    Exchange,
    /// Rotate the long-lived credential and write it to the Secret.
    Rotate,
    /// Send a heartbeat carrying this condition snapshot.
    Heartbeat { conditions: Vec<Condition> },
}

/// A Kubernetes Event the plan publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Side effects, run in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    AddFinalizer,
    RemoveFinalizer,
    /// `vworkspace_operator_connectivity_state{mode}` (the mode label is the process's).
    SetConnectivityGauge(i64),
    /// Write the whole status (server-side apply).
    WriteStatus(ClusterStatus),
    /// Write the status; a failure is logged only (the object is going away).
    WriteStatusBestEffort(ClusterStatus),
    /// After an exchange: set `spec.clusterId` (when empty), clear the inline token, drop
    /// the re-register annotation.
    RecordRegistration {
        cluster_id: Option<String>,
        clear_inline_token: bool,
        clear_annotation: bool,
    },
    /// Reset `spec.rotateCredentials` to false.
    ClearRotateFlag,
    /// Queue the `CredentialRotated` audit event for the control plane.
    AuditRotation,
    Notice(Notice),
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// When set, run it, record the outcome and decide again; nothing else is planned.
    pub call: Option<Call>,
    pub effects: Vec<Effect>,
    /// `None`: wait for a change.
    pub requeue: Option<Duration>,
}

impl Plan {
    fn call(call: Call) -> Self {
        Plan {
            call: Some(call),
            effects: Vec::new(),
            requeue: None,
        }
    }

    fn done(effects: Vec<Effect>, requeue: Option<Duration>) -> Self {
        Plan {
            call: None,
            effects,
            requeue,
        }
    }

    /// The status this plan writes, if any.
    pub fn status(&self) -> Option<&ClusterStatus> {
        self.effects.iter().find_map(|e| match e {
            Effect::WriteStatus(s) | Effect::WriteStatusBestEffort(s) => Some(s),
            _ => None,
        })
    }
}

struct Draft {
    status: ClusterStatus,
    generation: Option<i64>,
    now: Time,
}

impl Draft {
    fn set(&mut self, t: &str, s: &str, reason: &str, message: impl Into<String>) {
        conditions::set(
            &mut self.status.conditions,
            Desired::new(t, s, reason, message),
            self.generation,
            &self.now,
        );
    }

    fn phase(&mut self, p: &str) {
        self.status.phase = Some(p.into());
    }

    /// BufferOverflow and ControllersHealthy, on every status written by a live pass.
    fn common(&mut self, o: &Observed) {
        match o.overflow {
            Some(n) => self.set(
                types::BUFFER_OVERFLOW,
                TRUE,
                r::EVENT_BUFFER_FULL,
                format!("{n} events dropped since the buffer last drained"),
            ),
            None => self.set(types::BUFFER_OVERFLOW, FALSE, r::BUFFER_DRAINED, ""),
        }
        let (ok, message) = &o.controllers;
        if *ok {
            self.set(
                types::CONTROLLERS_HEALTHY,
                TRUE,
                r::ALL_CONTROLLERS_READY,
                message.clone(),
            );
        } else {
            self.set(
                types::CONTROLLERS_HEALTHY,
                FALSE,
                r::CONTROLLER_MISSING,
                message.clone(),
            );
        }
    }
}

fn notice(warning: bool, reason: &str, note: impl Into<String>) -> Effect {
    Effect::Notice(Notice {
        warning,
        reason: reason.into(),
        note: note.into(),
    })
}

/// When the next heartbeat is due: a period after the later of the last successful one
/// (status) and the last attempt (memory); `None` = now.
pub fn next_heartbeat(o: &Observed) -> Option<Timestamp> {
    let success = o.status.last_heartbeat.as_ref().map(|t| t.0);
    let attempt = o.last_heartbeat.as_ref().map(|(t, _)| *t);
    let last = success.max(attempt)?;
    last.checked_add(o.settings.heartbeat_period).ok()
}

fn heartbeat_due(o: &Observed, now: Timestamp) -> bool {
    next_heartbeat(o).is_none_or(|due| {
        now.checked_add(HEARTBEAT_SLACK)
            .map(|n| n >= due)
            .unwrap_or(true)
    })
}

/// When job polling resumes, if a `429` still pauses it at `now`.
fn throttled_until(o: &Observed, now: Timestamp) -> Option<Timestamp> {
    o.poll_throttled_until.filter(|t| *t > now)
}

/// `Connected=True`, saying whether job polling is throttled.
fn set_connected(d: &mut Draft, o: &Observed, now: Timestamp) {
    match throttled_until(o, now) {
        Some(until) => d.set(
            types::CONNECTED,
            TRUE,
            POLLING_THROTTLED,
            format!(
                "job polling paused until {until}: the control plane answered 429 with \
                 Retry-After (capped at {}s); heartbeats and events continue",
                o.settings.max_retry_after.as_secs()
            ),
        ),
        None => d.set(types::CONNECTED, TRUE, r::ROUND_TRIP_OK, ""),
    }
}

fn rotation_due(o: &Observed, now: Timestamp) -> bool {
    let period = o.settings.rotation_period;
    !period.is_zero()
        && o.credentials_written_at
            .is_some_and(|at| now.duration_since(at).as_secs_f64() >= period.as_secs_f64())
}

/// Decides one pass. Pure: the same observation and instant give the same plan.
pub fn decide(o: &Observed, now: Timestamp) -> Plan {
    let mut d = Draft {
        status: o.status.clone(),
        generation: o.generation,
        now: Time(now),
    };
    let old_phase = o.status.phase.clone().unwrap_or_default();

    if o.deleting {
        if !o.has_finalizer {
            return Plan::done(Vec::new(), None);
        }
        d.phase(phase::TERMINATING);
        return Plan::done(
            vec![
                Effect::WriteStatusBestEffort(d.status),
                Effect::SetConnectivityGauge(0),
                Effect::RemoveFinalizer,
            ],
            None,
        );
    }
    if !o.has_finalizer {
        return Plan::done(vec![Effect::AddFinalizer], None);
    }

    // Only one Cluster is served.
    if let Some(active) = o.active.as_deref().filter(|a| *a != o.name) {
        let msg = format!(
            "only one Cluster object is supported; {active:?} is the active one and this one is ignored"
        );
        d.phase(phase::ERROR);
        d.set(types::CONNECTED, FALSE, r::DUPLICATE_CLUSTER, msg.clone());
        let mut effects = Vec::new();
        if old_phase != phase::ERROR {
            effects.push(notice(true, r::DUPLICATE_CLUSTER, msg));
        }
        effects.push(Effect::WriteStatus(d.status));
        return Plan::done(effects, Some(DUPLICATE_RECHECK));
    }

    // Registration.
    match &o.token {
        TokenSource::Unresolvable(why) if !o.credentials => {
            d.phase(phase::PENDING);
            d.set(
                types::AUTHENTICATED,
                FALSE,
                r::TOKEN_SECRET_MISSING,
                why.clone(),
            );
            d.set(
                types::CONNECTED,
                FALSE,
                r::REGISTRATION_PENDING,
                "waiting for a registration token",
            );
            d.common(o);
            return Plan::done(
                vec![Effect::WriteStatus(d.status)],
                Some(REGISTRATION_RETRY),
            );
        }
        // Stored credentials keep working; the token is not needed.
        TokenSource::Unresolvable(_) | TokenSource::None => {}
        TokenSource::Resolved {
            fingerprint,
            inline,
        } => {
            let observed = o.status.observed_token.clone().unwrap_or_default();
            let consumed = o
                .status
                .credential_status
                .as_ref()
                .and_then(|s| s.registration_token_consumed)
                .unwrap_or(false);
            if !o.reregister && observed.is_empty() && consumed && o.credentials {
                // Adoption: credentials exist from an exchange whose fingerprint was not
                // recorded. A consumed token is never exchanged again.
                d.status.observed_token = Some(fingerprint.clone());
            } else if *fingerprint != observed || o.reregister {
                return match &o.outcomes.exchange {
                    None => Plan::call(Call::Exchange),
                    Some(Ok(cluster_id)) => registered(o, d, fingerprint, *inline, cluster_id),
                    Some(Err(failure)) => {
                        let (reason, message) = match failure {
                            ExchangeFailure::Rejected(m) => (r::REGISTRATION_TOKEN_INVALID, m),
                            ExchangeFailure::Failed(m) => (r::REGISTRATION_FAILED, m),
                        };
                        d.phase(phase::ERROR);
                        d.set(types::AUTHENTICATED, FALSE, reason, message.clone());
                        d.set(
                            types::CONNECTED,
                            FALSE,
                            r::REGISTRATION_PENDING,
                            "registration failed",
                        );
                        d.common(o);
                        Plan::done(
                            vec![Effect::WriteStatus(d.status)],
                            Some(REGISTRATION_RETRY),
                        )
                    }
                };
            }
        }
    }

    let gitops = o.settings.mode == ConnectivityMode::Gitops;
    if gitops {
        // Left over from an earlier Pull/Push run; GitOps has no link to lose.
        d.status
            .conditions
            .retain(|c| c.type_ != types::DISCONNECTED);
    }

    // Credentials in use.
    if !o.credentials && gitops {
        // Event posting is optional in GitOps: without credentials nothing is wrong.
        d.phase(phase::PENDING);
        d.set(
            types::CONNECTED,
            FALSE,
            GITOPS_MODE,
            "connectivity mode gitops: intent arrives through Git; no control-plane link \
             is expected (register the Cluster to post events)",
        );
        d.common(o);
        return Plan::done(
            vec![
                Effect::SetConnectivityGauge(0),
                Effect::WriteStatus(d.status),
            ],
            None,
        );
    }
    if !o.credentials {
        d.phase(phase::PENDING);
        d.set(
            types::CONNECTED,
            FALSE,
            r::CREDENTIAL_MISSING,
            "no control-plane credentials yet",
        );
        d.set(
            types::AUTHENTICATED,
            FALSE,
            r::CREDENTIAL_MISSING,
            "no control-plane credentials yet",
        );
        d.common(o);
        return Plan::done(
            vec![
                Effect::SetConnectivityGauge(-1),
                Effect::WriteStatus(d.status),
            ],
            Some(o.settings.heartbeat_period),
        );
    }

    // Rotation, requested or scheduled.
    let mut effects = Vec::new();
    if o.rotate_requested || rotation_due(o, now) {
        match &o.outcomes.rotation {
            None => return Plan::call(Call::Rotate),
            Some(Ok(())) => {
                effects.push(Effect::AuditRotation);
                effects.push(notice(
                    false,
                    r::CREDENTIAL_ROTATED,
                    "long-lived control-plane credential rotated; the agent uses the new one",
                ));
                if o.rotate_requested {
                    effects.push(Effect::ClearRotateFlag);
                }
            }
            Some(Err(message)) => {
                // The current token keeps working; try again soon.
                d.phase(phase::ERROR);
                d.set(
                    types::AUTHENTICATED,
                    FALSE,
                    r::ROTATION_FAILED,
                    message.clone(),
                );
                d.common(o);
                return Plan::done(
                    vec![Effect::WriteStatus(d.status)],
                    Some(o.settings.heartbeat_period.min(ROTATION_RETRY)),
                );
            }
        }
    }

    // Heartbeat, on its own cadence, carrying the condition snapshot.
    let sent_now = match &o.outcomes.heartbeat {
        Some(result) => Some(result),
        None if heartbeat_due(o, now) => {
            return Plan::call(Call::Heartbeat {
                conditions: d.status.conditions.clone(),
            });
        }
        None => None,
    };
    if sent_now.is_some_and(Result::is_ok) {
        d.status.last_heartbeat = Some(d.now.clone());
    }
    let last_result = sent_now.or(o.last_heartbeat.as_ref().map(|(_, r)| r));

    let mut next = old_phase.clone();
    if let Some(message) = &o.rejected {
        next = phase::ERROR.into();
        d.set(
            types::AUTHENTICATED,
            FALSE,
            r::CREDENTIAL_REJECTED,
            message.clone(),
        );
    } else if let Some(Err(HeartbeatFailure::EndpointNotFound(m))) = last_result {
        next = phase::ERROR.into();
        d.set(types::CONNECTED, FALSE, r::ENDPOINT_NOT_FOUND, m.clone());
    } else {
        // GitOps: a failing event channel stays "reconnecting", never disconnected.
        let link = match o.link {
            Link::Disconnected | Link::Recovering if gitops => Link::Reconnecting,
            l => l,
        };
        match link {
            Link::Connected => {
                next = phase::CONNECTED.into();
                set_connected(&mut d, o, now);
                if !gitops {
                    d.set(types::DISCONNECTED, FALSE, r::CONNECTED, "");
                }
                d.set(types::AUTHENTICATED, TRUE, r::CREDENTIAL_ACCEPTED, "");
            }
            Link::Disconnected | Link::Recovering => {
                next = phase::DISCONNECTED.into();
                let why = o
                    .link_error
                    .clone()
                    .unwrap_or_else(|| "no successful round trip".into());
                d.set(
                    types::CONNECTED,
                    FALSE,
                    r::CONTROL_PLANE_UNREACHABLE,
                    why.clone(),
                );
                d.set(types::DISCONNECTED, TRUE, r::NO_RECENT_ROUND_TRIP, why);
            }
            Link::Reconnecting | Link::Unknown => {
                // Inside the grace window: keep the phase; say what is failing.
                if conditions::is_true(&d.status.conditions, types::CONNECTED) {
                    // Still True; only the throttle note may come or go.
                    let noted = conditions::find(&d.status.conditions, types::CONNECTED)
                        .is_some_and(|c| c.reason == POLLING_THROTTLED);
                    if noted || throttled_until(o, now).is_some() {
                        set_connected(&mut d, o, now);
                    }
                } else {
                    let why = o
                        .link_error
                        .clone()
                        .unwrap_or_else(|| "waiting for the first round trip".into());
                    d.set(types::CONNECTED, FALSE, r::RECONNECTING, why);
                }
                if next.is_empty()
                    || next == phase::REGISTERING
                    || next == phase::ERROR
                    || (gitops && next == phase::DISCONNECTED)
                {
                    next = phase::PENDING.into();
                }
            }
        }
    }
    if next == phase::DISCONNECTED && old_phase != phase::DISCONNECTED {
        effects.push(notice(
            true,
            "ConnectivityLost",
            format!(
                "no successful round trip to the control plane for {}s: {}",
                o.settings.disconnect_after.as_secs(),
                o.link_error.as_deref().unwrap_or_default()
            ),
        ));
    }
    if next == phase::CONNECTED && old_phase == phase::DISCONNECTED {
        effects.push(notice(
            false,
            "ConnectivityConnected",
            "control-plane round trips succeed again",
        ));
    }
    d.phase(&next);
    d.common(o);
    effects.push(Effect::WriteStatus(d.status));
    let mut requeue = match &o.outcomes.heartbeat {
        Some(_) => o.settings.heartbeat_period,
        None => next_heartbeat(o)
            .map(|due| due.duration_since(now).unsigned_abs())
            .unwrap_or(o.settings.heartbeat_period)
            .clamp(
                HEARTBEAT_SLACK,
                o.settings.heartbeat_period.max(HEARTBEAT_SLACK),
            ),
    };
    // Clear the throttle note as soon as polling resumes.
    if let Some(until) = throttled_until(o, now) {
        requeue = requeue.min(
            until
                .duration_since(now)
                .unsigned_abs()
                .max(HEARTBEAT_SLACK),
        );
    }
    Plan::done(effects, Some(requeue))
}

/// Status and effects after a successful exchange.
fn registered(o: &Observed, mut d: Draft, fingerprint: &str, inline: bool, id: &str) -> Plan {
    let (name, namespace) = o.settings.credentials_secret.clone();
    d.status.observed_token = Some(fingerprint.to_string());
    d.status.credentials_secret_ref = Some(CredentialsSecretRef {
        name: name.clone(),
        namespace: Some(namespace.clone()),
    });
    d.status.credential_status = Some(CredentialStatus {
        secret_name: Some(name),
        secret_namespace: Some(namespace),
        registered_at: Some(d.now.clone()),
        registration_token_consumed: Some(true),
    });
    d.phase(phase::REGISTERING);
    d.set(
        types::AUTHENTICATED,
        TRUE,
        r::REGISTRATION_COMPLETE,
        "registration token exchanged; credentials stored",
    );
    d.set(types::CONNECTED, TRUE, r::CONTROL_PLANE_REACHABLE, "");
    // The consumed fingerprint is recorded first: a lost write must never lead to a
    // second exchange of the token.
    let mut effects = vec![
        Effect::WriteStatus(d.status),
        Effect::RecordRegistration {
            cluster_id: (!o.cluster_id_set).then(|| id.to_string()),
            clear_inline_token: inline,
            clear_annotation: o.reregister,
        },
    ];
    if inline {
        effects.push(notice(
            true,
            "DeprecatedField",
            "spec.registrationToken is deprecated: put the token in a Secret and use spec.registrationTokenSecretRef",
        ));
    }
    Plan::done(effects, Some(AFTER_REGISTRATION))
}

#[cfg(test)]
mod tests;
