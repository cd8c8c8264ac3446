//! Table-driven tests of the Cluster decision: one row per situation of spec §3.10–§3.11
//! and §5.4, each from a healthy registered Cluster with one field changed.

use super::*;

const NOW: &str = "2026-12-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn ago(secs: i64) -> Timestamp {
    now() - jiff::SignedDuration::from_secs(secs)
}

fn cond(t: &str, s: &str, reason: &str) -> Condition {
    Condition {
        type_: t.into(),
        status: s.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(ago(3600)),
    }
}

/// A registered Cluster, connected, heartbeat 10 s ago, credentials one day old.
fn base() -> Observed {
    Observed {
        name: "c1".into(),
        generation: Some(1),
        deleting: false,
        has_finalizer: true,
        status: ClusterStatus {
            phase: Some("Connected".into()),
            conditions: vec![
                cond("Connected", "True", "RoundTripOK"),
                cond("Disconnected", "False", "Connected"),
                cond("Authenticated", "True", "CredentialAccepted"),
                cond("BufferOverflow", "False", "BufferDrained"),
                Condition {
                    message: "CRDs served: all".into(),
                    ..cond("ControllersHealthy", "True", "AllControllersReady")
                },
            ],
            last_heartbeat: Some(Time(ago(10))),
            credential_status: Some(CredentialStatus {
                secret_name: Some("creds".into()),
                secret_namespace: Some("ops".into()),
                registered_at: Some(Time(ago(86400))),
                registration_token_consumed: Some(true),
            }),
            credentials_secret_ref: Some(CredentialsSecretRef {
                name: "creds".into(),
                namespace: Some("ops".into()),
            }),
            observed_token: Some("aaaaaaaaaaaaaaaa".into()),
        },
        active: Some("c1".into()),
        token: TokenSource::Resolved {
            fingerprint: "aaaaaaaaaaaaaaaa".into(),
            inline: false,
        },
        reregister: false,
        rotate_requested: false,
        cluster_id_set: true,
        credentials: true,
        credentials_written_at: Some(ago(86400)),
        last_heartbeat: Some((ago(10), Ok(()))),
        overflow: None,
        controllers: (true, "CRDs served: all".into()),
        link: Link::Connected,
        link_error: None,
        rejected: None,
        poll_throttled_until: None,
        settings: Settings {
            heartbeat_period: Duration::from_secs(30),
            rotation_period: Duration::from_secs(7 * 86400),
            disconnect_after: Duration::from_secs(300),
            credentials_secret: ("creds".into(), "ops".into()),
            max_retry_after: Duration::from_secs(300),
            mode: ConnectivityMode::Pull,
        },
        outcomes: Outcomes::default(),
    }
}

fn effect_name(e: &Effect) -> String {
    match e {
        Effect::AddFinalizer => "AddFinalizer".into(),
        Effect::RemoveFinalizer => "RemoveFinalizer".into(),
        Effect::SetConnectivityGauge(v) => format!("Gauge:{v}"),
        Effect::WriteStatus(_) => "WriteStatus".into(),
        Effect::WriteStatusBestEffort(_) => "WriteStatusBestEffort".into(),
        Effect::RecordRegistration { .. } => "RecordRegistration".into(),
        Effect::ClearRotateFlag => "ClearRotateFlag".into(),
        Effect::AuditRotation => "AuditRotation".into(),
        Effect::Notice(n) => format!(
            "{}:{}",
            if n.warning { "Warning" } else { "Normal" },
            n.reason
        ),
    }
}

fn call_name(c: &Call) -> &'static str {
    match c {
        Call::Exchange => "Exchange",
        Call::Rotate => "Rotate",
        Call::Heartbeat { .. } => "Heartbeat",
    }
}

/// What a row expects; unset fields are not checked.
#[derive(Clone, Copy)]
struct Want {
    call: Option<&'static str>,
    phase: Option<&'static str>,
    /// `(type, status, reason)` that must be present.
    conds: &'static [(&'static str, &'static str, &'static str)],
    effects: Option<&'static [&'static str]>,
    /// Seconds; `Some(None)` = wait for a change.
    requeue: Option<Option<u64>>,
    /// Further checks on the plan.
    check: Option<fn(&Observed, &Plan)>,
}

const W: Want = Want {
    call: None,
    phase: None,
    conds: &[],
    effects: None,
    requeue: None,
    check: None,
};

