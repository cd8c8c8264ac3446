//! Pure checks of an ApplicationInstance spec (spec §2.4, §9.5), shared by the controller
//! and admission. Messages name the field so a person knows what to change.

use serde_json::Value;

use crate::application_instance::{ApplicationInstanceSpec, Mode, ValuesSource};

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// Checks in the order of spec §2.4; the first failure is returned.
pub fn validate_application_instance(
    spec: &ApplicationInstanceSpec,
    namespace: &str,
) -> Result<(), String> {
    if blank(&spec.app_ref.catalog_id) {
        return Err("spec.appRef.catalogId is required".into());
    }
    let release_ns_ok = |ns: &str| ns.is_empty() || ns == namespace;
    if spec.mode() == Mode::Placeholder {
        if spec.chart.is_some() {
            return Err("spec.chart must not be set in placeholder mode".into());
        }
        if spec.values.is_some() {
            return Err("spec.values must not be set in placeholder mode".into());
        }
        if let Some(r) = &spec.release
            && !release_ns_ok(&r.namespace)
        {
            return Err(format!(
                "spec.release.namespace must match metadata.namespace ({namespace:?})"
            ));
        }
        return Ok(());
    }
    let chart = spec.chart.as_ref().ok_or("spec.chart is required")?;
    for (field, value) in [
        ("url", &chart.url),
        ("name", &chart.name),
        ("version", &chart.version),
    ] {
        if blank(value) {
            return Err(format!("spec.chart.{field} is required"));
        }
    }
    let release = spec.release.as_ref().ok_or("spec.release is required")?;
    if blank(&release.name) {
        return Err("spec.release.name is required".into());
    }
    if blank(&release.namespace) {
        return Err("spec.release.namespace is required".into());
    }
    if release.namespace != namespace {
        return Err(format!(
            "spec.release.namespace must match metadata.namespace ({namespace:?})"
        ));
    }
    let values = spec.values.as_ref().ok_or("spec.values is required")?;
    let key_ref_ok = |r: &Option<crate::application_instance::KeyRef>| {
        r.as_ref()
            .is_some_and(|r| !r.name.is_empty() && !r.key.is_empty())
    };
    // Exactly one values source: a stale sibling would silently be ignored.
    for (field, set, source) in [
        ("inline", values.inline.is_some(), ValuesSource::Inline),
        (
            "secretRef",
            values.secret_ref.is_some(),
            ValuesSource::SecretRef,
        ),
        (
            "configMapRef",
            values.config_map_ref.is_some(),
            ValuesSource::ConfigMapRef,
        ),
    ] {
        if set && values.source != source {
            return Err(format!(
                "spec.values.{field} must not be set unless spec.values.source is {field}"
            ));
        }
    }
    match values.source {
        ValuesSource::Inline if values.inline.is_none() => {
            Err("spec.values.inline is required when source is inline".into())
        }
        ValuesSource::Inline if !values.inline.as_ref().is_some_and(Value::is_object) => {
            Err("spec.values.inline must be an object".into())
        }
        ValuesSource::SecretRef if !key_ref_ok(&values.secret_ref) => {
            Err("spec.values.secretRef name and key are required when source is secretRef".into())
        }
        ValuesSource::ConfigMapRef if !key_ref_ok(&values.config_map_ref) => Err(
            "spec.values.configMapRef name and key are required when source is configMapRef".into(),
        ),
        _ => Ok(()),
    }
}

const SECRET_KEYS: [&str; 4] = ["accesskey", "secretkey", "apikey", "token"];

