//! Bad input, property-tested (issue 11): ApplicationInstance values and spec
//! validation, and the condition logic. Case counts are fixed here and listed in
//! docs/reliability.md.

// Fixtures are built from fixed JSON; a failure to build one is a bug in the test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use vworkspace_api::application_instance::ApplicationInstanceSpec;
use vworkspace_api::conditions::{self, Change, Condition, Desired, Time};
use vworkspace_api::validation::{scan_inline_secrets, validate_application_instance};

/// Cases per values/validation property.
const VALUES_CASES: u32 = 2000;
/// Cases per condition property (each a sequence of up to 40 updates).
const CONDITION_CASES: u32 = 1000;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[ a-z-]{0,8}".prop_map(Value::String),
        Just(json!("-----BEGIN RSA PRIVATE KEY-----\nabc")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    any::<String>(),
                    "[a-zA-Z]{1,10}",
                    Just("password".to_string())
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid managed spec in namespace `team1`.
fn managed(values: Value) -> Value {
    json!({
        "appRef": {"catalogId": "wiki"},
        "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": "1.0.0"},
        "release": {"name": "wiki", "namespace": "team1"},
        "values": {"source": "inline", "inline": values},
    })
}

/// Replaces the value at a JSON pointer (creating parents).
fn put(doc: &mut Value, pointer: &str, v: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut cur = doc;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        if !cur.get(part).is_some_and(Value::is_object) {
            cur[part] = json!({});
        }
        cur = cur.get_mut(part).unwrap();
    }
    cur[key] = v;
}

const FIELDS: [&str; 14] = [
    "/appRef/catalogId",
    "/mode",
    "/chart",
    "/chart/sourceType",
    "/chart/url",
    "/chart/name",
    "/chart/version",
    "/release",
    "/release/name",
    "/release/namespace",
    "/values",
    "/values/source",
    "/values/secretRef",
    "/values/configMapRef",
];

/// Benign values: keys that name no secret, strings that are not PEM keys.
fn benign() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        "[ a-zA-Z0-9.:/-]{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                "(image|replicas|host|port|tag|name)[a-z]{0,3}",
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(VALUES_CASES))]

    /// Arbitrary JSON as a spec never panics decoding or validation; a refusal names
    /// the field to change.
    #[test]
    fn arbitrary_specs_never_panic(v in json_value()) {
        if let Ok(spec) = serde_json::from_value::<ApplicationInstanceSpec>(v)
            && let Err(message) = validate_application_instance(&spec, "team1")
        {
            prop_assert!(message.starts_with("spec."), "{message}");
        }
    }

    /// A valid spec with one field replaced by arbitrary JSON never panics; when it
    /// still decodes and is refused, the message names a spec field.
    #[test]
    fn a_spec_with_one_bad_field_never_panics(field in 0usize..FIELDS.len(), v in json_value(), values in json_value()) {
        let mut doc = managed(values);
        put(&mut doc, FIELDS[field], v);
        if let Ok(spec) = serde_json::from_value::<ApplicationInstanceSpec>(doc)
            && let Err(message) = validate_application_instance(&spec, "team1")
        {
            prop_assert!(message.starts_with("spec."), "{message}");
        }
    }

    /// Inline values: any object is accepted, anything else is refused as "must be an
    /// object"; a release namespace other than the instance's is refused.
    #[test]
    fn inline_values_must_be_an_object(values in json_value(), ns in "[a-z0-9-]{1,12}") {
        let spec: ApplicationInstanceSpec = serde_json::from_value(managed(values.clone())).unwrap();
        let result = validate_application_instance(&spec, "team1");
        if values.is_object() {
            prop_assert_eq!(result, Ok(()));
        } else if values.is_null() {
            prop_assert_eq!(result, Err("spec.values.inline is required when source is inline".to_string()));
        } else {
            prop_assert_eq!(result, Err("spec.values.inline must be an object".to_string()));
        }
        if ns != "team1" && values.is_object() {
            let err = validate_application_instance(&spec, &ns).unwrap_err();
            prop_assert!(err.starts_with("spec.release.namespace must match"), "{err}");
        }
    }

    /// The inline-secret scan never panics on any values.
    #[test]
    fn the_secret_scan_never_panics(values in json_value()) {
        let _ = scan_inline_secrets(&values);
    }

    /// Benign values pass; a password planted anywhere in them is refused at its path.
    #[test]
    fn a_planted_secret_is_found_at_its_path(
        values in prop::collection::btree_map("(image|host|tag)[a-z]{0,3}", benign(), 0..5),
        path in prop::collection::vec("(db|auth|x)[a-z]{0,3}", 0..4),
        key in "(password|dbPassword|clientSecret|apiKey|token|accessKey)",
        secret in "[a-zA-Z0-9]{1,16}",
    ) {
        let mut values = Value::Object(values.into_iter().collect::<Map<_, _>>());
        prop_assert_eq!(scan_inline_secrets(&values), Ok(()));
        let mut pointer = String::new();
        for p in &path {
            pointer.push('/');
            pointer.push_str(p);
        }
        pointer.push('/');
        pointer.push_str(&key);
        put(&mut values, &pointer, Value::String(secret));
        let err = scan_inline_secrets(&values).unwrap_err();
        let dotted = pointer.trim_start_matches('/').replace('/', ".");
        prop_assert!(err.starts_with("inline secret material rejected at "), "{err}");
        // The first hit in key order may be another planted-looking key only if the
        // benign generator made one, which it cannot; so the path is ours.
        prop_assert!(err.contains(&format!("{dotted:?}")), "{err} / {dotted}");
        // The placeholder for an ExternalSecret is allowed.
        put(&mut values, &pointer, json!("<set via ExternalSecret>"));
        prop_assert_eq!(scan_inline_secrets(&values), Ok(()));
    }
}

