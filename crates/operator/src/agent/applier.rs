//! Writes and deletes the objects of Pull-mode jobs (spec §2.12, §3.6).
//!
//! - Server-side apply with field manager `vworkspace-agent`, **not forced**: when
//!   another manager owns a field the job sets, the API server answers `409` and the job
//!   ends with outcome `conflict` naming the manager(s) and field paths (connectivity
//!   defect 11). Re-applying the same manifest is a no-op, which is what makes
//!   redelivered jobs harmless (see `idempotency`).
//! - Labels `app.vworkspace.io/managed-by=control-plane` and
//!   `app.vworkspace.io/cluster-id=<id>` are stamped on every written object.
//! - Every object passes the [`ScopePolicy`] (kinds, namespaces) before anything is
//!   written, including namespaces the write would create.
//! - A missing target namespace is created with the gate label `managed-by=vworkspace`
//!   (the namespace then counts as managed by the operator); existing namespaces are left
//!   untouched.
//! - `apply` is schema-agnostic (kinds resolved through discovery, cached); intents are
//!   decoded into our typed CRDs first, so fields unknown to the schema are dropped.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::Value;
use tokio::sync::Mutex;
use vworkspace_api::{ApplicationInstance, Cluster, Operation, keys};

use super::scope::ScopePolicy;
use super::write_params;

/// The object a job wrote or deleted (wire `appliedRef`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

/// What a finished write still has to wait for before the job is `succeeded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Written is done (objects without readiness semantics, deletes).
    None,
    /// `Ready=True` for the applied generation.
    ApplicationInstance,
    /// `Succeeded=True`.
    Operation,
    /// Velero `BackupStorageLocation`: `status.phase=Available`.
    BackupStorageLocation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub reference: AppliedRef,
    pub readiness: Readiness,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not what its kind requires.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The scope policy refused it.
    #[error("refused by the agent's scope policy: {0}")]
    Refused(String),
    /// Another field manager owns fields the job sets.
    #[error("conflict: {}", describe_conflict(.managers, .fields, .message))]
    Conflict {
        managers: Vec<String>,
        fields: Vec<String>,
        message: String,
    },
    #[error("unsupported intent {0:?}")]
    UnsupportedIntent(String),
    #[error("{0}")]
    Api(String),
}

fn describe_conflict(managers: &[String], fields: &[String], message: &str) -> String {
    if managers.is_empty() && fields.is_empty() {
        return message.to_string();
    }
    format!(
        "field(s) {} owned by field manager(s) {}",
        fields.join(", "),
        managers
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl ApplyError {
    /// Wire outcome for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApplyError::Conflict { .. } => "conflict",
            _ => "failed",
        }
    }
}