type Row = (&'static str, fn(&mut Observed), Want);

fn rows() -> Vec<Row> {
    vec![
        // --- finalizer and deletion
        (
            "no finalizer: add it, nothing else",
            |o| o.has_finalizer = false,
            Want {
                effects: Some(&["AddFinalizer"]),
                requeue: Some(None),
                ..W
            },
        ),
        (
            "deleting: Terminating, gauge 0, finalizer released",
            |o| o.deleting = true,
            Want {
                phase: Some("Terminating"),
                effects: Some(&["WriteStatusBestEffort", "Gauge:0", "RemoveFinalizer"]),
                requeue: Some(None),
                ..W
            },
        ),
        (
            "deleting after the finalizer is gone: nothing",
            |o| {
                o.deleting = true;
                o.has_finalizer = false;
            },
            Want {
                effects: Some(&[]),
                requeue: Some(None),
                ..W
            },
        ),
        // --- duplicate Cluster
        (
            "duplicate: Error + DuplicateCluster, warned once",
            |o| o.active = Some("c0".into()),
            Want {
                phase: Some("Error"),
                conds: &[("Connected", "False", "DuplicateCluster")],
                effects: Some(&["Warning:DuplicateCluster", "WriteStatus"]),
                requeue: Some(Some(300)),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Connected");
                    assert!(c.unwrap().message.contains("\"c0\" is the active one"));
                }),
                ..W
            },
        ),
        (
            "duplicate already in Error: no second warning",
            |o| {
                o.active = Some("c0".into());
                o.status.phase = Some("Error".into());
            },
            Want {
                phase: Some("Error"),
                effects: Some(&["WriteStatus"]),
                ..W
            },
        ),
        (
            "duplicate never registers, even with a fresh token",
            |o| {
                o.active = Some("c0".into());
                o.status.observed_token = None;
            },
            Want {
                call: None,
                phase: Some("Error"),
                ..W
            },
        ),
        (
            "active unknown (store not synced): served normally",
            |o| o.active = None,
            Want {
                phase: Some("Connected"),
                effects: Some(&["WriteStatus"]),
                ..W
            },
        ),
        // --- registration
        (
            "token Secret missing, no credentials: Pending + TokenSecretMissing",
            |o| {
                o.token =
                    TokenSource::Unresolvable("registration-token Secret ops/reg not found".into());
                o.credentials = false;
            },
            Want {
                phase: Some("Pending"),
                conds: &[
                    ("Authenticated", "False", "TokenSecretMissing"),
                    ("Connected", "False", "RegistrationPending"),
                    ("BufferOverflow", "False", "BufferDrained"),
                    ("ControllersHealthy", "True", "AllControllersReady"),
                ],
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(30)),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Authenticated");
                    assert!(c.unwrap().message.contains("ops/reg not found"));
                }),
                ..W
            },
        ),
        (
            "token Secret missing but credentials stored: keeps working",
            |o| o.token = TokenSource::Unresolvable("gone".into()),
            Want {
                phase: Some("Connected"),
                conds: &[("Authenticated", "True", "CredentialAccepted")],
                ..W
            },
        ),
        (
            "no token, no credentials: CredentialMissing, gauge -1",
            |o| {
                o.token = TokenSource::None;
                o.credentials = false;
            },
            Want {
                phase: Some("Pending"),
                conds: &[
                    ("Connected", "False", "CredentialMissing"),
                    ("Authenticated", "False", "CredentialMissing"),
                ],
                effects: Some(&["Gauge:-1", "WriteStatus"]),
                requeue: Some(Some(30)),
                ..W
            },
        ),
        (
            "first registration: exchange",
            |o| {
                o.status = ClusterStatus::default();
                o.credentials = false;
                o.last_heartbeat = None;
            },
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        (
            "a different token: exchange again",
            |o| {
                o.token = TokenSource::Resolved {
                    fingerprint: "bbbbbbbbbbbbbbbb".into(),
                    inline: false,
                }
            },
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        (
            "same token already exchanged: never again",
            |_| {},
            Want {
                call: None,
                phase: Some("Connected"),
                ..W
            },
        ),
        (
            "re-register annotation: exchange the same token",
            |o| o.reregister = true,
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        (
            "exchange succeeded (Secret ref): Registering, fingerprint recorded first",
            |o| {
                o.status = ClusterStatus::default();
                o.credentials = false;
                o.cluster_id_set = false;
                o.outcomes.exchange = Some(Ok("cluster-9".into()));
            },
            Want {
                phase: Some("Registering"),
                conds: &[
                    ("Authenticated", "True", "RegistrationComplete"),
                    ("Connected", "True", "ControlPlaneReachable"),
                ],
                effects: Some(&["WriteStatus", "RecordRegistration"]),
                requeue: Some(Some(1)),
                check: Some(|_, p| {
                    let s = p.status().unwrap();
                    assert_eq!(s.observed_token.as_deref(), Some("aaaaaaaaaaaaaaaa"));
                    let cs = s.credential_status.as_ref().unwrap();
                    assert_eq!(cs.registration_token_consumed, Some(true));
                    assert_eq!(cs.registered_at, Some(Time(now())));
                    assert_eq!(cs.secret_name.as_deref(), Some("creds"));
                    assert_eq!(
                        s.credentials_secret_ref
                            .as_ref()
                            .unwrap()
                            .namespace
                            .as_deref(),
                        Some("ops")
                    );
                    assert_eq!(
                        p.effects[1],
                        Effect::RecordRegistration {
                            cluster_id: Some("cluster-9".into()),
                            clear_inline_token: false,
                            clear_annotation: false
                        }
                    );
                }),
                ..W
            },
        ),
        (
            "exchange succeeded with the inline token: cleared + DeprecatedField",
            |o| {
                o.token = TokenSource::Resolved {
                    fingerprint: "cccccccccccccccc".into(),
                    inline: true,
                };
                o.outcomes.exchange = Some(Ok("c-1".into()));
            },
            Want {
                effects: Some(&[
                    "WriteStatus",
                    "RecordRegistration",
                    "Warning:DeprecatedField",
                ]),
                check: Some(|_, p| {
                    assert_eq!(
                        p.effects[1],
                        Effect::RecordRegistration {
                            cluster_id: None,
                            clear_inline_token: true,
                            clear_annotation: false
                        }
                    );
                }),
                ..W
            },
        ),
        (
            "re-registration succeeded: annotation removed, clusterId kept",
            |o| {
                o.reregister = true;
                o.outcomes.exchange = Some(Ok("other".into()));
            },
            Want {
                phase: Some("Registering"),
                check: Some(|_, p| {
                    assert_eq!(
                        p.effects[1],
                        Effect::RecordRegistration {
                            cluster_id: None,
                            clear_inline_token: false,
                            clear_annotation: true
                        }
                    );
                }),
                ..W
            },
        ),
        (
            "token refused: Error + RegistrationTokenInvalid",
            |o| {
                o.status.observed_token = None;
                o.status.credential_status = None;
                o.outcomes.exchange =
                    Some(Err(ExchangeFailure::Rejected("401 unauthorized".into())));
            },
            Want {
                phase: Some("Error"),
                conds: &[
                    ("Authenticated", "False", "RegistrationTokenInvalid"),
                    ("Connected", "False", "RegistrationPending"),
                ],
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(30)),
                ..W
            },
        ),
        (
            "exchange failed (no endpoint, network): Error + RegistrationFailed",
            |o| {
                o.status.observed_token = None;
                o.status.credential_status = None;
                o.outcomes.exchange = Some(Err(ExchangeFailure::Failed(
                    "spec.controlPlaneEndpoint is not set".into(),
                )));
            },
            Want {
                phase: Some("Error"),
                conds: &[
                    ("Authenticated", "False", "RegistrationFailed"),
                    ("Connected", "False", "RegistrationPending"),
                ],
                requeue: Some(Some(30)),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Authenticated");
                    assert_eq!(c.unwrap().message, "spec.controlPlaneEndpoint is not set");
                }),
                ..W
            },
        ),
        // --- adoption
        (
            "adoption: consumed token, credentials stored, fingerprint unknown",
            |o| o.status.observed_token = None,
            Want {
                call: None,
                phase: Some("Connected"),
                check: Some(|_, p| {
                    assert_eq!(
                        p.status().unwrap().observed_token.as_deref(),
                        Some("aaaaaaaaaaaaaaaa")
                    );
                }),
                ..W
            },
        ),
        (
            "no adoption under the re-register annotation",
            |o| {
                o.status.observed_token = None;
                o.reregister = true;
            },
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        (
            "no adoption without stored credentials",
            |o| {
                o.status.observed_token = None;
                o.credentials = false;
            },
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        (
            "no adoption when the token was never consumed",
            |o| {
                o.status.observed_token = None;
                o.status.credential_status = None;
            },
            Want {
                call: Some("Exchange"),
                ..W
            },
        ),
        // --- rotation
        (
            "rotation requested",
            |o| o.rotate_requested = true,
            Want {
                call: Some("Rotate"),
                ..W
            },
        ),
        (
            "requested rotation done: audit, event, flag cleared",
            |o| {
                o.rotate_requested = true;
                o.outcomes.rotation = Some(Ok(()));
            },
            Want {
                phase: Some("Connected"),
                effects: Some(&[
                    "AuditRotation",
                    "Normal:CredentialRotated",
                    "ClearRotateFlag",
                    "WriteStatus",
                ]),
                ..W
            },
        ),
        (
            "scheduled rotation due (8 days old)",
            |o| o.credentials_written_at = Some(ago(8 * 86400)),
            Want {
                call: Some("Rotate"),
                ..W
            },
        ),
        (
            "scheduled rotation done: the spec flag is left alone",
            |o| {
                o.credentials_written_at = Some(ago(8 * 86400));
                o.outcomes.rotation = Some(Ok(()));
            },
            Want {
                effects: Some(&["AuditRotation", "Normal:CredentialRotated", "WriteStatus"]),
                ..W
            },
        ),
        (
            "scheduled rotation not yet due (6 days old)",
            |o| o.credentials_written_at = Some(ago(6 * 86400)),
            Want {
                call: None,
                phase: Some("Connected"),
                ..W
            },
        ),
        (
            "scheduled rotation disabled (period 0)",
            |o| {
                o.credentials_written_at = Some(ago(80 * 86400));
                o.settings.rotation_period = Duration::ZERO;
            },
            Want { call: None, ..W },
        ),
        (
            "credential age unknown: no scheduled rotation",
            |o| o.credentials_written_at = None,
            Want { call: None, ..W },
        ),
        (
            "rotation failed: Error + RotationFailed, retried within 60 s",
            |o| {
                o.rotate_requested = true;
                o.outcomes.rotation = Some(Err("control plane answered 500".into()));
            },
            Want {
                phase: Some("Error"),
                conds: &[
                    ("Authenticated", "False", "RotationFailed"),
                    ("Connected", "True", "RoundTripOK"),
                ],
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(30)),
                ..W
            },
        ),
        (
            "rotation failed with a slow heartbeat: retry after 60 s",
            |o| {
                o.settings.heartbeat_period = Duration::from_secs(120);
                o.rotate_requested = true;
                o.outcomes.rotation = Some(Err("timeout".into()));
            },
            Want {
                requeue: Some(Some(60)),
                ..W
            },
        ),
        // --- heartbeat cadence
        (
            "heartbeat due: send it with the condition snapshot",
            |o| {
                o.status.last_heartbeat = Some(Time(ago(31)));
                o.last_heartbeat = Some((ago(31), Ok(())));
            },
            Want {
                call: Some("Heartbeat"),
                check: Some(|o, p| {
                    let Some(Call::Heartbeat { conditions }) = &p.call else {
                        panic!("no heartbeat")
                    };
                    assert_eq!(conditions, &o.status.conditions);
                }),
                ..W
            },
        ),
        (
            "never sent a heartbeat: send one",
            |o| {
                o.status.last_heartbeat = None;
                o.last_heartbeat = None;
            },
            Want {
                call: Some("Heartbeat"),
                ..W
            },
        ),
        (
            "heartbeat due within the slack: sent now",
            |o| {
                o.status.last_heartbeat = None;
                o.last_heartbeat = Some((ago(29), Ok(())));
            },
            Want {
                call: Some("Heartbeat"),
                ..W
            },
        ),
        (
            "heartbeat not due: no call, status unchanged, wake when due",
            |_| {},
            Want {
                call: None,
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(20)),
                check: Some(|o, p| assert_eq!(p.status(), Some(&o.status))),
                ..W
            },
        ),
        (
            "after a restart the last heartbeat in status counts",
            |o| o.last_heartbeat = None,
            Want {
                call: None,
                requeue: Some(Some(20)),
                ..W
            },
        ),
        (
            "failed heartbeat attempt 5 s ago: no retry before the period",
            |o| {
                o.status.last_heartbeat = Some(Time(ago(600)));
                o.last_heartbeat = Some((ago(5), Err(HeartbeatFailure::Other("refused".into()))));
                o.link = Link::Reconnecting;
                o.link_error = Some("refused".into());
            },
            Want {
                call: None,
                requeue: Some(Some(25)),
                ..W
            },
        ),
        (
            "heartbeat sent: lastHeartbeat = now, Connected, next in a period",
            |o| {
                o.status.last_heartbeat = Some(Time(ago(30)));
                o.outcomes.heartbeat = Some(Ok(()));
            },
            Want {
                phase: Some("Connected"),
                conds: &[
                    ("Connected", "True", "RoundTripOK"),
                    ("Disconnected", "False", "Connected"),
                    ("Authenticated", "True", "CredentialAccepted"),
                ],
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(30)),
                check: Some(|_, p| {
                    assert_eq!(p.status().unwrap().last_heartbeat, Some(Time(now())));
                }),
                ..W
            },
        ),
        (
            "failed heartbeat keeps the old lastHeartbeat",
            |o| {
                o.outcomes.heartbeat = Some(Err(HeartbeatFailure::Other("refused".into())));
                o.link = Link::Reconnecting;
            },
            Want {
                requeue: Some(Some(30)),
                check: Some(|o, p| {
                    assert_eq!(p.status().unwrap().last_heartbeat, o.status.last_heartbeat);
                }),
                ..W
            },
        ),
        // --- connectivity phase
        (
            "first failures inside the grace window: phase kept",
            |o| {
                o.link = Link::Reconnecting;
                o.link_error = Some("connection refused".into());
            },
            Want {
                phase: Some("Connected"),
                conds: &[("Connected", "True", "RoundTripOK")],
                effects: Some(&["WriteStatus"]),
                ..W
            },
        ),
        (
            "never connected, failing: Pending + Reconnecting with the error",
            |o| {
                o.status.phase = None;
                o.status.conditions.clear();
                o.link = Link::Reconnecting;
                o.link_error = Some("connection refused".into());
            },
            Want {
                phase: Some("Pending"),
                conds: &[("Connected", "False", "Reconnecting")],
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Connected");
                    assert_eq!(c.unwrap().message, "connection refused");
                }),
                ..W
            },
        ),
        (
            "no round trip yet after registration: Registering becomes Pending",
            |o| {
                o.status.phase = Some("Registering".into());
                o.status.conditions = vec![cond("Connected", "False", "RegistrationPending")];
                o.link = Link::Unknown;
            },
            Want {
                phase: Some("Pending"),
                conds: &[("Connected", "False", "Reconnecting")],
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Connected");
                    assert_eq!(c.unwrap().message, "waiting for the first round trip");
                }),
                ..W
            },
        ),
        (
            "Error left by a failed rotation clears to Pending while reconnecting",
            |o| {
                o.status.phase = Some("Error".into());
                o.link = Link::Unknown;
            },
            Want {
                phase: Some("Pending"),
                ..W
            },
        ),
        (
            "disconnect window elapsed: Disconnected + ConnectivityLost",
            |o| {
                o.link = Link::Disconnected;
                o.link_error = Some("timeout".into());
            },
            Want {
                phase: Some("Disconnected"),
                conds: &[
                    ("Connected", "False", "ControlPlaneUnreachable"),
                    ("Disconnected", "True", "NoRecentRoundTrip"),
                    ("Authenticated", "True", "CredentialAccepted"),
                ],
                effects: Some(&["Warning:ConnectivityLost", "WriteStatus"]),
                check: Some(|_, p| {
                    let Effect::Notice(n) = &p.effects[0] else {
                        panic!()
                    };
                    assert_eq!(
                        n.note,
                        "no successful round trip to the control plane for 300s: timeout"
                    );
                }),
                ..W
            },
        ),
        (
            "still disconnected: no second ConnectivityLost",
            |o| {
                o.status.phase = Some("Disconnected".into());
                o.link = Link::Disconnected;
            },
            Want {
                phase: Some("Disconnected"),
                effects: Some(&["WriteStatus"]),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Disconnected");
                    assert_eq!(c.unwrap().message, "no successful round trip");
                }),
                ..W
            },
        ),
        (
            "recovering (success for less than the recovery window): still Disconnected",
            |o| {
                o.status.phase = Some("Disconnected".into());
                o.link = Link::Recovering;
            },
            Want {
                phase: Some("Disconnected"),
                effects: Some(&["WriteStatus"]),
                ..W
            },
        ),
        (
            "recovered: Connected + ConnectivityConnected",
            |o| o.status.phase = Some("Disconnected".into()),
            Want {
                phase: Some("Connected"),
                effects: Some(&["Normal:ConnectivityConnected", "WriteStatus"]),
                ..W
            },
        ),
        (
            "credentials rejected: Error + CredentialRejected",
            |o| o.rejected = Some("control plane answered 403: revoked".into()),
            Want {
                phase: Some("Error"),
                conds: &[("Authenticated", "False", "CredentialRejected")],
                ..W
            },
        ),
        (
            "heartbeat 404: Error + EndpointNotFound",
            |o| {
                o.outcomes.heartbeat = Some(Err(HeartbeatFailure::EndpointNotFound(
                    "404 on /api/agent/events".into(),
                )))
            },
            Want {
                phase: Some("Error"),
                conds: &[("Connected", "False", "EndpointNotFound")],
                ..W
            },
        ),
        (
            "EndpointNotFound stays between heartbeats",
            |o| {
                o.status.phase = Some("Error".into());
                o.last_heartbeat = Some((
                    ago(5),
                    Err(HeartbeatFailure::EndpointNotFound("404".into())),
                ));
            },
            Want {
                call: None,
                phase: Some("Error"),
                conds: &[("Connected", "False", "EndpointNotFound")],
                ..W
            },
        ),
        (
            "rejection outranks a wrong endpoint",
            |o| {
                o.rejected = Some("control plane answered 401: bad token".into());
                o.outcomes.heartbeat = Some(Err(HeartbeatFailure::EndpointNotFound("404".into())));
            },
            Want {
                phase: Some("Error"),
                conds: &[
                    ("Authenticated", "False", "CredentialRejected"),
                    ("Connected", "True", "RoundTripOK"),
                ],
                ..W
            },
        ),
        (
            "plain network failure never touches Authenticated",
            |o| {
                o.outcomes.heartbeat = Some(Err(HeartbeatFailure::Other("reset".into())));
                o.link = Link::Disconnected;
            },
            Want {
                conds: &[("Authenticated", "True", "CredentialAccepted")],
                ..W
            },
        ),
        // --- throttled job polling (issue 11 item 3)
        (
            "429 throttle: Connected=True/PollingThrottled until the resume time",
            |o| o.poll_throttled_until = Some(now() + jiff::SignedDuration::from_secs(120)),
            Want {
                phase: Some("Connected"),
                conds: &[
                    ("Connected", "True", POLLING_THROTTLED),
                    ("Disconnected", "False", "Connected"),
                ],
                effects: Some(&["WriteStatus"]),
                requeue: Some(Some(20)),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Connected").unwrap();
                    assert_eq!(
                        c.message,
                        "job polling paused until 2026-12-01T12:02:00Z: the control plane \
                         answered 429 with Retry-After (capped at 300s); heartbeats and \
                         events continue"
                    );
                    assert_eq!(
                        c.last_transition_time,
                        Time(ago(3600)),
                        "still True: no move"
                    );
                }),
                ..W
            },
        ),
        (
            "429 throttle ending before the next heartbeat: requeue at the resume time",
            |o| o.poll_throttled_until = Some(now() + jiff::SignedDuration::from_secs(5)),
            Want {
                conds: &[("Connected", "True", POLLING_THROTTLED)],
                requeue: Some(Some(5)),
                ..W
            },
        ),
        (
            "429 throttle over: back to RoundTripOK",
            |o| {
                o.poll_throttled_until = Some(ago(1));
                o.status.conditions[0] = cond("Connected", "True", POLLING_THROTTLED);
            },
            Want {
                conds: &[("Connected", "True", "RoundTripOK")],
                requeue: Some(Some(20)),
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "Connected").unwrap();
                    assert_eq!(c.message, "");
                }),
                ..W
            },
        ),
        (
            "429 throttle while reconnecting: still True, throttle noted",
            |o| {
                o.link = Link::Reconnecting;
                o.poll_throttled_until = Some(now() + jiff::SignedDuration::from_secs(60));
            },
            Want {
                phase: Some("Connected"),
                conds: &[("Connected", "True", POLLING_THROTTLED)],
                ..W
            },
        ),
        (
            "throttle note cleared while reconnecting",
            |o| {
                o.link = Link::Reconnecting;
                o.status.conditions[0] = cond("Connected", "True", POLLING_THROTTLED);
            },
            Want {
                conds: &[("Connected", "True", "RoundTripOK")],
                ..W
            },
        ),
        (
            "reconnecting without a throttle keeps the Connected reason as it is",
            |o| {
                o.link = Link::Reconnecting;
                o.status.conditions[0] = cond("Connected", "True", "ControlPlaneReachable");
            },
            Want {
                conds: &[("Connected", "True", "ControlPlaneReachable")],
                ..W
            },
        ),
        (
            "disconnected outranks a throttle",
            |o| {
                o.link = Link::Disconnected;
                o.poll_throttled_until = Some(now() + jiff::SignedDuration::from_secs(60));
            },
            Want {
                phase: Some("Disconnected"),
                conds: &[("Connected", "False", "ControlPlaneUnreachable")],
                ..W
            },
        ),
        // --- conditions written on every live pass
        (
            "buffer overflow reported with the drop count",
            |o| o.overflow = Some(7),
            Want {
                conds: &[("BufferOverflow", "True", "EventBufferFull")],
                check: Some(|_, p| {
                    let c = conditions::find(&p.status().unwrap().conditions, "BufferOverflow");
                    assert_eq!(
                        c.unwrap().message,
                        "7 events dropped since the buffer last drained"
                    );
                }),
                ..W
            },
        ),
        (
            "Flux CRDs missing: ControllersHealthy=False/ControllerMissing",
            |o| {
                o.controllers = (
                    false,
                    "missing CRDs: helm.toolkit.fluxcd.io/HelmRelease".into(),
                )
            },
            Want {
                conds: &[("ControllersHealthy", "False", "ControllerMissing")],
                ..W
            },
        ),
        (
            "a new generation is stamped on every condition",
            |o| o.generation = Some(4),
            Want {
                check: Some(|_, p| {
                    let s = p.status().unwrap();
                    assert!(
                        s.conditions
                            .iter()
                            .all(|c| c.observed_generation == Some(4))
                    );
                    let c = conditions::find(&s.conditions, "Connected").unwrap();
                    assert_eq!(c.last_transition_time, Time(ago(3600)), "no flip, no move");
                }),
                ..W
            },
        ),
        (
            "a flip moves lastTransitionTime to now",
            |o| o.link = Link::Disconnected,
            Want {
                check: Some(|_, p| {
                    let s = p.status().unwrap();
                    let c = conditions::find(&s.conditions, "Connected").unwrap();
                    assert_eq!(c.last_transition_time, Time(now()));
                }),
                ..W
            },
        ),
    ]
}

