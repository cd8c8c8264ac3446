//! Detached job-payload signatures: Ed25519 over the RFC 8785 (JCS) canonical JSON of
//! `payload`, signature in standard base64, public keys as 32 raw bytes in base64 or hex.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::Value;

/// Audit name of a signature failure (prefix of the result `error`).
pub const SIGNATURE_INVALID: &str = "JobPayloadSignatureInvalid";

/// Parses a public key: 32 raw bytes in standard base64 or hex.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let s = s.trim();
    let bytes = STANDARD
        .decode(s)
        .ok()
        .filter(|b| b.len() == 32)
        .or_else(|| hex::decode(s).ok())
        .ok_or_else(|| "public key must be 32 bytes in base64 or hex".to_string())?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "public key must be 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("invalid Ed25519 public key: {e}"))
}

/// RFC 8785 canonical JSON: object members sorted by UTF-16 code units, no whitespace,
/// strings escaped minimally, numbers in their shortest round-trip form (integral
/// values without fraction or exponent).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            out.push_str(&serde_json::to_string(v).unwrap_or_default())
        }
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.push_str(&n.to_string());
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 1e21 {
                    out.push_str(&format!("{f:.0}"));
                } else {
                    out.push_str(&n.to_string());
                }
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
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// Signs a payload (tests and tools).
pub fn sign(key: &SigningKey, payload: &Value) -> String {
    STANDARD.encode(key.sign(canonical_json(payload).as_bytes()).to_bytes())
}

/// Verifies a detached signature.
pub fn verify(key: &VerifyingKey, payload: &Value, signature: Option<&str>) -> Result<(), String> {
    let sig = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "payload is not signed".to_string())?;
    let bytes = STANDARD
        .decode(sig)
        .map_err(|_| "signature is not valid base64".to_string())?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| "signature must be 64 bytes".to_string())?;
    key.verify(
        canonical_json(payload).as_bytes(),
        &Signature::from_bytes(&arr),
    )
    .map_err(|_| "signature does not match the payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_and_strips() {
        let v = json!({"b": [1, 2.0, "x\n"], "a": {"z": null, "é": true, "A": 1.5}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"A":1.5,"z":null,"é":true},"b":[1,2,"x\n"]}"#
        );
    }

    #[test]
    fn sign_verify_tamper_and_keys() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = sk.verifying_key();
        let payload = json!({"kind": "ConfigMap", "metadata": {"name": "a"}});
        let sig = sign(&sk, &payload);
        assert!(verify(&pk, &payload, Some(&sig)).is_ok());
        // Key order does not matter: the canonical form is signed.
        let reordered: Value =
            serde_json::from_str(r#"{"metadata":{"name":"a"},"kind":"ConfigMap"}"#).unwrap();
        assert!(verify(&pk, &reordered, Some(&sig)).is_ok());
        let mut tampered = payload.clone();
        tampered["metadata"]["name"] = "b".into();
        assert!(verify(&pk, &tampered, Some(&sig)).is_err());
        assert!(verify(&pk, &payload, None).is_err());
        assert!(verify(&pk, &payload, Some("!!")).is_err());
        assert_eq!(
            parse_public_key(&STANDARD.encode(pk.to_bytes())).unwrap(),
            pk
        );
        assert_eq!(parse_public_key(&hex::encode(pk.to_bytes())).unwrap(), pk);
        assert!(parse_public_key("nope").is_err());
    }
}
