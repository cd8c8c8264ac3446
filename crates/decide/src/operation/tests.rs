//! Table tests of the Operation pipeline: every case is an observed world and what the
//! pass must decide (phase, reasons, writes, requeue).

// The case tables are tuples.
#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube_core::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::{find, op_reasons as r, types};
use vworkspace_api::operation::{Operation, OperationType, Phase};

use super::*;
use crate::approval;
use crate::engines::{Select, helm_hook};

const SECRET: &str = "approval-s3cret";
const NS: &str = "team";
const T0: &str = "2026-01-01T00:00:00Z";

fn now() -> jiff::Timestamp {
    "2026-01-01T00:10:00Z".parse().unwrap()
}

fn engine_of(t: &str) -> &'static str {
    match t {
        "Backup" | "Restore" => "velero",
        "Upgrade" => "helm",
        "Migration" => "helmHookJob",
        "RunCommand" => "job",
        _ => "workflow",
    }
}

fn params_of(engine: &str, t: &str) -> Value {
    match (engine, t) {
        ("velero", "Restore") => json!({"backupName": "b"}),
        ("job", _) => json!({"image": "busybox"}),
        ("helm", _) => json!({"targetVersion": "2.0.0"}),
        ("helmHookJob", _) => json!({"hookName": "migrate"}),
        ("workflow", _) => json!({"workflowTemplate": "t"}),
        ("volsync", _) => json!({"sourcePVC": "data", "repository": "restic"}),
        _ => json!({}),
    }
}

/// An Operation under construction.
struct Op(Value);

impl Op {
    /// A new (never processed) Operation with its finalizer, created at `T0`.
    fn new(name: &str, t: &str) -> Op {
        let engine = engine_of(t);
        Op::with_engine(name, t, engine)
    }

    fn with_engine(name: &str, t: &str, engine: &str) -> Op {
        Op(json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                         "generation": 1, "creationTimestamp": T0,
                         "finalizers": ["ops.vworkspace.io/finalizer"]},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                                   "kind": "ApplicationInstance", "name": "wiki"},
                     "type": t, "engine": engine, "parameters": params_of(engine, t)}
        }))
    }

    fn set(mut self, pointer: &str, v: Value) -> Op {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let mut cur = &mut self.0;
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            if cur.get(part).is_none() {
                cur[part] = json!({});
            }
            cur = cur.get_mut(part).unwrap();
        }
        cur[key] = v;
        self
    }

    fn phase(self, p: &str) -> Op {
        self.set("/status/phase", json!(p))
    }

    fn created(self, t: &str) -> Op {
        self.set("/metadata/creationTimestamp", json!(t))
    }

    fn claim(self) -> Op {
        let name = self.0["metadata"]["name"].as_str().unwrap().to_string();
        let claim = approval::issue(SECRET, &name, "alice", now().as_second() + 600);
        self.set("/spec/approvals", json!({"claim": claim}))
    }

    /// Running since `started` with its workload recorded.
    fn running(self, kind: &str, workload_ns: &str, started: &str) -> Op {
        let name = format!("{NS}--{}", self.0["metadata"]["name"].as_str().unwrap());
        self.phase("Running")
            .set("/status/startedAt", json!(started))
            .set(
                "/status/engineRef",
                json!({"kind": kind, "name": name, "namespace": workload_ns}),
            )
            .set(
                "/status/conditions",
                json!([{"type": "Running", "status": "True", "reason": "EngineStarted",
                        "message": "workload created", "lastTransitionTime": started}]),
            )
    }

    fn build(self) -> Operation {
        serde_json::from_value(self.0).unwrap()
    }
}

/// The target: a placeholder declaring every capability.
fn target() -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "wiki", "namespace": NS, "uid": "t-uid", "generation": 1,
            "annotations": {
                "ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero",
                "ops.vworkspace.io/runcommand": "job", "ops.vworkspace.io/upgrade": "helm",
                "ops.vworkspace.io/migration": "helmHookJob", "ops.vworkspace.io/runbook": "workflow",
                "ops.vworkspace.io/replicate": "volsync", "ops.vworkspace.io/snapshot": "csiSnapshot"}},
        "spec": {"appRef": {"catalogId": "wiki"}, "mode": "placeholder"}
    })
}

fn managed_target() -> Value {
    let mut t = target();
    t["spec"] = json!({
        "appRef": {"catalogId": "wiki"}, "mode": "managed",
        "chart": {"sourceType": "helm", "url": "https://charts.example", "name": "wiki", "version": "1.0.0"},
        "release": {"name": "wiki", "namespace": "wiki-apps"},
        "values": {"source": "inline", "inline": {"a": 1}}
    });
    t
}

fn instance(v: Value) -> ApplicationInstance {
    serde_json::from_value(v).unwrap()
}

fn world(op: Operation) -> Observed {
    let mut o = Observed::of(
        op,
        Config {
            approval_secret: SECRET.into(),
            settings: Settings {
                velero_namespace: "velero".into(),
            },
        },
    );
    o.target = Some(instance(target()));
    o
}

fn with_peers(mut o: Observed, peers: Vec<Operation>) -> Observed {
    o.peers = peers;
    o
}

fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn job(name: &str, conditions: Value) -> DynamicObject {
    dynamic(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": {"conditions": conditions, "active": 1}
    }))
}

fn blocked_reason(plan: &Plan) -> Option<&'static str> {
    match &plan.decision {
        Decision::Block(b) => Some(b.reason),
        _ => None,
    }
}

fn block_message(plan: &Plan) -> String {
    match &plan.decision {
        Decision::Block(b) => b.message.clone(),
        other => panic!("not blocked: {other:?}"),
    }
}

fn status(plan: &Plan) -> &vworkspace_api::operation::OperationStatus {
    plan.status.as_ref().expect("a status write")
}

