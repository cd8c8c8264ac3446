//! Parameter validation per template, before anything is created. Schemas match what
//! the engines read (the original's schemas and engines disagreed); errors name the
//! JSON path of the problem, e.g. `spec.parameters.env[1].name: required`.

use serde_json::{Map, Value};

use super::{RUNNER_SERVICE_ACCOUNT, Template};

#[derive(Clone, Copy)]
enum Kind {
    String,
    NonEmptyString,
    Bool,
    /// Integer with a minimum.
    Int(i64),
    StringList,
    StringMap,
    Object,
    EnvList,
    /// Go-style duration such as `720h`, `90m`, `30s`.
    Duration,
    /// One of the listed strings.
    Enum(&'static [&'static str]),
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const BACKUP_VELERO: &[Field] = &[
    f("ttl", Kind::Duration),
    f("storageLocation", Kind::NonEmptyString),
    f("snapshotVolumes", Kind::Bool),
    f("volumeSnapshotLocations", Kind::StringList),
    f("includedResources", Kind::StringList),
    f("excludedResources", Kind::StringList),
    f("defaultVolumesToFsBackup", Kind::Bool),
];
const RESTORE_VELERO: &[Field] = &[
    req("backupName", Kind::NonEmptyString),
    f("namespaceMapping", Kind::StringMap),
    f("restorePVs", Kind::Bool),
    f("existingResourcePolicy", Kind::NonEmptyString),
    f("includedResources", Kind::StringList),
    f("excludedResources", Kind::StringList),
];
const RUNCOMMAND_JOB: &[Field] = &[
    req("image", Kind::NonEmptyString),
    f("command", Kind::StringList),
    f("args", Kind::StringList),
    f("env", Kind::EnvList),
    f("activeDeadlineSeconds", Kind::Int(1)),
    // Accepted for compatibility with the original schema: becomes the Job's
    // activeDeadlineSeconds when that is not given.
    f("timeoutSeconds", Kind::Int(1)),
    f("backoffLimit", Kind::Int(0)),
    f("ttlSecondsAfterFinished", Kind::Int(0)),
    f("serviceAccountName", Kind::NonEmptyString),
];
const UPGRADE_HELM: &[Field] = &[
    f("targetVersion", Kind::NonEmptyString),
    f("valuesPatch", Kind::Object),
];
const MIGRATION_HELMHOOKJOB: &[Field] = &[
    req("hookName", Kind::NonEmptyString),
    f("activeDeadlineSeconds", Kind::Int(1)),
    f("backoffLimit", Kind::Int(0)),
    f("ttlSecondsAfterFinished", Kind::Int(0)),
    f("serviceAccountName", Kind::NonEmptyString),
];
const RUNBOOK_WORKFLOW: &[Field] = &[
    // Exactly one of `workflowTemplate` and its alias `template` (checked below).
    f("workflowTemplate", Kind::NonEmptyString),
    f("template", Kind::NonEmptyString),
    f("clusterScope", Kind::Bool),
    f("workflowTemplateParameters", Kind::StringMap),
    // Passed to the Workflow as arguments of the same name.
    f("targetChartVersion", Kind::NonEmptyString),
    f("snapshotClassName", Kind::NonEmptyString),
    // The Workflow's activeDeadlineSeconds.
    f("timeoutSeconds", Kind::Int(1)),
    f("ttlSecondsAfterFinished", Kind::Int(0)),
    f("serviceAccountName", Kind::NonEmptyString),
];
const BACKUP_VOLSYNC: &[Field] = &[
    req("sourcePVC", Kind::NonEmptyString),
    // Secret holding the restic repository settings.
    req("repository", Kind::NonEmptyString),
    f("copyMethod", Kind::Enum(&["Snapshot", "Clone", "Direct"])),
    f("volumeSnapshotClassName", Kind::NonEmptyString),
    f("storageClassName", Kind::NonEmptyString),
    f("pruneIntervalDays", Kind::Int(1)),
];
const BACKUP_CSISNAPSHOT: &[Field] = &[
    f("volumeSnapshotClassName", Kind::NonEmptyString),
    // Explicit PVC names; default: the PVCs labelled with the target's release.
    f("persistentVolumeClaims", Kind::StringList),
];

fn schema(template: &str) -> &'static [Field] {
    match template {
        "backup.velero" => BACKUP_VELERO,
        "restore.velero" => RESTORE_VELERO,
        "runCommand.job" => RUNCOMMAND_JOB,
        "upgrade.helm" => UPGRADE_HELM,
        "migration.helmHookJob" => MIGRATION_HELMHOOKJOB,
        "runbook.workflow" => RUNBOOK_WORKFLOW,
        "backup.volsync" => BACKUP_VOLSYNC,
        "backup.csiSnapshot" => BACKUP_CSISNAPSHOT,
        _ => &[],
    }
}

const ROOT: &str = "spec.parameters";

