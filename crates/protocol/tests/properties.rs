//! Bad input, property-tested (issue 11): job decoding and canonical JSON / signature
//! verification. Case counts are fixed here and listed in docs/reliability.md; proptest
//! picks fresh inputs on every run and shrinks any failure to a minimal one.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use vworkspace_protocol::batch::{self, Entry, MAX_JOB_DEPTH, split_jobs};
use vworkspace_protocol::signing::{canonical_json, sign, verify};

/// Cases per decoding property.
const DECODE_CASES: u32 = 2000;
/// Cases per signing property (each signs and verifies with Ed25519).
const SIGN_CASES: u32 = 500;

/// Any JSON value, nested a few levels, with awkward strings and numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\a-z\u{80}-\u{10ffff}]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One job of a poll answer as the server might send it, and the id it must be
/// answered under (`None`: no usable id, so it is only counted).
#[derive(Clone, Debug)]
enum Shape {
    Good,
    /// Arbitrary JSON as the payload.
    Payload(Value),
    /// `kind` of the wrong type.
    KindNumber,
    /// Payload nested this deep.
    Deep(usize),
    /// Invalid UTF-8 inside the payload.
    BadUtf8,
    /// Numeric id.
    NumericId,
    /// No id at all.
    NoId,
    /// Blank id.
    BlankId,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        3 => Just(Shape::Good),
        3 => json_value().prop_map(Shape::Payload),
        1 => Just(Shape::KindNumber),
        1 => (1usize..3000).prop_map(Shape::Deep),
        1 => Just(Shape::BadUtf8),
        1 => Just(Shape::NumericId),
        1 => Just(Shape::NoId),
        1 => Just(Shape::BlankId),
    ]
}

