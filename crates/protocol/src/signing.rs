//! Detached job-payload signatures (connectivity §2.14): Ed25519 over the RFC 8785 (JCS)
//! canonical JSON of `payload`, signature in standard base64 (64 bytes), keys as 32 raw
//! bytes in standard base64 (public keys are also accepted in hex).
//!
//! Canonical form, as implemented by [`canonical_json`]:
//! - objects: members sorted by the UTF-16 code units of their names, no whitespace;
//! - strings: JSON escaping as ECMAScript `JSON.stringify` does it (`\b \t \n \f \r \" \\`,
//!   other control characters as `\u00xx` in lower-case hex, everything else literal);
//! - numbers held as integers (`i64`/`u64` in `serde_json`) are written exactly, digit
//!   for digit. (Strict JCS would first round integers beyond 2^53 to a double; payloads
//!   never carry such values, and signing them exactly is the safer failure mode.)
//! - other numbers are IEEE-754 doubles written the way ECMAScript `Number.prototype.
//!   toString` writes them: shortest round-trip digits, plain notation for magnitudes
//!   from 1e-6 up to below 1e21, otherwise `d.ddde±n` (`1e+21`, `1e-7`); `-0` is `0`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::Value;

/// Audit name of a signature failure (prefix of the result `error`).
pub const SIGNATURE_INVALID: &str = "JobPayloadSignatureInvalid";

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("payload is not signed")]
    Missing,
    #[error("signature is not valid base64")]
    NotBase64,
    #[error("signature must be 64 bytes, got {0}")]
    BadLength(usize),
    #[error("signature does not match the payload")]
    Mismatch,
    #[error("invalid key: {0}")]
    BadKey(String),
}

fn key_bytes(s: &str, allow_hex: bool) -> Result<[u8; 32], SignatureError> {
    let s = s.trim();
    let bytes = STANDARD
        .decode(s)
        .ok()
        .filter(|b| b.len() == 32)
        .or_else(|| if allow_hex { hex::decode(s).ok() } else { None })
        .ok_or_else(|| SignatureError::BadKey("expected 32 bytes in standard base64".into()))?;
    bytes
        .try_into()
        .map_err(|_| SignatureError::BadKey("expected 32 bytes".into()))
}

/// Parses a public key: 32 raw bytes in standard base64 (or hex).
pub fn verifying_key_from_base64(s: &str) -> Result<VerifyingKey, SignatureError> {
    VerifyingKey::from_bytes(&key_bytes(s, true)?)
        .map_err(|e| SignatureError::BadKey(format!("not an Ed25519 public key: {e}")))
}

/// Parses a private key: the 32-byte Ed25519 seed in standard base64.
pub fn signing_key_from_base64(s: &str) -> Result<SigningKey, SignatureError> {
    Ok(SigningKey::from_bytes(&key_bytes(s, false)?))
}

/// Standard base64 of a public key (the form [`verifying_key_from_base64`] reads).
pub fn verifying_key_to_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.to_bytes())
}

/// Standard base64 of a private key seed (the form [`signing_key_from_base64`] reads).
pub fn signing_key_to_base64(key: &SigningKey) -> String {
    STANDARD.encode(key.to_bytes())
}

/// Older name of [`verifying_key_from_base64`] with a string error.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    verifying_key_from_base64(s).map_err(|e| e.to_string())
}

/// RFC 8785 canonical JSON of `v` (see the module documentation for numbers).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