#[test]
fn table() {
    let rows = rows();
    assert!(rows.len() >= 50, "{} rows", rows.len());
    for (name, setup, want) in rows {
        let mut o = base();
        setup(&mut o);
        let plan = decide(&o, now());
        assert_eq!(
            plan.call.as_ref().map(call_name),
            want.call,
            "{name}: call in {plan:#?}"
        );
        if plan.call.is_some() {
            assert!(plan.effects.is_empty(), "{name}: a call plans nothing else");
        }
        if let Some(phase) = want.phase {
            let got = plan.status().and_then(|s| s.phase.as_deref());
            assert_eq!(got, Some(phase), "{name}: phase");
        }
        for (t, s, reason) in want.conds {
            let status = plan
                .status()
                .unwrap_or_else(|| panic!("{name}: no status written"));
            let c = conditions::find(&status.conditions, t)
                .unwrap_or_else(|| panic!("{name}: no {t} in {:#?}", status.conditions));
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (*s, *reason),
                "{name}: {t}"
            );
        }
        if let Some(effects) = want.effects {
            let got: Vec<String> = plan.effects.iter().map(effect_name).collect();
            assert_eq!(got, effects, "{name}: effects");
        }
        if let Some(requeue) = want.requeue {
            assert_eq!(
                plan.requeue.map(|d| d.as_secs()),
                requeue,
                "{name}: requeue"
            );
        }
        if let Some(check) = want.check {
            check(&o, &plan);
        }
    }
}

