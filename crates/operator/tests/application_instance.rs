//! ApplicationInstance controller against a real kube-apiserver with the Flux CRDs; the
//! test plays helm-controller by writing HelmRelease status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::eventually;
use testkit::fixtures::{TestNamespace, helm_controller_reports, test_namespace};
use tokio::task::JoinHandle;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::conditions::find;
use vworkspace_operator::controller::{Context, application_instance};
use vworkspace_operator::kinds::flux::{HelmRelease, HelmRepository, OCIRepository};

const CANARY: &str = "canary-7f3a9c-do-not-leak";
const WAIT: Duration = Duration::from_secs(30);

/// A fresh namespace with the controller reconciling it, and the APIs tests read there.
struct Setup {
    client: Client,
    ns: String,
    api: Api<ApplicationInstance>,
    hrs: Api<HelmRelease>,
    controller: JoinHandle<()>,
}

/// The controller (with the context `ctx` builds) on a fresh namespace.
async fn setup_with(prefix: &str, ctx: impl FnOnce(Client) -> Context) -> Setup {
    let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
    let ctx = Arc::new(ctx(client.clone()));
    let scope = ns.clone();
    let controller =
        tokio::spawn(async move { application_instance::run(ctx, Some(&scope)).await });
    Setup {
        api: Api::namespaced(client.clone(), &ns),
        hrs: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        controller,
    }
}

async fn setup(prefix: &str) -> Setup {
    setup_with(prefix, Context::new).await
}

/// A managed instance of chart `chart`, labelled as the control plane's cluster `test-1`.
fn instance(ns: &str, name: &str, chart: Value, values: Value) -> ApplicationInstance {
    let mut v = support::instance(ns, name, chart, values);
    v["metadata"]["labels"] = json!({"app.vworkspace.io/cluster-id": "test-1"});
    serde_json::from_value(v).unwrap()
}

fn helm_chart(version: &str) -> Value {
    support::helm_chart("wiki", version)
}

/// Chart `wiki` 1.0.0 with no values.
fn plain(ns: &str, name: &str) -> ApplicationInstance {
    instance(
        ns,
        name,
        helm_chart("1.0.0"),
        json!({"source": "inline", "inline": {}}),
    )
}

/// HelmRelease `name` once the controller created it.
async fn helm_release(hrs: &Api<HelmRelease>, name: &str) -> HelmRelease {
    eventually(&format!("HelmRelease {name}"), WAIT, || async {
        hrs.get_opt(name).await.unwrap()
    })
    .await
}

async fn condition(
    api: &Api<ApplicationInstance>,
    name: &str,
    t: &str,
) -> Option<(String, String, String)> {
    let inst = api.get_opt(name).await.ok()??;
    let c = find(&inst.status?.conditions, t)?.clone();
    Some((c.status, c.reason, c.message))
}

async fn wait_condition(
    api: &Api<ApplicationInstance>,
    name: &str,
    t: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(&format!("{name} {t}={status}/{reason}"), WAIT, || async {
        condition(api, name, t)
            .await
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, m)| m)
    })
    .await
}

