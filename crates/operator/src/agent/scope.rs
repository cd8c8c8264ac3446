//! What a Pull-mode job may touch. Everything a job writes or deletes passes
//! [`ScopePolicy::check`] first; a refusal becomes outcome `failed` with a message saying
//! which rule refused it.
//!
//! Defaults (least privilege):
//! - kinds: only our CRDs `apps.vworkspace.io/ApplicationInstance` and
//!   `ops.vworkspace.io/Operation`; more can be added as `group/Kind` (`group/*` for a
//!   whole group; the core group is written with an empty group, e.g. `/ConfigMap`);
//! - namespaces: every namespace except `kube-system`, `kube-public`, `kube-node-lease`
//!   and the operator's own namespace; an allow-list, when set, replaces "every";
//! - cluster-scoped kinds and sensitive kinds (RBAC, admission and CRD registration,
//!   certificate signing, ServiceAccount-token Secrets, ServiceAccounts) are refused
//!   unless listed exactly by kind — a `group/*` wildcard never admits them.

use std::fmt;

/// A `group/Kind` pattern; `kind == "*"` matches every kind of the group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KindRule {
    pub group: String,
    pub kind: String,
}

impl KindRule {
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        KindRule {
            group: group.into(),
            kind: kind.into(),
        }
    }

    fn matches(&self, group: &str, kind: &str, exact_only: bool) -> bool {
        self.group == group && (self.kind == kind || (!exact_only && self.kind == "*"))
    }
}

impl std::str::FromStr for KindRule {
    type Err = String;
    /// `group/Kind`, `group/*`, `/Kind` (core) or a bare `Kind` (core).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (group, kind) = s.rsplit_once('/').unwrap_or(("", s));
        if kind.is_empty() {
            return Err(format!("invalid kind rule {s:?}: expected group/Kind"));
        }
        Ok(KindRule::new(group, kind))
    }
}

impl fmt::Display for KindRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.kind)
    }
}

/// Namespaces the agent never writes into by default (plus the operator namespace).
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// API groups whose kinds are sensitive: granting or registering privileges.
pub const SENSITIVE_GROUPS: [&str; 4] = [
    "rbac.authorization.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "certificates.k8s.io",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopePolicy {
    /// Kinds jobs may write or delete.
    pub allowed_kinds: Vec<KindRule>,
    /// When set, only these namespaces are writable (the deny-list still applies).
    pub allowed_namespaces: Option<Vec<String>>,
    /// Never writable.
    pub denied_namespaces: Vec<String>,
}

impl ScopePolicy {
    /// The documented default for an operator running in `operator_namespace`.
    pub fn new(operator_namespace: &str) -> Self {
        let mut denied: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
        if !operator_namespace.is_empty() {
            denied.push(operator_namespace.to_string());
        }
        ScopePolicy {
            allowed_kinds: vec![
                KindRule::new("apps.vworkspace.io", "ApplicationInstance"),
                KindRule::new("ops.vworkspace.io", "Operation"),
            ],
            allowed_namespaces: None,
            denied_namespaces: denied,
        }
    }