fn check(kind: Kind, v: &Value, path: &str) -> Result<(), String> {
    let bad = |what: &str| Err(format!("{path}: must be {what}"));
    match kind {
        Kind::String => v.is_string().then_some(()).map_or(bad("a string"), Ok),
        Kind::NonEmptyString => match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(()),
            _ => bad("a non-empty string"),
        },
        Kind::Bool => v
            .is_boolean()
            .then_some(())
            .map_or(bad("true or false"), Ok),
        Kind::Int(min) => match v.as_i64() {
            Some(n) if n >= min => Ok(()),
            _ => bad(&format!("an integer ≥ {min}")),
        },
        Kind::StringList => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(Kind::String, item, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            None => bad("a list of strings"),
        },
        Kind::StringMap => match v.as_object() {
            Some(m) => {
                for (k, item) in m {
                    check(Kind::String, item, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            None => bad("a map of strings"),
        },
        Kind::Object => v.is_object().then_some(()).map_or(bad("an object"), Ok),
        Kind::Enum(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => bad(&format!("one of {}", allowed.join(", "))),
        },
        Kind::Duration => match v.as_str() {
            Some(s) if is_duration(s) => Ok(()),
            _ => bad("a duration such as 720h, 90m or 30s (days are not a unit)"),
        },
        Kind::EnvList => {
            let Some(items) = v.as_array() else {
                return bad("a list of {name, value} or {name, valueFrom}");
            };
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let Some(m) = item.as_object() else {
                    return Err(format!("{p}: must be an object"));
                };
                for k in m.keys() {
                    if !["name", "value", "valueFrom"].contains(&k.as_str()) {
                        return Err(format!("{p}.{k}: unknown field"));
                    }
                }
                match m.get("name") {
                    None => return Err(format!("{p}.name: required")),
                    Some(n) => check(Kind::NonEmptyString, n, &format!("{p}.name"))?,
                }
                if let Some(val) = m.get("value") {
                    check(Kind::String, val, &format!("{p}.value"))?;
                }
                if let Some(vf) = m.get("valueFrom") {
                    check(Kind::Object, vf, &format!("{p}.valueFrom"))?;
                    if m.contains_key("value") {
                        return Err(format!("{p}: value and valueFrom are exclusive"));
                    }
                }
            }
            Ok(())
        }
    }
}

/// `720h`, `1h30m`, `45s`: digits followed by h/m/s, repeated.
fn is_duration(s: &str) -> bool {
    let mut digits = false;
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if matches!(c, 'h' | 'm' | 's') && digits {
            digits = false;
            any = true;
        } else {
            return false;
        }
    }
    any && !digits
}

