//! Instance rules that the object's schema cannot express: secret material written
//! inline, the cluster-id label against the registered Cluster, and the chart URL
//! allow-list of the operator's configuration. The controller and the admission
//! webhook call these same functions.

use std::collections::BTreeMap;

use vworkspace_api::application_instance::{ApplicationInstanceSpec, Mode, ValuesSource};
use vworkspace_api::keys;
use vworkspace_api::validation::scan_inline_secrets;

/// Inline values carry no secret material (spec §9.5). Placeholders and the other
/// value sources are not scanned.
pub fn inline_secrets(spec: &ApplicationInstanceSpec) -> Result<(), String> {
    if spec.mode() == Mode::Placeholder {
        return Ok(());
    }
    match spec.values.as_ref() {
        Some(v) if v.source == ValuesSource::Inline => v.inline.as_ref().map_or(Ok(()), |inline| {
            scan_inline_secrets(inline).map_err(|m| format!("spec.values.inline: {m}"))
        }),
        _ => Ok(()),
    }
}

/// A `app.vworkspace.io/cluster-id` label, when set, names this cluster. `registered`:
/// the ids of the cluster's `Cluster` objects; with none registered there is nothing to
/// compare against and the label passes.
pub fn cluster_id_matches(
    labels: &BTreeMap<String, String>,
    registered: &[String],
) -> Result<(), String> {
    let Some(id) = labels
        .get(keys::LABEL_CLUSTER_ID)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    else {
        return Ok(());
    };
    let ids: Vec<&str> = registered
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if ids.is_empty() || ids.contains(&id) {
        return Ok(());
    }
    Err(format!(
        "metadata.labels[{}] is {id:?} but this cluster is registered as {}: \
         the object was meant for another cluster; remove the label or apply it there",
        keys::LABEL_CLUSTER_ID,
        ids.iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// `spec.chart.url` is one of the allowed sources. An entry allows that URL and
/// everything below it (`https://charts.example.org` allows
/// `https://charts.example.org/stable`, not `https://charts.example.org.evil`).
/// An empty list allows every URL.
pub fn chart_url_allowed(spec: &ApplicationInstanceSpec, allowed: &[String]) -> Result<(), String> {
    let Some(chart) = spec.chart.as_ref() else {
        return Ok(());
    };
    let allowed: Vec<&str> = allowed
        .iter()
        .map(|a| a.trim().trim_end_matches('/'))
        .filter(|a| !a.is_empty())
        .collect();
    if allowed.is_empty() {
        return Ok(());
    }
    let url = chart.url.trim().trim_end_matches('/');
    let ok = allowed.iter().any(|a| {
        url.eq_ignore_ascii_case(a)
            || url
                .get(..a.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(a))
                && url[a.len()..].starts_with('/')
    });
    if ok {
        return Ok(());
    }
    Err(format!(
        "spec.chart.url {:?} is not an allowed chart source (allowed: {}); use one of them or \
         ask the platform team to add it to webhooks.allowedChartUrls",
        chart.url,
        allowed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use vworkspace_api::application_instance::{Chart, Values};

    fn spec(url: &str, inline: serde_json::Value) -> ApplicationInstanceSpec {
        ApplicationInstanceSpec {
            chart: Some(Chart {
                url: url.into(),
                ..Default::default()
            }),
            values: Some(Values {
                source: ValuesSource::Inline,
                inline: Some(inline),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inline_secret_names_the_path() {
        let s = spec("x", json!({"db": {"password": "hunter2"}}));
        let err = inline_secrets(&s).unwrap_err();
        assert!(
            err.starts_with(
                "spec.values.inline: inline secret material rejected at \"db.password\""
            ),
            "{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "the value must not be echoed: {err}"
        );
        let mut p = s.clone();
        p.mode = Some(Mode::Placeholder);
        assert_eq!(inline_secrets(&p), Ok(()));
        assert_eq!(
            inline_secrets(&spec("x", json!({"db": {"host": "h"}}))),
            Ok(())
        );
    }

    #[test]
    fn cluster_id_label() {
        let labels =
            |v: &str| BTreeMap::from([(keys::LABEL_CLUSTER_ID.to_string(), v.to_string())]);
        let reg = vec!["c-1".to_string()];
        assert_eq!(cluster_id_matches(&labels("c-1"), &reg), Ok(()));
        assert_eq!(cluster_id_matches(&BTreeMap::new(), &reg), Ok(()));
        assert_eq!(cluster_id_matches(&labels("c-2"), &[]), Ok(()));
        let err = cluster_id_matches(&labels("c-2"), &reg).unwrap_err();
        assert!(err.contains("\"c-2\"") && err.contains("\"c-1\""), "{err}");
    }

    #[test]
    fn chart_url_allow_list() {
        let allow = vec![
            "https://charts.example.org/".to_string(),
            "oci://reg.example.org/apps".into(),
        ];
        let ok = |u: &str| chart_url_allowed(&spec(u, json!({})), &allow).is_ok();
        assert!(ok("https://charts.example.org"));
        assert!(ok("https://charts.example.org/stable"));
        assert!(ok("oci://reg.example.org/apps/wiki"));
        assert!(!ok("https://charts.example.org.evil"));
        assert!(!ok("oci://reg.example.org/other"));
        assert!(!ok("https://evil.example"));
        assert!(chart_url_allowed(&spec("anything", json!({})), &[]).is_ok());
        let err = chart_url_allowed(&spec("https://evil.example", json!({})), &allow).unwrap_err();
        assert!(
            err.starts_with("spec.chart.url \"https://evil.example\""),
            "{err}"
        );
    }
}