fn condition<'a>(plan: &'a Plan, t: &str) -> (&'a str, &'a str, &'a str) {
    let c = find(&status(plan).conditions, t).unwrap_or_else(|| panic!("no {t} condition"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn start_writes(plan: &Plan) -> &Build {
    match &plan.decision {
        Decision::Start(b) => b,
        other => panic!("not started: {other:?}"),
    }
}

// ------------------------------------------------------------ terminal, deletion, finalizer

#[test]
fn terminal_operations_are_never_reevaluated() {
    for p in ["Succeeded", "Failed", "Cancelled"] {
        // Even with cancel set, an invalid spec and no target.
        let op = Op::new("b", "Backup")
            .phase(p)
            .set("/spec/cancel", json!(true))
            .set("/spec/targetRef/kind", json!("Deployment"))
            .build();
        let mut o = world(op);
        o.target = None;
        let plan = decide(&o, now());
        assert_eq!(plan.decision, Decision::Nothing, "{p}");
        assert_eq!(plan.status, None);
        assert_eq!(plan.requeue, None);
    }
}

#[test]
fn a_new_operation_first_gets_its_finalizer() {
    let op = Op::new("b", "Backup")
        .set("/metadata/finalizers", json!([]))
        .build();
    let plan = decide(&world(op), now());
    assert_eq!(plan.decision, Decision::AddFinalizer);
    assert_eq!(plan.status, None);
}

#[test]
fn deletion_removes_a_running_workload_then_the_finalizer() {
    let op = Op::new("du", "RunCommand")
        .running("Job", NS, T0)
        .set("/metadata/deletionTimestamp", json!(T0))
        .build();
    let plan = decide(&world(op), now());
    let Decision::Release {
        stop,
        remove_finalizer,
    } = plan.decision
    else {
        panic!("{:?}", plan.decision)
    };
    assert!(remove_finalizer);
    assert_eq!(
        stop,
        vec![Write::delete(
            ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&()),
            NS,
            "team--du"
        )]
    );
}

#[test]
fn deletion_of_a_finished_operation_keeps_its_workload() {
    let op = Op::new("du", "RunCommand")
        .running("Job", NS, T0)
        .phase("Failed")
        .set("/metadata/deletionTimestamp", json!(T0))
        .build();
    let plan = decide(&world(op), now());
    assert_eq!(
        plan.decision,
        Decision::Release {
            stop: vec![],
            remove_finalizer: true
        }
    );
}

#[test]
fn deletion_without_our_finalizer_only_stops() {
    let op = Op::new("b", "Backup")
        .running("Backup", "velero", T0)
        .set("/metadata/finalizers", json!(["other/finalizer"]))
        .set("/metadata/deletionTimestamp", json!(T0))
        .build();
    let plan = decide(&world(op), now());
    let Decision::Release {
        stop,
        remove_finalizer,
    } = plan.decision
    else {
        panic!()
    };
    assert!(!remove_finalizer);
    assert!(
        matches!(&stop[..], [Write::Delete { name, namespace, .. }] if name == "team--b" && namespace == "velero")
    );
}

#[test]
fn deletion_leaves_an_upgraded_instance_alone() {
    let op = Op::new("up", "Upgrade")
        .running("ApplicationInstance", NS, T0)
        .set("/metadata/deletionTimestamp", json!(T0))
        .build();
    let plan = decide(&world(op), now());
    assert_eq!(
        plan.decision,
        Decision::Release {
            stop: vec![],
            remove_finalizer: true
        }
    );
}

// ------------------------------------------------------------------------------ cancel

#[test]
fn cancel_table() {
    let job = ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&());
    let suspend = json!({"spec": {"suspend": true}});
    let cases: Vec<(&str, Operation, Vec<Write>)> = vec![
        (
            "pending: nothing to stop",
            Op::new("du", "RunCommand")
                .set("/spec/cancel", json!(true))
                .build(),
            vec![],
        ),
        (
            "running Job: suspended, kept",
            Op::new("du", "RunCommand")
                .running("Job", NS, T0)
                .set("/spec/cancel", json!(true))
                .build(),
            vec![Write::patch(job, NS, "team--du", suspend)],
        ),
        (
            "running Workflow: terminated",
            Op::new("rb", "Runbook")
                .running("Workflow", NS, T0)
                .set("/spec/cancel", json!(true))
                .build(),
            vec![Write::patch(
                crate::kinds::argo::workflow(),
                NS,
                "team--rb",
                json!({"spec": {"shutdown": "Terminate"}}),
            )],
        ),
        (
            "running ReplicationSource: paused",
            Op::with_engine("rs", "Backup", "volsync")
                .running("ReplicationSource", NS, T0)
                .set("/spec/cancel", json!(true))
                .build(),
            vec![Write::patch(
                crate::kinds::volsync::replication_source(),
                NS,
                "team--rs",
                json!({"spec": {"paused": true}}),
            )],
        ),
        (
            "running snapshots: deleted",
            Op::with_engine("snap", "Backup", "csiSnapshot")
                .running("VolumeSnapshot", NS, T0)
                .set("/spec/cancel", json!(true))
                .build(),
            vec![Write::DeleteSelected {
                resource: crate::kinds::snapshot::volume_snapshot(),
                namespace: NS.into(),
                selector: "ops.vworkspace.io/operation=uid-snap".into(),
            }],
        ),
        (
            "running Velero restore: deleted (no pause)",
            Op::new("r", "Restore")
                .running("Restore", "velero", T0)
                .set("/spec/cancel", json!(true))
                .build(),
            vec![Write::delete(
                crate::kinds::velero::api_resource("Restore"),
                "velero",
                "team--r",
            )],
        ),
    ];
    for (what, op, want_stop) in cases {
        let running = op
            .status
            .as_ref()
            .and_then(|s| s.engine_ref.clone())
            .is_some();
        let plan = decide(&world(op), now());
        assert_eq!(
            plan.decision,
            Decision::Finish {
                phase: Phase::Cancelled,
                reason: r::USER_CANCELLED.into(),
                stop: want_stop
            },
            "{what}"
        );
        let st = status(&plan);
        assert_eq!(st.phase, Some(Phase::Cancelled), "{what}");
        assert!(st.finished_at.is_some(), "{what}");
        assert_eq!(st.logs_ref.is_some(), running, "{what}");
        assert_eq!(condition(&plan, types::CANCELLED).1, r::USER_CANCELLED);
        assert_eq!(
            condition(&plan, types::RUNNING),
            ("False", r::ENGINE_NOT_STARTED, "cancelled")
        );
        assert_eq!(plan.requeue, None);
    }
}

#[test]
fn cancel_reverts_an_upgrade_only_while_the_instance_holds_its_version() {
    let op = |version: &str| {
        let outputs = crate::engines::helm::start_outputs(
            &crate::engines::helm::Plan {
                patch: json!({}),
                revert: json!({"spec": {"chart": {"version": "1.0.0"}}}),
                previous_version: "1.0.0".into(),
                target_version: "2.0.0".into(),
            },
            Some(2),
        );
        let mut t = managed_target();
        t["spec"]["chart"]["version"] = json!(version);
        let op = Op::new("up", "Upgrade")
            .running("ApplicationInstance", NS, T0)
            .set("/status/outputs", serde_json::to_value(outputs).unwrap())
            .set("/spec/cancel", json!(true))
            .build();
        let mut o = world(op);
        o.target = Some(instance(t));
        o
    };
    let plan = decide(&op("2.0.0"), now());
    let Decision::Finish { stop, .. } = &plan.decision else {
        panic!()
    };
    assert!(matches!(&stop[..], [Write::Patch { name, patch, .. }]
        if name == "team--up" && patch["spec"]["chart"]["version"] == "1.0.0"));
    // Somebody changed the version since: left alone.
    let plan = decide(&op("3.0.0"), now());
    let Decision::Finish { stop, .. } = &plan.decision else {
        panic!()
    };
    assert!(stop.is_empty());
    // The bookkeeping outputs are dropped at the terminal transition.
    let outputs = status(&plan).outputs.clone().unwrap();
    assert!(outputs.keys().all(|k| !k.starts_with('_')), "{outputs:?}");
    assert_eq!(outputs["targetVersion"], "2.0.0");
}

// -------------------------------------------------------------------------- validation

#[test]
fn validation_table() {
    let cases: Vec<(&str, Operation, &str, &str)> = vec![
        (
            "target is not an ApplicationInstance",
            Op::new("b", "Backup")
                .set("/spec/targetRef/kind", json!("Deployment"))
                .build(),
            r::VALIDATION_FAILED,
            "spec.targetRef must be apps.vworkspace.io/v1alpha1 ApplicationInstance",
        ),
        (
            "type/engine pair not runnable",
            Op::with_engine("b", "Backup", "job").build(),
            r::VALIDATION_FAILED,
            "spec.type Backup cannot run on spec.engine job (runnable pairs: Backup+velero",
        ),
        (
            "required parameter missing",
            Op::new("du", "RunCommand")
                .set("/spec/parameters", json!({}))
                .build(),
            r::VALIDATION_FAILED,
            "spec.parameters.image",
        ),
        (
            "unknown parameter",
            Op::new("b", "Backup")
                .set("/spec/parameters", json!({"bogus": 1}))
                .build(),
            r::VALIDATION_FAILED,
            "spec.parameters.bogus",
        ),
        (
            "runner service account only",
            Op::new("du", "RunCommand")
                .set(
                    "/spec/parameters",
                    json!({"image": "busybox", "serviceAccountName": "admin"}),
                )
                .build(),
            r::VALIDATION_FAILED,
            "serviceAccountName",
        ),
        (
            "timeout below one second",
            Op::new("b", "Backup")
                .set("/spec/timeoutSeconds", json!(0))
                .build(),
            r::VALIDATION_FAILED,
            "spec.timeoutSeconds: must be at least 1",
        ),
    ];
    for (what, op, reason, message) in cases {
        let plan = decide(&world(op), now());
        assert_eq!(blocked_reason(&plan), Some(reason), "{what}");
        assert!(
            block_message(&plan).contains(message),
            "{what}: {}",
            block_message(&plan)
        );
    }
}

#[test]
fn a_block_is_pending_with_blocked_and_accepted_and_a_recheck() {
    let op = Op::new("b", "Backup")
        .set("/spec/timeoutSeconds", json!(0))
        .build();
    let plan = decide(&world(op), now());
    let st = status(&plan);
    assert_eq!(st.phase, Some(Phase::Pending));
    let (s, reason, message) = condition(&plan, types::BLOCKED);
    assert_eq!((s, reason), ("True", r::VALIDATION_FAILED));
    assert_eq!(
        condition(&plan, types::ACCEPTED),
        ("False", r::VALIDATION_FAILED, message)
    );
    assert_eq!(plan.requeue, Some(BLOCKED_RECHECK));
    let blocked = find(&st.conditions, types::BLOCKED).unwrap();
    assert_eq!(blocked.last_transition_time.0, now());
    assert_eq!(blocked.observed_generation, Some(1));
}

#[test]
fn an_unchanged_block_writes_nothing() {
    let op = Op::new("b", "Backup")
        .set("/spec/timeoutSeconds", json!(0))
        .build();
    let first = decide(&world(op.clone()), now());
    let mut again = op;
    again.status = Some(status(&first).clone());
    let plan = decide(&world(again), now());
    assert_eq!(blocked_reason(&plan), Some(r::VALIDATION_FAILED));
    assert_eq!(plan.status, None, "same status: no write, no event");
    assert_eq!(plan.requeue, Some(BLOCKED_RECHECK));
}

// ------------------------------------------------------------------------------- gates

fn ready(status: &str) -> Value {
    json!({"conditions": [{"type": "Ready", "status": status, "reason": "HelmReleaseFailed",
        "message": "boom", "lastTransitionTime": T0}]})
}

#[test]
fn target_gate_table() {
    let deleting = {
        let mut t = target();
        t["metadata"]["deletionTimestamp"] = json!(T0);
        t["metadata"]["finalizers"] = json!(["apps.vworkspace.io/finalizer"]);
        Some(t)
    };
    let not_ready = {
        let mut t = target();
        t["status"] = ready("False");
        Some(t)
    };
    let cases: Vec<(&str, &str, Option<Value>, Option<&str>, &str)> = vec![
        (
            "missing target",
            "Backup",
            None,
            Some(r::TARGET_NOT_FOUND),
            "ApplicationInstance \"wiki\" not found in namespace \"team\"",
        ),
        (
            "target being deleted",
            "Backup",
            deleting.clone(),
            Some(r::TARGET_NOT_READY),
            "is being deleted",
        ),
        (
            "being deleted blocks even a Restore",
            "Restore",
            deleting,
            Some(r::TARGET_NOT_READY),
            "is being deleted",
        ),
        (
            "Ready=False holds a Backup",
            "Backup",
            not_ready.clone(),
            Some(r::TARGET_NOT_READY),
            "is not Ready (HelmReleaseFailed: boom)",
        ),
        (
            "Ready=False holds a RunCommand",
            "RunCommand",
            not_ready.clone(),
            Some(r::TARGET_NOT_READY),
            "is not Ready",
        ),
        (
            "Ready=False does not hold a Restore",
            "Restore",
            not_ready.clone(),
            None,
            "",
        ),
        (
            "Ready=False does not hold an Upgrade",
            "Upgrade",
            not_ready,
            None,
            "",
        ),
        (
            "no Ready condition yet: not held",
            "Backup",
            Some(target()),
            None,
            "",
        ),
    ];
    for (what, t, target, reason, message) in cases {
        let mut o = world(Op::new("x", t).claim().build());
        o.target = target.map(instance);
        let plan = decide(&o, now());
        assert_eq!(blocked_reason(&plan), reason, "{what}: {:?}", plan.decision);
        if reason.is_some() {
            assert!(
                block_message(&plan).contains(message),
                "{what}: {}",
                block_message(&plan)
            );
        }
    }
}

#[test]
fn approval_gate_table() {
    let claim_for =
        |name: &str, secret: &str, exp: i64| approval::issue(secret, name, "alice", exp);
    let later = now().as_second() + 600;
    let cases: Vec<(&str, Op, &str, Option<&str>)> = vec![
        (
            "Restore requires approval by default",
            Op::new("r", "Restore"),
            SECRET,
            Some("approval claim required in spec.approvals.claim"),
        ),
        (
            "blank claim",
            Op::new("r", "Restore").set("/spec/approvals", json!({"claim": "  "})),
            SECRET,
            Some("approval claim required"),
        ),
        (
            "spec.approvals.required on a Backup",
            Op::new("b", "Backup").set("/spec/approvals", json!({"required": true})),
            SECRET,
            Some("approval claim required"),
        ),
        (
            "claim signed with another secret",
            Op::new("r", "Restore").set(
                "/spec/approvals",
                json!({"claim": claim_for("r", "other", later)}),
            ),
            SECRET,
            Some("invalid approval claim: "),
        ),
        (
            "expired claim",
            Op::new("r", "Restore").set(
                "/spec/approvals",
                json!({"claim": claim_for("r", SECRET, now().as_second() - 1)}),
            ),
            SECRET,
            Some("invalid approval claim: "),
        ),
        (
            "claim for another Operation",
            Op::new("r", "Restore").set(
                "/spec/approvals",
                json!({"claim": claim_for("other", SECRET, later)}),
            ),
            SECRET,
            Some("invalid approval claim: "),
        ),
        (
            "malformed claim",
            Op::new("r", "Restore").set("/spec/approvals", json!({"claim": "vws1.nope"})),
            SECRET,
            Some("invalid approval claim: "),
        ),
        (
            "no secret configured rejects every claim",
            Op::new("r", "Restore").claim(),
            "",
            Some("invalid approval claim: "),
        ),
        (
            "valid claim passes",
            Op::new("r", "Restore").claim(),
            SECRET,
            None,
        ),
        ("a Backup needs none", Op::new("b", "Backup"), SECRET, None),
    ];
    for (what, op, secret, message) in cases {
        let mut o = world(op.build());
        o.config.approval_secret = secret.into();
        let plan = decide(&o, now());
        match message {
            Some(m) => {
                assert_eq!(blocked_reason(&plan), Some(r::AWAITING_APPROVAL), "{what}");
                assert!(
                    block_message(&plan).contains(m),
                    "{what}: {}",
                    block_message(&plan)
                );
            }
            None => assert!(
                matches!(plan.decision, Decision::Start(_)),
                "{what}: {:?}",
                plan.decision
            ),
        }
    }
}

#[test]
fn approval_claim_bindings_must_match() {
    let body = |extra: Value| {
        let mut claims = json!({"v": 1, "rid": 1, "op": "r", "by": "alice", "at": "now",
            "exp": now().as_second() + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        approval::sign(SECRET, &claims)
    };
    let cases = [
        ("other namespace", json!({"ns": "elsewhere"}), Some("ns")),
        (
            "recreated Operation",
            json!({"uid": "old-uid"}),
            Some("uid"),
        ),
        ("other type", json!({"type": "Backup"}), Some("type")),
        ("other target", json!({"target": "blog"}), Some("target")),
        (
            "every binding right",
            json!({"ns": NS, "uid": "uid-r", "type": "Restore", "target": "wiki"}),
            None,
        ),
    ];
    for (what, extra, field) in cases {
        let op = Op::new("r", "Restore")
            .set("/spec/approvals", json!({"claim": body(extra)}))
            .build();
        let plan = decide(&world(op), now());
        match field {
            Some(f) => {
                assert_eq!(blocked_reason(&plan), Some(r::AWAITING_APPROVAL), "{what}");
                assert!(
                    block_message(&plan).contains(f),
                    "{what}: {}",
                    block_message(&plan)
                );
            }
            None => assert!(matches!(plan.decision, Decision::Start(_)), "{what}"),
        }
    }
    // approvedBy is cross-checked against the claim's approver.
    let op = Op::new("r", "Restore")
        .claim()
        .set("/spec/approvals/approvedBy", json!("mallory"))
        .build();
    assert_eq!(
        blocked_reason(&decide(&world(op), now())),
        Some(r::AWAITING_APPROVAL)
    );
}

#[test]
fn capability_gate_table() {
    let cases: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        (
            "not declared",
            None,
            Some("does not declare ops.vworkspace.io/backup: velero (found nothing)"),
        ),
        (
            "declared for another engine",
            Some("restic"),
            Some("(found \"restic\")"),
        ),
        ("declared with spaces", Some(" velero "), None),
        ("declared", Some("velero"), None),
    ];
    for (what, declared, message) in cases {
        let mut t = target();
        match declared {
            Some(d) => t["metadata"]["annotations"]["ops.vworkspace.io/backup"] = json!(d),
            None => {
                t["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove("ops.vworkspace.io/backup");
            }
        }
        let mut o = world(Op::new("b", "Backup").build());
        o.target = Some(instance(t));
        let plan = decide(&o, now());
        match message {
            Some(m) => {
                assert_eq!(blocked_reason(&plan), Some(r::CAPABILITY_MISSING), "{what}");
                assert!(
                    block_message(&plan).contains(m),
                    "{what}: {}",
                    block_message(&plan)
                );
            }
            None => assert!(matches!(plan.decision, Decision::Start(_)), "{what}"),
        }
    }
}

#[test]
fn gates_run_in_order_target_approval_conflict_capability() {
    // Everything wrong at once: the first gate's reason wins, then the next, ...
    let mut t = target();
    t["metadata"]["annotations"] = json!({});
    let peer = Op::new("up", "Upgrade").phase("Running").build();
    let mut o = with_peers(world(Op::new("r", "Restore").build()), vec![peer]);
    o.target = None;
    assert_eq!(
        blocked_reason(&decide(&o, now())),
        Some(r::TARGET_NOT_FOUND)
    );
    o.target = Some(instance(t));
    assert_eq!(
        blocked_reason(&decide(&o, now())),
        Some(r::AWAITING_APPROVAL)
    );
    o.op = Op::new("r", "Restore").claim().build();
    assert_eq!(
        blocked_reason(&decide(&o, now())),
        Some(r::CONFLICTING_OPERATION)
    );
    o.peers.clear();
    assert_eq!(
        blocked_reason(&decide(&o, now())),
        Some(r::CAPABILITY_MISSING)
    );
}

#[test]
fn a_blocked_operation_costs_no_engine_reads() {
    let mut o = world(Op::with_engine("s", "Backup", "csiSnapshot").build());
    assert_eq!(
        prerequisites(&o, now()).len(),
        1,
        "admitted: the PVCs are read"
    );
    o.target = None;
    assert!(prerequisites(&o, now()).is_empty());
    let running = world(
        Op::with_engine("s", "Backup", "csiSnapshot")
            .running("VolumeSnapshot", NS, T0)
            .build(),
    );
    assert!(prerequisites(&running, now()).is_empty());
    let unfinalized = world(
        Op::with_engine("s", "Backup", "csiSnapshot")
            .set("/metadata/finalizers", json!([]))
            .build(),
    );
    assert!(
        prerequisites(&unfinalized, now()).is_empty(),
        "first the finalizer"
    );
}

// ------------------------------------------------------------------ concurrency matrix
//
// Spec §8.12: which in-flight Operation on the same target blocks an incoming one.

const TYPES: [&str; 6] = [
    "Backup",
    "Restore",
    "Upgrade",
    "Migration",
    "RunCommand",
    "Runbook",
];

/// Decides `incoming` (new, approved) with one `existing` peer in `phase`.
fn gate(incoming: &str, existing: &str, phase: &str) -> Plan {
    let peer = Op::new("existing", existing).phase(phase).build();
    gate_with(incoming, vec![peer])
}

/// Decides `incoming` (new, approved, created after every peer) against `peers`, with
/// whatever the engine looks up present.
fn gate_with(incoming: &str, peers: Vec<Operation>) -> Plan {
    let op = Op::new("incoming", incoming)
        .claim()
        .created("2026-01-01T00:00:05Z")
        .build();
    let mut o = with_peers(world(op), peers);
    // Whatever the engine looks up exists (the Runbook's WorkflowTemplate).
    o.prerequisites = prerequisites(&o, now())
        .into_iter()
        .map(|q| {
            let name = match q.select {
                Select::Name(n) => n,
                _ => "any".into(),
            };
            vec![DynamicObject::new(&name, &q.resource).within(&q.namespace)]
        })
        .collect();
    decide(&o, now())
}

fn conflicts(incoming: &str, existing: &str, phase: &str) -> bool {
    let plan = gate(incoming, existing, phase);
    match blocked_reason(&plan) {
        Some(r::CONFLICTING_OPERATION) => {
            assert!(
                block_message(&plan).contains(&format!(
                    "conflicts with operation \"existing\" ({existing})"
                )),
                "{}",
                block_message(&plan)
            );
            true
        }
        None => false,
        other => panic!("{incoming} × {existing}: blocked by {other:?}"),
    }
}

#[test]
fn matrix_every_cell_with_a_running_peer() {
    let blocks = |incoming: &str, existing: &str| {
        matches!(
            (incoming, existing),
            ("Upgrade", "Upgrade") | ("Restore", "Upgrade" | "Backup") | ("Backup", "Restore")
        )
    };
    for incoming in TYPES {
        for existing in TYPES {
            assert_eq!(
                conflicts(incoming, existing, "Running"),
                blocks(incoming, existing),
                "{incoming} × running {existing}"
            );
        }
    }
}

#[test]
fn row_restore_x_upgrade_a_running_upgrade_blocks_a_restore() {
    assert!(conflicts("Restore", "Upgrade", "Running"));
}

#[test]
fn row_restore_x_backup_a_running_backup_blocks_a_restore() {
    assert!(conflicts("Restore", "Backup", "Running"));
}

#[test]
fn row_backup_x_restore_a_running_restore_blocks_a_backup() {
    assert!(conflicts("Backup", "Restore", "Running"));
}

#[test]
fn row_upgrade_x_upgrade_a_running_upgrade_blocks_an_upgrade() {
    assert!(conflicts("Upgrade", "Upgrade", "Running"));
}

#[test]
fn row_backup_x_backup_not_blocked() {
    assert!(!conflicts("Backup", "Backup", "Running"));
}

#[test]
fn row_upgrade_x_backup_not_blocked() {
    assert!(!conflicts("Upgrade", "Backup", "Running"));
    assert!(!conflicts("Backup", "Upgrade", "Running"));
}

#[test]
fn rows_migration_runcommand_runbook_never_blocked() {
    for incoming in ["Migration", "RunCommand", "Runbook"] {
        for existing in TYPES {
            assert!(
                !conflicts(incoming, existing, "Running"),
                "{incoming} × {existing}"
            );
        }
    }
}

#[test]
fn row_restore_waits_for_every_blocker_not_just_the_first() {
    let peers = |upgrade: &str, backups: [&str; 2]| {
        vec![
            Op::new("up", "Upgrade").phase(upgrade).build(),
            Op::new("b1", "Backup").phase(backups[0]).build(),
            Op::new("b2", "Backup").phase(backups[1]).build(),
        ]
    };
    // Upgrade and two Backups running: blocked.
    let plan = gate_with("Restore", peers("Running", ["Running", "Running"]));
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
    // The Upgrade finished: still blocked, now by a Backup.
    let plan = gate_with("Restore", peers("Succeeded", ["Running", "Running"]));
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
    assert!(
        block_message(&plan).contains("(Backup)"),
        "{}",
        block_message(&plan)
    );
    // One Backup left running: still blocked.
    let plan = gate_with("Restore", peers("Succeeded", ["Succeeded", "Running"]));
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
    assert!(
        block_message(&plan).contains("\"b2\" (Backup)"),
        "{}",
        block_message(&plan)
    );
    // Every blocker finished: the Restore starts.
    let plan = gate_with("Restore", peers("Succeeded", ["Succeeded", "Succeeded"]));
    assert!(
        matches!(plan.decision, Decision::Start(_)),
        "{:?}",
        plan.decision
    );
}

#[test]
fn finished_peers_never_block() {
    for phase in ["Succeeded", "Failed", "Cancelled"] {
        assert!(!conflicts("Restore", "Backup", phase), "{phase}");
        assert!(!conflicts("Upgrade", "Upgrade", phase), "{phase}");
    }
}

#[test]
fn pending_older_blocks_younger_but_two_pending_never_wait_for_each_other() {
    // The older Restore (Pending, awaiting approval) holds the younger Backup ...
    let older = Op::new("r2", "Restore").phase("Pending").build();
    let younger = Op::new("b4", "Backup")
        .created("2026-01-01T00:00:01Z")
        .build();
    let plan = decide(
        &with_peers(world(younger.clone()), vec![older.clone()]),
        now(),
    );
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
    assert!(block_message(&plan).contains("\"r2\" (Restore)"));
    // ... and once approved it starts although the Backup is Pending too.
    let older = Op::new("r2", "Restore").phase("Pending").claim().build();
    let younger = Op::new("b4", "Backup")
        .phase("Pending")
        .created("2026-01-01T00:00:01Z")
        .build();
    let plan = decide(&with_peers(world(older), vec![younger]), now());
    assert!(
        matches!(plan.decision, Decision::Start(_)),
        "{:?}",
        plan.decision
    );
}

#[test]
fn a_never_processed_peer_counts_as_pending() {
    // No phase yet, created earlier: ahead in line.
    let peer = Op::new("b", "Backup").build();
    let op = Op::new("r", "Restore")
        .claim()
        .created("2026-01-01T00:00:01Z")
        .build();
    let plan = decide(&with_peers(world(op), vec![peer]), now());
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
}

#[test]
fn same_second_creation_is_ordered_by_name() {
    let a = Op::new("a-backup", "Backup").build();
    let b = Op::new("b-restore", "Restore").claim().build();
    let plan = decide(&with_peers(world(b), vec![a.clone()]), now());
    assert_eq!(blocked_reason(&plan), Some(r::CONFLICTING_OPERATION));
    let b = Op::new("b-restore", "Restore").build();
    let plan = decide(&with_peers(world(a), vec![b]), now());
    assert!(matches!(plan.decision, Decision::Start(_)));
}

#[test]
fn a_pending_peer_being_deleted_does_not_block() {
    let peer = Op::new("b", "Backup")
        .set("/metadata/deletionTimestamp", json!(T0))
        .build();
    let op = Op::new("r", "Restore")
        .claim()
        .created("2026-01-01T00:00:01Z")
        .build();
    assert!(matches!(
        decide(&with_peers(world(op), vec![peer]), now()).decision,
        Decision::Start(_)
    ));
}

#[test]
fn peers_of_another_target_or_itself_do_not_block() {
    let other = Op::new("b", "Backup")
        .phase("Running")
        .set("/spec/targetRef/name", json!("blog"))
        .build();
    let op = Op::new("r", "Restore").claim().build();
    let me = op.clone();
    assert!(matches!(
        decide(&with_peers(world(op), vec![other, me]), now()).decision,
        Decision::Start(_)
    ));
}

#[test]
fn gates_never_touch_a_running_operation() {
    // A conflicting newer Upgrade and a capability since removed: b4 keeps running.
    let mut t = target();
    t["metadata"]["annotations"] = json!({});
    let op = Op::new("b4", "Backup")
        .running("Backup", "velero", T0)
        .build();
    let peer = Op::new("up2", "Restore").phase("Running").build();
    let mut o = with_peers(world(op), vec![peer]);
    o.target = Some(instance(t));
    o.workload = vec![dynamic(
        json!({"apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": "team--b4", "namespace": "velero"}, "status": {"phase": "InProgress"}}),
    )];
    let plan = decide(&o, now());
    assert_eq!(plan.decision, Decision::Wait);
    assert_eq!(status(&plan).phase, Some(Phase::Running));
}

// ------------------------------------------------------------------------ engine start

#[test]
fn engines_build_their_workloads() {
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        // (type, engine, workload kind, workload namespace)
        ("RunCommand", "job", "Job", NS),
        ("Backup", "velero", "Backup", "velero"),
        ("Restore", "velero", "Restore", "velero"),
        ("Backup", "volsync", "ReplicationSource", NS),
        ("Upgrade", "helm", "ApplicationInstance", NS),
    ];
    for (t, engine, kind, ns) in cases {
        let op = Op::with_engine("x", t, engine).claim().build();
        let mut o = world(op);
        if engine == "helm" {
            o.target = Some(instance({
                let mut m = managed_target();
                m["metadata"]["annotations"] = target()["metadata"]["annotations"].clone();
                m
            }));
        }
        let plan = decide(&o, now());
        let build = start_writes(&plan);
        assert_eq!(build.engine_ref.kind.as_deref(), Some(kind), "{t}/{engine}");
        assert_eq!(
            build.engine_ref.namespace.as_deref(),
            Some(ns),
            "{t}/{engine}"
        );
        assert_eq!(build.writes.len(), 1, "{t}/{engine}");
        assert_eq!(plan.status, None, "the status follows the start outcome");
        match &build.writes[0] {
            Write::CreateOwned { resource, object } => {
                assert_eq!(resource.kind, kind);
                assert_eq!(object.metadata.name.as_deref(), Some("team--x"));
                assert_eq!(object.metadata.namespace.as_deref(), Some(ns));
                assert_eq!(
                    object.metadata.labels.as_ref().unwrap()["ops.vworkspace.io/operation"],
                    "uid-x"
                );
                assert_eq!(object.types.as_ref().unwrap().kind, kind);
            }
            Write::Patch {
                resource,
                name,
                patch,
                ..
            } => {
                assert_eq!(
                    (resource.kind.as_str(), name.as_str()),
                    ("ApplicationInstance", "wiki")
                );
                assert_eq!(patch["spec"]["chart"]["version"], "2.0.0");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn workloads_go_to_the_release_namespace() {
    let mut t = target();
    t["spec"]["release"] = json!({"name": "wiki", "namespace": "wiki-apps"});
    let mut o = world(Op::new("du", "RunCommand").build());
    o.target = Some(instance(t));
    let build = start_writes(&decide(&o, now())).clone();
    assert_eq!(build.engine_ref.namespace.as_deref(), Some("wiki-apps"));
    let Write::CreateOwned { object, .. } = &build.writes[0] else {
        panic!()
    };
    // Cross-namespace owners are invalid: none.
    assert!(object.metadata.owner_references.is_none());
}

#[test]
fn a_workflow_waits_for_its_template() {
    let op = Op::new("rb", "Runbook").build();
    let mut o = world(op);
    let queries = prerequisites(&o, now());
    assert!(
        matches!(&queries[..], [Query { select: Select::Name(n), namespace, .. }] if n == "t" && namespace == NS)
    );
    o.prerequisites = vec![vec![]];
    let plan = decide(&o, now());
    assert_eq!(blocked_reason(&plan), Some(r::DEPENDENCY_MISSING));
    assert_eq!(
        block_message(&plan),
        "WorkflowTemplate team/t not found (spec.parameters.workflowTemplate)"
    );
    o.prerequisites = vec![vec![dynamic(json!({"apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate", "metadata": {"name": "t", "namespace": NS}}))]];
    let build = start_writes(&decide(&o, now())).clone();
    assert_eq!(build.engine_ref.kind.as_deref(), Some("Workflow"));
    // A cluster-scoped template is not looked up.
    let op = Op::new("rb", "Runbook")
        .set(
            "/spec/parameters",
            json!({"workflowTemplate": "t", "clusterScope": true}),
        )
        .build();
    let o = world(op);
    assert!(prerequisites(&o, now()).is_empty());
    assert!(matches!(decide(&o, now()).decision, Decision::Start(_)));
}

fn pvc(name: &str, labels: Value) -> DynamicObject {
    dynamic(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": {}}))
}

#[test]
fn csi_snapshots_one_per_pvc_or_fail_without_any() {
    let op = Op::with_engine("s", "Backup", "csiSnapshot").build();
    let mut o = world(op);
    o.prerequisites = vec![vec![pvc("unrelated", json!({}))]];
    let plan = decide(&o, now());
    let Decision::Finish {
        phase,
        reason,
        stop,
    } = &plan.decision
    else {
        panic!("{:?}", plan.decision)
    };
    assert_eq!(
        (*phase, reason.as_str()),
        (Phase::Failed, r::SOURCE_PVC_NOT_FOUND)
    );
    assert!(stop.is_empty());
    assert_eq!(condition(&plan, types::FAILED).1, r::SOURCE_PVC_NOT_FOUND);
    o.prerequisites = vec![vec![
        pvc(
            "data",
            json!({"app.vworkspace.io/application-instance": "wiki"}),
        ),
        pvc(
            "logs",
            json!({"app.vworkspace.io/application-instance": "wiki"}),
        ),
        pvc("unrelated", json!({})),
    ]];
    let build = start_writes(&decide(&o, now())).clone();
    assert_eq!(build.writes.len(), 2);
    assert_eq!(build.engine_ref.name.as_deref(), Some("team--s-data"));
}

const HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: wiki-migrate\n  annotations:\n    helm.sh/hook: pre-upgrade\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: m\n        image: busybox\n";

fn release_secret(hooks: Value) -> DynamicObject {
    let release = json!({"name": "wiki", "version": 1, "hooks": hooks});
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("sh.helm.release.v1.wiki.v1".into()),
            namespace: Some(NS.into()),
            labels: Some(BTreeMap::from([
                ("owner".into(), "helm".into()),
                ("name".into(), "wiki".into()),
                ("status".into(), "deployed".into()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "release".into(),
            ByteString(helm_hook::encode_release(&release)),
        )])),
        ..Default::default()
    };
    serde_json::from_value(serde_json::to_value(secret).unwrap()).unwrap()
}

#[test]
fn helm_hook_job_table() {
    let with_release = |mut t: Value| {
        t["spec"]["release"] = json!({"name": "wiki", "namespace": NS});
        t
    };
    let hooks = json!([{"name": "wiki-migrate", "kind": "Job", "manifest": HOOK, "events": ["pre-upgrade"]}]);
    let cases: Vec<(&str, Value, Vec<DynamicObject>, Result<(), &str>)> = vec![
        (
            "placeholder without release",
            target(),
            vec![],
            Err(r::HOOK_REQUIRES_RELEASE),
        ),
        (
            "no release Secret",
            with_release(target()),
            vec![],
            Err(r::HOOK_NOT_FOUND),
        ),
        (
            "no such hook",
            with_release(target()),
            vec![release_secret(json!([]))],
            Err(r::HOOK_NOT_FOUND),
        ),
        (
            "hook found",
            with_release(target()),
            vec![release_secret(hooks)],
            Ok(()),
        ),
    ];
    for (what, t, secrets, want) in cases {
        let op = Op::new("mig", "Migration")
            .set("/spec/parameters", json!({"hookName": "wiki-migrate"}))
            .build();
        let mut o = world(op);
        o.target = Some(instance(t));
        let queries = prerequisites(&o, now());
        o.prerequisites = queries.iter().map(|_| secrets.clone()).collect();
        let plan = decide(&o, now());
        match want {
            Err(reason) => {
                assert_eq!(
                    plan.decision,
                    Decision::Finish {
                        phase: Phase::Failed,
                        reason: reason.into(),
                        stop: vec![]
                    },
                    "{what}"
                );
                assert_eq!(condition(&plan, types::FAILED).1, reason);
            }
            Ok(()) => {
                let build = start_writes(&plan);
                assert_eq!(build.engine_ref.kind.as_deref(), Some("Job"), "{what}");
                let outputs = build.outputs.clone().unwrap();
                assert_eq!(outputs["hookName"], "wiki-migrate");
                assert_eq!(outputs["hookEvents"], "pre-upgrade");
                assert_eq!(outputs["releaseSecret"], "sh.helm.release.v1.wiki.v1");
            }
        }
    }
}

#[test]
fn an_impossible_upgrade_fails_at_build() {
    // Placeholder target: nothing to upgrade.
    let plan = decide(&world(Op::new("up", "Upgrade").build()), now());
    assert_eq!(
        plan.decision,
        Decision::Finish {
            phase: Phase::Failed,
            reason: r::ENGINE_FAILED.into(),
            stop: vec![]
        }
    );
    assert!(condition(&plan, types::FAILED).2.contains("placeholder"));
}

// ------------------------------------------------------------------ after the start

fn started_build() -> (Observed, Build) {
    let o = world(
        Op::new("du", "RunCommand")
            .set("/spec/timeoutSeconds", json!(120))
            .build(),
    );
    let build = start_writes(&decide(&o, now())).clone();
    (o, build)
}

#[test]
fn a_started_workload_makes_the_operation_running() {
    let (o, build) = started_build();
    let plan = after_start(&o, &build, StartOutcome::Written(vec![]), now());
    let st = status(&plan);
    assert_eq!(st.phase, Some(Phase::Running));
    assert_eq!(st.started_at.as_ref().map(|t| t.0), Some(now()));
    assert_eq!(st.engine_ref, Some(build.engine_ref.clone()));
    assert_eq!(
        condition(&plan, types::BLOCKED),
        ("False", r::UNBLOCKED, "")
    );
    assert_eq!(
        condition(&plan, types::ACCEPTED),
        ("True", r::ADMISSION_PASSED, "template runCommand.job")
    );
    assert_eq!(
        condition(&plan, types::RUNNING),
        ("True", r::ENGINE_STARTED, "workload created")
    );
    // Back when the timeout is due, at the latest after RUNNING_RECHECK.
    assert_eq!(
        plan.requeue,
        Some(RUNNING_RECHECK.min(Duration::from_millis(120_500)))
    );
}

#[test]
fn refused_starts_table() {
    let (o, build) = started_build();
    let cases = [
        (
            StartOutcome::Taken {
                kind: "Job".into(),
                namespace: NS.into(),
                name: "team--du".into(),
            },
            Err("Job team/team--du exists and belongs to another operation"),
        ),
        (
            StartOutcome::Refused {
                kind: "ApplicationInstance".into(),
                message: "spec.chart.version: Invalid".into(),
            },
            Err("the ApplicationInstance rejected the change: spec.chart.version: Invalid"),
        ),
        (
            StartOutcome::NotServed {
                kind: "Workflow".into(),
                api_version: "argoproj.io/v1alpha1".into(),
            },
            Ok(
                "Workflow (argoproj.io/v1alpha1) is not served by this cluster: install its controller and CRDs",
            ),
        ),
    ];
    for (outcome, want) in cases {
        let plan = after_start(&o, &build, outcome, now());
        match want {
            Err(message) => {
                assert_eq!(status(&plan).phase, Some(Phase::Failed));
                assert_eq!(
                    condition(&plan, types::FAILED),
                    ("True", r::ENGINE_FAILED, message)
                );
                assert_eq!(plan.requeue, None);
            }
            Ok(message) => {
                assert_eq!(blocked_reason(&plan), Some(r::ENGINE_NOT_INSTALLED));
                assert_eq!(block_message(&plan), message);
                assert_eq!(status(&plan).phase, Some(Phase::Pending));
                assert_eq!(plan.requeue, Some(BLOCKED_RECHECK));
            }
        }
    }
}

#[test]
fn an_upgrade_records_the_generation_it_wrote() {
    let mut t = managed_target();
    t["metadata"]["annotations"] = target()["metadata"]["annotations"].clone();
    let mut o = world(Op::new("up", "Upgrade").build());
    o.target = Some(instance(t.clone()));
    let build = start_writes(&decide(&o, now())).clone();
    t["metadata"]["generation"] = json!(7);
    let written = dynamic(t);
    let plan = after_start(&o, &build, StartOutcome::Written(vec![written]), now());
    let outputs = status(&plan).outputs.clone().unwrap();
    assert_eq!(outputs[crate::engines::helm::KEY_GENERATION], "7");
    assert_eq!(outputs["previousVersion"], "1.0.0");
    assert_eq!(outputs["targetVersion"], "2.0.0");
}

// ----------------------------------------------------------------------- running

fn running_job(conditions: Value) -> Observed {
    let op = Op::new("du", "RunCommand").running("Job", NS, T0).build();
    let mut o = world(op);
    o.workload = vec![job("team--du", conditions)];
    o
}

#[test]
fn the_running_workload_is_read_by_name() {
    let o = running_job(json!([]));
    let q = workload_query(&o.op).unwrap();
    assert_eq!(q.resource.kind, "Job");
    assert_eq!(
        (q.namespace.as_str(), &q.select),
        (NS, &Select::Name("team--du".into()))
    );
    assert_eq!(workload_query(&Op::new("du", "RunCommand").build()), None);
}

#[test]
fn engine_lifecycle_table() {
    let cases: Vec<(&str, Value, Decision, Option<(&str, &str)>)> = vec![
        (
            "still running",
            json!([]),
            Decision::Wait,
            Some((types::RUNNING, r::ENGINE_STARTED)),
        ),
        (
            "completed",
            json!([{"type": "Complete", "status": "True"}]),
            Decision::Finish {
                phase: Phase::Succeeded,
                reason: r::ENGINE_COMPLETED.into(),
                stop: vec![],
            },
            Some((types::SUCCEEDED, r::ENGINE_COMPLETED)),
        ),
        (
            "failed: kept for its logs, not stopped",
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "boom"}]),
            Decision::Finish {
                phase: Phase::Failed,
                reason: "JobFailedBackoffExceeded".into(),
                stop: vec![],
            },
            Some((types::FAILED, "JobFailedBackoffExceeded")),
        ),
        (
            "deadline exceeded",
            json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]),
            Decision::Finish {
                phase: Phase::Failed,
                reason: "JobActiveDeadlineExceeded".into(),
                stop: vec![],
            },
            Some((types::FAILED, "JobActiveDeadlineExceeded")),
        ),
    ];
    for (what, conditions, decision, condition_want) in cases {
        let plan = decide(&running_job(conditions), now());
        assert_eq!(plan.decision, decision, "{what}");
        if let Some((t, reason)) = condition_want {
            assert_eq!(condition(&plan, t).1, reason, "{what}");
        }
        if let Decision::Finish { phase, .. } = decision {
            let st = status(&plan);
            assert_eq!(st.phase, Some(phase));
            assert_eq!(st.outputs.as_ref().unwrap()["jobName"], "team--du");
            assert_eq!(st.logs_ref.is_some(), phase == Phase::Failed, "{what}");
            assert_eq!(condition(&plan, types::RUNNING).0, "False");
            assert_eq!(plan.requeue, None);
        }
    }
}

