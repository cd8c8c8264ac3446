//! Admission validation, property-tested (issue 11): the decisions the webhook and the
//! controllers share (`admission`, `instance::policy`, `namespace_policy`) never panic on
//! arbitrary objects, and the inline-secret scan finds a secret key planted at any depth.
//! Case counts are fixed here and listed in docs/reliability.md.

// Fixtures are built from fixed JSON; a failure to build one is a bug in the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kube_core::ApiResource;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use vworkspace_api::ApplicationInstance;
use vworkspace_api::keys;
use vworkspace_api::operation::{Operation, OperationType};
use vworkspace_decide::admission::{self, InstanceFacts, OperationFacts};
use vworkspace_decide::engines::{Settings, type_name};
use vworkspace_decide::instance::policy;
use vworkspace_decide::namespace_policy;

/// Cases per property.
const CASES: u32 = 1000;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        // Strings the rules look at: placeholders, PEM headers, URLs, ids.
        prop_oneof![
            Just("<set via ExternalSecret>".to_string()),
            Just("-----BEGIN RSA PRIVATE KEY-----\nMII".to_string()),
            Just("https://charts.example.org/stable".to_string()),
            Just("vworkspace".to_string()),
            Just("Running".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-zA-Z]{1,8}|password|token|apiKey|spec|metadata|status|values|inline|chart|url|labels|phase|deletionTimestamp",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Sets `value` at `path` (object keys) inside `obj`, creating objects on the way.
fn put(obj: &mut Value, path: &[&str], value: Value) {
    let mut at = obj;
    for key in &path[..path.len() - 1] {
        if !at.get(*key).is_some_and(Value::is_object) {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
}

/// An ApplicationInstance object: a valid managed one with any of its reviewed fields
/// (labels, chart, values, mode, metadata) replaced by arbitrary JSON.
fn instance_object() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        vec!["metadata", "labels"],
        vec!["metadata", "labels", keys::LABEL_CLUSTER_ID],
        vec!["spec", "chart"],
        vec!["spec", "chart", "url"],
        vec!["spec", "values"],
        vec!["spec", "values", "source"],
        vec!["spec", "values", "inline"],
        vec!["spec", "mode"],
        vec!["spec"],
        vec!["metadata"],
    ]);
    (prop::collection::vec((field, json_value()), 0..3)).prop_map(|edits| {
        let mut v = json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "team1",
                         "labels": {keys::LABEL_CLUSTER_ID: "c-1"}},
            "spec": {"appRef": {"catalogId": "wiki"},
                     "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": "1.0.0"},
                     "release": {"name": "wiki", "namespace": "team1"},
                     "values": {"source": "inline", "inline": {"replicas": 1}}}
        });
        for (path, value) in edits {
            put(&mut v, &path, value);
        }
        v
    })
}

/// An Operation object: a valid Backup with any of its spec fields replaced by arbitrary
/// JSON.
fn operation_object() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "type",
        "engine",
        "parameters",
        "targetRef",
        "approvals",
        "cancel",
        "timeoutSeconds",
    ]);
    (prop::collection::vec((field, json_value()), 0..3)).prop_map(|edits| {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": "b1", "namespace": "team1"},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                                   "kind": "ApplicationInstance", "name": "wiki"},
                     "type": "Backup", "engine": "velero"}
        });
        for (key, value) in edits {
            v["spec"][key] = value;
        }
        v
    })
}

/// A key no rule treats as secret: ends with `_`, so never in `*password`, `*secret`,
/// `token`, `apiKey`, `accessKey`, `secretKey`.
fn benign_key() -> impl Strategy<Value = String> {
    "[a-zA-Z]{1,8}_"
}

/// Values without secret material: benign keys, strings that are not PEM keys.
fn benign_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[^-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(benign_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One step down into a value: a member of an object, or an item of an array (with
/// benign siblings around it).
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Item { before: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => benign_key().prop_map(Step::Key),
        1 => (0usize..3).prop_map(|before| Step::Item { before }),
    ]
}

/// Wraps `inner` in `steps` (innermost last), next to `siblings`; returns the value and
/// the path the scan reports for the planted key (`a.b[1].c`).
fn plant(steps: &[Step], key: &str, secret: &str, siblings: &Value) -> (Value, String) {
    let mut obj = Map::new();
    if let Value::Object(s) = siblings {
        obj.extend(s.clone());
    }
    obj.insert(key.to_string(), Value::String(secret.to_string()));
    let mut value = Value::Object(obj);
    for s in steps.iter().rev() {
        value = match s {
            Step::Key(k) => {
                let mut m = Map::new();
                m.insert(k.clone(), value);
                Value::Object(m)
            }
            Step::Item { before } => {
                let mut items = vec![json!({"n_": 1}); *before];
                items.push(value);
                Value::Array(items)
            }
        };
    }
    // The top level of inline values is an object.
    if !value.is_object() {
        value = json!({"top_": value});
    }
    let top_wrapped = matches!(steps.first(), Some(Step::Item { .. }));
    let mut path = if top_wrapped {
        "top_".to_string()
    } else {
        String::new()
    };
    for s in steps {
        match s {
            Step::Key(k) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Step::Item { before } => path.push_str(&format!("[{before}]")),
        }
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    (value, path)
}

fn instance_with_inline(inline: Value) -> ApplicationInstance {
    serde_json::from_value(json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "wiki", "namespace": "team1"},
        "spec": {"appRef": {"catalogId": "wiki"},
                 "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": "1.0.0"},
                 "release": {"name": "wiki", "namespace": "team1"},
                 "values": {"source": "inline", "inline": inline}}
    }))
    .unwrap()
}

