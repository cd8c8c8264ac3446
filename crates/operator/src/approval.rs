//! `vws1` approval claims: `vws1.<body>.<hex HMAC-SHA256(secret, body)>`, where `body` is
//! unpadded base64url of `{"at","by","exp","op","rid","v":1}`. The digest is compared in
//! constant time (`Mac::verify_slice`); the claim must name this Operation and not be
//! expired. An empty secret makes every claim invalid.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Deserialize)]
pub struct Claims {
    pub v: i64,
    #[serde(default)]
    pub rid: i64,
    pub op: String,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at: String,
    pub exp: i64,
}

/// Verifies `claim` for Operation `operation` at Unix time `now`.
pub fn verify(claim: &str, secret: &str, operation: &str, now: i64) -> Result<Claims, String> {
    if secret.is_empty() {
        return Err("the approval-claim secret is not configured on the operator".into());
    }
    let parts: Vec<&str> = claim.trim().split('.').collect();
    let [prefix, body, digest] = parts.as_slice() else {
        return Err("malformed claim: expected vws1.<body>.<signature>".into());
    };
    if *prefix != "vws1" {
        return Err(format!("unsupported claim prefix {prefix:?}"));
    }
    let digest = hex::decode(digest).map_err(|_| "malformed claim signature".to_string())?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .map_err(|_| "unusable approval-claim secret".to_string())?;
    mac.update(body.as_bytes());
    mac.verify_slice(&digest)
        .map_err(|_| "signature mismatch".to_string())?;
    let json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| "undecodable claim payload".to_string())?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|e| format!("unparseable claim payload: {e}"))?;
    if claims.v != 1 {
        return Err(format!("unsupported claim version {}", claims.v));
    }
    if claims.op.trim() != operation.trim() {
        return Err(format!(
            "claim is for operation {:?}, not {operation:?}",
            claims.op
        ));
    }
    if now > claims.exp {
        return Err("claim expired".into());
    }
    Ok(claims)
}

/// Issues a claim (the control plane's side; used by tests and tools).
pub fn issue(secret: &str, operation: &str, approver: &str, exp: i64) -> String {
    let body = serde_json::json!({
        "at": "2026-01-01T00:00:00Z", "by": approver, "exp": exp, "op": operation, "rid": 1, "v": 1
    });
    let body = URL_SAFE_NO_PAD.encode(body.to_string());
    let digest = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("vws1.{body}.{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let c = issue("s3cret", "restore-1", "alice", 2_000);
        assert_eq!(
            verify(&c, "s3cret", "restore-1", 1_000).unwrap().by,
            "alice"
        );
        assert_eq!(
            verify(&c, "s3cret", "restore-1", 3_000).unwrap_err(),
            "claim expired"
        );
        assert_eq!(
            verify(&c, "other", "restore-1", 1_000).unwrap_err(),
            "signature mismatch"
        );
        assert!(
            verify(&c, "s3cret", "restore-2", 1_000)
                .unwrap_err()
                .contains("not \"restore-2\"")
        );
        assert!(verify(&c, "", "restore-1", 1_000).is_err());
        assert!(
            verify("vws2.a.b", "s3cret", "restore-1", 1_000)
                .unwrap_err()
                .contains("prefix")
        );
        assert!(
            verify("garbage", "s3cret", "restore-1", 1_000)
                .unwrap_err()
                .starts_with("malformed")
        );
        let tampered = c.replacen("vws1.", "vws1.x", 1);
        assert!(verify(&tampered, "s3cret", "restore-1", 1_000).is_err());
    }
}
