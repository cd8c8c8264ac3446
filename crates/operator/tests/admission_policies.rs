//! Layer 1 of admission (docs/admission.md): the shipped ValidatingAdmissionPolicies and the
//! CRD CEL rules on a real kube-apiserver with no operator running. Every rule accepted and
//! rejected, nothing wedges (finalizer removal, status writes and deletion of a now-invalid
//! object go through), the API server's verdicts equal the Rust validation the controllers
//! use, and a rejected `kubectl apply` prints one actionable line.
//!
//! The control plane may be shared with other suites, so the shipped cluster-wide bindings
//! are never created here: each test binds the shipped policies with a copy of the shipped
//! binding restricted to namespaces carrying this process's test label.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams,
};
use serde::Deserialize;
use serde_json::{Value, json};
use testkit::ControlPlane;
use testkit::fixtures::eventually;
use vworkspace_api::validation::validate_application_instance;
use vworkspace_api::{ApplicationInstance, Operation, keys};
use vworkspace_decide::engines::{self, TEMPLATES};
use vworkspace_decide::namespace_policy;
use vworkspace_decide::operation::gates;
use vworkspace_operator::agent::applier::Applier;
use vworkspace_operator::agent::scope::ScopePolicy;

const POLICIES: &str = "charts/vworkspace-operator/files/admission-policies.yaml";
const CONFIG_POLICIES: &str = "config/admission/admission-policies.yaml";
/// Namespaces carrying this label (value: the test process id) are bound to the policies.
const TEST_LABEL: &str = "admission-policies.test.vworkspace.io/process";
const HOLD: &str = "test.vworkspace.io/hold";
const WAIT: Duration = Duration::from_secs(30);

fn repo(path: &str) -> PathBuf {
    testkit::repo_root().join(path)
}

fn shipped() -> Vec<Value> {
    let text = std::fs::read_to_string(repo(POLICIES)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(doc).unwrap()))
        .map(Result::unwrap)
        .filter(|v| !v.is_null())
        .collect()
}

fn pid() -> String {
    std::process::id().to_string()
}

/// Applies the shipped policies and, per policy, a test binding limited to namespaces
/// labelled with this process's test label.
async fn install(client: &Client) {
    let pp = PatchParams::apply("admission-policies-test").force();
    for doc in shipped() {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match doc["kind"].as_str().unwrap() {
            kind @ ("ValidatingAdmissionPolicy" | "MutatingAdmissionPolicy") => {
                let ar = if kind == "ValidatingAdmissionPolicy" {
                    ApiResource::erase::<ValidatingAdmissionPolicy>(&())
                } else {
                    ApiResource::erase::<MutatingAdmissionPolicy>(&())
                };
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                api.patch(&name, &pp, &Patch::Apply(&doc)).await.unwrap();
            }
            kind @ ("ValidatingAdmissionPolicyBinding" | "MutatingAdmissionPolicyBinding") => {
                let mut doc = doc.clone();
                let test_name = format!("{name}-test-{}", pid());
                doc["metadata"]["name"] = json!(test_name);
                doc["spec"]["matchResources"] =
                    json!({"namespaceSelector": {"matchLabels": {TEST_LABEL: pid()}}});
                let ar = if kind == "ValidatingAdmissionPolicyBinding" {
                    ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&())
                } else {
                    ApiResource::erase::<MutatingAdmissionPolicyBinding>(&())
                };
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                api.patch(&test_name, &pp, &Patch::Apply(&doc))
                    .await
                    .unwrap();
            }
            other => panic!("unexpected kind {other} in {POLICIES}"),
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Ns {
    client: Client,
    name: String,
}

/// A fresh namespace; `bound` puts it under the test bindings, `gated` adds the
/// `managed-by=vworkspace` gate label.
async fn namespace(prefix: &str, bound: bool, gated: bool, annotations: &[(&str, &str)]) -> Ns {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    install(&client).await;
    let name = format!(
        "{prefix}-{}-{}",
        pid(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut labels = BTreeMap::new();
    if bound {
        labels.insert(TEST_LABEL.to_string(), pid());
    }
    if gated {
        labels.insert(
            keys::LABEL_NAMESPACE_GATE.to_string(),
            keys::NAMESPACE_GATE_VALUE.to_string(),
        );
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let ns = Ns { client, name };
    if bound {
        ns.wait_enforced().await;
    }
    ns
}

impl Ns {
    fn api(&self, kind: &str) -> Api<DynamicObject> {
        let ar = match kind {
            "Operation" => ApiResource::erase::<Operation>(&()),
            "ApplicationInstance" => ApiResource::erase::<ApplicationInstance>(&()),
            other => panic!("unexpected kind {other}"),
        };
        Api::namespaced_with(self.client.clone(), &self.name, &ar)
    }

    async fn create_with(&self, obj: &Value, dry_run: bool) -> Result<(), String> {
        let kind = obj["kind"].as_str().unwrap();
        let obj: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
        let pp = PostParams {
            dry_run,
            ..Default::default()
        };
        match self.api(kind).create(&pp, &obj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) => Err(e.message),
            Err(e) => panic!("creating {kind}: {e}"),
        }
    }

    async fn create(&self, obj: &Value) -> Result<(), String> {
        self.create_with(obj, false).await
    }

    async fn check(&self, obj: &Value) -> Result<(), String> {
        self.create_with(obj, true).await
    }

    async fn patch(&self, kind: &str, name: &str, patch: Value) -> Result<(), String> {
        match self
            .api(kind)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) => Err(e.message),
            Err(e) => panic!("patching {kind} {name}: {e}"),
        }
    }

    async fn patch_status(&self, kind: &str, name: &str, status: Value) {
        self.api(kind)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    /// Policies and bindings reach the API server's admission through informers: wait
    /// until a probe that only the policies reject is rejected in this namespace.
    async fn wait_enforced(&self) {
        let bad_op = op("probe", "Backup", "job", json!({}));
        let bad_inst = instance("probe", &self.name, |s| {
            s["appRef"]["catalogId"] = json!(" ")
        });
        eventually("the admission policies to be enforced", WAIT, || async {
            let a = self.check(&bad_op).await.err()?;
            let b = self.check(&bad_inst).await.err()?;
            (a.contains("no built-in operation template")
                && (b.contains("spec.appRef.catalogId is required")
                    || b.contains("NamespaceNotGated")))
            .then_some(())
        })
        .await;
    }
}

fn op(name: &str, t: &str, engine: &str, parameters: Value) -> Value {
    json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": name},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
                 "type": t, "engine": engine, "parameters": parameters}
    })
}