    /// Whether a kind is sensitive (needs an exact rule).
    pub fn is_sensitive(group: &str, kind: &str, object: Option<&serde_json::Value>) -> bool {
        if SENSITIVE_GROUPS.contains(&group) {
            return true;
        }
        if group.is_empty() && kind == "ServiceAccount" {
            return true;
        }
        if group.is_empty() && kind == "Secret" {
            let t = object
                .and_then(|o| o.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or_default();
            return t == "kubernetes.io/service-account-token";
        }
        false
    }

    /// Decides whether a job may write or delete an object of `group`/`kind` in
    /// `namespace` (`None` for cluster-scoped kinds). `object` is the manifest when there
    /// is one (for Secret types).
    pub fn check(
        &self,
        group: &str,
        kind: &str,
        namespace: Option<&str>,
        object: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        let display = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{group}/{kind}")
        };
        let exact = self
            .allowed_kinds
            .iter()
            .any(|r| r.matches(group, kind, true));
        let sensitive = Self::is_sensitive(group, kind, object);
        if sensitive && !exact {
            return Err(format!(
                "kind {display} is sensitive (RBAC, admission, CRD, ServiceAccount credentials) and is refused unless allowed explicitly by kind"
            ));
        }
        let Some(ns) = namespace else {
            if !exact {
                return Err(format!(
                    "cluster-scoped kind {display} is refused unless allowed explicitly by kind"
                ));
            }
            return Ok(());
        };
        if !exact
            && !self
                .allowed_kinds
                .iter()
                .any(|r| r.matches(group, kind, false))
        {
            return Err(format!(
                "kind {display} is not in the agent's allowed kinds ({})",
                self.allowed_kinds
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if ns.is_empty() {
            return Err(format!(
                "{display} is namespaced but no namespace was given"
            ));
        }
        if self.denied_namespaces.iter().any(|d| d == ns) {
            return Err(format!("namespace {ns:?} is not writable by the agent"));
        }
        if let Some(allow) = &self.allowed_namespaces
            && !allow.iter().any(|a| a == ns)
        {
            return Err(format!(
                "namespace {ns:?} is not in the agent's allowed namespaces"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_admit_our_crds_in_tenant_namespaces() {
        let p = ScopePolicy::new("vworkspace-system");
        assert!(
            p.check(
                "apps.vworkspace.io",
                "ApplicationInstance",
                Some("org-a"),
                None
            )
            .is_ok()
        );
        assert!(
            p.check("ops.vworkspace.io", "Operation", Some("org-a"), None)
                .is_ok()
        );
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "vworkspace-system",
        ] {
            let e = p
                .check("apps.vworkspace.io", "ApplicationInstance", Some(ns), None)
                .unwrap_err();
            assert!(e.contains(ns), "{e}");
        }
        let e = p.check("", "ConfigMap", Some("org-a"), None).unwrap_err();
        assert!(e.contains("allowed kinds"), "{e}");
        let e = p
            .check("ops.vworkspace.io", "Cluster", None, None)
            .unwrap_err();
        assert!(e.contains("cluster-scoped"), "{e}");
    }

    #[test]
    fn rbac_and_cluster_scope_need_exact_rules() {
        let mut p = ScopePolicy::new("op");
        p.allowed_kinds
            .push("rbac.authorization.k8s.io/*".parse().unwrap());
        p.allowed_kinds.push("/*".parse().unwrap());
        let e = p
            .check("rbac.authorization.k8s.io", "ClusterRole", None, None)
            .unwrap_err();
        assert!(e.contains("sensitive"), "{e}");
        let e = p
            .check("rbac.authorization.k8s.io", "Role", Some("a"), None)
            .unwrap_err();
        assert!(e.contains("sensitive"), "{e}");
        // Wildcard core group admits ConfigMaps but not token Secrets or ServiceAccounts.
        assert!(p.check("", "ConfigMap", Some("a"), None).is_ok());
        assert!(
            p.check("", "Secret", Some("a"), Some(&json!({"type": "Opaque"})))
                .is_ok()
        );
        assert!(
            p.check(
                "",
                "Secret",
                Some("a"),
                Some(&json!({"type": "kubernetes.io/service-account-token"}))
            )
            .is_err()
        );
        assert!(p.check("", "ServiceAccount", Some("a"), None).is_err());
        // Cluster-scoped kinds never match a wildcard.
        assert!(p.check("", "Namespace", None, None).is_err());
        p.allowed_kinds.push("/Namespace".parse().unwrap());
        p.allowed_kinds
            .push("rbac.authorization.k8s.io/ClusterRole".parse().unwrap());
        assert!(p.check("", "Namespace", None, None).is_ok());
        assert!(
            p.check("rbac.authorization.k8s.io", "ClusterRole", None, None)
                .is_ok()
        );
    }

    #[test]
    fn allow_list_restricts_and_deny_list_still_wins() {
        let mut p = ScopePolicy::new("op");
        p.allowed_namespaces = Some(vec!["org-a".into(), "kube-system".into()]);
        assert!(
            p.check("ops.vworkspace.io", "Operation", Some("org-a"), None)
                .is_ok()
        );
        assert!(
            p.check("ops.vworkspace.io", "Operation", Some("org-b"), None)
                .is_err()
        );
        assert!(
            p.check("ops.vworkspace.io", "Operation", Some("kube-system"), None)
                .is_err()
        );
        assert!(
            p.check("ops.vworkspace.io", "Operation", Some(""), None)
                .is_err()
        );
    }

    #[test]
    fn kind_rules_parse() {
        assert_eq!(
            "velero.io/BackupStorageLocation"
                .parse::<KindRule>()
                .unwrap(),
            KindRule::new("velero.io", "BackupStorageLocation")
        );
        assert_eq!(
            "ConfigMap".parse::<KindRule>().unwrap(),
            KindRule::new("", "ConfigMap")
        );
        assert!("velero.io/".parse::<KindRule>().is_err());
    }
}
