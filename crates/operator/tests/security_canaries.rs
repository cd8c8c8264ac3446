//! Security, checked by machine (issue 11): the operator binary under the chart's RBAC, in
//! required-signature mode, against the mock control plane. Canary values are planted in
//! a values Secret, the registration token, the issued (and rotated) agent
//! credential and the approval-claim secret; after the flows ran, everything captured —
//! the operator's log, Events, every object's status, HelmRelease specs, ConfigMaps, and
//! every request body the control plane received — is scanned and no canary may appear
//! (the registration token only in the registration request, its one legitimate channel).
//! On the way: unsigned and tampered jobs refused, jobs outside the scope policy refused,
//! an approval claim replayed against another Operation refused, and a password written
//! inline into a job's values blocked (spec §9.5; without the admission layer the
//! controller blocks it) with a result that names the field, not the value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fmt::Debug;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use mock_control_plane::AdminClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::{Operator, eventually, job, managed_instance, placeholder};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports};
use vworkspace_api::conditions::find;
use vworkspace_api::{ApplicationInstance, Cluster, Operation};
use vworkspace_operator::approval;
use vworkspace_operator::kinds::flux::HelmRelease;
use vworkspace_protocol::{Job, JobResult, signing};

const CLUSTER_ID: &str = "9d1e0c55-5ec0-4b11-a7a1-cafe00000011";
const REG_CANARY: &str = "vwksp-reg-canary-0c8e41d2b7a94f03";
const VALUES_CANARY: &str = "values-canary-3b7f9e21d04c";
const APPROVAL_CANARY: &str = "approval-canary-5e9b13a7c2f8";
const INLINE_CANARY: &str = "inline-canary-7d2e91b4a0c6";
const LONG: Duration = Duration::from_secs(90);
const APPS: &str = "org-sec";
const OP_NS: &str = "vworkspace-system";

struct Flows {
    admin: AdminClient,
    signer: SigningKey,
}

impl Flows {
    fn signed(&self, id: &str, kind: &str, payload: Value) -> Job {
        let mut j = job(id, kind, "", payload.clone());
        j.signature = Some(signing::sign(&self.signer, &payload));
        j
    }

    async fn run(&self, j: &Job) -> JobResult {
        self.admin.enqueue(CLUSTER_ID, j).await.unwrap();
        self.admin.wait_for_result(&j.id, LONG).await.unwrap()
    }
}

/// Plays helm-controller: Ready for HelmRelease `name` once it exists.
async fn flux_ready(client: &Client, name: &str) {
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), APPS);
    eventually(&format!("HelmRelease {name}"), LONG, || async {
        hrs.get_opt(name).await.unwrap()
    })
    .await;
    helm_controller_reports(&hrs, name, "True", "InstallSucceeded", "played by the test")
        .await
        .unwrap();
}

/// Every object of kind `K` in the cluster, as JSON text; with `status_only` just their
/// metadata and status (a spec is what the control plane wrote, not what we report).
async fn dump<K>(client: &Client, status_only: bool) -> String
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let list = Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let items: Vec<Value> = list
        .items
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap();
            if status_only {
                v = json!({"metadata": v["metadata"], "status": v["status"]});
            }
            v
        })
        .collect();
    serde_json::to_string(&items).unwrap()
}