/// The job's bytes and the id it must be answered under.
fn render(shape: &Shape, id: &str) -> (Vec<u8>, Option<String>) {
    let id_json = Value::String(id.to_string()).to_string();
    let usable = Some(id.to_string());
    match shape {
        Shape::Good => (
            format!(r#"{{"id":{id_json},"kind":"apply","payload":{{"a":1}}}}"#).into_bytes(),
            usable,
        ),
        Shape::Payload(v) => (
            json!({"id": id, "kind": "apply", "payload": v})
                .to_string()
                .into_bytes(),
            usable,
        ),
        Shape::KindNumber => (
            format!(r#"{{"id":{id_json},"kind":42,"payload":{{}}}}"#).into_bytes(),
            usable,
        ),
        Shape::Deep(depth) => {
            let mut s = format!(r#"{{"id":{id_json},"kind":"apply","payload":"#);
            s.push_str(&"[".repeat(*depth));
            s.push_str(&"]".repeat(*depth));
            s.push('}');
            (s.into_bytes(), usable)
        }
        Shape::BadUtf8 => {
            let mut b =
                format!(r#"{{"id":{id_json},"kind":"apply","payload":{{"x":""#).into_bytes();
            b.extend_from_slice(&[0xff, 0xfe, b'"', b'}', b'}']);
            (b, usable)
        }
        Shape::NumericId => (br#"{"id":7,"kind":"apply","payload":{}}"#.to_vec(), None),
        Shape::NoId => (br#"{"kind":"apply","payload":{}}"#.to_vec(), None),
        Shape::BlankId => (br#"{"id":"  ","kind":"apply","payload":{}}"#.to_vec(), None),
    }
}

fn entry_id(e: &Entry) -> Option<String> {
    match e {
        Entry::Job(job) => Some(job.id.clone()),
        Entry::Malformed { id, .. } => id.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(DECODE_CASES))]

    /// Arbitrary bytes, whole or cut off, never panic the splitter or the id reader.
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512),
                                   complete in any::<bool>()) {
        let _ = split_jobs(&body, complete);
        let _ = batch::job_id(&body);
    }

    /// Arbitrary bytes inside an otherwise well-formed answer never panic, and the
    /// answer still decodes as a whole when the job's bytes are valid JSON.
    #[test]
    fn arbitrary_job_bytes_never_panic(job in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut body = br#"{"jobs":["#.to_vec();
        body.extend_from_slice(&job);
        body.extend_from_slice(b"]}");
        let result = split_jobs(&body, true);
        if serde_json::from_slice::<Value>(&job).is_ok() {
            prop_assert!(result.is_ok(), "{result:?}");
        }
    }

    /// Arbitrary JSON as the whole answer never panics; as a job it gives one entry.
    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        let text = v.to_string();
        let _ = split_jobs(text.as_bytes(), true);
        let body = format!(r#"{{"jobs":[{text}]}}"#);
        let batch = split_jobs(body.as_bytes(), true);
        prop_assert!(batch.is_ok(), "{batch:?}");
        prop_assert_eq!(batch.map(|b| b.entries.len()).unwrap_or_default(), 1);
    }

    /// A batch of good and bad jobs: one entry per job, in order; every job with a
    /// usable string id comes out under exactly that id (so it gets exactly one
    /// outcome), and the good ones decode.
    #[test]
    fn every_job_with_an_id_gets_one_outcome(
        shapes in prop::collection::vec(shape(), 0..12),
        ids in prop::collection::vec("[a-zA-Z0-9\"\\\\/ é\u{1F600}-]{1,12}", 12),
    ) {
        let mut body = br#"{"other":{"x":[1,2]},"jobs":["#.to_vec();
        let mut want = Vec::new();
        for (i, shape) in shapes.iter().enumerate() {
            // Distinct ids: the index makes each one unique.
            let id = format!("{i}-{}", ids[i]);
            let (bytes, usable) = render(shape, &id);
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&bytes);
            want.push((shape.clone(), usable));
        }
        body.extend_from_slice(br#"],"tail":null}"#);
        let batch = split_jobs(&body, true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!batch.truncated);
        prop_assert_eq!(batch.entries.len(), want.len());
        for (entry, (shape, usable)) in batch.entries.iter().zip(&want) {
            prop_assert_eq!(&entry_id(entry), usable, "{:?} -> {:?}", shape, entry);
            let decodes = match shape {
                Shape::Good | Shape::Payload(_) => true,
                Shape::Deep(d) => *d < MAX_JOB_DEPTH,
                _ => false,
            };
            prop_assert_eq!(matches!(entry, Entry::Job(_)), decodes, "{:?} -> {:?}", shape, entry);
        }
    }

    /// Any cut of a good answer (as when the body hits the size limit) never panics
    /// and never invents a job: what comes out is a prefix of the full batch.
    #[test]
    fn a_cut_answer_yields_a_prefix(shapes in prop::collection::vec(shape(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut body = br#"{"jobs":["#.to_vec();
        for (i, shape) in shapes.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&render(shape, &format!("job-{i}")).0);
        }
        body.extend_from_slice(b"]}");
        let full = split_jobs(&body, true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let at = cut.index(body.len());
        if let Ok(part) = split_jobs(&body[..at], false) {
            prop_assert!(part.entries.len() <= full.entries.len());
            prop_assert_eq!(&part.entries[..], &full.entries[..part.entries.len()]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(DECODE_CASES))]

    /// Canonicalization is idempotent: the canonical text read back canonicalizes to
    /// itself (numbers included).
    #[test]
    fn canonical_json_is_idempotent(v in json_value()) {
        let once = canonical_json(&v);
        let back: Value = serde_json::from_str(&once).map_err(|e| TestCaseError::fail(format!("{e}: {once}")))?;
        prop_assert_eq!(canonical_json(&back), once);
    }

    /// Member order in the received text never changes the canonical form.
    #[test]
    fn canonical_json_ignores_member_order(
        members in prop::collection::btree_map(any::<String>(), json_value(), 0..8),
        seed in any::<u64>(),
    ) {
        let forward = Value::Object(members.clone().into_iter().collect());
        // The same members written as text in another order.
        let mut entries: Vec<(String, Value)> = members.into_iter().collect();
        let n = entries.len().max(1);
        entries.rotate_left((seed as usize) % n);
        if seed % 2 == 0 {
            entries.reverse();
        }
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
            .collect();
        let text = format!("{{{}}}", body.join(","));
        let shuffled: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(canonical_json(&shuffled), canonical_json(&forward));
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(SIGN_CASES))]

    /// A signature verifies for its payload and key; one flipped bit in the signature,
    /// another key, or a payload whose canonical form differs never verifies.
    #[test]
    fn a_flipped_byte_never_verifies(
        payload in json_value(),
        other in json_value(),
        seed in 1u8..=255,
        bit in 0usize..512,
    ) {
        let k = key(seed);
        let sig = sign(&k, &payload);
        prop_assert!(verify(&k.verifying_key(), &payload, sig.as_str()).is_ok());

        use base64::Engine as _;
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&sig).map_err(|e| TestCaseError::fail(e.to_string()))?;
        raw[bit / 8] ^= 1 << (bit % 8);
        let flipped = base64::engine::general_purpose::STANDARD.encode(&raw);
        prop_assert!(verify(&k.verifying_key(), &payload, flipped.as_str()).is_err());

        prop_assert!(verify(&key(seed ^ 0x55).verifying_key(), &payload, sig.as_str()).is_err());
        if canonical_json(&other) != canonical_json(&payload) {
            prop_assert!(verify(&k.verifying_key(), &other, sig.as_str()).is_err());
        }
    }

    /// One byte of the signed text changed: when it still parses to a different
    /// canonical payload, the signature no longer verifies.
    #[test]
    fn a_flipped_payload_byte_never_verifies(
        payload in json_value(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let k = key(7);
        let sig = sign(&k, &payload);
        let mut text = canonical_json(&payload).into_bytes();
        let i = at.index(text.len());
        text[i] ^= xor;
        if let Ok(changed) = serde_json::from_slice::<Value>(&text)
            && canonical_json(&changed) != canonical_json(&payload)
        {
            prop_assert!(verify(&k.verifying_key(), &changed, sig.as_str()).is_err());
        }
    }

    /// Arbitrary signature strings never panic the verifier and never verify.
    #[test]
    fn arbitrary_signatures_never_verify(payload in json_value(), sig in any::<String>()) {
        prop_assert!(verify(&key(3).verifying_key(), &payload, sig.as_str()).is_err());
    }
}