#[test]
fn the_running_message_follows_the_engine_and_is_written_once() {
    let plan = decide(&running_job(json!([])), now());
    let (_, _, message) = condition(&plan, types::RUNNING);
    assert_eq!(message, "Job running (1 active pod(s))");
    assert_eq!(
        plan.requeue,
        Some(RUNNING_RECHECK),
        "no timeout: the watch, and a bounded wait if an event is missed"
    );
    let mut again = running_job(json!([]));
    again.op.status = Some(status(&plan).clone());
    assert_eq!(decide(&again, now()).status, None);
}

#[test]
fn timeout_table() {
    let job = ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&());
    // Started at T0, now is T0 + 600 s.
    let cases: Vec<(i64, Option<Duration>)> = vec![
        (900, Some(RUNNING_RECHECK)),
        (650, Some(Duration::from_millis(50_500))),
        (601, Some(Duration::from_millis(1_500))),
        (600, None),
        (30, None),
    ];
    for (timeout, requeue) in cases {
        let mut o = running_job(json!([]));
        o.op.spec.timeout_seconds = Some(timeout);
        let plan = decide(&o, now());
        match requeue {
            Some(d) => {
                assert_eq!(plan.decision, Decision::Wait, "{timeout}");
                assert_eq!(plan.requeue, Some(d), "{timeout}");
            }
            None => {
                assert_eq!(
                    plan.decision,
                    Decision::Finish {
                        phase: Phase::Failed,
                        reason: r::TIMEOUT.into(),
                        stop: vec![Write::patch(
                            job.clone(),
                            NS,
                            "team--du",
                            json!({"spec": {"suspend": true}})
                        )],
                    },
                    "{timeout}"
                );
                let message = condition(&plan, types::FAILED).2.to_string();
                assert_eq!(
                    message,
                    format!(
                        "not finished within spec.timeoutSeconds ({timeout}s); workload stopped"
                    )
                );
                assert!(status(&plan).logs_ref.is_some());
            }
        }
    }
}