#[tokio::test]
async fn helm_chart_is_delivered_and_status_follows_the_release() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup("ai-helm").await;
    let inst = instance(
        &ns,
        "wiki",
        helm_chart("1.0.0"),
        json!({"source": "inline", "inline": {"replicas": 2}}),
    );
    api.create(&PostParams::default(), &inst).await.unwrap();

    let hr = helm_release(&hrs, "wiki").await;
    assert_eq!(
        hr.spec.chart.as_ref().unwrap().spec.version.as_deref(),
        Some("1.0.0")
    );
    assert_eq!(hr.spec.values, Some(json!({"replicas": 2})));
    assert_eq!(hr.owner_references()[0].kind, "ApplicationInstance");
    assert_eq!(hr.labels()["app.vworkspace.io/cluster-id"], "test-1");
    let repo = Api::<HelmRepository>::namespaced(client.clone(), &ns)
        .get("wiki-source")
        .await
        .unwrap();
    assert_eq!(repo.owner_references()[0].controller, Some(true));
    wait_condition(&api, "wiki", "Ready", "Unknown", "Reconciling").await;

    // Labels added by someone else survive our applies.
    hrs.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await
    .unwrap();

    helm_controller_reports(
        &hrs,
        "wiki",
        "True",
        "InstallSucceeded",
        "Helm install succeeded",
    )
    .await
    .unwrap();
    let msg = wait_condition(&api, "wiki", "Ready", "True", "HelmReleaseReady").await;
    assert_eq!(msg, "Helm install succeeded");
    let got = api.get("wiki").await.unwrap();
    let status = got.status.unwrap();
    assert_eq!(status.helm_release_ref.unwrap().name, "wiki");
    assert_eq!(status.last_applied_chart.unwrap().version, "1.0.0");
    assert_eq!(status.observed_generation, got.metadata.generation);
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == got.metadata.generation)
    );

    // A chart version change reaches the HelmRelease; Ready waits for Flux to see it.
    api.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"chart": {"version": "1.1.0"}}})),
    )
    .await
    .unwrap();
    eventually("new version on HelmRelease", WAIT, || async {
        let hr = hrs.get("wiki").await.unwrap();
        (hr.spec.chart.unwrap().spec.version.as_deref() == Some("1.1.0")).then_some(())
    })
    .await;
    wait_condition(&api, "wiki", "Ready", "Unknown", "Reconciling").await;
    assert_eq!(hrs.get("wiki").await.unwrap().labels()["team"], "a");

    // A failed release is Ready=False, not Unknown.
    helm_controller_reports(
        &hrs,
        "wiki",
        "False",
        "UpgradeFailed",
        "upgrade retries exhausted",
    )
    .await
    .unwrap();
    wait_condition(&api, "wiki", "Ready", "False", "HelmReleaseFailed").await;
    wait_condition(&api, "wiki", "Degraded", "True", "HelmReleaseDegraded").await;

    // Every transition was recorded as an Event.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = eventually("events", WAIT, || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        let reasons: Vec<String> = list.items.into_iter().filter_map(|e| e.reason).collect();
        reasons
            .iter()
            .any(|r| r == "HelmReleaseFailed")
            .then_some(reasons)
    })
    .await;
    assert!(
        reasons.iter().any(|r| r == "HelmReleaseReady"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn secret_values_are_referenced_and_never_copied() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup("ai-secret").await;
    let inst = instance(
        &ns,
        "chat",
        helm_chart("2.0.0"),
        json!({"source": "secretRef", "secretRef": {"name": "chat-values", "key": "values.yaml"}}),
    );
    api.create(&PostParams::default(), &inst).await.unwrap();
    let msg = wait_condition(&api, "chat", "Blocked", "True", "WaitingForSecret").await;
    assert!(msg.contains("\"chat-values\""), "{msg}");
    wait_condition(&api, "chat", "Ready", "False", "WaitingForSecret").await;
    assert!(hrs.get_opt("chat").await.unwrap().is_none());

    // The Secret appearing unblocks the instance without any change to it.
    let mut secret = Secret::default();
    secret.metadata.name = Some("chat-values".into());
    secret.data = Some(
        [(
            "values.yaml".to_string(),
            ByteString(format!("adminPassword: {CANARY}\n").into_bytes()),
        )]
        .into(),
    );
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let hr = helm_release(&hrs, "chat").await;
    let hr_json = serde_json::to_string(&hr).unwrap();
    assert!(hr_json.contains("\"valuesFrom\":[{\"kind\":\"Secret\",\"name\":\"chat-values\",\"valuesKey\":\"values.yaml\"}]"), "{hr_json}");
    wait_condition(&api, "chat", "Blocked", "False", "Unblocked").await;

    helm_controller_reports(&hrs, "chat", "True", "InstallSucceeded", "ok")
        .await
        .unwrap();
    wait_condition(&api, "chat", "Ready", "True", "HelmReleaseReady").await;
    let hr_json = serde_json::to_string(&hrs.get("chat").await.unwrap()).unwrap();
    let inst_json = serde_json::to_string(&api.get("chat").await.unwrap()).unwrap();
    let events = serde_json::to_string(
        &Api::<Event>::namespaced(client, &ns)
            .list(&ListParams::default())
            .await
            .unwrap(),
    )
    .unwrap();
    for (what, text) in [
        ("HelmRelease", hr_json),
        ("instance", inst_json),
        ("events", events),
    ] {
        assert!(!text.contains(CANARY), "secret value leaked into {what}");
    }
}

#[tokio::test]
async fn oci_chart_uses_oci_repository() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup("ai-oci").await;
    let chart = json!({"sourceType": "oci", "url": "oci://ghcr.io/acme/charts", "name": "podinfo", "version": "6.7.1"});
    api.create(
        &PostParams::default(),
        &instance(
            &ns,
            "podinfo",
            chart,
            json!({"source": "inline", "inline": {}}),
        ),
    )
    .await
    .unwrap();
    let repos: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);
    let repo = eventually("OCIRepository", WAIT, || async {
        repos.get_opt("podinfo-source").await.unwrap()
    })
    .await;
    assert_eq!(repo.spec.url, "oci://ghcr.io/acme/charts/podinfo");
    assert_eq!(repo.spec.r#ref.unwrap().tag.as_deref(), Some("6.7.1"));
    let hr = helm_release(&hrs, "podinfo").await;
    let chart_ref = hr.spec.chart_ref.unwrap();
    assert_eq!(
        (chart_ref.kind.as_str(), chart_ref.name.as_str()),
        ("OCIRepository", "podinfo-source")
    );
    assert!(hr.spec.chart.is_none());
}