const NO_IDS: &[String] = &[];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any JSON as the new and old object of a review: the lookup-skipping rules never
    /// panic; an unchanged spec and a set deletion timestamp always skip.
    #[test]
    fn review_shaped_input_never_panics(new in json_value(), old in json_value(), ts in json_value()) {
        let _ = admission::skips_lookups(&new, Some(&old));
        let _ = admission::skips_lookups(&new, None);
        let _ = admission::operation_started(Some(&old));
        prop_assert!(admission::skips_lookups(&new, Some(&new)));
        if let Value::Object(_) = new {
            let mut deleting = new.clone();
            deleting["metadata"] = json!({"deletionTimestamp": ts.clone()});
            prop_assert_eq!(admission::skips_lookups(&deleting, None), !ts.is_null());
        }
    }

    /// An ApplicationInstance with arbitrary labels, chart, values or mode either fails
    /// to decode (the API server's schema refuses it first) or is reviewed without a
    /// panic; a refusal names a field.
    #[test]
    fn instance_review_never_panics(obj in instance_object(),
                                    ids in prop::collection::vec(any::<String>(), 0..3),
                                    urls in prop::collection::vec(any::<String>(), 0..3)) {
        if let Ok(inst) = serde_json::from_value::<ApplicationInstance>(obj) {
            let facts = InstanceFacts { registered_cluster_ids: &ids, allowed_chart_urls: &urls };
            if let Err(m) = admission::review_instance(&inst, &facts) {
                prop_assert!(m.contains("spec.") || m.contains("metadata."), "{}", m);
            }
            let _ = policy::inline_secrets(&inst.spec);
        }
    }

    /// An Operation with arbitrary type, engine, parameters, target, approvals, cancel or
    /// timeout is reviewed without a panic, with or without a target and a secret; a
    /// cancelled one is always admitted; a refusal has a message.
    #[test]
    fn operation_review_never_panics(obj in operation_object(), target in instance_object(),
                                     secret in "[ -~]{0,12}", served in any::<bool>()) {
        if let Ok(op) = serde_json::from_value::<Operation>(obj) {
            let target: Option<ApplicationInstance> = serde_json::from_value(target).ok();
            let settings = Settings::default();
            let serve = move |_: &ApiResource| served;
            let facts = OperationFacts {
                target: target.as_ref(), approval_secret: &secret, now_seconds: 1_800_000_000,
                settings: &settings, served: &serve,
            };
            match admission::review_operation(&op, &facts) {
                Ok(()) => {}
                Err(m) => {
                    prop_assert!(!m.trim().is_empty());
                    prop_assert!(op.spec.cancel != Some(true), "a cancelled Operation refused: {}", m);
                }
            }
        }
    }

    /// A secret key (`password`, `*Password`, `*secret`, `token`, `apiKey`, `accessKey`,
    /// `secretKey`, any case) with a non-empty value, planted at any depth of otherwise
    /// benign inline values, through objects and arrays, is found and named by its
    /// path; without it the values pass.
    #[test]
    fn a_planted_secret_is_found_at_any_depth(
        steps in prop::collection::vec(step(), 0..12),
        key in prop_oneof![
            Just("password".to_string()), Just("PASSWORD".to_string()),
            "[a-z]{1,6}Password", "[a-z]{0,6}[sS]ecret",
            Just("token".to_string()), Just("apiKey".to_string()),
            Just("accessKey".to_string()), Just("SecretKey".to_string()),
        ],
        secret in "canary[0-9]{1,8}[a-z]{0,8}",
        siblings in prop::collection::btree_map(benign_key(), benign_value(), 0..4),
        benign in benign_value(),
    ) {
        let siblings = Value::Object(siblings.into_iter().collect());
        let (inline, path) = plant(&steps, &key, &secret, &siblings);
        let inst = instance_with_inline(inline.clone());
        let Err(err) = policy::inline_secrets(&inst.spec) else {
            return Err(TestCaseError::fail(format!("{path}: secret not found in {inline}")));
        };
        prop_assert!(err.starts_with("spec.values.inline: "), "{}", err);
        prop_assert!(err.contains(&format!("{path:?}")), "{} does not name {}", err, path);
        prop_assert!(!err.contains(&secret), "the value leaked: {}", err);
        let facts = InstanceFacts { registered_cluster_ids: NO_IDS, allowed_chart_urls: &[] };
        prop_assert!(admission::review_instance(&inst, &facts).is_err());
        // The same values as a placeholder's, or from a Secret, are not scanned.
        let mut placeholder = inst.clone();
        placeholder.spec.mode = Some(vworkspace_api::application_instance::Mode::Placeholder);
        prop_assert!(policy::inline_secrets(&placeholder.spec).is_ok());
        // Benign values (and the ExternalSecret placeholder in the secret's place) pass.
        let benign = if benign.is_object() { benign } else { json!({"v_": benign}) };
        prop_assert!(policy::inline_secrets(&instance_with_inline(benign).spec).is_ok());
        let (external, _) = plant(&steps, &key, "<set via ExternalSecret>", &siblings);
        prop_assert!(policy::inline_secrets(&instance_with_inline(external).spec).is_ok());
    }

    /// The namespace gate admits exactly `managed-by=vworkspace`, whatever else the
    /// labels hold; a refusal names the namespace and the label to set.
    #[test]
    fn the_namespace_gate_is_exact(ns in any::<String>(),
                                   labels in prop::collection::btree_map(
                                       "managed-by|[a-z./-]{1,12}", "vworkspace|Vworkspace|.{0,10}", 0..5)) {
        let admitted = labels.get("managed-by").map(String::as_str) == Some("vworkspace");
        match namespace_policy::gated(&ns, &labels) {
            Ok(()) => prop_assert!(admitted),
            Err(m) => {
                prop_assert!(!admitted);
                prop_assert!(m.contains(&ns) && m.contains("managed-by=vworkspace"), "{}", m);
            }
        }
    }

    /// The allowed-types annotation: blank or absent allows every type, otherwise exactly
    /// the listed (trimmed, case-sensitive) types.
    #[test]
    fn the_allowed_types_list_is_exact(list in prop::option::of(
                                           "( ?(Backup|Restore|Upgrade|backup|Migration|RunCommand|Runbook|[a-z]{0,4}) ?,?){0,4}"),
                                       t in prop::sample::select(TYPES.to_vec())) {
        let annotations: BTreeMap<String, String> = list
            .iter()
            .map(|l| (keys::ANNOTATION_ALLOWED_TYPES.to_string(), l.clone()))
            .collect();
        let name = type_name(t);
        let expected = list.as_deref().is_none_or(|l| {
            l.trim().is_empty() || l.split(',').any(|i| i.trim() == name)
        });
        prop_assert_eq!(namespace_policy::allows_type("n", &annotations, t).is_ok(), expected);
    }

    /// The cluster-id label and the chart URL allow-list never panic on any strings; a
    /// URL below an allowed prefix passes, one that only shares its text does not.
    #[test]
    fn cluster_id_and_chart_url_never_panic(label in any::<String>(),
                                            ids in prop::collection::vec(any::<String>(), 0..3),
                                            url in any::<String>(),
                                            allowed in prop::collection::vec(any::<String>(), 0..3),
                                            prefix in "https://[a-z]{1,8}\\.example\\.org",
                                            rest in "[a-z0-9/]{0,10}") {
        let labels: BTreeMap<String, String> = [(keys::LABEL_CLUSTER_ID.to_string(), label.clone())].into();
        let r = policy::cluster_id_matches(&labels, &ids);
        let known: Vec<&str> = ids.iter().map(|i| i.trim()).filter(|i| !i.is_empty()).collect();
        if label.trim().is_empty() || known.is_empty() || known.contains(&label.trim()) {
            prop_assert!(r.is_ok());
        } else {
            prop_assert!(r.is_err());
        }
        let mut inst = instance_with_inline(json!({}));
        if let Some(chart) = inst.spec.chart.as_mut() {
            chart.url = url;
        }
        let _ = policy::chart_url_allowed(&inst.spec, &allowed);
        let only = vec![prefix.clone()];
        if let Some(chart) = inst.spec.chart.as_mut() {
            chart.url = format!("{prefix}/{rest}");
        }
        prop_assert!(policy::chart_url_allowed(&inst.spec, &only).is_ok());
        if let Some(chart) = inst.spec.chart.as_mut() {
            chart.url = format!("{prefix}.evil/{rest}");
        }
        prop_assert!(policy::chart_url_allowed(&inst.spec, &only).is_err());
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
