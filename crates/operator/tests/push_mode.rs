//! Push mode end to end (spec connectivity §5): the control plane writes
//! ApplicationInstances and Operations through the cluster API as ServiceAccount
//! `vworkspace-control-plane`, bound to exactly the chart's rules
//! (`files/control-plane-rules.yaml` in the gated namespace,
//! `files/control-plane-cluster-rules.yaml` for Cluster reads), with its own field
//! manager, and reads status back by watch. The operator binary runs with
//! `--connectivity-mode=push` under the chart's RBAC: it posts events and heartbeats to
//! the mock control plane but never polls for jobs. The test plays Flux and Velero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{Operator, chart_rules, eventually, managed_instance};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports, write_status};
use vworkspace_api::conditions::{find, is_true};
use vworkspace_api::{ApplicationInstance, Cluster, Operation};
use vworkspace_operator::kinds::flux::HelmRelease;

const CLUSTER_ID: &str = "7d3c1a52-9e4b-4f0a-8c61-2b5e9f0d7a13";
const REG_TOKEN: &str = "vwksp-reg-push000000000000000000000000001";
const OP_NS: &str = "vworkspace-system";
const GATED: &str = "org-push";
const OTHER: &str = "org-elsewhere";
const IDENTITY: &str = "vworkspace-control-plane";
const MANAGER: &str = "vworkspace-odoo";
const LONG: Duration = Duration::from_secs(90);

/// Creates `vworkspace-control-plane` in the operator namespace as the chart's
/// `templates/control-plane-identity.yaml` does (rules read from the chart's files) and
/// returns a client holding a TokenRequest token for it.
async fn control_plane_identity(cp: &ControlPlane, admin: &Client) -> Client {
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OP_NS);
    sas.create(
        &pp,
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some(IDENTITY.into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: IDENTITY.into(),
        namespace: Some(OP_NS.into()),
        ..Default::default()
    };
    let name = "vworkspace-operator-control-plane".to_string();
    let meta = |ns: Option<&str>| ObjectMeta {
        name: Some(name.clone()),
        namespace: ns.map(str::to_string),
        ..Default::default()
    };
    let role_ref = |kind: &str| RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.clone(),
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: meta(None),
                rules: Some(chart_rules("control-plane-cluster-rules.yaml")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(None),
                role_ref: role_ref("ClusterRole"),
                subjects: Some(vec![subject.clone()]),
            },
        )
        .await
        .unwrap();
    let rules: Vec<PolicyRule> = chart_rules("control-plane-rules.yaml");
    Api::<Role>::namespaced(admin.clone(), GATED)
        .create(
            &pp,
            &Role {
                metadata: meta(Some(GATED)),
                rules: Some(rules),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), GATED)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(Some(GATED)),
                role_ref: role_ref("Role"),
                subjects: Some(vec![subject]),
            },
        )
        .await
        .unwrap();
    let token = cp_client_token(admin).await.expect("TokenRequest");
    let mut config = cp.admin_config().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