#[test]
fn a_timed_out_snapshot_backup_keeps_its_snapshots() {
    let op = Op::with_engine("s", "Backup", "csiSnapshot")
        .running("VolumeSnapshot", NS, T0)
        .set("/spec/timeoutSeconds", json!(1))
        .build();
    let plan = decide(&world(op), now());
    assert_eq!(
        plan.decision,
        Decision::Finish {
            phase: Phase::Failed,
            reason: r::TIMEOUT.into(),
            stop: vec![]
        }
    );
}

#[test]
fn a_missing_workload_is_waited_for_then_fails() {
    let young = world(
        Op::new("du", "RunCommand")
            .running("Job", NS, "2026-01-01T00:09:30Z")
            .build(),
    );
    let plan = decide(&young, now());
    assert_eq!(plan.decision, Decision::Wait);
    assert_eq!(plan.status, None);
    assert_eq!(plan.requeue, Some(MISSING_RECHECK));
    let old = world(Op::new("du", "RunCommand").running("Job", NS, T0).build());
    let plan = decide(&old, now());
    assert_eq!(
        plan.decision,
        Decision::Finish {
            phase: Phase::Failed,
            reason: r::ENGINE_FAILED.into(),
            stop: vec![]
        }
    );
    assert_eq!(
        condition(&plan, types::FAILED).2,
        "the workload disappeared before it finished"
    );
}

