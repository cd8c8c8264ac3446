//! Timestamps on the wire: RFC 3339 in UTC, with or without fractional seconds.
//!
//! Go-based peers serialise an unset time as `0001-01-01T00:00:00Z`; that instant (and
//! anything before the year 2), `null`, `""` and a missing field all read as `None`.
//! A string that is not a timestamp at all is an error: silently reading a garbled
//! `expiresAt` as "never expires" would be worse than rejecting the message.

use jiff::Timestamp;

/// `0002-01-01T00:00:00Z`: instants before it are the Go/Kubernetes zero time.
const UNSET_BEFORE_SECONDS: i64 = -62_104_060_800;

/// Whether `t` is a real instant (not the zero time of Go peers).
pub fn is_set(t: &Timestamp) -> bool {
    t.as_second() >= UNSET_BEFORE_SECONDS
}

/// Parses an RFC 3339 string; empty and zero-time strings give `Ok(None)`.
pub fn parse_opt(s: &str) -> Result<Option<Timestamp>, jiff::Error> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let t: Timestamp = s.parse()?;
    Ok(Some(t).filter(is_set))
}

/// Serde helpers for `Option<Timestamp>`: use with
/// `#[serde(default, with = "vworkspace_protocol::time::opt")]`. `None` serialises as
/// `null` (add `skip_serializing_if = "Option::is_none"` to omit it instead).
pub mod opt {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(t),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_opt(&s)
                .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {s:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize)]
    struct T {
        #[serde(default, with = "opt")]
        at: Option<Timestamp>,
    }

    #[test]
    fn unset_forms_read_as_none() {
        for v in [
            json!({}),
            json!({"at": null}),
            json!({"at": ""}),
            json!({"at": "0001-01-01T00:00:00Z"}),
            json!({"at": "0001-01-01T00:00:00.000000000Z"}),
        ] {
            let t: T = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(t.at, None, "{v}");
        }
    }

    #[test]
    fn fractions_are_optional_and_garbage_is_an_error() {
        let a: T = serde_json::from_value(json!({"at": "2026-01-02T03:04:05Z"})).unwrap();
        let b: T = serde_json::from_value(json!({"at": "2026-01-02T03:04:05.123456789Z"})).unwrap();
        assert_eq!(a.at.unwrap().as_second(), b.at.unwrap().as_second());
        assert_eq!(b.at.unwrap().subsec_nanosecond(), 123_456_789);
        assert!(serde_json::from_value::<T>(json!({"at": "yesterday"})).is_err());
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"at": "2026-01-02T03:04:05.123456789Z"})
        );
        assert_eq!(
            serde_json::to_value(T { at: None }).unwrap(),
            json!({"at": null})
        );
        assert!(is_set(&Timestamp::UNIX_EPOCH));
    }
}