fn apply_as_control_plane() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Waits on a watch (as the control plane reads status) until `done` holds for the object.
async fn watch_until<K>(api: &Api<K>, name: &str, what: &str, done: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).applied_objects();
    let found = tokio::time::timeout(LONG, async {
        let mut stream = std::pin::pin!(stream);
        while let Some(obj) = stream.try_next().await.unwrap() {
            if done(&obj) {
                return obj;
            }
        }
        panic!("watch of {what} ended");
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out watching {what}"))
}

/// `Forbidden` (403) from the API server, as the identity sees it.
fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => format!("{what}: 403"),
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn push_mode_end_to_end() {
    let cp = ControlPlane::get().await.unwrap();
    let admin = cp.client().await.unwrap();
    for ns in [OP_NS, GATED, OTHER, "velero"] {
        create_namespace(&admin, ns).await.unwrap();
    }

    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin_api = mock.admin();
    let metrics_port = support::free_port();
    let op = Operator::start(
        cp,
        OP_NS,
        &[
            "--connectivity-mode=push",
            "--agent-poll-interval=1s",
            &format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
            "--metrics-secure=false",
        ],
    )
    .await;
    // Registration and heartbeats work in Push mode exactly as in Pull.
    let clusters =
        support::register_cluster(&admin, OP_NS, &mock.url(), CLUSTER_ID, REG_TOKEN).await;

    let cp_client = control_plane_identity(cp, &admin).await;
    let apps: Api<ApplicationInstance> = Api::namespaced(cp_client.clone(), GATED);
    let ops: Api<Operation> = Api::namespaced(cp_client.clone(), GATED);

    // The control plane applies an ApplicationInstance with its own field manager.
    let mut wiki = managed_instance(GATED, "wiki", "1.0.0");
    wiki["metadata"]["labels"] = json!({
        "app.vworkspace.io/managed-by": "control-plane",
        "app.vworkspace.io/cluster-id": CLUSTER_ID,
    });
    wiki["metadata"]["annotations"] = json!({"ops.vworkspace.io/backup": "velero"});
    apps.patch("wiki", &apply_as_control_plane(), &Patch::Apply(&wiki))
        .await
        .unwrap();
    // The operator renders the HelmRelease; the test plays helm-controller.
    let hrs: Api<HelmRelease> = Api::namespaced(admin.clone(), GATED);
    eventually("HelmRelease wiki", LONG, || async {
        hrs.get_opt("wiki").await.unwrap()
    })
    .await;
    helm_controller_reports(
        &hrs,
        "wiki",
        "True",
        "InstallSucceeded",
        "played by the test",
    )
    .await
    .unwrap();
    let ready = watch_until(&apps, "wiki", "wiki Ready", |a: &ApplicationInstance| {
        a.status
            .as_ref()
            .is_some_and(|s| is_true(&s.conditions, "Ready"))
    })
    .await;
    let managers: Vec<String> = ready
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == MANAGER),
        "spec written by {MANAGER}: {managers:?}"
    );
    eprintln!("push: ApplicationInstance wiki Ready=True, read by watch; managers {managers:?}");

    // An Operation, same identity and field manager; Velero is played by the test.
    let backup = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": "wiki-backup", "namespace": GATED},
        "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                               "kind": "ApplicationInstance", "name": "wiki"},
                 "type": "Backup", "engine": "velero", "parameters": {"ttl": "720h"}}
    });
    ops.patch(
        "wiki-backup",
        &apply_as_control_plane(),
        &Patch::Apply(&backup),
    )
    .await
    .unwrap();
    let backups: Api<kube::api::DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "velero",
        &vworkspace_operator::engines::velero::api_resource("Backup"),
    );
    let backup_name = format!("{GATED}--wiki-backup");
    eventually("Velero Backup", LONG, || async {
        backups.get_opt(&backup_name).await.unwrap()
    })
    .await;
    write_status(&backups, &backup_name, json!({"phase": "Completed"}))
        .await
        .unwrap();
    let done = watch_until(
        &ops,
        "wiki-backup",
        "Operation Succeeded",
        |o: &Operation| {
            o.status
                .as_ref()
                .is_some_and(|s| is_true(&s.conditions, "Succeeded"))
        },
    )
    .await;
    eprintln!(
        "push: Operation wiki-backup phase {:?}, read by watch",
        done.status.as_ref().and_then(|s| s.phase)
    );
    // Deleting is part of the identity's job too.
    ops.delete("wiki-backup", &DeleteParams::default())
        .await
        .unwrap();

    // It reads the Cluster (status by watch), and nothing more there.
    let cp_clusters: Api<Cluster> = Api::all(cp_client.clone());
    let cluster = watch_until(
        &cp_clusters,
        "this-cluster",
        "Cluster Connected",
        |c: &Cluster| {
            c.status
                .as_ref()
                .is_some_and(|s| is_true(&s.conditions, "Connected"))
        },
    )
    .await;
    assert!(
        find(&cluster.status.unwrap().conditions, "Disconnected")
            .is_none_or(|c| c.status == "False")
    );

    // Everything else is denied.
    let mut denied = Vec::new();
    let other_apps: Api<ApplicationInstance> = Api::namespaced(cp_client.clone(), OTHER);
    denied.push(forbidden(
        "create ApplicationInstance outside the gated namespace",
        other_apps
            .patch(
                "wiki",
                &apply_as_control_plane(),
                &Patch::Apply(&managed_instance(OTHER, "wiki", "1.0.0")),
            )
            .await,
    ));
    denied.push(forbidden(
        "list ApplicationInstances cluster-wide",
        Api::<ApplicationInstance>::all(cp_client.clone())
            .list(&ListParams::default())
            .await,
    ));
    denied.push(forbidden(
        "patch the Cluster",
        cp_clusters
            .patch(
                "this-cluster",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rotateCredentials": true}})),
            )
            .await,
    ));
    denied.push(forbidden(
        "get a Secret in the gated namespace",
        Api::<Secret>::namespaced(cp_client.clone(), GATED)
            .list(&ListParams::default())
            .await,
    ));
    denied.push(forbidden(
        "read the agent's credentials Secret",
        Api::<Secret>::namespaced(cp_client.clone(), OP_NS)
            .get("vworkspace-agent-credentials")
            .await,
    ));
    denied.push(forbidden(
        "read a ConfigMap",
        Api::<ConfigMap>::namespaced(cp_client.clone(), GATED)
            .list(&ListParams::default())
            .await,
    ));
    denied.push(forbidden(
        "write the HelmRelease",
        Api::<HelmRelease>::namespaced(cp_client.clone(), GATED)
            .patch(
                "wiki",
                &PatchParams::apply(MANAGER),
                &Patch::Apply(json!({
                    "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
                    "metadata": {"name": "wiki"}, "spec": {"suspend": true}
                })),
            )
            .await,
    ));
    denied.push(forbidden(
        "create a Role",
        Api::<Role>::namespaced(cp_client.clone(), GATED)
            .create(
                &PostParams::default(),
                &Role {
                    metadata: ObjectMeta {
                        name: Some("escalate".into()),
                        ..Default::default()
                    },
                    rules: Some(vec![]),
                },
            )
            .await,
    ));
    denied.push(forbidden(
        "bind cluster-admin",
        Api::<ClusterRoleBinding>::all(cp_client.clone())
            .create(
                &PostParams::default(),
                &ClusterRoleBinding {
                    metadata: ObjectMeta {
                        name: Some("escalate".into()),
                        ..Default::default()
                    },
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "ClusterRole".into(),
                        name: "cluster-admin".into(),
                    },
                    subjects: None,
                },
            )
            .await,
    ));
    denied.push(forbidden(
        "list nodes",
        Api::<Node>::all(cp_client.clone())
            .list(&ListParams::default())
            .await,
    ));
    denied.push(forbidden(
        "list pods",
        Api::<Pod>::namespaced(cp_client.clone(), GATED)
            .list(&ListParams::default())
            .await,
    ));
    denied.push(forbidden(
        "delete a namespace",
        Api::<Namespace>::all(cp_client.clone())
            .delete(OTHER, &DeleteParams::default())
            .await,
    ));
    denied.push(forbidden(
        "write Operation status",
        ops.patch_status(
            "anything",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
                "status": {"phase": "Succeeded"}
            })),
        )
        .await,
    ));
    // Impersonation: the same token asking to act as cluster-admin's group.
    let mut config = cp.admin_config().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: cp_client_token(&admin).await.map(Into::into),
        impersonate: Some("system:admin".into()),
        impersonate_groups: Some(vec!["system:masters".into()]),
        ..Default::default()
    };
    let impersonating = Client::try_from(config).unwrap();
    denied.push(forbidden(
        "impersonate system:masters",
        Api::<Secret>::namespaced(impersonating, OP_NS)
            .list(&ListParams::default())
            .await,
    ));
    for line in &denied {
        eprintln!("push: denied as {IDENTITY}: {line}");
    }

    // The operator, in Push mode: heartbeats and events reach the control plane, and in
    // the minute or so this test ran (Pull would have polled every second), no job poll.
    let heartbeats = || async {
        admin_api
            .events(CLUSTER_ID, Some("ClusterHeartbeat"), None, None)
            .await
            .unwrap()
            .len()
    };
    eventually("a heartbeat", LONG, || async {
        (heartbeats().await >= 1).then_some(())
    })
    .await;
    // Condition events are batched and may reach the server after the first heartbeat.
    let wiki_events = eventually("condition events of wiki posted", LONG, || async {
        let events = admin_api
            .events(CLUSTER_ID, None, Some(GATED), Some("wiki"))
            .await
            .unwrap();
        (!events.is_empty()).then_some(events)
    })
    .await;
    let polls = admin_api.request_count("jobs").await.unwrap();
    let events_posts = admin_api.request_count("events").await.unwrap();
    eprintln!(
        "push: mock control plane saw {polls} job polls, {events_posts} event posts \
         ({} heartbeats, {} wiki events)",
        heartbeats().await,
        wiki_events.len()
    );
    assert_eq!(polls, 0, "Push mode never polls for jobs");
    assert!(events_posts >= 2, "heartbeat and condition events");
    assert!(
        !op.log().contains("poller started"),
        "no poller in Push mode"
    );

    // The gauge carries mode="push" and reads connected.
    let body = scrape(metrics_port).await;
    assert!(
        body.contains("vworkspace_operator_connectivity_state{mode=\"push\"} 1"),
        "{body}"
    );
    assert!(!body.contains("mode=\"pull\""), "{body}");
    let _ = clusters;
}

/// A TokenRequest token for the control-plane identity, as the server would hold it.
async fn cp_client_token(admin: &Client) -> Option<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OP_NS);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    sas.create_subresource::<TokenRequest, TokenRequest>(
        "token",
        IDENTITY,
        &PostParams::default(),
        &request,
    )
    .await
    .ok()
    .and_then(|t| t.status)
    .and_then(|s| s.token)
}

async fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let resp = reqwest::get(&url).await.unwrap();
    assert!(resp.status().is_success());
    resp.text().await.unwrap()
}