/// Issue 11 item 6: the status write of a heartbeat triggers a reconcile; that pass must
/// neither send another heartbeat nor write anything, and the next one goes out a period
/// after the first.
#[test]
fn no_heartbeat_storm() {
    let mut o = base();
    o.status.last_heartbeat = Some(Time(ago(30)));
    o.last_heartbeat = Some((ago(30), Ok(())));
    let first = decide(&o, now());
    assert!(matches!(first.call, Some(Call::Heartbeat { .. })));
    o.outcomes.heartbeat = Some(Ok(()));
    let written = decide(&o, now()).status().cloned().unwrap();

    // The watch event of that write: a new pass 200 ms later.
    let mut again = base();
    again.status = written.clone();
    again.last_heartbeat = Some((now(), Ok(())));
    let mut t = now() + jiff::SignedDuration::from_millis(200);
    let echo = decide(&again, t);
    assert!(echo.call.is_none(), "no second heartbeat");
    assert_eq!(echo.status(), Some(&written), "nothing to write");
    assert_eq!(echo.requeue, Some(Duration::from_millis(29_800)));

    // Passes every second (say, Secret churn) send nothing until the period is up.
    let mut heartbeats = 0;
    for _ in 0..90 {
        t += jiff::SignedDuration::from_secs(1);
        let mut p = decide(&again, t);
        if p.call.take().is_some() {
            heartbeats += 1;
            again.last_heartbeat = Some((t, Ok(())));
            again.status.last_heartbeat = Some(Time(t));
        }
    }
    assert_eq!(heartbeats, 3, "one per 30 s over 90 s");
}