/// The bytes that are signed.
pub fn canonical_bytes(v: &Value) -> Vec<u8> {
    canonical_json(v).into_bytes()
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString` for a finite double.
pub fn format_es_number(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        // JSON cannot carry NaN or infinities; serde_json never holds them.
        return "0".into();
    }
    if f < 0.0 {
        return format!("-{}", format_es_number(-f));
    }
    // Rust's `{:e}` gives the shortest digits that round-trip: "d.ddde<exp>".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    // value = 0.<digits> × 10^n
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (a, b) = digits.split_at(n as usize);
        format!("{a}.{b}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    }
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => write_string(s, out),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                out.push_str(&format_es_number(f));
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// Signs a payload: standard base64 of the detached Ed25519 signature over
/// [`canonical_bytes`].
pub fn sign(key: &SigningKey, payload: &Value) -> String {
    STANDARD.encode(key.sign(&canonical_bytes(payload)).to_bytes())
}

/// Verifies a detached signature. `signature` may be a `&str` or an `Option<&str>`;
/// absent or blank is [`SignatureError::Missing`].
pub fn verify<'a>(
    key: &VerifyingKey,
    payload: &Value,
    signature: impl Into<Option<&'a str>>,
) -> Result<(), SignatureError> {
    let sig = signature
        .into()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::Missing)?;
    let bytes = STANDARD
        .decode(sig)
        .map_err(|_| SignatureError::NotBase64)?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| SignatureError::BadLength(b.len()))?;
    key.verify(&canonical_bytes(payload), &Signature::from_bytes(&arr))
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        canonical_json(&serde_json::from_str::<Value>(text).unwrap())
    }

    #[test]
    fn rfc8785_example() {
        // RFC 8785 §3.2.2 input and output.
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        assert_eq!(
            canon(input),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_sorting_by_utf16() {
        // RFC 8785 §3.2.3: the emoji (surrogate pair D83D DE00) sorts before U+FB33.
        let input = r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"}"#;
        let keys: Vec<String> = canon(input)
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|kv| kv.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "\"\\r\"",
                "\"1\"",
                "\"\u{80}\"",
                "\"ö\"",
                "\"€\"",
                "\"😀\"",
                "\"\u{fb33}\""
            ]
        );
    }

    #[test]
    fn nested_objects_and_whitespace() {
        assert_eq!(
            canon(
                r#"{ "b" : [ 1 , { "y": 2, "x": [ ] } ], "a": { "z": null, "é": true, "A": 1.5 } }"#
            ),
            r#"{"a":{"A":1.5,"z":null,"é":true},"b":[1,{"x":[],"y":2}]}"#
        );
    }

    #[test]
    fn numbers_as_ecmascript_writes_them() {
        for (f, want) in [
            (1.0, "1"),
            (2.0, "2"),
            (-0.0, "0"),
            (0.1, "0.1"),
            (-1.5, "-1.5"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (123456.789, "123456.789"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740992.0, "9007199254740992"),
        ] {
            assert_eq!(format_es_number(f), want, "{f:e}");
        }
        // Integers are exact, including beyond 2^53.
        assert_eq!(
            canon("[9007199254740993, -42, 18446744073709551615]"),
            "[9007199254740993,-42,18446744073709551615]"
        );
    }

    #[test]
    fn sign_verify_tamper_and_keys() {
        let sk = signing_key_from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let pk = sk.verifying_key();
        let payload = json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": {"ü": "1"}}});
        let sig = sign(&sk, &payload);
        assert_eq!(STANDARD.decode(&sig).unwrap().len(), 64);
        assert!(verify(&pk, &payload, sig.as_str()).is_ok());
        assert!(verify(&pk, &payload, Some(sig.as_str())).is_ok());
        // Member order and whitespace do not matter: the canonical form is signed.
        let reordered: Value = serde_json::from_str(
            r#"{ "metadata": {"labels": {"ü": "1"}, "name": "a"}, "kind": "ConfigMap" }"#,
        )
        .unwrap();
        assert!(verify(&pk, &reordered, sig.as_str()).is_ok());
        let mut tampered = payload.clone();
        tampered["metadata"]["name"] = "b".into();
        assert_eq!(
            verify(&pk, &tampered, sig.as_str()),
            Err(SignatureError::Mismatch)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert_eq!(
            verify(&other, &payload, sig.as_str()),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(&pk, &payload, None), Err(SignatureError::Missing));
        assert_eq!(verify(&pk, &payload, " "), Err(SignatureError::Missing));
        assert_eq!(verify(&pk, &payload, "!!"), Err(SignatureError::NotBase64));
        assert_eq!(
            verify(&pk, &payload, "AAAA"),
            Err(SignatureError::BadLength(3))
        );

        let b64 = verifying_key_to_base64(&pk);
        assert_eq!(verifying_key_from_base64(&b64).unwrap(), pk);
        assert_eq!(parse_public_key(&hex::encode(pk.to_bytes())).unwrap(), pk);
        assert!(verifying_key_from_base64("nope").is_err());
        assert!(signing_key_from_base64(&STANDARD.encode([1u8; 31])).is_err());
        assert_eq!(
            signing_key_from_base64(&signing_key_to_base64(&sk))
                .unwrap()
                .to_bytes(),
            sk.to_bytes()
        );
    }
}