/// Rejects secret material written inline into chart values (spec §9.5).
pub fn scan_inline_secrets(values: &Value) -> Result<(), String> {
    scan(values, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn scan(value: &Value, path: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let here = join(path, key);
                if let Value::String(s) = v {
                    check_string(key, s, &here)?;
                } else {
                    scan(v, &here)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                if v.is_object() || v.is_array() {
                    scan(v, &format!("{path}[{i}]"))?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_string(key: &str, value: &str, path: &str) -> Result<(), String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(());
    }
    let lower = value.to_ascii_lowercase();
    if lower == "<set via externalsecret>" || lower == "<set via external-secret>" {
        return Ok(());
    }
    let key = key.to_ascii_lowercase();
    if key.ends_with("password") || key.ends_with("secret") || SECRET_KEYS.contains(&key.as_str()) {
        return Err(format!(
            "inline secret material rejected at {path:?}: use secretRef or configMapRef"
        ));
    }
    if value.starts_with("-----BEGIN ")
        && value
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("PRIVATE KEY-----"))
    {
        return Err(format!(
            "inline secret material rejected at {path:?}: PEM private key not allowed inline"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application_instance::*;
    use serde_json::json;

    fn managed() -> ApplicationInstanceSpec {
        ApplicationInstanceSpec {
            app_ref: AppRef {
                catalog_id: "wiki".into(),
            },
            chart: Some(Chart {
                source_type: SourceType::Helm,
                url: "https://charts.example.org".into(),
                name: "wiki".into(),
                version: "1.0.0".into(),
            }),
            release: Some(Release {
                name: "wiki".into(),
                namespace: "team1".into(),
            }),
            values: Some(Values {
                source: ValuesSource::Inline,
                inline: Some(json!({})),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn managed_rules_in_order() {
        assert_eq!(validate_application_instance(&managed(), "team1"), Ok(()));
        let mut s = managed();
        s.release = None;
        assert_eq!(
            validate_application_instance(&s, "team1").unwrap_err(),
            "spec.release is required"
        );
        let mut s = managed();
        s.chart.as_mut().unwrap().version = "  ".into();
        assert_eq!(
            validate_application_instance(&s, "team1").unwrap_err(),
            "spec.chart.version is required"
        );
        let err = validate_application_instance(&managed(), "other").unwrap_err();
        assert!(
            err.starts_with("spec.release.namespace must match metadata.namespace"),
            "{err}"
        );
        let mut s = managed();
        s.values = Some(Values {
            source: ValuesSource::SecretRef,
            ..Default::default()
        });
        assert!(
            validate_application_instance(&s, "team1")
                .unwrap_err()
                .contains("secretRef name and key")
        );
    }

    #[test]
    fn exactly_one_values_source() {
        let mut s = managed();
        s.values.as_mut().unwrap().secret_ref = Some(KeyRef {
            name: "v".into(),
            key: "values.yaml".into(),
        });
        assert_eq!(
            validate_application_instance(&s, "team1").unwrap_err(),
            "spec.values.secretRef must not be set unless spec.values.source is secretRef"
        );
        let values = s.values.as_mut().unwrap();
        values.source = ValuesSource::SecretRef;
        values.inline = None;
        assert_eq!(validate_application_instance(&s, "team1"), Ok(()));
    }

    #[test]
    fn placeholder_rules() {
        let mut s = managed();
        s.mode = Some(Mode::Placeholder);
        assert_eq!(
            validate_application_instance(&s, "team1").unwrap_err(),
            "spec.chart must not be set in placeholder mode"
        );
        s.chart = None;
        s.values = None;
        s.release = None;
        assert_eq!(validate_application_instance(&s, "team1"), Ok(()));
    }

    #[test]
    fn secret_scan() {
        assert!(
            scan_inline_secrets(&json!({"db": {"password": "<set via ExternalSecret>"}})).is_ok()
        );
        let err =
            scan_inline_secrets(&json!({"postgresql": {"auth": {"password": "x"}}})).unwrap_err();
        assert!(err.contains("\"postgresql.auth.password\""), "{err}");
        let err = scan_inline_secrets(&json!({"items": [{}, {}, {"token": "t"}]})).unwrap_err();
        assert!(err.contains("items[2].token"), "{err}");
        let err = scan_inline_secrets(&json!({"tls": "-----BEGIN RSA PRIVATE KEY-----\nabc"}))
            .unwrap_err();
        assert!(err.contains("PEM"), "{err}");
        assert!(scan_inline_secrets(&json!({"list": ["password"], "replicas": 3})).is_ok());
    }
}
