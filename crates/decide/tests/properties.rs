//! Bad input, property-tested (issue 11): approval claims and the concurrency gates.
//! Case counts are fixed here and listed in docs/reliability.md.

// Fixtures are built from fixed JSON; a failure to build one is a bug in the test.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};
use vworkspace_api::keys;
use vworkspace_api::operation::{Operation, OperationType, Phase};
use vworkspace_decide::approval::{self, Binding};
use vworkspace_decide::operation::{
    self, Config, Decision, Observed, blocked_by, conflict, validate,
};

/// Cases per approval property.
const CLAIM_CASES: u32 = 1000;
/// Cases per concurrency property.
const GATE_CASES: u32 = 1000;

const NOW: i64 = 1_800_000_000;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}|op|v|exp|ns|uid|type|target", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CLAIM_CASES))]

    /// Any string as a claim, with any secret, never panics and never verifies.
    #[test]
    fn arbitrary_claims_never_verify(claim in any::<String>(), secret in any::<String>(), op in any::<String>()) {
        prop_assert!(approval::verify(&claim, &secret, &op, NOW).is_err());
    }

    /// Claims shaped like `vws1.<base64>.<hex>` with arbitrary parts never panic and
    /// never verify without the right digest.
    #[test]
    fn shaped_claims_never_verify(body in prop::collection::vec(any::<u8>(), 0..128),
                                  digest in prop::collection::vec(any::<u8>(), 0..40)) {
        let claim = format!("vws1.{}.{}", URL_SAFE_NO_PAD.encode(&body), hex::encode(&digest));
        prop_assert!(approval::verify(&claim, "s3cret", "op", NOW).is_err());
    }

    /// Any JSON body, correctly signed, never panics the decoder; it verifies only when
    /// it is a version-1 claim for this Operation that has not expired.
    #[test]
    fn signed_arbitrary_bodies_never_panic(body in json_value()) {
        let claim = approval::sign("k", &body);
        let result = approval::verify(&claim, "k", "op", NOW);
        if result.is_ok() {
            prop_assert_eq!(body.get("v").and_then(Value::as_i64), Some(1));
            prop_assert_eq!(body.get("op").and_then(Value::as_str).map(str::trim), Some("op"));
            prop_assert!(body.get("exp").and_then(Value::as_i64).is_some_and(|e| e >= NOW));
        }
    }

    /// A claim verifies with its secret, operation and time; with another secret,
    /// operation, after expiry or with one digest character changed it does not.
    #[test]
    fn a_claim_verifies_only_with_the_right_secret(
        secret in "[ -~]{1,40}",
        other in "[ -~]{1,40}",
        op in "[a-z0-9-]{1,20}",
        other_op in "[a-z0-9-]{1,20}",
        ttl in 0i64..100_000,
        at in any::<prop::sample::Index>(),
    ) {
        let claim = approval::issue(&secret, &op, "alice", NOW + ttl);
        prop_assert!(approval::verify(&claim, &secret, &op, NOW).is_ok());
        prop_assert!(approval::verify(&claim, &secret, &op, NOW + ttl + 1).is_err());
        if other != secret {
            prop_assert!(approval::verify(&claim, &other, &op, NOW).is_err());
        }
        if other_op != op {
            prop_assert!(approval::verify(&claim, &secret, &other_op, NOW).is_err());
        }
        prop_assert!(approval::verify(&claim, "", &op, NOW).is_err(), "an empty secret verifies nothing");
        // One hex digit of the digest changed.
        let dot = claim.rfind('.').unwrap_or_default() + 1;
        let i = dot + at.index(claim.len() - dot);
        let mut bytes = claim.into_bytes();
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap_or_default();
        prop_assert!(approval::verify(&tampered, &secret, &op, NOW).is_err());
    }

    /// A bound claim passes the binding check only on the Operation it names: any
    /// differing namespace, uid, type or target is refused.
    #[test]
    fn a_bound_claim_matches_only_its_operation(
        bound in prop::array::uniform4("[a-z0-9]{1,8}"),
        actual in prop::array::uniform4("[a-z0-9]{1,8}"),
    ) {
        let body = json!({"v": 1, "op": "op", "exp": NOW + 60, "by": "alice",
            "ns": bound[0], "uid": bound[1], "type": bound[2], "target": bound[3]});
        let claims = approval::verify(&approval::sign("k", &body), "k", "op", NOW)
            .map_err(TestCaseError::fail)?;
        let b = |a: &[String; 4]| -> Result<(), String> {
            approval::check_binding(&claims, &Binding {
                namespace: &a[0], uid: &a[1], op_type: &a[2], target: &a[3], approved_by: None,
            })
        };
        prop_assert!(b(&bound).is_ok());
        prop_assert_eq!(b(&actual).is_ok(), actual == bound);
    }
}

