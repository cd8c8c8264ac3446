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
    /// Optional bindings (spec §11 item 16): when the issuer includes them they must
    /// match the Operation, so a claim cannot be replayed on a same-named Operation in
    /// another namespace, a recreated one, or one of another type or target.
    #[serde(default)]
    pub ns: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default, rename = "type")]
    pub op_type: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
}

/// What a claim may be bound to, from the Operation.
#[derive(Debug, Default)]
pub struct Binding<'a> {
    pub namespace: &'a str,
    pub uid: &'a str,
    pub op_type: &'a str,
    pub target: &'a str,
    /// `spec.approvals.approvedBy`, cross-checked against the claim's `by` when both
    /// are set.
    pub approved_by: Option<&'a str>,
}

/// Checks the optional bindings of verified `claims` against the Operation.
pub fn check_binding(claims: &Claims, b: &Binding<'_>) -> Result<(), String> {
    let pairs = [
        ("ns", claims.ns.as_deref(), b.namespace),
        ("uid", claims.uid.as_deref(), b.uid),
        ("type", claims.op_type.as_deref(), b.op_type),
        ("target", claims.target.as_deref(), b.target),
    ];
    for (field, claimed, actual) in pairs {
        if let Some(c) = claimed
            && c.trim() != actual.trim()
        {
            return Err(format!(
                "claim is bound to {field} {c:?}, the operation has {actual:?}"
            ));
        }
    }
    if let Some(by) = b.approved_by.map(str::trim).filter(|s| !s.is_empty())
        && !claims.by.is_empty()
        && by != claims.by.trim()
    {
        return Err(format!(
            "spec.approvals.approvedBy {by:?} does not match the claim's approver {:?}",
            claims.by
        ));
    }
    Ok(())
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
    sign(
        secret,
        &serde_json::json!({
            "at": "2026-01-01T00:00:00Z", "by": approver, "exp": exp, "op": operation, "rid": 1, "v": 1
        }),
    )
}

/// Signs any claim body, bindings included (tests and tools).
pub fn sign(secret: &str, claims: &serde_json::Value) -> String {
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
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
        let bound = {
            let body = URL_SAFE_NO_PAD.encode(
                serde_json::json!({"at": "", "by": "bob", "exp": 2_000, "op": "r", "rid": 1, "v": 1,
                                   "ns": "team-a", "uid": "u1", "type": "Restore", "target": "wiki"})
                .to_string(),
            );
            let mut mac = HmacSha256::new_from_slice(b"s3cret").unwrap();
            mac.update(body.as_bytes());
            format!("vws1.{body}.{}", hex::encode(mac.finalize().into_bytes()))
        };
        let claims = verify(&bound, "s3cret", "r", 1_000).unwrap();
        let mut b = Binding {
            namespace: "team-a",
            uid: "u1",
            op_type: "Restore",
            target: "wiki",
            approved_by: Some("bob"),
        };
        assert!(check_binding(&claims, &b).is_ok());
        b.namespace = "team-b";
        assert!(check_binding(&claims, &b).unwrap_err().contains("ns"));
        b.namespace = "team-a";
        b.approved_by = Some("eve");
        assert!(
            check_binding(&claims, &b)
                .unwrap_err()
                .contains("approvedBy")
        );
        // Claims without bindings stay valid (v1 issuers).
        let plain = verify(&c, "s3cret", "restore-1", 1_000).unwrap();
        b.approved_by = None;
        assert!(check_binding(&plain, &b).is_ok());
        let tampered = c.replacen("vws1.", "vws1.x", 1);
        assert!(verify(&tampered, "s3cret", "restore-1", 1_000).is_err());
    }
}