const TYPES: [&str; 3] = ["Ready", "Degraded", "Reconciling"];
const STATUSES: [&str; 3] = ["True", "False", "Unknown"];

#[derive(Clone, Debug)]
struct Update {
    t: usize,
    status: usize,
    reason: u8,
    message: u8,
    generation: Option<i64>,
}

fn update() -> impl Strategy<Value = Update> {
    (
        0usize..3,
        0usize..3,
        0u8..3,
        0u8..3,
        prop::option::of(1i64..4),
    )
        .prop_map(|(t, status, reason, message, generation)| Update {
            t,
            status,
            reason,
            message,
            generation,
        })
}

fn at(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CONDITION_CASES))]

    /// Over any sequence of updates: one entry per type; `lastTransitionTime` is the
    /// time of the last update that changed that type's status (or created it); the
    /// reported change says exactly that; everything else follows the last update.
    #[test]
    fn transition_time_moves_only_when_status_changes(updates in prop::collection::vec(update(), 1..40)) {
        let mut list: Vec<Condition> = Vec::new();
        // type -> (status, reason, message, generation, transition second)
        let mut model: BTreeMap<&str, (&str, String, String, Option<i64>, i64)> = BTreeMap::new();
        for (i, u) in updates.iter().enumerate() {
            let now = i as i64 * 10;
            let (t, s) = (TYPES[u.t], STATUSES[u.status]);
            let (reason, message) = (format!("R{}", u.reason), format!("m{}", u.message));
            let change = conditions::set(&mut list, Desired::new(t, s, &reason, message.clone()), u.generation, &at(now));
            let want = match model.get(t) {
                None => Change::Transitioned,
                Some((old, ..)) if *old != s => Change::Transitioned,
                Some((_, r, m, g, _)) if *r == reason && *m == message && *g == u.generation => Change::Unchanged,
                Some(_) => Change::Updated,
            };
            prop_assert_eq!(change, want, "update {}", i);
            let since = match (want, model.get(t)) {
                (Change::Transitioned, _) | (_, None) => now,
                (_, Some(old)) => old.4,
            };
            model.insert(t, (s, reason, message, u.generation, since));

            prop_assert_eq!(list.len(), model.len());
            for (t, (s, r, m, g, since)) in &model {
                let c = conditions::find(&list, t).unwrap();
                prop_assert_eq!(c.status.as_str(), *s);
                prop_assert_eq!(&c.reason, r);
                prop_assert_eq!(&c.message, m);
                prop_assert_eq!(c.observed_generation, *g);
                prop_assert_eq!(&c.last_transition_time, &at(*since), "{}", t);
                prop_assert_eq!(conditions::is_true(&list, t), *s == "True");
            }
        }
    }
}