#[test]
fn an_invalid_spec_blocks_even_a_running_operation() {
    let mut o = running_job(json!([]));
    o.op.spec.timeout_seconds = Some(0);
    let plan = decide(&o, now());
    assert_eq!(blocked_reason(&plan), Some(r::VALIDATION_FAILED));
}

#[test]
fn velero_and_upgrade_status_through_the_engines() {
    // Velero PartiallyFailed: failed with Velero's reason.
    let op = Op::new("b", "Backup")
        .running("Backup", "velero", T0)
        .build();
    let mut o = world(op);
    o.workload = vec![dynamic(
        json!({"apiVersion": "velero.io/v1", "kind": "Backup",
        "metadata": {"name": "team--b", "namespace": "velero"},
        "status": {"phase": "Completed"}}),
    )];
    let plan = decide(&o, now());
    assert_eq!(status(&plan).phase, Some(Phase::Succeeded));
    assert_eq!(
        status(&plan).outputs.as_ref().unwrap()["backupName"],
        "team--b"
    );
    // Upgrade: done once the instance observed the generation and is Ready at the version.
    let outputs = BTreeMap::from([
        ("targetVersion".to_string(), "2.0.0".to_string()),
        ("previousVersion".to_string(), "1.0.0".to_string()),
        ("_instanceGeneration".to_string(), "2".to_string()),
        ("_revertPatch".to_string(), "{}".to_string()),
    ]);
    let op = Op::new("up", "Upgrade")
        .running("ApplicationInstance", NS, T0)
        .set("/status/outputs", serde_json::to_value(&outputs).unwrap())
        .build();
    let mut o = world(op);
    let mut t = managed_target();
    t["spec"]["chart"]["version"] = json!("2.0.0");
    t["status"] = json!({"observedGeneration": 2, "lastAppliedChart": {"sourceType": "helm",
        "url": "https://charts.example", "name": "wiki", "version": "2.0.0"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "HelmReleaseReady",
            "message": "", "lastTransitionTime": T0}]});
    o.workload = vec![dynamic(t)];
    let plan = decide(&o, now());
    assert_eq!(status(&plan).phase, Some(Phase::Succeeded));
    let out = status(&plan).outputs.clone().unwrap();
    assert!(!out.contains_key("_revertPatch"), "{out:?}");
    assert_eq!(out["version"], "2.0.0");
}

