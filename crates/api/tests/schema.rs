//! The generated CRDs on a real kube-apiserver: samples, enums, CEL rules, status
//! subresource and printer columns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use testkit::ControlPlane;
use testkit::fixtures::{TestNamespace, test_namespace};
use vworkspace_api::{ApplicationInstance, Cluster, Operation};

async fn setup(prefix: &str) -> (Client, String) {
    let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
    (client, ns)
}

fn api_for(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    match kind {
        "ApplicationInstance" => Api::namespaced_with(
            client.clone(),
            ns,
            &ApiResource::erase::<ApplicationInstance>(&()),
        ),
        "Operation" => {
            Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Operation>(&()))
        }
        "Cluster" => Api::all_with(client.clone(), &ApiResource::erase::<Cluster>(&())),
        other => panic!("unexpected kind {other}"),
    }
}

async fn create(client: &Client, ns: &str, obj: Value) -> Result<DynamicObject, kube::Error> {
    let kind = obj["kind"].as_str().unwrap().to_string();
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api_for(client, ns, &kind)
        .create(&PostParams::default(), &obj)
        .await
}

/// Every key/value of `want` is present in `got` (the server adds defaults).
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| contains(gv, v))),
        _ => got == want,
    }
}

#[tokio::test]
async fn every_sample_applies_and_round_trips() {
    let (client, ns) = setup("samples").await;
    let dir = testkit::repo_root().join("config/samples");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // gitops/ and monitoring/ hold Flux and Prometheus examples, not our kinds.
        if path.is_dir() {
            continue;
        }
        let mut obj: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = obj["kind"].as_str().unwrap().to_string();
        if kind != "Cluster" {
            obj["metadata"]["namespace"] = json!(ns);
            if let Some(spec_release) = obj["spec"].get_mut("release") {
                spec_release["namespace"] = json!(ns);
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let api = api_for(&client, &ns, &kind);
        let typed: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
        api.patch(
            &name,
            &PatchParams::apply("schema-test"),
            &Patch::Apply(&typed),
        )
        .await
        .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
        let back = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
        assert!(
            contains(&back["spec"], &obj["spec"]),
            "{} did not round-trip: {}",
            path.display(),
            back["spec"]
        );
        // The typed structs read what the server stored.
        match kind.as_str() {
            "ApplicationInstance" => {
                drop(serde_json::from_value::<ApplicationInstance>(back).unwrap())
            }
            "Operation" => drop(serde_json::from_value::<Operation>(back).unwrap()),
            _ => drop(serde_json::from_value::<Cluster>(back).unwrap()),
        }
        count += 1;
    }
    assert!(count >= 11, "expected all samples, found {count}");
}

fn instance(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn operation(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn good_instance_spec() -> Value {
    json!({"appRef": {"catalogId": "wiki"},
           "chart": {"sourceType": "helm", "url": "https://c.example.org", "name": "wiki", "version": "1.0.0"},
           "release": {"name": "wiki", "namespace": "x"},
           "values": {"source": "inline", "inline": {"a": 1}}})
}

fn good_operation_spec() -> Value {
    json!({"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "wiki"},
           "type": "Backup", "engine": "velero"})
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = base.pointer_mut(parent).unwrap();
    if value.is_null() {
        target.as_object_mut().unwrap().remove(key);
    } else {
        target[key] = value;
    }
    base
}

async fn expect_rejected(client: &Client, ns: &str, obj: Value, fragments: &[&str]) {
    let err = create(client, ns, obj.clone())
        .await
        .expect_err(&format!("accepted {obj}"));
    let kube::Error::Api(status) = err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(status.code, 422, "{}", status.message);
    for f in fragments {
        assert!(
            status.message.contains(f),
            "message {:?} does not contain {f:?}",
            status.message
        );
    }
}

#[tokio::test]
async fn enums_reject_bad_values_naming_the_field() {
    let (client, ns) = setup("enums").await;
    let cases = [
        (
            instance(
                &ns,
                "e1",
                with(good_instance_spec(), "/mode", json!("auto")),
            ),
            "spec.mode",
        ),
        (
            instance(
                &ns,
                "e2",
                with(good_instance_spec(), "/chart/sourceType", json!("git")),
            ),
            "spec.chart.sourceType",
        ),
        (
            instance(
                &ns,
                "e3",
                with(good_instance_spec(), "/values/source", json!("vault")),
            ),
            "spec.values.source",
        ),
        (
            operation(
                &ns,
                "e4",
                with(good_operation_spec(), "/type", json!("Destroy")),
            ),
            "spec.type",
        ),
        (
            operation(
                &ns,
                "e5",
                with(good_operation_spec(), "/engine", json!("argoWorkflows")),
            ),
            "spec.engine",
        ),
    ];
    for (obj, field) in cases {
        expect_rejected(&client, &ns, obj, &[field, "Unsupported value"]).await;
    }
}

#[tokio::test]
async fn cel_rules_reject_with_field_named() {
    let (client, ns) = setup("cel").await;
    let placeholder = json!({"appRef": {"catalogId": "ops"}, "mode": "placeholder"});
    let cases = [
        (
            instance(&ns, "c1", with(good_instance_spec(), "/chart", Value::Null)),
            "spec.chart is required when spec.mode is managed",
        ),
        (
            instance(
                &ns,
                "c2",
                with(good_instance_spec(), "/release", Value::Null),
            ),
            "spec.release is required when spec.mode is managed",
        ),
        (
            instance(
                &ns,
                "c3",
                with(good_instance_spec(), "/values", Value::Null),
            ),
            "spec.values is required when spec.mode is managed",
        ),
        (
            instance(
                &ns,
                "c4",
                with(
                    placeholder.clone(),
                    "/chart",
                    good_instance_spec()["chart"].clone(),
                ),
            ),
            "spec.chart must not be set in placeholder mode",
        ),
        (
            instance(
                &ns,
                "c5",
                with(
                    placeholder,
                    "/values",
                    json!({"source": "inline", "inline": {}}),
                ),
            ),
            "spec.values must not be set in placeholder mode",
        ),
        (
            instance(
                &ns,
                "c6",
                with(
                    good_instance_spec(),
                    "/values",
                    json!({"source": "secretRef", "inline": {}}),
                ),
            ),
            "spec.values.inline must be set when, and only when, spec.values.source is inline",
        ),
        (
            instance(
                &ns,
                "c7",
                with(
                    good_instance_spec(),
                    "/values",
                    json!({"source": "secretRef"}),
                ),
            ),
            "spec.values.secretRef must be set when, and only when, spec.values.source is secretRef",
        ),
        (
            instance(
                &ns,
                "c8",
                with(
                    good_instance_spec(),
                    "/values/configMapRef",
                    json!({"name": "a", "key": "b"}),
                ),
            ),
            "spec.values.configMapRef must be set when, and only when, spec.values.source is configMapRef",
        ),
        (
            operation(
                &ns,
                "c9",
                with(good_operation_spec(), "/targetRef/apiVersion", json!("v1")),
            ),
            "spec.targetRef.apiVersion must be apps.vworkspace.io/v1alpha1",
        ),
        (
            operation(
                &ns,
                "c10",
                with(
                    good_operation_spec(),
                    "/targetRef/kind",
                    json!("Deployment"),
                ),
            ),
            "spec.targetRef.kind must be ApplicationInstance",
        ),
    ];
    for (obj, message) in cases {
        expect_rejected(&client, &ns, obj, &[message]).await;
    }
    let cluster = json!({"apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "bad-endpoint"}, "spec": {"controlPlaneEndpoint": "ftp://x"}});
    expect_rejected(&client, &ns, cluster, &["spec.controlPlaneEndpoint"]).await;
}

#[tokio::test]
async fn operation_identity_is_immutable() {
    let (client, ns) = setup("immutable").await;
    create(&client, &ns, operation(&ns, "op", good_operation_spec()))
        .await
        .unwrap();
    let api: Api<Operation> = Api::namespaced(client, &ns);
    for (patch, message) in [
        (
            json!({"spec": {"type": "Restore"}}),
            "spec.type is immutable",
        ),
        (
            json!({"spec": {"engine": "job"}}),
            "spec.engine is immutable",
        ),
        (
            json!({"spec": {"targetRef": {"name": "other"}}}),
            "spec.targetRef is immutable",
        ),
    ] {
        let err = api
            .patch("op", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    // Parameters are not part of the identity.
    api.patch(
        "op",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"parameters": {"ttl": "1h"}}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn status_is_a_subresource() {
    let (client, ns) = setup("status").await;
    create(
        &client,
        &ns,
        instance(
            &ns,
            "wiki",
            with(good_instance_spec(), "/release/namespace", json!(ns)),
        ),
    )
    .await
    .unwrap();
    let api: Api<ApplicationInstance> = Api::namespaced(client, &ns);
    let status = json!({"status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True",
        "reason": "HelmReleaseReady", "message": "ok", "observedGeneration": 1,
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status("wiki", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let got = api.get("wiki").await.unwrap();
    assert_eq!(
        got.meta().generation,
        Some(1),
        "a status write must not bump the generation"
    );
    assert_eq!(
        got.status.as_ref().unwrap().conditions[0].reason,
        "HelmReleaseReady"
    );
    // Status sent through the main resource is ignored.
    let mut replaced = serde_json::to_value(&got).unwrap();
    replaced["status"]["conditions"][0]["reason"] = json!("Tampered");
    replaced["spec"]["chart"]["version"] = json!("2.0.0");
    let replaced: ApplicationInstance = serde_json::from_value(replaced).unwrap();
    let after = api
        .replace("wiki", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().conditions[0].reason,
        "HelmReleaseReady"
    );
    assert_eq!(after.meta().generation, Some(2));
    // A condition with a bad status is refused by the schema.
    let bad = json!({"status": {"conditions": [{"type": "Ready", "status": "Maybe", "reason": "X", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let err = api
        .patch_status("wiki", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("status.conditions[0].status"),
        "{err}"
    );
}

#[tokio::test]
async fn printer_columns_and_short_names_are_served() {
    let cp = ControlPlane::get().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await.unwrap());
    for (name, short, columns) in [
        (
            "applicationinstances.apps.vworkspace.io",
            "appinst",
            vec!["Ready", "Chart", "Version", "Age"],
        ),
        (
            "operations.ops.vworkspace.io",
            "op",
            vec!["Phase", "Type", "Engine", "Age"],
        ),
        (
            "clusters.ops.vworkspace.io",
            "cluster",
            vec!["Phase", "Connected", "Age"],
        ),
    ] {
        let crd = crds.get(name).await.unwrap();
        assert_eq!(
            crd.spec.names.short_names.clone().unwrap_or_default(),
            vec![short.to_string()]
        );
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let got: Vec<String> = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(got, columns, "{name}");
    }
}