const TYPES: [OperationType; 6] = [
    OperationType::Backup,
    OperationType::Restore,
    OperationType::Upgrade,
    OperationType::Migration,
    OperationType::RunCommand,
    OperationType::Runbook,
];
const PHASES: [Option<&str>; 6] = [
    None,
    Some("Pending"),
    Some("Running"),
    Some("Succeeded"),
    Some("Failed"),
    Some("Cancelled"),
];

/// The concurrency matrix of docs/operations (spec §8): which running or earlier
/// pending type blocks which incoming one, written out independently of `blocked_by`.
fn matrix(incoming: OperationType, existing: OperationType) -> bool {
    use OperationType::*;
    matches!(
        (incoming, existing),
        (Upgrade, Upgrade) | (Restore, Upgrade) | (Restore, Backup) | (Backup, Restore)
    )
}

#[derive(Clone, Debug)]
struct Peer {
    t: usize,
    phase: usize,
    /// Seconds after the epoch of the test.
    created: u8,
    same_target: bool,
    deleting: bool,
}

fn peer() -> impl Strategy<Value = Peer> {
    (
        0usize..6,
        0usize..6,
        any::<u8>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(t, phase, created, same_target, deleting)| Peer {
            t,
            phase,
            created,
            same_target,
            deleting,
        })
}