/// Validates `parameters` (absent = `{}`) against the template's schema.
pub fn validate(template: &Template, parameters: Option<&Value>) -> Result<(), String> {
    let empty = Map::new();
    let params = match parameters {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(format!("{ROOT}: must be an object")),
    };
    let fields = schema(template.name);
    for key in params.keys() {
        if !fields.iter().any(|f| f.name == key) {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            return Err(format!(
                "{ROOT}.{key}: unknown parameter for {} (known: {})",
                template.name,
                known.join(", ")
            ));
        }
    }
    for field in fields {
        let path = format!("{ROOT}.{}", field.name);
        match params.get(field.name) {
            None if field.required => return Err(format!("{path}: required")),
            None => {}
            Some(v) => check(field.kind, v, &path)?,
        }
    }
    match template.name {
        "runbook.workflow" => {
            match (
                params.contains_key("workflowTemplate"),
                params.contains_key("template"),
            ) {
                (false, false) => return Err(format!("{ROOT}.workflowTemplate: required")),
                (true, true) => {
                    return Err(format!(
                        "{ROOT}.template: alias of workflowTemplate; give only one of them"
                    ));
                }
                _ => {}
            }
        }
        "upgrade.helm"
            if !params.contains_key("targetVersion") && !params.contains_key("valuesPatch") =>
        {
            return Err(format!(
                "{ROOT}.targetVersion: required (or valuesPatch): nothing to upgrade"
            ));
        }
        "backup.csiSnapshot" => {
            if let Some(items) = params
                .get("persistentVolumeClaims")
                .and_then(Value::as_array)
            {
                for (i, item) in items.iter().enumerate() {
                    check(
                        Kind::NonEmptyString,
                        item,
                        &format!("{ROOT}.persistentVolumeClaims[{i}]"),
                    )?;
                }
            }
        }
        _ => {}
    }
    if let Some(sa) = params.get("serviceAccountName").and_then(Value::as_str)
        && sa != RUNNER_SERVICE_ACCOUNT
    {
        return Err(format!(
            "{ROOT}.serviceAccountName: only {RUNNER_SERVICE_ACCOUNT:?} may run operation workloads"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::template;
    use serde_json::json;
    use vworkspace_api::operation::{Engine, OperationType};

    fn job() -> &'static Template {
        template(OperationType::RunCommand, Engine::Job).unwrap()
    }

    #[test]
    fn job_parameters() {
        assert!(
            validate(
                job(),
                Some(&json!({"image": "busybox", "env": [{"name": "A", "value": "1"}]}))
            )
            .is_ok()
        );
        assert_eq!(
            validate(job(), None).unwrap_err(),
            "spec.parameters.image: required"
        );
        assert_eq!(
            validate(job(), Some(&json!({"image": "x", "env": [{"value": "1"}]}))).unwrap_err(),
            "spec.parameters.env[0].name: required"
        );
        assert_eq!(
            validate(job(), Some(&json!({"image": "x", "env": {"A": "1"}}))).unwrap_err(),
            "spec.parameters.env: must be a list of {name, value} or {name, valueFrom}"
        );
        assert!(
            validate(
                job(),
                Some(&json!({"image": "x", "serviceAccountName": "default"}))
            )
            .unwrap_err()
            .contains("serviceAccountName")
        );
        assert!(
            validate(job(), Some(&json!({"image": "x", "bogus": 1})))
                .unwrap_err()
                .starts_with("spec.parameters.bogus: unknown parameter")
        );
        assert_eq!(
            validate(job(), Some(&json!({"image": "x", "backoffLimit": -1}))).unwrap_err(),
            "spec.parameters.backoffLimit: must be an integer ≥ 0"
        );
    }

    #[test]
    fn velero_parameters() {
        let backup = template(OperationType::Backup, Engine::Velero).unwrap();
        assert!(
            validate(
                backup,
                Some(&json!({"ttl": "720h", "snapshotVolumes": true}))
            )
            .is_ok()
        );
        assert!(
            validate(backup, Some(&json!({"ttl": "30d"})))
                .unwrap_err()
                .starts_with("spec.parameters.ttl:")
        );
        let restore = template(OperationType::Restore, Engine::Velero).unwrap();
        assert_eq!(
            validate(restore, Some(&json!({}))).unwrap_err(),
            "spec.parameters.backupName: required"
        );
        assert!(is_duration("1h30m") && !is_duration("h") && !is_duration("10"));
    }

    #[test]
    fn workflow_helm_hook_volsync_snapshot_parameters() {
        let wf = template(OperationType::Runbook, Engine::Workflow).unwrap();
        assert!(
            validate(
                wf,
                Some(&json!({"workflowTemplate": "t", "workflowTemplateParameters": {"a": "1"}}))
            )
            .is_ok()
        );
        assert!(
            validate(
                wf,
                Some(&json!({"template": "t", "targetChartVersion": "1.2.3"}))
            )
            .is_ok()
        );
        assert_eq!(
            validate(wf, Some(&json!({}))).unwrap_err(),
            "spec.parameters.workflowTemplate: required"
        );
        assert!(validate(wf, Some(&json!({"template": "a", "workflowTemplate": "b"}))).is_err());
        assert_eq!(
            validate(
                wf,
                Some(&json!({"workflowTemplate": "t", "workflowTemplateParameters": {"a": 1}}))
            )
            .unwrap_err(),
            "spec.parameters.workflowTemplateParameters.a: must be a string"
        );
        assert!(
            validate(
                wf,
                Some(&json!({"workflowTemplate": "t", "failureAction": "x"}))
            )
            .is_err()
        );
        let helm = template(OperationType::Upgrade, Engine::Helm).unwrap();
        assert!(validate(helm, Some(&json!({"targetVersion": "2.0.0"}))).is_ok());
        assert!(
            validate(helm, Some(&json!({})))
                .unwrap_err()
                .contains("nothing to upgrade")
        );
        assert_eq!(
            validate(helm, Some(&json!({"valuesPatch": []}))).unwrap_err(),
            "spec.parameters.valuesPatch: must be an object"
        );
        let hook = template(OperationType::Migration, Engine::HelmHookJob).unwrap();
        assert_eq!(
            validate(hook, Some(&json!({}))).unwrap_err(),
            "spec.parameters.hookName: required"
        );
        assert!(
            validate(
                hook,
                Some(&json!({"hookName": "db-migrate", "backoffLimit": 0}))
            )
            .is_ok()
        );
        let vs = template(OperationType::Backup, Engine::Volsync).unwrap();
        assert!(
            validate(
                vs,
                Some(&json!({"sourcePVC": "data", "repository": "restic"}))
            )
            .is_ok()
        );
        assert_eq!(
            validate(
                vs,
                Some(&json!({"sourcePVC": "data", "repository": "r", "copyMethod": "Copy"}))
            )
            .unwrap_err(),
            "spec.parameters.copyMethod: must be one of Snapshot, Clone, Direct"
        );
        let snap = template(OperationType::Backup, Engine::CsiSnapshot).unwrap();
        assert!(validate(snap, None).is_ok());
        assert_eq!(
            validate(snap, Some(&json!({"persistentVolumeClaims": ["a", ""]}))).unwrap_err(),
            "spec.parameters.persistentVolumeClaims[1]: must be a non-empty string"
        );
    }
}
