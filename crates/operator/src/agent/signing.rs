//! Detached job-payload signatures (spec §2.14): Ed25519 over the RFC 8785 (JCS)
//! canonical JSON of `payload`, signature in standard base64.
//!
//! Modes ([`SigningMode`]):
//! - `off` — the `signature` field is ignored (Compat default);
//! - `warn` — verified when a key is configured; an unsigned payload is logged and
//!   proceeds, a payload whose signature does not verify is refused (that is tampering,
//!   not a missing feature);
//! - `required` — an unsigned or tampered payload is answered `failed` with
//!   `JobPayloadSignatureInvalid: <why>` and nothing is applied.

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
pub use vworkspace_protocol::signing::{
    SIGNATURE_INVALID, canonical_json, parse_public_key, sign, verify,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SigningMode {
    #[default]
    Off,
    Warn,
    Required,
}

impl std::str::FromStr for SigningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "" => Ok(SigningMode::Off),
            "warn" => Ok(SigningMode::Warn),
            "required" => Ok(SigningMode::Required),
            other => Err(format!(
                "invalid signing mode {other:?}: off, warn or required"
            )),
        }
    }
}

/// Applies the mode: `Err` means refuse the job (with the result error text).
pub fn check(
    mode: SigningMode,
    key: Option<&VerifyingKey>,
    payload: &Value,
    signature: Option<&str>,
) -> Result<(), String> {
    let Some(key) = key.filter(|_| mode != SigningMode::Off) else {
        if mode == SigningMode::Required {
            return Err(format!(
                "{SIGNATURE_INVALID}: signatures are required but no public key is configured"
            ));
        }
        return Ok(());
    };
    let unsigned = signature.map(str::trim).is_none_or(str::is_empty);
    if unsigned && mode == SigningMode::Warn {
        tracing::warn!("job payload is not signed; admitted (signing mode warn)");
        return Ok(());
    }
    verify(key, payload, signature).map_err(|why| format!("{SIGNATURE_INVALID}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
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
    fn modes() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = sk.verifying_key();
        let payload = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        let sig = sign(&sk, &payload);
        assert!(check(SigningMode::Required, Some(&pk), &payload, Some(&sig)).is_ok());
        let mut tampered = payload.clone();
        tampered["metadata"]["name"] = "b".into();
        let e = check(SigningMode::Required, Some(&pk), &tampered, Some(&sig)).unwrap_err();
        assert!(e.starts_with("JobPayloadSignatureInvalid: "), "{e}");
        assert!(check(SigningMode::Required, Some(&pk), &payload, None).is_err());
        assert!(check(SigningMode::Required, None, &payload, Some(&sig)).is_err());
        assert!(check(SigningMode::Warn, Some(&pk), &tampered, Some(&sig)).is_err());
        assert!(check(SigningMode::Warn, Some(&pk), &payload, None).is_ok());
        assert!(check(SigningMode::Off, Some(&pk), &tampered, None).is_ok());
        assert_eq!(
            "REQUIRED".parse::<SigningMode>().unwrap(),
            SigningMode::Required
        );
    }
}