/// What the chart's `tenantNamespaces` entry for `APPS` grants (`templates/tenants.yaml`):
/// `files/tenant-rules.yaml` bound to the operator's ServiceAccount in `APPS` only, so
/// the values Secret there is readable. The namespace is gated, as a tenant is.
async fn bind_tenant_rules(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    Api::<Namespace>::all(client.clone())
        .patch(
            APPS,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
        )
        .await
        .unwrap();
    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("vworkspace-operator-tenant".into()),
            ..Default::default()
        },
        rules: Some(support::chart_rules("tenant-rules.yaml")),
    };
    Api::<Role>::namespaced(client.clone(), APPS)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "vworkspace-operator-tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "vworkspace-operator-tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "vworkspace-operator", "namespace": OP_NS}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), APPS)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_canary_leaves_and_bad_jobs_are_refused() {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    for ns in [OP_NS, APPS, "velero"] {
        create_namespace(&client, ns).await.unwrap();
    }
    let mock = support::mock(REG_CANARY, CLUSTER_ID).await;
    let flows = Flows {
        admin: mock.admin(),
        signer: SigningKey::from_bytes(&[11u8; 32]),
    };
    let admin = &flows.admin;
    let public =
        base64::engine::general_purpose::STANDARD.encode(flows.signer.verifying_key().to_bytes());
    let flags = [
        "--agent-poll-interval=5s".to_string(),
        "--agent-signing=required".to_string(),
        format!("--agent-signing-public-key={public}"),
        format!("--approval-claim-secret={APPROVAL_CANARY}"),
        "--zap-log-level=debug".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut op = Operator::start(cp, OP_NS, &flags).await;
    bind_tenant_rules(&client).await;
    let clusters =
        support::register_cluster(&client, OP_NS, &mock.url(), CLUSTER_ID, REG_CANARY).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OP_NS);
    let token_of = |s: Secret| String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap();
    let first_token = token_of(secrets.get("vworkspace-agent-credentials").await.unwrap());

    // Values from a Secret holding a canary: applied, the HelmRelease only names the Secret.
    let mut values = Secret::default();
    values.metadata.name = Some("chat-values".into());
    values.data = Some(
        [(
            "values.yaml".to_string(),
            ByteString(format!("adminPassword: {VALUES_CANARY}\n").into_bytes()),
        )]
        .into(),
    );
    Api::<Secret>::namespaced(client.clone(), APPS)
        .create(&PostParams::default(), &values)
        .await
        .unwrap();
    let mut chat = managed_instance(APPS, "chat", "1.0.0");
    chat["spec"]["values"] =
        json!({"source": "secretRef", "secretRef": {"name": "chat-values", "key": "values.yaml"}});
    let apply = flows.signed("values-secret", "apply", chat);
    admin.enqueue(CLUSTER_ID, &apply).await.unwrap();
    flux_ready(&client, "chat").await;
    let r = admin.wait_for_result("values-secret", LONG).await.unwrap();
    assert_eq!(r.outcome, "succeeded", "{r:?}");

    // Required-signature mode: unsigned and tampered jobs are refused and not applied.
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    let r = flows
        .run(&job(
            "unsigned",
            "apply",
            "",
            managed_instance(APPS, "unsigned", "1.0.0"),
        ))
        .await;
    assert_eq!(r.outcome, "failed");
    assert!(
        r.error.starts_with("JobPayloadSignatureInvalid"),
        "{}",
        r.error
    );
    let mut tampered = flows.signed(
        "tampered",
        "apply",
        managed_instance(APPS, "tampered", "1.0.0"),
    );
    tampered.payload["spec"]["chart"]["url"] = "https://evil.example.org".into();
    let r = flows.run(&tampered).await;
    assert_eq!(r.outcome, "failed");
    assert!(
        r.error.starts_with("JobPayloadSignatureInvalid"),
        "{}",
        r.error
    );
    let mut other_key = job(
        "other-key",
        "apply",
        "",
        managed_instance(APPS, "other-key", "1.0.0"),
    );
    other_key.signature = Some(signing::sign(
        &SigningKey::from_bytes(&[12u8; 32]),
        &other_key.payload,
    ));
    let r = flows.run(&other_key).await;
    assert!(
        r.error.starts_with("JobPayloadSignatureInvalid"),
        "{}",
        r.error
    );
    for name in ["unsigned", "tampered", "other-key"] {
        assert!(
            apps.get_opt(name).await.unwrap().is_none(),
            "{name} applied"
        );
    }

    // Inline secret material in a correctly signed apply job. No admission layer is
    // installed here (the webhook refuses it at the door: admission_webhook.rs), so the
    // instance is created and the controller must block it: no HelmRelease, and the
    // job's failed result names the field, never the value.
    let mut inline = managed_instance(APPS, "inline", "1.0.0");
    inline["spec"]["values"]["inline"] =
        json!({"replicas": 1, "db": {"host": "db", "password": INLINE_CANARY}});
    let r = flows
        .run(&flows.signed("inline-secret", "apply", inline))
        .await;
    assert_eq!(r.outcome, "failed", "{r:?}");
    assert!(
        r.error.contains("ValidationFailed")
            && r.error
                .contains("inline secret material rejected at \"db.password\""),
        "{r:?}"
    );
    let blocked = apps.get("inline").await.unwrap();
    let c = find(&blocked.status.unwrap_or_default().conditions, "Blocked")
        .cloned()
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "ValidationFailed")
    );
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), APPS);
    assert!(
        hrs.get_opt("inline").await.unwrap().is_none(),
        "inline password released"
    );

    // Scope: signed, but outside what Pull jobs may touch.
    let mut sys = managed_instance("kube-system", "evil", "1.0.0");
    sys["metadata"]["namespace"] = "kube-system".into();
    let own_ns = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vworkspace-agent-credentials", "namespace": OP_NS},
        "stringData": {"token": "stolen"}});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "evil"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    for (id, payload) in [
        ("scope-ns", sys),
        ("scope-own-secret", own_ns),
        ("scope-rbac", role),
    ] {
        let r = flows.run(&flows.signed(id, "apply", payload)).await;
        assert_eq!(r.outcome, "failed", "{id}: {r:?}");
    }
    assert_eq!(
        token_of(secrets.get("vworkspace-agent-credentials").await.unwrap()),
        first_token,
        "a job overwrote the agent's credentials"
    );

    // Rotation: a second credential to look for.
    clusters
        .patch(
            "this-cluster",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateCredentials": true}})),
        )
        .await
        .unwrap();
    let second_token = eventually("rotated token", LONG, || async {
        let t = token_of(secrets.get("vworkspace-agent-credentials").await.unwrap());
        (t != first_token).then_some(t)
    })
    .await;
    let late = flows.signed(
        "after-rotation",
        "apply",
        managed_instance(APPS, "late", "1.0.0"),
    );
    admin.enqueue(CLUSTER_ID, &late).await.unwrap();
    flux_ready(&client, "late").await;
    let r = admin.wait_for_result("after-rotation", LONG).await.unwrap();
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    // Approval claims: one issued for restore-a, replayed on restore-b, is refused there.
    let targets: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    let target = placeholder(
        APPS,
        "ledger",
        json!({"ops.vworkspace.io/backup": "velero", "ops.vworkspace.io/restore": "velero"}),
    );
    targets
        .create(
            &PostParams::default(),
            &serde_json::from_value(target).unwrap(),
        )
        .await
        .unwrap();
    let exp = jiff::Timestamp::now().as_second() + 600;
    let claim_a = approval::issue(APPROVAL_CANARY, "restore-a", "alice", exp);
    let restore = |name: &str, claim: &str| {
        json!({"intent": "request-operation", "operation": {
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": APPS},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                                   "kind": "ApplicationInstance", "name": "ledger"},
                     "type": "Restore", "engine": "velero",
                     "parameters": {"backupName": "b1"}, "approvals": {"claim": claim}}}})
    };
    admin
        .enqueue(
            CLUSTER_ID,
            &flows.signed("replayed-claim", "intent", restore("restore-b", &claim_a)),
        )
        .await
        .unwrap();
    let ops: Api<Operation> = Api::namespaced(client.clone(), APPS);
    let blocked = eventually("restore-b refused", LONG, || async {
        let op = ops.get_opt("restore-b").await.unwrap()?;
        let c = find(&op.status?.conditions, "Blocked")?.clone();
        (c.status == "True" && c.message.contains("restore-a")).then_some(c)
    })
    .await;
    assert!(
        blocked.message.contains("not \"restore-b\""),
        "{}",
        blocked.message
    );
    // Blocked is pending for the agent: no result yet, and never `succeeded`.
    let r = admin.result("replayed-claim").await.unwrap();
    assert!(r.is_none_or(|r| r.outcome != "succeeded"));
    let restores: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "velero",
        &vworkspace_operator::engines::velero::api_resource("Restore"),
    );
    assert!(
        restores
            .get_opt(&format!("{APPS}--restore-b"))
            .await
            .unwrap()
            .is_none()
    );
    // The same claim on its own Operation is accepted (so the refusal above is the binding).
    admin
        .enqueue(
            CLUSTER_ID,
            &flows.signed("own-claim", "intent", restore("restore-a", &claim_a)),
        )
        .await
        .unwrap();
    eventually("Velero Restore of restore-a", LONG, || async {
        restores
            .get_opt(&format!("{APPS}--restore-a"))
            .await
            .unwrap()
    })
    .await;

    // Let the event batcher flush what the flows produced.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Scan everything captured.
    let (bodies, uncaptured) = admin.request_bodies().await.unwrap();
    assert_eq!(uncaptured, 0, "some request bodies were not captured");
    assert!(bodies.iter().any(|b| b.endpoint == "result"));
    assert!(bodies.iter().any(|b| b.endpoint == "events"));
    let mut places: Vec<(String, String)> = vec![
        ("operator log".into(), op.log()),
        ("Events".into(), dump::<Event>(&client, false).await),
        (
            "ApplicationInstances".into(),
            dump::<ApplicationInstance>(&client, true).await,
        ),
        ("Operations".into(), dump::<Operation>(&client, true).await),
        ("Clusters".into(), dump::<Cluster>(&client, true).await),
        (
            "HelmReleases".into(),
            dump::<HelmRelease>(&client, false).await,
        ),
        ("ConfigMaps".into(), dump::<ConfigMap>(&client, false).await),
    ];
    for b in &bodies {
        let mut text = b.body.clone();
        text.push_str(&b.path);
        places.push((format!("{} {} body", b.method, b.path), text));
    }
    let canaries = [
        ("values Secret", VALUES_CANARY),
        ("approval secret", APPROVAL_CANARY),
        ("inline password", INLINE_CANARY),
        ("agent credential", first_token.as_str()),
        ("rotated credential", second_token.as_str()),
        ("registration token", REG_CANARY),
    ];
    let mut leaks = Vec::new();
    for (what, text) in &places {
        for (canary, value) in canaries {
            // Registration sends the token to the control plane by design.
            let legitimate = canary == "registration token" && what.contains("/api/agent/register");
            if text.contains(value) && !legitimate {
                leaks.push(format!("{canary} in {what}"));
            }
        }
    }
    eprintln!(
        "scanned {} places ({} request bodies, {} bytes of operator log) for {} canaries",
        places.len(),
        bodies.len(),
        op.log().len(),
        canaries.len()
    );
    assert!(leaks.is_empty(), "canaries leaked: {leaks:#?}");
    op.kill().await;
}