fn operation(p: &Peer, name: &str) -> Operation {
    let type_name = serde_json::to_value(TYPES[p.t]).unwrap();
    // A valid spec per type, so the gates are what decides.
    let (engine, parameters) = match TYPES[p.t] {
        OperationType::Backup => ("velero", json!({})),
        OperationType::Restore => ("velero", json!({"backupName": "b"})),
        OperationType::Upgrade => ("helm", json!({"targetVersion": "2.0.0"})),
        OperationType::Migration => ("helmHookJob", json!({"hookName": "migrate"})),
        OperationType::RunCommand => ("job", json!({"image": "busybox"})),
        OperationType::Runbook => ("workflow", json!({"workflowTemplate": "t"})),
    };
    let mut v = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": name, "namespace": "n", "uid": name,
                     "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", p.created / 60, p.created % 60)},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
                               "name": if p.same_target { "wiki" } else { "other" }},
                 "type": type_name, "engine": engine, "parameters": parameters}
    });
    if p.deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T01:00:00Z");
        v["metadata"]["finalizers"] = json!(["x"]);
    }
    if let Some(phase) = PHASES[p.phase] {
        v["status"] = json!({"phase": phase});
    }
    serde_json::from_value(v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(GATE_CASES))]

    /// `blocked_by` is the matrix, for every pair of types.
    #[test]
    fn blocked_by_is_the_matrix(a in 0usize..6, b in 0usize..6) {
        prop_assert_eq!(blocked_by(TYPES[a]).contains(&TYPES[b]), matrix(TYPES[a], TYPES[b]));
    }

    /// For any set of peers, an incoming Pending Operation waits exactly when one of
    /// them, on the same target, is of a type the matrix says blocks it, and is Running
    /// (whatever its age) or Pending, not being deleted and older. Terminal peers,
    /// other targets and itself never block it.
    #[test]
    fn conflict_is_what_the_matrix_says(me in peer(), peers in prop::collection::vec(peer(), 0..8)) {
        let me = Peer { same_target: true, phase: 1, deleting: false, ..me };
        let op = operation(&me, "me");
        let mut others: Vec<Operation> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| operation(p, &format!("p{i:03}")))
            .collect();
        // Itself in the list never counts.
        others.push(op.clone());
        let older = |p: &Peer, i: usize| (p.created, format!("p{i:03}")) < (me.created, "me".to_string());
        let expected = peers.iter().enumerate().any(|(i, p)| {
            p.same_target
                && matrix(TYPES[me.t], TYPES[p.t])
                && match PHASES[p.phase] {
                    Some("Running") => true,
                    None | Some("Pending") => !p.deleting && older(p, i),
                    _ => false,
                }
        });
        prop_assert_eq!(conflict(&op, &others).is_some(), expected);
        if let Some(found) = conflict(&op, &others) {
            prop_assert_ne!(found.metadata.name.as_deref(), Some("me"));
        }
    }

    /// Pending Operations never wait for each other in a cycle: among any set of them,
    /// the first by (creation, name) is never blocked by the others.
    #[test]
    fn pending_operations_never_deadlock(peers in prop::collection::vec(peer(), 1..10)) {
        let ops: Vec<Operation> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| operation(&Peer { same_target: true, phase: 1, deleting: false, ..p.clone() }, &format!("p{i:03}")))
            .collect();
        let first = ops
            .iter()
            .min_by_key(|o| (o.metadata.creation_timestamp.as_ref().map(|t| t.0), o.metadata.name.clone()));
        if let Some(first) = first {
            prop_assert!(conflict(first, &ops).is_none());
        }
        for a in &ops {
            for b in &ops {
                let ab = conflict(a, std::slice::from_ref(b)).is_some();
                let ba = conflict(b, std::slice::from_ref(a)).is_some();
                prop_assert!(!(ab && ba), "{:?} and {:?} wait for each other", a.metadata.name, b.metadata.name);
            }
        }
    }

    /// A Running Operation is never blocked by a conflict, whatever its peers (spec §11
    /// item 8: the gate used to push a Running Restore back to Pending).
    #[test]
    fn a_running_operation_is_never_blocked(me in peer(), peers in prop::collection::vec(peer(), 0..8), secs in 0i64..4000) {
        let mut op = operation(&Peer { same_target: true, phase: 2, deleting: false, ..me }, "me");
        op.metadata.finalizers = Some(vec![keys::FINALIZER_OPERATION.to_string()]);
        let mut o = Observed::of(op, Config::default());
        o.peers = peers
            .iter()
            .enumerate()
            .map(|(i, p)| operation(p, &format!("p{i:03}")))
            .collect();
        let now = jiff::Timestamp::from_second(1_767_225_600 + secs).unwrap();
        let plan = operation::decide(&o, now);
        // Not blocked, by a conflict or anything else, and never back to Pending.
        prop_assert!(!matches!(plan.decision, Decision::Block(_)), "{:?}", plan.decision);
        let phase = plan.status.as_ref().and_then(|s| s.phase);
        prop_assert_ne!(phase, Some(Phase::Pending));
    }

    /// Operation admission: a valid Operation with one spec field replaced by any JSON
    /// never panics `validate` or `decide`; a refusal carries a reason and a message.
    #[test]
    fn an_operation_with_one_bad_field_never_panics(
        me in peer(),
        field in prop::sample::select(vec!["type", "engine", "parameters", "targetRef", "approvals", "timeoutSeconds", "cancel"]),
        v in json_value(),
    ) {
        let op = operation(&me, "me");
        let mut doc = serde_json::to_value(&op).unwrap();
        doc["spec"][field] = v;
        if let Ok(bad) = serde_json::from_value::<Operation>(doc) {
            if let Err(b) = validate(&bad) {
                prop_assert!(!b.reason.is_empty() && !b.message.trim().is_empty(), "{:?}", b);
            }
            let mut o = Observed::of(bad, Config::default());
            o.peers = vec![op];
            let _ = operation::decide(&o, jiff::Timestamp::from_second(1_767_225_600).unwrap());
        }
    }
}
