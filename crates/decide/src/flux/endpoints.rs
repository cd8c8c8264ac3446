//! `status.endpoints` and `status.inventory` of a managed instance (pure).
//!
//! Endpoints come from what the release actually created: Ingresses in the release
//! namespace carrying Helm's standard `app.kubernetes.io/instance=<release>` label. The
//! `integrations.ingress.host` of the spec is listed too while no Ingress serves it yet,
//! marked as requested rather than observed. Integrations are not turned into chart
//! values: value keys are chart-specific and belong in the catalog's values.

use k8s_openapi::api::networking::v1::Ingress;
use kube_core::ResourceExt;
use vworkspace_api::application_instance::{ApplicationInstance, Endpoint, InventoryEntry};

use super::{ChartSource, FluxChildren};

/// Label Helm charts put on everything of a release.
pub const RELEASE_INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

pub fn endpoints(inst: &ApplicationInstance, ingresses: &[Ingress]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    let mut sorted: Vec<&Ingress> = ingresses.iter().collect();
    sorted.sort_by_key(|i| i.name_any());
    for ing in sorted {
        let Some(spec) = &ing.spec else { continue };
        let tls_hosts: Vec<&String> = spec
            .tls
            .iter()
            .flatten()
            .flat_map(|t| t.hosts.iter().flatten())
            .collect();
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) else {
                continue;
            };
            let scheme = if tls_hosts.iter().any(|h| h.as_str() == host) {
                "https"
            } else {
                "http"
            };
            let url = format!("{scheme}://{host}");
            if out.iter().any(|e| e.url == url) {
                continue;
            }
            out.push(Endpoint {
                name: ing.name_any(),
                url,
                r#type: Some("ingress".into()),
                notes: None,
            });
        }
    }
    let requested = inst
        .spec
        .integrations
        .as_ref()
        .and_then(|i| i.ingress.as_ref())
        .filter(|i| i.enabled)
        .and_then(|i| i.host.as_deref())
        .filter(|h| !h.is_empty());
    if let Some(host) = requested
        && !out.iter().any(|e| e.url.ends_with(&format!("://{host}")))
    {
        out.push(Endpoint {
            name: "ingress".into(),
            url: format!("https://{host}"),
            r#type: Some("ingress".into()),
            notes: Some("requested by spec.integrations.ingress; no Ingress serves it yet".into()),
        });
    }
    out
}

pub fn inventory(children: &FluxChildren, namespace: &str) -> Vec<InventoryEntry> {
    let source = match &children.source {
        ChartSource::Helm(s) => ("HelmRepository", s.name_any()),
        ChartSource::Oci(s) => ("OCIRepository", s.name_any()),
    };
    vec![
        InventoryEntry {
            api_version: "source.toolkit.fluxcd.io/v1".into(),
            kind: source.0.into(),
            name: source.1,
            namespace: namespace.into(),
        },
        InventoryEntry {
            api_version: "helm.toolkit.fluxcd.io/v2".into(),
            kind: "HelmRelease".into(),
            name: children.helm_release.name_any(),
            namespace: namespace.into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(integrations: serde_json::Value) -> ApplicationInstance {
        serde_json::from_value(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "t"},
            "spec": {"appRef": {"catalogId": "wiki"}, "integrations": integrations}
        }))
        .unwrap()
    }

    fn ingress(name: &str, hosts: &[&str], tls: &[&str]) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"rules": hosts.iter().map(|h| json!({"host": h})).collect::<Vec<_>>(),
                     "tls": [{"hosts": tls}]}
        }))
        .unwrap()
    }

    #[test]
    fn observed_ingresses_with_scheme_from_tls() {
        let got = endpoints(
            &inst(json!({})),
            &[
                ingress("b", &["b.example.org"], &[]),
                ingress("a", &["a.example.org"], &["a.example.org"]),
            ],
        );
        let urls: Vec<_> = got.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["https://a.example.org", "http://b.example.org"]);
        assert!(got.iter().all(|e| e.notes.is_none()));
    }

    #[test]
    fn requested_host_until_observed() {
        let spec = json!({"ingress": {"enabled": true, "host": "wiki.example.org"}});
        let got = endpoints(&inst(spec.clone()), &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].url, "https://wiki.example.org");
        assert!(got[0].notes.is_some());
        let got = endpoints(
            &inst(spec),
            &[ingress(
                "wiki",
                &["wiki.example.org"],
                &["wiki.example.org"],
            )],
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].notes.is_none());
        assert!(
            endpoints(
                &inst(json!({"ingress": {"enabled": false, "host": "x"}})),
                &[]
            )
            .is_empty()
        );
    }
}