#[test]
fn decide_settles_after_each_outcome() {
    // Registration pass: exchange, then done (the heartbeat waits for the next pass).
    let mut o = base();
    o.status = ClusterStatus::default();
    o.credentials = false;
    o.last_heartbeat = None;
    assert_eq!(decide(&o, now()).call, Some(Call::Exchange));
    o.outcomes.exchange = Some(Ok("id".into()));
    let p = decide(&o, now());
    assert!(p.call.is_none());

    // Rotation then heartbeat in one pass.
    let mut o = base();
    o.rotate_requested = true;
    o.last_heartbeat = None;
    o.status.last_heartbeat = None;
    assert_eq!(decide(&o, now()).call, Some(Call::Rotate));
    o.outcomes.rotation = Some(Ok(()));
    assert!(matches!(
        decide(&o, now()).call,
        Some(Call::Heartbeat { .. })
    ));
    o.outcomes.heartbeat = Some(Ok(()));
    let p = decide(&o, now());
    assert!(p.call.is_none());
    assert!(p.effects.contains(&Effect::ClearRotateFlag));
}

#[test]
fn every_cluster_reason_written_is_covered() {
    // The reasons `decide` can write, per spec §5.4 (CredentialRotated is an event, the
    // rest are condition reasons). ControlPlaneAuthenticationFailed is deliberately never
    // written: plain network errors do not touch Authenticated.
    let mut seen = std::collections::BTreeSet::new();
    for (_, setup, _) in rows() {
        let mut o = base();
        setup(&mut o);
        let p = decide(&o, now());
        if let Some(s) = p.status() {
            for c in &s.conditions {
                seen.insert(c.reason.clone());
            }
        }
        for e in &p.effects {
            if let Effect::Notice(n) = e {
                seen.insert(n.reason.clone());
            }
        }
    }
    for reason in [
        r::TOKEN_SECRET_MISSING,
        r::REGISTRATION_FAILED,
        r::REGISTRATION_COMPLETE,
        r::REGISTRATION_TOKEN_INVALID,
        r::ROTATION_FAILED,
        r::CREDENTIAL_MISSING,
        r::CREDENTIAL_REJECTED,
        r::CREDENTIAL_ACCEPTED,
        r::CREDENTIAL_ROTATED,
        r::REGISTRATION_PENDING,
        r::CONTROL_PLANE_REACHABLE,
        r::CONTROL_PLANE_UNREACHABLE,
        r::ROUND_TRIP_OK,
        r::NO_RECENT_ROUND_TRIP,
        r::EVENT_BUFFER_FULL,
        r::BUFFER_DRAINED,
        r::ALL_CONTROLLERS_READY,
        r::CONTROLLER_MISSING,
        r::CONNECTED,
        r::DUPLICATE_CLUSTER,
        r::ENDPOINT_NOT_FOUND,
        r::RECONNECTING,
        POLLING_THROTTLED,
        "ConnectivityLost",
        "ConnectivityConnected",
        "DeprecatedField",
    ] {
        assert!(seen.contains(reason), "no row covers {reason}");
    }
    assert!(!seen.contains(r::CONTROL_PLANE_AUTHENTICATION_FAILED));
}