/// A valid managed instance in namespace `ns`, changed by `edit` (applied to the spec).
fn instance(name: &str, ns: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut spec = json!({
        "appRef": {"catalogId": "wiki"},
        "chart": {"sourceType": "helm", "url": "https://charts.example.org", "name": "wiki", "version": "1.0.0"},
        "release": {"name": "wiki", "namespace": ns},
        "values": {"source": "inline", "inline": {"replicas": 1}}
    });
    edit(&mut spec);
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name}, "spec": spec
    })
}

fn placeholder(name: &str) -> Value {
    instance(name, "", |s| {
        *s = json!({"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder"});
    })
}

fn with_finalizer(mut obj: Value) -> Value {
    obj["metadata"]["finalizers"] = json!([HOLD]);
    obj
}

#[track_caller]
fn rejected(result: Result<(), String>, fragments: &[&str]) {
    let message = result.expect_err("expected a rejection");
    for f in fragments {
        assert!(message.contains(f), "{message:?} lacks {f:?}");
    }
}

/// Parameters each template accepts (the consistency table needs them valid so that only
/// the rules of this layer decide).
fn valid_parameters(template: &str) -> Value {
    match template {
        "restore.velero" => json!({"backupName": "nightly"}),
        "runCommand.job" => json!({"image": "busybox"}),
        "upgrade.helm" => json!({"targetVersion": "2.0.0"}),
        "migration.helmHookJob" => json!({"hookName": "migrate"}),
        "runbook.workflow" => json!({"workflowTemplate": "upgrade"}),
        "backup.volsync" => json!({"sourcePVC": "data", "repository": "restic"}),
        _ => json!({}),
    }
}