#[tokio::test]
async fn placeholder_creates_nothing_and_is_ready() {
    let Setup { ns, api, hrs, .. } = setup("ai-placeholder").await;
    let inst: ApplicationInstance = serde_json::from_value(json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "cluster-ops", "namespace": ns,
                     "annotations": {"ops.vworkspace.io/runcommand": "job"}},
        "spec": {"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &inst).await.unwrap();
    wait_condition(&api, "cluster-ops", "Ready", "True", "Placeholder").await;
    let got = api.get("cluster-ops").await.unwrap();
    assert_eq!(got.annotations()["ops.vworkspace.io/runcommand"], "job");
    assert!(
        hrs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    api.delete("cluster-ops", &DeleteParams::default())
        .await
        .unwrap();
    eventually("placeholder gone", WAIT, || async {
        api.get_opt("cluster-ops")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn invalid_spec_is_blocked_and_deletes_cleanly() {
    let Setup { ns, api, .. } = setup("ai-invalid").await;
    // The schema cannot compare release.namespace with metadata.namespace; the controller does.
    let mut inst = plain(&ns, "wrong");
    inst.spec.release.as_mut().unwrap().namespace = "elsewhere".into();
    api.create(&PostParams::default(), &inst).await.unwrap();
    let msg = wait_condition(&api, "wrong", "Blocked", "True", "ValidationFailed").await;
    assert!(
        msg.contains("spec.release.namespace must match metadata.namespace"),
        "{msg}"
    );
    // Fixing the spec unblocks it.
    api.patch(
        "wrong",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"release": {"namespace": ns}}})),
    )
    .await
    .unwrap();
    wait_condition(&api, "wrong", "Blocked", "False", "Unblocked").await;
}

#[tokio::test]
async fn deletion_waits_for_flux_to_uninstall() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup("ai-delete").await;
    api.create(&PostParams::default(), &plain(&ns, "wiki"))
        .await
        .unwrap();
    helm_release(&hrs, "wiki").await;
    // Flux's finalizer stands for the Helm uninstall still to happen.
    hrs.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["finalizers.fluxcd.io"]}})),
    )
    .await
    .unwrap();
    api.delete("wiki", &DeleteParams::default()).await.unwrap();
    let msg = wait_condition(&api, "wiki", "Deleting", "True", "Uninstalling").await;
    assert!(msg.contains("HelmRelease wiki"), "{msg}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        api.get_opt("wiki").await.unwrap().is_some(),
        "finalizer removed before Flux uninstalled"
    );
    assert!(
        Api::<HelmRepository>::namespaced(client.clone(), &ns)
            .get_opt("wiki-source")
            .await
            .unwrap()
            .is_none()
    );
    // Flux finishes the uninstall.
    hrs.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("instance gone", WAIT, || async {
        api.get_opt("wiki").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_hundred_instances_converge() {
    let Setup { ns, api, hrs, .. } = setup("ai-many").await;
    let started = Instant::now();
    for i in 0..200 {
        let name = format!("app-{i:03}");
        api.create(&PostParams::default(), &plain(&ns, &name))
            .await
            .unwrap();
    }
    eventually("200 HelmReleases", Duration::from_secs(180), || async {
        (hrs.list(&ListParams::default()).await.unwrap().items.len() == 200).then_some(())
    })
    .await;
    for hr in hrs.list(&ListParams::default()).await.unwrap() {
        helm_controller_reports(&hrs, &hr.name_any(), "True", "InstallSucceeded", "ok")
            .await
            .unwrap();
    }
    eventually("200 Ready instances", Duration::from_secs(180), || async {
        let list = api.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| vworkspace_api::conditions::is_true(&s.conditions, "Ready"))
            })
            .count();
        (ready == 200).then_some(())
    })
    .await;
    eprintln!(
        "200 instances converged in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn children_are_garbage_collected_when_the_operator_is_gone() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        controller: operator,
    } = setup("ai-gc").await;
    let repos: Api<HelmRepository> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &plain(&ns, "wiki"))
        .await
        .unwrap();
    eventually("children", WAIT, || async {
        let hr = hrs.get_opt("wiki").await.unwrap();
        let repo = repos.get_opt("wiki-source").await.unwrap();
        hr.zip(repo)
    })
    .await;

    // The operator goes away and someone strips its finalizer: only the owner
    // references are left, and kube-controller-manager's garbage collector must act.
    operator.abort();
    let _ = operator.await;
    api.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    api.delete("wiki", &DeleteParams::default()).await.unwrap();
    eventually("children collected", Duration::from_secs(60), || async {
        let hr = hrs.get_opt("wiki").await.unwrap();
        let repo = repos.get_opt("wiki-source").await.unwrap();
        (hr.is_none() && repo.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn suspended_release_is_reported_and_not_undone() {
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup("ai-suspend").await;
    api.create(&PostParams::default(), &plain(&ns, "wiki"))
        .await
        .unwrap();
    helm_release(&hrs, "wiki").await;
    wait_condition(&api, "wiki", "Suspended", "False", "Active").await;

    // A person runs `flux suspend`: a different field manager sets spec.suspend.
    hrs.patch(
        "wiki",
        &PatchParams::apply("flux-cli").force(),
        &Patch::Apply(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "wiki"}, "spec": {"suspend": true}
        })),
    )
    .await
    .unwrap();
    wait_condition(&api, "wiki", "Suspended", "True", "ManuallySuspended").await;
    // A spec change on the instance is still applied without clearing the suspension.
    api.patch(
        "wiki",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"chart": {"version": "1.2.0"}}})),
    )
    .await
    .unwrap();
    eventually("new version", WAIT, || async {
        let hr = hrs.get("wiki").await.unwrap();
        (hr.spec.chart.as_ref().unwrap().spec.version.as_deref() == Some("1.2.0")).then_some(hr)
    })
    .await;
    assert_eq!(hrs.get("wiki").await.unwrap().spec.suspend, Some(true));

    // Resumed: the condition follows.
    hrs.patch(
        "wiki",
        &PatchParams::apply("flux-cli").force(),
        &Patch::Apply(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "wiki"}, "spec": {"suspend": false}
        })),
    )
    .await
    .unwrap();
    wait_condition(&api, "wiki", "Suspended", "False", "Active").await;
    let events = Api::<Event>::namespaced(client, &ns);
    eventually("suspension events", WAIT, || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ManuallySuspended"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn inventory_and_endpoints_follow_the_release() {
    let Setup {
        client, ns, api, ..
    } = setup("ai-endpoints").await;
    let mut inst = plain(&ns, "wiki");
    inst.spec.integrations = Some(
        serde_json::from_value(json!({"ingress": {"enabled": true, "host": "wiki.example.org"}}))
            .unwrap(),
    );
    api.create(&PostParams::default(), &inst).await.unwrap();
    let status = eventually("inventory", WAIT, || async {
        api.get("wiki")
            .await
            .unwrap()
            .status
            .filter(|s| !s.inventory.is_empty())
    })
    .await;
    let kinds: Vec<_> = status.inventory.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["HelmRepository", "HelmRelease"]);
    assert_eq!(status.endpoints.len(), 1);
    assert!(
        status.endpoints[0].notes.is_some(),
        "requested, not observed"
    );

    // The chart's Ingress appears (Helm labels it with the release name).
    let ingress: k8s_openapi::api::networking::v1::Ingress = serde_json::from_value(json!({
        "metadata": {"name": "wiki-web", "labels": {"app.kubernetes.io/instance": "wiki"}},
        "spec": {"rules": [{"host": "wiki.example.org", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                  "backend": {"service": {"name": "wiki", "port": {"number": 80}}}}]}}],
                 "tls": [{"hosts": ["wiki.example.org"], "secretName": "wiki-tls"}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();
    // Flux reporting the install triggers the pass that observes it.
    helm_controller_reports(
        &Api::<HelmRelease>::namespaced(client.clone(), &ns),
        "wiki",
        "True",
        "InstallSucceeded",
        "ok",
    )
    .await
    .unwrap();
    let eps = eventually("observed endpoint", WAIT, || async {
        let s = api.get("wiki").await.unwrap().status?;
        (s.endpoints.len() == 1 && s.endpoints[0].notes.is_none()).then_some(s.endpoints)
    })
    .await;
    assert_eq!(eps[0].url, "https://wiki.example.org");
    assert_eq!(eps[0].name, "wiki-web");
}

#[tokio::test]
async fn reconcile_selector_leaves_other_owners_alone() {
    let Setup { ns, api, hrs, .. } = setup_with("ai-selector", |client| {
        Context::new(client).with_selector(Some(
            "app.vworkspace.io/managed-by in (control-plane,odoo)".into(),
        ))
    })
    .await;
    let values = json!({"source": "inline", "inline": {}});
    let mut ours = instance(&ns, "ours", helm_chart("1.0.0"), values.clone());
    ours.metadata.labels.get_or_insert_default().insert(
        "app.vworkspace.io/managed-by".into(),
        "control-plane".into(),
    );
    api.create(&PostParams::default(), &ours).await.unwrap();
    api.create(
        &PostParams::default(),
        &instance(&ns, "theirs", helm_chart("1.0.0"), values),
    )
    .await
    .unwrap();
    eventually("our HelmRelease", WAIT, || async {
        hrs.get_opt("ours").await.unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hrs.get_opt("theirs").await.unwrap().is_none());
    let theirs = api.get("theirs").await.unwrap();
    assert!(theirs.status.is_none() && theirs.finalizers().is_empty());
}

/// Passes of the ApplicationInstance controller counted in `metrics`.
fn passes(metrics: &vworkspace_operator::metrics::Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                && l.contains("controller=\"applicationinstance\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn one_pass_per_change_and_no_event_for_a_neutral_first_status() {
    let metrics = Arc::new(vworkspace_operator::metrics::Metrics::new());
    let m = metrics.clone();
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup_with("ai-quiet", move |c| Context::new(c).with_metrics(m)).await;
    api.create(&PostParams::default(), &plain(&ns, "wiki"))
        .await
        .unwrap();
    helm_release(&hrs, "wiki").await;
    eventually("status of the current generation", WAIT, || async {
        let i = api.get("wiki").await.ok()?;
        (i.status?.observed_generation == i.metadata.generation).then_some(())
    })
    .await;
    // Its own finalizer, children and status writes come back as watch events; none
    // may cause another pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(passes(&metrics), 1, "a new instance takes one pass");

    // Flux reporting is a change that matters: exactly one more pass.
    helm_controller_reports(&hrs, "wiki", "True", "InstallSucceeded", "ok")
        .await
        .unwrap();
    wait_condition(&api, "wiki", "Ready", "True", "HelmReleaseReady").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(passes(&metrics), 2, "one pass for Flux's status");

    // The flips (Ready to True, Reconciling to False) are Events; the neutral first
    // conditions (Ready=Unknown, Reconciling=True, Degraded/Suspended/Blocked=False) are not.
    let mut reasons: Vec<String> = Api::<Event>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["HelmReleaseReady", "Stable"]);
}

#[tokio::test]
async fn deletion_with_nothing_to_uninstall_takes_one_pass_and_writes_no_status() {
    let metrics = Arc::new(vworkspace_operator::metrics::Metrics::new());
    let m = metrics.clone();
    let Setup {
        client,
        ns,
        api,
        hrs,
        ..
    } = setup_with("ai-teardown", move |c| Context::new(c).with_metrics(m)).await;
    api.create(&PostParams::default(), &plain(&ns, "wiki"))
        .await
        .unwrap();
    helm_release(&hrs, "wiki").await;
    eventually("status of the current generation", WAIT, || async {
        let i = api.get("wiki").await.ok()?;
        (i.status?.observed_generation == i.metadata.generation).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = passes(&metrics);

    // No Flux finalizer on the children (helm-controller never saw them): they go at
    // once, so the pass that deleted them releases the instance; their deletion events
    // are that pass's own echo and start none.
    api.delete("wiki", &DeleteParams::default()).await.unwrap();
    eventually("instance gone", WAIT, || async {
        api.get_opt("wiki").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(hrs.get_opt("wiki").await.unwrap().is_none());
    assert!(
        Api::<HelmRepository>::namespaced(client.clone(), &ns)
            .get_opt("wiki-source")
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(passes(&metrics) - before, 1, "one pass for the deletion");
    // No `Deleting` status was written to the departing instance, so no Event of it.
    let reasons: Vec<String> = Api::<Event>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        !reasons
            .iter()
            .any(|r| r == "Uninstalling" || r == "Deleting"),
        "{reasons:?}"
    );
}
