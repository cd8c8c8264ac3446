//! Bearer tokens and other secrets: a string that never shows up in logs.

use serde::{Deserialize, Serialize};

/// A secret string (bearer token, registration token). `Debug` and `Display` print
/// `[REDACTED]`; the value is reachable only through [`SecretString::expose`].
/// Serialisation writes the clear value (it is needed on the wire and in Secrets).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

/// The name both sides use for bearer tokens.
pub type Token = SecretString;

impl SecretString {
    /// Wraps a value; surrounding whitespace is removed (tokens pasted into Secrets often
    /// carry a trailing newline).
    pub fn new(value: impl Into<String>) -> SecretString {
        let v: String = value.into();
        SecretString(v.trim().to_string())
    }

    /// The clear value. Call it only where the value goes on the wire or into storage.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(v: String) -> Self {
        SecretString::new(v)
    }
}

impl From<&str> for SecretString {
    fn from(v: &str) -> Self {
        SecretString::new(v)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn never_printed() {
        let t = Token::new(" s3cr3t\n");
        assert_eq!(
            format!("{t} {t:?} {:?}", Some(&t)),
            "[REDACTED] [REDACTED] Some([REDACTED])"
        );
        assert_eq!(t.expose(), "s3cr3t");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"s3cr3t\"");
        let back: Token = serde_json::from_str("\"s3cr3t\"").unwrap();
        assert_eq!(back, t);
    }
}