#[test]
fn shipped_in_chart_and_config_without_drift() {
    let chart = std::fs::read_to_string(repo(POLICIES)).unwrap();
    let config = std::fs::read_to_string(repo(CONFIG_POLICIES)).unwrap();
    assert!(
        chart == config,
        "{CONFIG_POLICIES} differs from {POLICIES}; copy the chart file over it"
    );
    let kustomization =
        std::fs::read_to_string(repo("config/admission/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("- admission-policies.yaml"));
    let template = std::fs::read_to_string(repo(
        "charts/vworkspace-operator/templates/admission-policies.yaml",
    ))
    .unwrap();
    assert!(template.contains(".Values.admissionPolicies.enabled"));
    assert!(template.contains(".Files.Get \"files/admission-policies.yaml\""));
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("charts/vworkspace-operator/values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(values["admissionPolicies"]["enabled"], json!(true));

    // Structure that keeps the policies from wedging anything.
    let docs = shipped();
    let policies: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .collect();
    assert_eq!(policies.len(), 2);
    for p in &policies {
        let name = p["metadata"]["name"].as_str().unwrap();
        for rule in p["spec"]["matchConstraints"]["resourceRules"]
            .as_array()
            .unwrap()
        {
            assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]), "{name}");
            let resources = rule["resources"].as_array().unwrap();
            assert!(
                resources
                    .iter()
                    .all(|r| r == "operations" || r == "applicationinstances"),
                "{name} must match only our resources, never subresources: {resources:?}"
            );
        }
        let conditions: Vec<_> = p["spec"]["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["expression"].as_str().unwrap())
            .collect();
        assert!(conditions.contains(&"!has(object.metadata.deletionTimestamp)"));
        assert!(
            conditions.contains(&"request.operation == 'CREATE' || object.spec != oldObject.spec")
        );
        let binding = docs
            .iter()
            .find(|d| {
                d["kind"] == "ValidatingAdmissionPolicyBinding" && d["spec"]["policyName"] == name
            })
            .unwrap_or_else(|| panic!("no binding for {name}"));
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    }
}

#[tokio::test]
async fn operation_rules_accept_and_reject() {
    let ns = namespace("vap-op", true, true, &[]).await;
    // Rule 4: the built-in (type, engine) pairs.
    ns.create(&op("backup", "Backup", "velero", json!({})))
        .await
        .unwrap();
    rejected(
        ns.check(&op("x", "Migration", "workflow", json!({}))).await,
        &[
            "spec.engine: no built-in operation template",
            "Migration",
            "Runbook+workflow",
        ],
    );
    // Rule 1b (8.10): the runner ServiceAccount only.
    ns.check(&op(
        "sa-ok",
        "RunCommand",
        "job",
        json!({"image": "busybox", "serviceAccountName": engines::RUNNER_SERVICE_ACCOUNT}),
    ))
    .await
    .unwrap();
    for (t, engine) in [
        ("RunCommand", "job"),
        ("Runbook", "workflow"),
        ("Migration", "helmHookJob"),
    ] {
        rejected(
            ns.check(&op(
                "sa-bad",
                t,
                engine,
                json!({"image": "busybox", "serviceAccountName": "default"}),
            ))
            .await,
            &[
                "spec.parameters.serviceAccountName",
                "vworkspace-operation-runner",
            ],
        );
    }
    // 9.3: type, engine and target are immutable (CRD CEL).
    rejected(
        ns.patch("Operation", "backup", json!({"spec": {"type": "Restore"}}))
            .await,
        &["spec.type is immutable"],
    );
    // 9.3 rule 2: parameters change while Pending, not once started.
    ns.create(&op("cmd", "RunCommand", "job", json!({"image": "busybox"})))
        .await
        .unwrap();
    ns.patch(
        "Operation",
        "cmd",
        json!({"spec": {"parameters": {"image": "alpine"}}}),
    )
    .await
    .unwrap();
    ns.patch_status("Operation", "cmd", json!({"phase": "Pending"}))
        .await;
    ns.patch(
        "Operation",
        "cmd",
        json!({"spec": {"parameters": {"args": ["-c"]}}}),
    )
    .await
    .unwrap();
    ns.patch_status("Operation", "cmd", json!({"phase": "Running"}))
        .await;
    rejected(
        ns.patch(
            "Operation",
            "cmd",
            json!({"spec": {"parameters": {"image": "evil"}}}),
        )
        .await,
        &["spec.parameters is immutable once the operation has started (phase=Running)"],
    );
    // Other spec fields stay writable: a running Operation can be cancelled.
    ns.patch("Operation", "cmd", json!({"spec": {"cancel": true}}))
        .await
        .unwrap();
}

#[tokio::test]
async fn namespace_allow_list_applies_on_create_only() {
    let ns = namespace(
        "vap-types",
        true,
        true,
        &[(keys::ANNOTATION_ALLOWED_TYPES, " Backup , RunCommand ")],
    )
    .await;
    ns.create(&op("backup", "Backup", "velero", json!({})))
        .await
        .unwrap();
    rejected(
        ns.check(&op(
            "restore",
            "Restore",
            "velero",
            json!({"backupName": "b"}),
        ))
        .await,
        &[
            "spec.type: Restore is not allowed in namespace",
            "ops.vworkspace.io/allowed-types: Backup , RunCommand",
        ],
    );
    // Narrowing the list later does not stop edits of what was admitted.
    Api::<Namespace>::all(ns.client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {keys::ANNOTATION_ALLOWED_TYPES: "Restore"}}}),
            ),
        )
        .await
        .unwrap();
    eventually("the narrowed allow-list to apply", WAIT, || async {
        ns.check(&op("b2", "Backup", "velero", json!({})))
            .await
            .err()
            .map(|_| ())
    })
    .await;
    ns.patch(
        "Operation",
        "backup",
        json!({"spec": {"parameters": {"ttl": "24h"}}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn instance_rules_accept_and_reject() {
    let ns = namespace("vap-inst", true, true, &[]).await;
    let n = ns.name.clone();
    ns.create(&instance("wiki", &n, |_| {})).await.unwrap();
    ns.create(&placeholder("cluster-ops")).await.unwrap();
    let cases: Vec<(Value, &[&str])> = vec![
        (
            instance("a", &n, |s| s["appRef"]["catalogId"] = json!("  ")),
            &["spec.appRef.catalogId is required"],
        ),
        (
            instance("a", &n, |s| s["release"]["namespace"] = json!("elsewhere")),
            &["spec.release.namespace must match metadata.namespace"],
        ),
        (
            instance("a", &n, |s| {
                *s = json!({"appRef": {"catalogId": "c"}, "mode": "placeholder",
                            "release": {"name": "r", "namespace": "elsewhere"}})
            }),
            &["spec.release.namespace must match metadata.namespace"],
        ),
        (
            instance("a", &n, |s| s["chart"]["version"] = json!(" ")),
            &["spec.chart.version is required"],
        ),
        (
            instance("a", &n, |s| s["chart"]["url"] = json!(" ")),
            &["spec.chart.url is required"],
        ),
        (
            instance("a", &n, |s| s["release"]["name"] = json!(" ")),
            &["spec.release.name is required"],
        ),
        (
            instance(
                "a",
                &n,
                |s| {
                    s["values"] =
                        json!({"source": "secretRef", "secretRef": {"name": "v", "key": ""}})
                },
            ),
            &["spec.values.secretRef name and key are required"],
        ),
        (
            instance(
                "a",
                &n,
                |s| {
                    s["values"] =
                        json!({"source": "configMapRef", "configMapRef": {"name": "", "key": "k"}})
                },
            ),
            &["spec.values.configMapRef name and key are required"],
        ),
        // CRD CEL: exactly one values source, placeholder without chart.
        (
            instance("a", &n, |s| {
                s["values"]["secretRef"] = json!({"name": "v", "key": "values.yaml"})
            }),
            &["spec.values.secretRef must be set when, and only when"],
        ),
        (
            instance("a", &n, |s| s["mode"] = json!("placeholder")),
            &["spec.chart must not be set in placeholder mode"],
        ),
    ];
    for (obj, fragments) in cases {
        rejected(ns.check(&obj).await, fragments);
    }
    // Valid value sources are accepted.
    for values in [
        json!({"source": "secretRef", "secretRef": {"name": "v", "key": "values.yaml"}}),
        json!({"source": "configMapRef", "configMapRef": {"name": "v", "key": "values.yaml"}}),
    ] {
        ns.check(&instance("b", &n, |s| s["values"] = values))
            .await
            .unwrap();
    }
    // Release identity is immutable; the chart version is not.
    rejected(
        ns.patch(
            "ApplicationInstance",
            "wiki",
            json!({"spec": {"release": {"name": "wiki2"}}}),
        )
        .await,
        &["spec.release is immutable", "delete and recreate"],
    );
    ns.patch(
        "ApplicationInstance",
        "wiki",
        json!({"spec": {"chart": {"version": "1.1.0"}}}),
    )
    .await
    .unwrap();
    // An edit is judged like a new object.
    rejected(
        ns.patch(
            "ApplicationInstance",
            "wiki",
            json!({"spec": {"chart": {"url": " "}}}),
        )
        .await,
        &["spec.chart.url is required"],
    );
    // Managed -> placeholder is refused; placeholder edits are fine.
    rejected(
        ns.patch(
            "ApplicationInstance",
            "wiki",
            json!({"spec": {"mode": "placeholder", "chart": null, "values": null}}),
        )
        .await,
        &["delete and recreate as a placeholder"],
    );
    ns.patch(
        "ApplicationInstance",
        "cluster-ops",
        json!({"spec": {"release": {"name": "ops", "namespace": n}}}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn namespace_gate_refuses_new_instances_only() {
    let ns = namespace("vap-ungated", true, false, &[]).await;
    for obj in [
        instance("wiki", &ns.name, |_| {}),
        placeholder("cluster-ops"),
    ] {
        rejected(
            ns.check(&obj).await,
            &[
                "metadata.namespace",
                "NamespaceNotGated",
                "managed-by=vworkspace",
            ],
        );
    }
    // Operations are not gated (their target is).
    ns.check(&op("backup", "Backup", "velero", json!({})))
        .await
        .unwrap();
}

/// Objects admitted before the policies covered their namespace are now invalid; nothing
/// that finishes or removes them may be refused.
#[tokio::test]
async fn now_invalid_objects_never_wedge() {
    let ns = namespace("vap-wedge", false, false, &[]).await;
    ns.create(&with_finalizer(op("bad", "Backup", "job", json!({}))))
        .await
        .unwrap();
    ns.create(&with_finalizer(instance("bad", &ns.name, |s| {
        s["release"]["namespace"] = json!("elsewhere")
    })))
    .await
    .unwrap();
    ns.create(&with_finalizer(instance("ungated", &ns.name, |_| {})))
        .await
        .unwrap();
    Api::<Namespace>::all(ns.client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {TEST_LABEL: pid()}}})),
        )
        .await
        .unwrap();
    ns.wait_enforced().await;

    // A spec edit judges only what it changes: the old defect does not block a cancel or
    // an unrelated fix, a new defect in the changed part is refused.
    ns.patch("Operation", "bad", json!({"spec": {"cancel": true}}))
        .await
        .unwrap();
    rejected(
        ns.patch(
            "Operation",
            "bad",
            json!({"spec": {"parameters": {"serviceAccountName": "default"}}}),
        )
        .await,
        &["spec.parameters.serviceAccountName"],
    );
    ns.patch(
        "ApplicationInstance",
        "bad",
        json!({"spec": {"chart": {"version": "2.0.0"}}}),
    )
    .await
    .unwrap();
    rejected(
        ns.patch(
            "ApplicationInstance",
            "bad",
            json!({"spec": {"chart": {"url": " "}}}),
        )
        .await,
        &["spec.chart.url is required"],
    );
    // A release outside the instance namespace was never delivered: it may be corrected.
    ns.patch(
        "ApplicationInstance",
        "bad",
        json!({"spec": {"release": {"namespace": ns.name}}}),
    )
    .await
    .unwrap();
    // ...but status, label and finalizer writes are not judged at all.
    ns.patch_status("Operation", "bad", json!({"phase": "Pending"}))
        .await;
    ns.patch_status(
        "ApplicationInstance",
        "bad",
        json!({"observedGeneration": 1}),
    )
    .await;
    for kind in ["Operation", "ApplicationInstance"] {
        ns.patch(
            kind,
            "bad",
            json!({"metadata": {"labels": {"seen": "yes"}}}),
        )
        .await
        .unwrap();
    }
    // The gate is checked on CREATE only: an instance in a namespace that lost (or never
    // had) the label can still be fixed.
    ns.patch(
        "ApplicationInstance",
        "ungated",
        json!({"spec": {"chart": {"version": "2.0.0"}}}),
    )
    .await
    .unwrap();
    // Finalizer removal without deletion.
    ns.patch(
        "ApplicationInstance",
        "ungated",
        json!({"metadata": {"finalizers": null}}),
    )
    .await
    .unwrap();
    // Deletion, then finalizer removal of the deleting objects.
    for kind in ["Operation", "ApplicationInstance"] {
        ns.api(kind)
            .delete("bad", &DeleteParams::default())
            .await
            .unwrap();
        ns.patch(kind, "bad", json!({"metadata": {"finalizers": null}}))
            .await
            .unwrap();
        eventually("the deleted object to be gone", WAIT, || async {
            ns.api(kind)
                .get_opt("bad")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    ns.api("ApplicationInstance")
        .delete("ungated", &DeleteParams::default())
        .await
        .unwrap();
}

/// One rule set: for every object of the table, the API server (CRD CEL + policies) and
/// the Rust validation of the controllers (plus the namespace rules in
/// `vworkspace_decide::namespace_policy`) agree on accept/reject.
#[tokio::test]
async fn verdicts_equal_the_controller_validation() {
    let open = namespace("vap-same", true, true, &[]).await;
    let narrow = namespace(
        "vap-same",
        true,
        true,
        &[(keys::ANNOTATION_ALLOWED_TYPES, "Backup, RunCommand")],
    )
    .await;
    let ungated = namespace("vap-same", true, false, &[]).await;
    let types = [
        "Backup",
        "Restore",
        "Upgrade",
        "Migration",
        "RunCommand",
        "Runbook",
    ];
    let engine_names = [
        "velero",
        "workflow",
        "job",
        "helm",
        "volsync",
        "helmHookJob",
        "csiSnapshot",
    ];
    let mut operations = Vec::new();
    for t in types {
        for e in engine_names {
            let template = TEMPLATES
                .iter()
                .find(|x| engines::type_name(x.r#type) == t && engines::engine_name(x.engine) == e);
            operations.push(op(
                "same",
                t,
                e,
                valid_parameters(template.map_or("", |x| x.name)),
            ));
        }
    }
    for (t, e, image) in [
        ("RunCommand", "job", Some("busybox")),
        ("Runbook", "workflow", None),
        ("Migration", "helmHookJob", None),
    ] {
        for sa in [engines::RUNNER_SERVICE_ACCOUNT, "default"] {
            let template = TEMPLATES
                .iter()
                .find(|x| engines::type_name(x.r#type) == t && engines::engine_name(x.engine) == e)
                .unwrap();
            let mut params = valid_parameters(template.name);
            params["serviceAccountName"] = json!(sa);
            if let Some(i) = image {
                params["image"] = json!(i);
            }
            operations.push(op("same", t, e, params));
        }
    }
    let mut wrong_kind = op("same", "Backup", "velero", json!({}));
    wrong_kind["spec"]["targetRef"]["kind"] = json!("Deployment");
    operations.push(wrong_kind);
    let mut wrong_version = op("same", "Backup", "velero", json!({}));
    wrong_version["spec"]["targetRef"]["apiVersion"] = json!("apps.vworkspace.io/v1");
    operations.push(wrong_version);
    let mut no_time = op("same", "Backup", "velero", json!({}));
    no_time["spec"]["timeoutSeconds"] = json!(0);
    operations.push(no_time);

    let mut checked = 0;
    let mut rejections = 0;
    for ns in [&open, &narrow] {
        let annotations = ns_meta(ns, |m| m.annotations).await;
        for obj in &operations {
            let mut typed = obj.clone();
            typed["metadata"]["namespace"] = json!(ns.name);
            let rust: Result<(), String> = serde_json::from_value::<Operation>(typed)
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    gates::validate(&o).map_err(|b| b.message)?;
                    namespace_policy::allows_type(&ns.name, &annotations, o.spec.r#type)
                });
            let server = ns.check(obj).await;
            assert_eq!(
                rust.is_ok(),
                server.is_ok(),
                "verdicts differ for {} in {}: rust {rust:?}, API server {server:?}",
                obj["spec"],
                ns.name
            );
            checked += 1;
            rejections += usize::from(server.is_err());
        }
    }

    for ns in [&open, &ungated] {
        let labels = ns_meta(ns, |m| m.labels).await;
        let n = ns.name.as_str();
        let instances = vec![
            instance("same", n, |_| {}),
            instance(
                "same",
                n,
                |s| {
                    s["values"] =
                        json!({"source": "secretRef", "secretRef": {"name": "v", "key": "k"}})
                },
            ),
            instance(
                "same",
                n,
                |s| {
                    s["values"] =
                        json!({"source": "configMapRef", "configMapRef": {"name": "v", "key": "k"}})
                },
            ),
            placeholder("same"),
            instance("same", n, |s| {
                *s = json!({"appRef": {"catalogId": "c"}, "mode": "placeholder",
                            "release": {"name": "r", "namespace": n}})
            }),
            instance("same", n, |s| {
                *s = json!({"appRef": {"catalogId": "c"}, "mode": "placeholder",
                            "release": {"name": "r", "namespace": "elsewhere"}})
            }),
            instance("same", n, |s| s["mode"] = json!("placeholder")),
            instance("same", n, |s| {
                s["mode"] = json!("placeholder");
                s["chart"] = Value::Null;
                s["release"] = Value::Null;
            }),
            instance("same", n, |s| s["values"] = Value::Null),
            instance("same", n, |s| s["chart"] = Value::Null),
            instance("same", n, |s| s["release"] = Value::Null),
            instance("same", n, |s| {
                s["release"]["namespace"] = json!("elsewhere")
            }),
            instance("same", n, |s| s["appRef"]["catalogId"] = json!(" ")),
            instance("same", n, |s| s["chart"]["url"] = json!(" ")),
            instance("same", n, |s| s["chart"]["name"] = json!("\t")),
            instance("same", n, |s| s["chart"]["version"] = json!(" ")),
            instance("same", n, |s| s["release"]["name"] = json!(" ")),
            instance(
                "same",
                n,
                |s| {
                    s["values"] =
                        json!({"source": "secretRef", "secretRef": {"name": "", "key": "k"}})
                },
            ),
            instance(
                "same",
                n,
                |s| {
                    s["values"] =
                        json!({"source": "configMapRef", "configMapRef": {"name": "v", "key": ""}})
                },
            ),
            instance("same", n, |s| s["values"] = json!({"source": "secretRef"})),
            instance("same", n, |s| {
                s["values"]["configMapRef"] = json!({"name": "v", "key": "k"})
            }),
        ];
        for mut obj in instances {
            strip_nulls(&mut obj);
            let mut typed = obj.clone();
            typed["metadata"]["namespace"] = json!(n);
            let rust: Result<(), String> = serde_json::from_value::<ApplicationInstance>(typed)
                .map_err(|e| e.to_string())
                .and_then(|i| {
                    validate_application_instance(&i.spec, n)?;
                    namespace_policy::gated(n, &labels)
                });
            let server = ns.check(&obj).await;
            assert_eq!(
                rust.is_ok(),
                server.is_ok(),
                "verdicts differ for {} in {n}: rust {rust:?}, API server {server:?}",
                obj["spec"]
            );
            checked += 1;
            rejections += usize::from(server.is_err());
        }
    }
    // The table exercises both verdicts in quantity.
    assert!(
        checked > 100 && rejections > 40 && checked - rejections > 20,
        "{checked} {rejections}"
    );
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

async fn ns_meta(
    ns: &Ns,
    pick: impl FnOnce(ObjectMeta) -> Option<BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let got = Api::<Namespace>::all(ns.client.clone())
        .get(&ns.name)
        .await
        .unwrap();
    pick(got.metadata).unwrap_or_default()
}

/// What a person sees: `kubectl apply` of a bad object fails with one line naming the field.
#[tokio::test]
async fn kubectl_apply_prints_one_actionable_line() {
    let ns = namespace("vap-kubectl", true, true, &[]).await;
    let cp = ControlPlane::get().await.unwrap();
    let dir = cp.dir.join(format!("kubectl-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            op("bad-pair", "Backup", "job", json!({})),
            "spec.engine: no built-in operation template",
        ),
        (
            instance("bad-release", &ns.name, |s| {
                s["release"]["namespace"] = json!("elsewhere")
            }),
            "spec.release.namespace must match metadata.namespace",
        ),
    ];
    for (obj, fragment) in cases {
        let file = dir.join(format!(
            "{}.yaml",
            obj["metadata"]["name"].as_str().unwrap()
        ));
        std::fs::write(&file, serde_yaml::to_string(&obj).unwrap()).unwrap();
        let out = std::process::Command::new(cp.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&cp.kubeconfig)
            .args(["apply", "-n", &ns.name, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "kubectl apply accepted {obj}");
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one line: {stderr}");
        assert!(lines[0].contains(fragment), "{stderr}");
        eprintln!("kubectl: {}", lines[0]);
    }
}

/// The API server type-checks policy expressions against the CRD schemas and reports
/// problems in the policy status: a shipped policy has none.
#[tokio::test]
async fn policies_type_check_against_the_crds() {
    let ns = namespace("vap-typecheck", true, true, &[]).await;
    // The controller that writes the verdict runs in kube-controller-manager, which the
    // light profile starts without it: run a second instance with only this controller.
    let cp = ControlPlane::get().await.unwrap();
    let log =
        std::fs::File::create(cp.dir.join(format!("kcm-vap-status-{}.log", ns.name))).unwrap();
    let child = std::process::Command::new(cp.bin_dir.join("kube-controller-manager"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args([
            "--controllers=validatingadmissionpolicy-status-controller",
            "--leader-elect=false",
            "--secure-port=0",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _stop = KillOnDrop(child);
    let api: Api<DynamicObject> = Api::all_with(
        ns.client.clone(),
        &ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
    );
    for name in ["vworkspace-operation", "vworkspace-applicationinstance"] {
        let status = eventually("the policy to be type-checked", WAIT, || async {
            let p = api.get(name).await.unwrap();
            let status = p.data.get("status").cloned().unwrap_or(Value::Null);
            (status["observedGeneration"] == json!(p.metadata.generation)).then_some(status)
        })
        .await;
        let warnings = &status["typeChecking"]["expressionWarnings"];
        assert!(
            warnings.is_null() || warnings == &json!([]),
            "{name}: {}",
            serde_json::to_string_pretty(warnings).unwrap()
        );
    }
}

/// The shipped MutatingAdmissionPolicy sets each controller's finalizer at creation (so
/// the first reconcile has no metadata write to make), keeps finalizers others set, and
/// never adds its own twice.
#[tokio::test]
async fn finalizers_are_set_at_creation() {
    let ns = namespace("map-finalizer", true, true, &[]).await;
    let created = |obj: Value| {
        let ns = &ns;
        async move {
            let kind = obj["kind"].as_str().unwrap().to_string();
            let obj: DynamicObject = serde_json::from_value(obj).unwrap();
            ns.api(&kind)
                .create(&PostParams::default(), &obj)
                .await
                .unwrap()
                .metadata
                .finalizers
                .unwrap_or_default()
        }
    };
    // Bindings reach admission through informers: wait until a dry run is mutated.
    eventually("the finalizer policy to be enforced", WAIT, || async {
        let obj: DynamicObject =
            serde_json::from_value(instance("probe", &ns.name, |_| {})).unwrap();
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let out = ns.api("ApplicationInstance").create(&pp, &obj).await.ok()?;
        out.metadata.finalizers.is_some().then_some(())
    })
    .await;
    assert_eq!(
        created(instance("plain", &ns.name, |_| {})).await,
        vec![keys::FINALIZER_APPLICATION_INSTANCE.to_string()]
    );
    assert_eq!(
        created(op("plain-op", "Backup", "velero", json!({}))).await,
        vec![keys::FINALIZER_OPERATION.to_string()]
    );
    assert_eq!(
        created(with_finalizer(instance("held", &ns.name, |_| {}))).await,
        vec![
            HOLD.to_string(),
            keys::FINALIZER_APPLICATION_INSTANCE.to_string()
        ]
    );
    let mut already = instance("already", &ns.name, |_| {});
    already["metadata"]["finalizers"] = json!([keys::FINALIZER_APPLICATION_INSTANCE]);
    assert_eq!(
        created(already).await,
        vec![keys::FINALIZER_APPLICATION_INSTANCE.to_string()]
    );
}

/// Stops a child process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Pull-mode job that carries an object the policies refuse fails, and its error names
/// the admission message (what the control plane shows the person who sent it).
#[tokio::test]
async fn pull_mode_apply_of_a_refused_object_fails_with_the_message() {
    let ns = namespace("vap-pull", true, true, &[]).await;
    let applier = Applier::new(ns.client.clone(), ScopePolicy::new("vworkspace-system"));
    let mut bad = op("from-control-plane", "Backup", "job", json!({}));
    bad["metadata"]["namespace"] = json!(ns.name);
    let err = applier.apply(&bad, "cluster-1").await.unwrap_err();
    assert_eq!(err.outcome(), "failed");
    let text = err.to_string();
    assert!(
        text.contains("rejected by the API server")
            && text.contains("spec.engine: no built-in operation template"),
        "{text}"
    );
    let mut good = op("from-control-plane", "Backup", "velero", json!({}));
    good["metadata"]["namespace"] = json!(ns.name);
    applier.apply(&good, "cluster-1").await.unwrap();
}