#[test]
fn every_type_engine_pair_has_an_engine() {
    for t in crate::engines::TEMPLATES {
        assert!(crate::engines::engine(t.engine).is_some(), "{}", t.name);
    }
    // Velero's kinds in its namespace, the rest in the Operations' scope, once each.
    let kinds: Vec<String> = crate::engines::workload_resources(&Settings::default())
        .into_iter()
        .map(|(ar, _)| ar.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "Backup",
            "Restore",
            "Job",
            "Workflow",
            "ReplicationSource",
            "VolumeSnapshot"
        ]
    );
    let _ = OperationType::Backup;
}

#[test]
fn engine_failure_reasons_reach_the_failed_condition() {
    // (type, engine, workload kind, workload namespace, what the workload reports, reason)
    let cases: Vec<(&str, &str, &str, &str, Value, &str)> = vec![
        (
            "Backup",
            "velero",
            "Backup",
            "velero",
            json!({"apiVersion": "velero.io/v1", "kind": "Backup",
                   "metadata": {"name": "team--x", "namespace": "velero"},
                   "status": {"phase": "Failed", "failureReason": "bucket gone"}}),
            "VeleroBackupFailed",
        ),
        (
            "Restore",
            "velero",
            "Restore",
            "velero",
            json!({"apiVersion": "velero.io/v1", "kind": "Restore",
                   "metadata": {"name": "team--x", "namespace": "velero"},
                   "status": {"phase": "FailedValidation", "validationErrors": ["no backup"]}}),
            "VeleroRestoreValidationFailed",
        ),
        (
            "Runbook",
            "workflow",
            "Workflow",
            NS,
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                   "metadata": {"name": "team--x", "namespace": NS},
                   "status": {"phase": "Failed", "message": "step 2"}}),
            r::WORKFLOW_FAILED,
        ),
        (
            "Runbook",
            "workflow",
            "Workflow",
            NS,
            json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                   "metadata": {"name": "team--x", "namespace": NS},
                   "status": {"phase": "Error"}}),
            r::WORKFLOW_ERROR,
        ),
        (
            "Backup",
            "volsync",
            "ReplicationSource",
            NS,
            json!({"apiVersion": "volsync.backube/v1alpha1", "kind": "ReplicationSource",
                   "metadata": {"name": "team--x", "namespace": NS},
                   "spec": {"trigger": {"manual": "op-uid-x"}},
                   "status": {"latestMoverStatus": {"result": "Failed"}}}),
            r::VOLSYNC_SYNC_FAILED,
        ),
        (
            "Backup",
            "csiSnapshot",
            "VolumeSnapshot",
            NS,
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                   "metadata": {"name": "team--x-data", "namespace": NS},
                   "status": {"readyToUse": false, "error": {"message": "driver says no"}}}),
            r::VOLUME_SNAPSHOT_FAILED,
        ),
        (
            "Migration",
            "helmHookJob",
            "Job",
            NS,
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": "team--x", "namespace": NS},
                   "status": {"conditions": [{"type": "Failed", "status": "True",
                                              "reason": "BackoffLimitExceeded"}]}}),
            r::HELM_HOOK_JOB_FAILED,
        ),
    ];
    for (t, engine, kind, ns, workload, reason) in cases {
        let op = Op::with_engine("x", t, engine)
            .running(kind, ns, T0)
            .build();
        let mut o = world(op);
        o.workload = vec![dynamic(workload)];
        let plan = decide(&o, now());
        assert_eq!(
            plan.decision,
            Decision::Finish {
                phase: Phase::Failed,
                reason: reason.into(),
                stop: vec![]
            },
            "{t}/{engine}"
        );
        assert_eq!(condition(&plan, types::FAILED).1, reason, "{t}/{engine}");
        assert!(
            status(&plan).logs_ref.is_some(),
            "{t}/{engine}: kept for inspection"
        );
    }
}