/// Turns a Kubernetes API error into an [`ApplyError`]; a `409` on an apply is a
/// field-manager conflict whose causes name manager and field.
pub fn classify(e: kube::Error, what: &str) -> ApplyError {
    match e {
        kube::Error::Api(s) if s.code == 409 => {
            let (managers, fields) = parse_conflict(&s);
            ApplyError::Conflict {
                managers,
                fields,
                message: s.message.clone(),
            }
        }
        // Admission answers a denial with whatever code its author chose (webhooks often
        // 403): it is a verdict on the object, not missing RBAC, so it is reported as such
        // and not retried.
        kube::Error::Api(s) if is_admission_denial(&s.message) => {
            ApplyError::Malformed(format!("{what}: refused by admission: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 403 => ApplyError::Api(format!(
            "{what}: forbidden by RBAC (grant the operator's ServiceAccount access): {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            ApplyError::Malformed(format!("{what}: rejected by the API server: {}", s.message))
        }
        other => ApplyError::Api(format!("{what}: {other}")),
    }
}

/// The API server's wording for a refusal by a validating webhook or a
/// ValidatingAdmissionPolicy.
fn is_admission_denial(message: &str) -> bool {
    (message.contains("admission webhook") && message.contains("denied the request"))
        || (message.starts_with("ValidatingAdmissionPolicy") && message.contains("denied request"))
}

/// Managers and field paths of a server-side-apply conflict. Causes look like
/// `{reason: FieldManagerConflict, message: "conflict with \"kubectl-edit\" using
/// apps.vworkspace.io/v1alpha1", field: ".spec.chart.version"}`.
pub fn parse_conflict(s: &kube::core::Status) -> (Vec<String>, Vec<String>) {
    let mut managers = Vec::new();
    let mut fields = Vec::new();
    let causes = s
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or(&[]);
    for c in causes {
        if let Some(m) = quoted(&c.message)
            && !managers.contains(&m)
        {
            managers.push(m);
        }
        if !c.field.is_empty() && !fields.contains(&c.field) {
            fields.push(c.field.clone());
        }
    }
    if managers.is_empty()
        && let Some(m) = quoted(&s.message)
    {
        managers.push(m);
    }
    (managers, fields)
}

fn quoted(s: &str) -> Option<String> {
    let start = s.find('"')? + 1;
    let len = s[start..].find('"')?;
    Some(s[start..start + len].to_string())
}

/// Splits `group/version` (`v1` → core group).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Payload of a `delete` job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTarget {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

pub fn parse_delete(payload: &Value) -> Result<DeleteTarget, ApplyError> {
    let missing = |f: &str| ApplyError::Malformed(format!("delete payload: {f} is required"));
    if !payload.is_object() {
        return Err(ApplyError::Malformed(
            "delete payload must be a JSON object".into(),
        ));
    }
    Ok(DeleteTarget {
        api_version: str_field(payload, &["apiVersion"])
            .ok_or_else(|| missing("apiVersion"))?
            .into(),
        kind: str_field(payload, &["kind"])
            .ok_or_else(|| missing("kind"))?
            .into(),
        name: str_field(payload, &["name"])
            .ok_or_else(|| missing("name"))?
            .into(),
        namespace: str_field(payload, &["namespace"]).map(String::from),
    })
}

/// Intents (spec §2.12), decoded.
#[derive(Clone, Debug)]
pub enum Intent {
    EnsureApplicationInstance(Box<ApplicationInstance>),
    RequestOperation(Box<Operation>),
    DeleteApplicationInstance { name: String, namespace: String },
    RotateOperatorCredentials,
}

pub const INTENT_ENSURE_APPLICATION_INSTANCE: &str = "ensure-application-instance";
pub const INTENT_REQUEST_OPERATION: &str = "request-operation";
pub const INTENT_DELETE_APPLICATION_INSTANCE: &str = "delete-application-instance";
pub const INTENT_ROTATE_OPERATOR_CREDENTIALS: &str = "rotate-operator-credentials";

fn typed<T: serde::de::DeserializeOwned>(
    payload: &Value,
    field: &str,
    api_version: &str,
    kind: &str,
) -> Result<T, ApplyError> {
    let obj = payload
        .get(field)
        .ok_or_else(|| ApplyError::Malformed(format!("intent payload: {field} is required")))?;
    if str_field(obj, &["apiVersion"]) != Some(api_version)
        || str_field(obj, &["kind"]) != Some(kind)
    {
        return Err(ApplyError::Malformed(format!(
            "intent payload: {field} must have apiVersion {api_version} and kind {kind}"
        )));
    }
    if str_field(obj, &["metadata", "name"]).is_none() {
        return Err(ApplyError::Malformed(format!(
            "intent payload: {field}.metadata.name is required"
        )));
    }
    serde_json::from_value(obj.clone())
        .map_err(|e| ApplyError::Malformed(format!("intent payload: {field}: {e}")))
}

pub fn parse_intent(payload: &Value) -> Result<Intent, ApplyError> {
    let name = str_field(payload, &["intent"])
        .ok_or_else(|| ApplyError::Malformed("intent payload: intent is required".into()))?;
    match name {
        INTENT_ENSURE_APPLICATION_INSTANCE => {
            Ok(Intent::EnsureApplicationInstance(Box::new(typed(
                payload,
                "applicationInstance",
                "apps.vworkspace.io/v1alpha1",
                "ApplicationInstance",
            )?)))
        }
        INTENT_REQUEST_OPERATION => Ok(Intent::RequestOperation(Box::new(typed(
            payload,
            "operation",
            "ops.vworkspace.io/v1alpha1",
            "Operation",
        )?))),
        INTENT_DELETE_APPLICATION_INSTANCE => Ok(Intent::DeleteApplicationInstance {
            name: str_field(payload, &["name"])
                .ok_or_else(|| {
                    ApplyError::Malformed("delete-application-instance: name is required".into())
                })?
                .into(),
            namespace: str_field(payload, &["namespace"])
                .unwrap_or_default()
                .into(),
        }),
        INTENT_ROTATE_OPERATOR_CREDENTIALS => Ok(Intent::RotateOperatorCredentials),
        other => Err(ApplyError::UnsupportedIntent(other.into())),
    }
}

/// Stamps the ownership and cluster-id labels onto a manifest.
pub fn stamp_labels(obj: &mut Value, cluster_id: &str) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = Value::Object(Default::default());
    }
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = Value::Object(Default::default());
    }
    let labels = &mut meta["labels"];
    labels[keys::LABEL_MANAGED_BY] = keys::MANAGED_BY_CONTROL_PLANE.into();
    if !cluster_id.is_empty() {
        labels[keys::LABEL_CLUSTER_ID] = cluster_id.into();
    }
}