/// Spec connectivity §5: GitOps has no operator-to-server link, so no `Disconnected`
/// condition, no `ConnectivityLost` and no `-1` gauge; the same observation in Pull mode
/// does disconnect (so the GitOps rows are not vacuous).
#[test]
fn gitops_mode_never_disconnects() {
    let gitops = |o: &mut Observed| o.settings.mode = ConnectivityMode::Gitops;
    let has_disconnected =
        |p: &Plan| conditions::find(&p.status().unwrap().conditions, "Disconnected").is_some();
    let notices = |p: &Plan| -> Vec<String> {
        p.effects
            .iter()
            .filter(|e| matches!(e, Effect::Notice(_)))
            .map(effect_name)
            .collect()
    };

    // Failures for longer than the grace window.
    let failing = |o: &mut Observed| {
        o.link = Link::Disconnected;
        o.link_error = Some("connection refused".into());
    };
    let mut pull = base();
    failing(&mut pull);
    let p = decide(&pull, now());
    assert_eq!(p.status().unwrap().phase.as_deref(), Some("Disconnected"));
    assert!(conditions::is_true(
        &p.status().unwrap().conditions,
        "Disconnected"
    ));
    assert_eq!(notices(&p), ["Warning:ConnectivityLost"]);

    let mut o = base();
    failing(&mut o);
    gitops(&mut o);
    let p = decide(&o, now());
    let s = p.status().unwrap();
    assert!(!has_disconnected(&p), "{:#?}", s.conditions);
    assert_ne!(s.phase.as_deref(), Some("Disconnected"));
    assert!(notices(&p).is_empty(), "{:?}", notices(&p));
    // Connected stays True inside the window, as in Pull's Reconnecting.
    assert!(conditions::is_true(&s.conditions, "Connected"));

    // A Cluster that was Disconnected under Pull loses the phase and the condition.
    let mut o = base();
    failing(&mut o);
    o.status.phase = Some("Disconnected".into());
    o.status.conditions = vec![
        cond("Connected", "False", "ControlPlaneUnreachable"),
        cond("Disconnected", "True", "NoRecentRoundTrip"),
    ];
    gitops(&mut o);
    let p = decide(&o, now());
    assert!(!has_disconnected(&p));
    assert_eq!(p.status().unwrap().phase.as_deref(), Some("Pending"));
    let c = conditions::find(&p.status().unwrap().conditions, "Connected").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Reconnecting")
    );

    // Event posting works: Connected, still no Disconnected=False either.
    let mut o = base();
    gitops(&mut o);
    let p = decide(&o, now());
    assert_eq!(p.status().unwrap().phase.as_deref(), Some("Connected"));
    assert!(!has_disconnected(&p));

    // Without credentials: nothing is wrong, so no -1 gauge and no retry loop.
    let mut o = base();
    o.status = ClusterStatus::default();
    o.token = TokenSource::None;
    o.credentials = false;
    gitops(&mut o);
    let p = decide(&o, now());
    let c = conditions::find(&p.status().unwrap().conditions, "Connected").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", GITOPS_MODE)
    );
    assert!(p.effects.contains(&Effect::SetConnectivityGauge(0)));
    assert!(!p.effects.contains(&Effect::SetConnectivityGauge(-1)));
    assert_eq!(p.requeue, None);
    assert!(!has_disconnected(&p));
    // Pull in the same state says the credentials are missing and reports -1.
    o.settings.mode = ConnectivityMode::Pull;
    let p = decide(&o, now());
    assert!(p.effects.contains(&Effect::SetConnectivityGauge(-1)));
}

#[test]
fn connectivity_modes_parse() {
    for (text, mode) in [
        ("pull", ConnectivityMode::Pull),
        ("Push", ConnectivityMode::Push),
        (" gitops ", ConnectivityMode::Gitops),
    ] {
        let parsed: ConnectivityMode = text.parse().unwrap();
        assert_eq!(parsed, mode);
        assert_eq!(parsed.as_str(), text.trim().to_ascii_lowercase());
    }
    let err = "argo".parse::<ConnectivityMode>().unwrap_err();
    assert!(err.contains("pull, push or gitops"), "{err}");
    assert!(ConnectivityMode::Pull.polls_jobs());
    assert!(!ConnectivityMode::Push.polls_jobs());
    assert!(!ConnectivityMode::Gitops.polls_jobs());
}