/// Removes what producers should not send and the API server would reject in an apply.
fn sanitize(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "managedFields",
            "creationTimestamp",
            "generation",
        ] {
            meta.remove(k);
        }
    }
}

fn readiness_for(group: &str, kind: &str) -> Readiness {
    match (group, kind) {
        ("apps.vworkspace.io", "ApplicationInstance") => Readiness::ApplicationInstance,
        ("ops.vworkspace.io", "Operation") => Readiness::Operation,
        ("velero.io", "BackupStorageLocation") => Readiness::BackupStorageLocation,
        _ => Readiness::None,
    }
}

pub struct Applier {
    client: kube::Client,
    policy: ScopePolicy,
    resources: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    /// Namespaces seen to exist: each job would otherwise read its namespace first. A
    /// namespace deleted since is found by the apply's `404` (then checked again).
    namespaces: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Applier {
    pub fn new(client: kube::Client, policy: ScopePolicy) -> Self {
        Applier {
            client,
            policy,
            resources: Mutex::new(HashMap::new()),
            namespaces: Default::default(),
        }
    }

    pub fn policy(&self) -> &ScopePolicy {
        &self.policy
    }

    /// Resolves a kind through discovery (cached; a miss is re-queried every time so
    /// CRDs installed later are found).
    async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), ApplyError> {
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Some(hit) = self.resources.lock().await.get(&gvk) {
            return Ok(hit.clone());
        }
        let found = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => ApplyError::Malformed(format!(
                    "kind {kind} of {api_version} is not served by this cluster"
                )),
                kube::Error::Discovery(d) => ApplyError::Malformed(format!(
                    "kind {kind} of {api_version} is not served by this cluster: {d}"
                )),
                other => ApplyError::Api(format!("discovery of {api_version} {kind}: {other}")),
            })?;
        self.resources.lock().await.insert(gvk, found.clone());
        Ok(found)
    }

    /// Ensures a namespace exists (created with the gate label when absent).
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), ApplyError> {
        if self.namespaces.lock().is_ok_and(|n| n.contains(name)) {
            return Ok(());
        }
        self.ensure_namespace_uncached(name).await?;
        if let Ok(mut n) = self.namespaces.lock() {
            if n.len() >= 10_000 {
                n.clear();
            }
            n.insert(name.to_string());
        }
        Ok(())
    }

    fn forget_namespace(&self, name: &str) {
        if let Ok(mut n) = self.namespaces.lock() {
            n.remove(name);
        }
    }

    async fn ensure_namespace_uncached(&self, name: &str) -> Result<(), ApplyError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(classify(e, &format!("reading namespace {name}"))),
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [(
                        keys::LABEL_NAMESPACE_GATE.to_string(),
                        keys::NAMESPACE_GATE_VALUE.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&write_params(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(classify(e, &format!("creating namespace {name}"))),
        }
    }

    /// `apply` jobs: any kind the scope policy admits.
    pub async fn apply(&self, manifest: &Value, cluster_id: &str) -> Result<Applied, ApplyError> {
        if !manifest.is_object() {
            return Err(ApplyError::Malformed(
                "apply payload must be a JSON object (a Kubernetes manifest)".into(),
            ));
        }
        let api_version = str_field(manifest, &["apiVersion"])
            .ok_or_else(|| ApplyError::Malformed("apply payload: apiVersion is required".into()))?
            .to_string();
        let kind = str_field(manifest, &["kind"])
            .ok_or_else(|| ApplyError::Malformed("apply payload: kind is required".into()))?
            .to_string();
        let name = str_field(manifest, &["metadata", "name"])
            .ok_or_else(|| {
                ApplyError::Malformed("apply payload: metadata.name is required".into())
            })?
            .to_string();
        let namespace = str_field(manifest, &["metadata", "namespace"]).map(String::from);
        let (group, _) = split_api_version(&api_version);
        let group = group.to_string();
        let (ar, caps) = self.resolve(&api_version, &kind).await?;
        let namespaced = caps.scope == Scope::Namespaced;
        if namespaced && namespace.is_none() {
            return Err(ApplyError::Malformed(format!(
                "apply payload: {kind} is namespaced; metadata.namespace is required"
            )));
        }
        let ns = if namespaced {
            namespace.as_deref()
        } else {
            None
        };
        self.policy
            .check(&group, &kind, ns, Some(manifest))
            .map_err(ApplyError::Refused)?;
        let mut obj = manifest.clone();
        sanitize(&mut obj);
        if !namespaced && let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        stamp_labels(&mut obj, cluster_id);
        if let Some(ns) = ns {
            self.ensure_namespace(ns).await?;
        }
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let what = format!("applying {kind} {}/{name}", ns.unwrap_or(""));
        let params = PatchParams::apply(keys::FIELD_MANAGER_AGENT);
        let stored = match api.patch(&name, &params, &Patch::Apply(&obj)).await {
            // The namespace may be gone since it was last seen: make sure, then once more.
            Err(kube::Error::Api(s)) if s.code == 404 && ns.is_some() => {
                if let Some(ns) = ns {
                    self.forget_namespace(ns);
                    self.ensure_namespace(ns).await?;
                }
                api.patch(&name, &params, &Patch::Apply(&obj)).await
            }
            other => other,
        }
        .map_err(|e| classify(e, &what))?;
        Ok(Applied {
            reference: AppliedRef {
                api_version,
                kind: kind.clone(),
                namespace: ns.unwrap_or_default().to_string(),
                name,
                uid: stored.metadata.uid.clone().unwrap_or_default(),
                generation: stored.metadata.generation.unwrap_or_default(),
            },
            readiness: readiness_for(&group, &kind),
        })
    }

    /// `delete` jobs. Absent objects count as deleted.
    pub async fn delete(&self, payload: &Value) -> Result<Applied, ApplyError> {
        let t = parse_delete(payload)?;
        let (group, _) = split_api_version(&t.api_version);
        let (ar, caps) = self.resolve(&t.api_version, &t.kind).await?;
        let namespaced = caps.scope == Scope::Namespaced;
        if namespaced && t.namespace.is_none() {
            return Err(ApplyError::Malformed(format!(
                "delete payload: {} is namespaced; namespace is required",
                t.kind
            )));
        }
        let ns = if namespaced {
            t.namespace.as_deref()
        } else {
            None
        };
        self.policy
            .check(group, &t.kind, ns, None)
            .map_err(ApplyError::Refused)?;
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        match api.delete(&t.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(classify(e, &format!("deleting {} {}", t.kind, t.name))),
        }
        Ok(Applied {
            reference: AppliedRef {
                api_version: t.api_version,
                kind: t.kind,
                namespace: ns.unwrap_or_default().into(),
                name: t.name,
                ..Default::default()
            },
            readiness: Readiness::None,
        })
    }

    /// `intent` jobs. `rotate-operator-credentials` sets `spec.rotateCredentials` on
    /// `active_cluster` (the Cluster controller rotates and hot-swaps the token).
    pub async fn intent(
        &self,
        payload: &Value,
        cluster_id: &str,
        active_cluster: Option<&str>,
    ) -> Result<Applied, ApplyError> {
        match parse_intent(payload)? {
            Intent::EnsureApplicationInstance(inst) => {
                let ns = inst.metadata.namespace.clone().unwrap_or_default();
                // Typed round trip: fields unknown to the schema are gone.
                let mut value = serde_json::to_value(&*inst)
                    .map_err(|e| ApplyError::Malformed(e.to_string()))?;
                if let Some(release_ns) = inst
                    .spec
                    .release
                    .as_ref()
                    .map(|r| r.namespace.clone())
                    .filter(|r| !r.is_empty() && *r != ns)
                {
                    self.policy
                        .check(
                            "apps.vworkspace.io",
                            "ApplicationInstance",
                            Some(&release_ns),
                            None,
                        )
                        .map_err(|e| ApplyError::Refused(format!("spec.release.namespace: {e}")))?;
                    // The instance's own namespace is checked (and created) by apply.
                    self.policy
                        .check("apps.vworkspace.io", "ApplicationInstance", Some(&ns), None)
                        .map_err(ApplyError::Refused)?;
                    self.ensure_namespace(&release_ns).await?;
                }
                value["apiVersion"] = "apps.vworkspace.io/v1alpha1".into();
                value["kind"] = "ApplicationInstance".into();
                self.apply(&value, cluster_id).await
            }
            Intent::RequestOperation(op) => {
                let mut value =
                    serde_json::to_value(&*op).map_err(|e| ApplyError::Malformed(e.to_string()))?;
                value["apiVersion"] = "ops.vworkspace.io/v1alpha1".into();
                value["kind"] = "Operation".into();
                self.apply(&value, cluster_id).await
            }
            Intent::DeleteApplicationInstance { name, namespace } => {
                if namespace.is_empty() {
                    return Err(ApplyError::Malformed(
                        "delete-application-instance: namespace is required".into(),
                    ));
                }
                self.policy
                    .check(
                        "apps.vworkspace.io",
                        "ApplicationInstance",
                        Some(&namespace),
                        None,
                    )
                    .map_err(ApplyError::Refused)?;
                let api: Api<ApplicationInstance> =
                    Api::namespaced(self.client.clone(), &namespace);
                let existing = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| classify(e, &format!("reading ApplicationInstance {name}")))?;
                let mut reference = AppliedRef {
                    api_version: "apps.vworkspace.io/v1alpha1".into(),
                    kind: "ApplicationInstance".into(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    ..Default::default()
                };
                if let Some(inst) = existing {
                    reference.uid = inst.metadata.uid.clone().unwrap_or_default();
                    reference.generation = inst.metadata.generation.unwrap_or_default();
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => {
                            return Err(classify(
                                e,
                                &format!("deleting ApplicationInstance {name}"),
                            ));
                        }
                    }
                }
                Ok(Applied {
                    reference,
                    readiness: Readiness::None,
                })
            }
            Intent::RotateOperatorCredentials => {
                let name = active_cluster.ok_or_else(|| {
                    ApplyError::Api("rotate-operator-credentials: no Cluster object".into())
                })?;
                let api: Api<Cluster> = Api::all(self.client.clone());
                let patch = serde_json::json!({"spec": {"rotateCredentials": true}});
                let c = api
                    .patch(
                        name,
                        &PatchParams {
                            field_manager: Some(keys::FIELD_MANAGER_AGENT.into()),
                            ..PatchParams::default()
                        },
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(|e| classify(e, &format!("requesting rotation on Cluster {name}")))?;
                Ok(Applied {
                    reference: AppliedRef {
                        api_version: "ops.vworkspace.io/v1alpha1".into(),
                        kind: "Cluster".into(),
                        namespace: String::new(),
                        name: name.into(),
                        uid: c.metadata.uid.unwrap_or_default(),
                        generation: c.metadata.generation.unwrap_or_default(),
                    },
                    readiness: Readiness::None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};
    use serde_json::json;

    #[test]
    fn admission_denials_are_verdicts_not_rbac() {
        let webhook = kube::core::Status::failure(
            "admission webhook \"vapplicationinstance.kb.io\" denied the request: spec.values.inline: inline secret material rejected",
            "Forbidden",
        )
        .with_code(403);
        let e = classify(kube::Error::Api(Box::new(webhook)), "apply wiki");
        assert!(
            matches!(&e, ApplyError::Malformed(m) if m.contains("refused by admission") && !m.contains("RBAC")),
            "{e:?}"
        );
        let policy = kube::core::Status::failure(
            "ValidatingAdmissionPolicy 'vworkspace-applicationinstances' with binding 'b' denied request: spec.release.namespace must match",
            "Invalid",
        )
        .with_code(422);
        let e = classify(kube::Error::Api(Box::new(policy)), "apply wiki");
        assert!(
            matches!(&e, ApplyError::Malformed(m) if m.contains("refused by admission")),
            "{e:?}"
        );
        let rbac =
            kube::core::Status::failure("secrets is forbidden: User cannot list", "Forbidden")
                .with_code(403);
        let e = classify(kube::Error::Api(Box::new(rbac)), "apply wiki");
        assert!(
            matches!(&e, ApplyError::Api(m) if m.contains("RBAC")),
            "{e:?}"
        );
    }

    #[test]
    fn conflict_names_manager_and_fields() {
        let s = kube::core::Status::failure(
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps.vworkspace.io/v1alpha1: .spec.chart.version",
            "Conflict",
        )
        .with_code(409)
        .with_details(StatusDetails {
            causes: vec![StatusCause {
                reason: "FieldManagerConflict".into(),
                message: "conflict with \"kubectl-edit\" using apps.vworkspace.io/v1alpha1"
                    .into(),
                field: ".spec.chart.version".into(),
            }],
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            retry_after_seconds: 0,
        });
        let e = classify(kube::Error::Api(Box::new(s)), "applying");
        assert_eq!(e.outcome(), "conflict");
        assert_eq!(
            e.to_string(),
            "conflict: field(s) .spec.chart.version owned by field manager(s) \"kubectl-edit\""
        );
    }

    #[test]
    fn labels_are_stamped_and_others_kept() {
        let mut m = json!({"metadata": {"name": "a", "labels": {"team": "x", "app.vworkspace.io/managed-by": "odoo"}}});
        stamp_labels(&mut m, "c-1");
        assert_eq!(
            m["metadata"]["labels"],
            json!({"team": "x", "app.vworkspace.io/managed-by": "control-plane", "app.vworkspace.io/cluster-id": "c-1"})
        );
        let mut bare = json!({});
        stamp_labels(&mut bare, "");
        assert_eq!(
            bare["metadata"]["labels"],
            json!({"app.vworkspace.io/managed-by": "control-plane"})
        );
    }

    #[test]
    fn delete_payloads_are_validated() {
        let t = parse_delete(&json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "a", "namespace": ""})).unwrap();
        assert_eq!(t.namespace, None);
        let e = parse_delete(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed payload: delete payload: name is required"
        );
        assert!(parse_delete(&json!([1])).is_err());
    }

    #[test]
    fn intents_decode_into_typed_objects() {
        let p = json!({"intent": "ensure-application-instance", "applicationInstance": {
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {"name": "wiki", "namespace": "org-a"},
            "spec": {"appRef": {"catalogId": "wiki"}, "bogusField": 1}}});
        match parse_intent(&p).unwrap() {
            Intent::EnsureApplicationInstance(i) => {
                let v = serde_json::to_value(&*i).unwrap();
                assert!(v["spec"].get("bogusField").is_none());
            }
            other => panic!("{other:?}"),
        }
        let e = parse_intent(&json!({"intent": "ensure-application-instance", "applicationInstance": {"kind": "ApplicationInstance", "metadata": {"name": "x"}}})).unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
        assert_eq!(
            parse_intent(&json!({"intent": "launch-rockets"})).unwrap_err(),
            ApplyError::UnsupportedIntent("launch-rockets".into())
        );
        assert!(matches!(
            parse_intent(&json!({"intent": "rotate-operator-credentials"})).unwrap(),
            Intent::RotateOperatorCredentials
        ));
        assert!(parse_intent(&json!({"intent": "delete-application-instance"})).is_err());
        assert!(parse_intent(&json!({})).is_err());
    }

    #[test]
    fn api_versions_split() {
        assert_eq!(split_api_version("v1"), ("", "v1"));
        assert_eq!(
            split_api_version("apps.vworkspace.io/v1alpha1"),
            ("apps.vworkspace.io", "v1alpha1")
        );
    }
}
