//! Real controllers in the loop: the operator binary (under the chart's RBAC) with Flux
//! source-controller and helm-controller installing our test charts from a local HTTP
//! Helm repository and OCI registry, kube-scheduler and kube-controller-manager placing
//! and running pods, and kwok playing the kubelet of one simulated node.
//!
//! No test writes the status of a HelmRelease, Deployment, Pod or Job: everything asserted
//! here was done by the real controllers. Each test has its own namespace and its own
//! operator process watching only that namespace; they share one full cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_support;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use real_support::{Scenario, Source, instance, outputs, phase};
use serde_json::json;
use vworkspace_api::ApplicationInstance;
use vworkspace_api::operation::Phase;
use vworkspace_operator::kinds::flux::HelmRelease;

/// The HelmRelease as Flux reports it: `(Ready status, Ready reason, last chart version
/// in Flux's release history)`. Only helm-controller writes `status.history`.
async fn flux_view(s: &Scenario, name: &str) -> Option<(String, String, String)> {
    let hr = s.api::<HelmRelease>().get_opt(name).await.ok()??;
    let status = serde_json::to_value(hr.status?).ok()?;
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    let version = status["history"][0]["chartVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Some((
        ready["status"].as_str()?.to_string(),
        ready["reason"].as_str()?.to_string(),
        version,
    ))
}

#[tokio::test]
async fn http_chart_installs_runs_pods_upgrades_runs_operations_and_uninstalls() {
    let s = Scenario::start("real-http").await;
    let started = Instant::now();
    s.create(instance(
        s.full,
        &s.ns,
        "web",
        Source::Http,
        "webapp",
        "0.1.0",
        json!({"source": "inline", "inline": {"greeting": "hi", "replicaCount": 2}}),
    ))
    .await;
    let (reason, _) = s.wait_condition("web", "Ready", "True").await;
    assert_eq!(reason, "HelmReleaseReady");
    eprintln!(
        "HTTP chart: instance created → Ready=True in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (ready, flux_reason, version) = flux_view(&s, "web").await.unwrap();
    assert_eq!(
        (ready.as_str(), flux_reason.as_str(), version.as_str()),
        ("True", "InstallSucceeded", "0.1.0")
    );
    // The install never looked failed on the way (helm-controller says SourceNotReady
    // while it fetches the chart): the operator's transition Events tell.
    let reasons = s
        .wait("the HelmReleaseReady Event", || async {
            let events = s
                .api::<k8s_openapi::api::events::v1::Event>()
                .list(&ListParams::default())
                .await
                .ok()?;
            let reasons: Vec<String> = events
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
                .filter_map(|e| e.reason)
                .collect();
            reasons
                .iter()
                .any(|r| r == "HelmReleaseReady")
                .then_some(reasons)
        })
        .await;
    assert!(
        !reasons.iter().any(|r| r == "HelmReleaseFailed"),
        "{reasons:?}"
    );
    assert_eq!(
        s.wait_config("web-config", "greeting", |_| true).await,
        "hi"
    );
    // Helm waited for the Deployment: both pods run (kwok) on the simulated node.
    assert_eq!(s.ready_pods("web").await.len(), 2);
    // The post-install hook Job was run by the Job controller, its pod completed by kwok.
    assert!(s.job_complete("web-migrate").await);

    // A chart version bump on the instance upgrades the release.
    s.patch_instance("web", json!({"spec": {"chart": {"version": "0.2.0"}}}))
        .await;
    s.wait_config("web-config", "chartVersion", |v| v == "0.2.0")
        .await;
    s.wait_condition("web", "Ready", "True").await;
    let (_, flux_reason, version) = flux_view(&s, "web").await.unwrap();
    assert_eq!(
        (flux_reason.as_str(), version.as_str()),
        ("UpgradeSucceeded", "0.2.0")
    );

    // RunCommand: a Job the real Job controller runs and kwok completes.
    s.operation(
        "du",
        "web",
        "RunCommand",
        "job",
        json!({"image": "busybox", "command": ["du", "-sh", "/data"], "backoffLimit": 0}),
    )
    .await;
    let op = s.wait_operation("du").await;
    assert_eq!(phase(&op), Some(Phase::Succeeded), "{:?}", op.status);
    assert!(s.job_complete(&outputs(&op)["jobName"]).await);

    // helmHookJob: the hook Job cloned from the real release Secret (revision 2).
    s.operation(
        "migrate",
        "web",
        "Migration",
        "helmHookJob",
        json!({"hookName": "web-migrate", "backoffLimit": 0}),
    )
    .await;
    let op = s.wait_operation("migrate").await;
    assert_eq!(phase(&op), Some(Phase::Succeeded), "{:?}", op.status);
    let out = outputs(&op);
    assert_eq!(out["releaseSecret"], "sh.helm.release.v1.web.v2");
    assert_eq!(out["hookEvents"], "post-install,post-upgrade");
    let clone = s.api::<Job>().get(&out["jobName"]).await.unwrap();
    let container = &clone.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["/bin/migrate".to_string(), "up".to_string()][..])
    );
    assert!(s.job_complete(&out["jobName"]).await);

    // Deleting the instance uninstalls the release: the chart's objects disappear.
    s.api::<ApplicationInstance>()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    s.wait("the release to be uninstalled", || async {
        let gone = s.config("web-config").await.is_none()
            && s.deployment("web").await.is_none()
            && s.api::<ApplicationInstance>()
                .get_opt("web")
                .await
                .unwrap()
                .is_none();
        let secrets = s
            .api::<Secret>()
            .list(&ListParams::default().labels("owner=helm,name=web"))
            .await
            .unwrap()
            .items;
        (gone && secrets.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn oci_chart_with_values_from_a_secret_rerenders_and_upgrades_by_operation() {
    let s = Scenario::start("real-oci").await;
    // No Flux watch label on the Secret: helm-controller alone would apply an edit only at
    // its next interval (5 min); the operator asks it to render again at once.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shop-values"},
        "stringData": {"values.yaml": "greeting: from-secret\n"}
    }))
    .unwrap();
    s.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let started = Instant::now();
    s.create(instance(
        s.full,
        &s.ns,
        "shop",
        Source::Oci,
        "webapp",
        "0.1.0",
        json!({"source": "secretRef", "secretRef": {"name": "shop-values", "key": "values.yaml"}}),
    ))
    .await;
    s.wait_condition("shop", "Ready", "True").await;
    eprintln!(
        "OCI chart: instance created → Ready=True in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.wait_config("shop-config", "greeting", |_| true).await,
        "from-secret"
    );
    // Through OCIRepository + chartRef, Flux installs the chart as `0.1.0+<digest>`; the
    // chart's sanitised label survives it.
    let version = s.wait_config("shop-config", "chartVersion", |_| true).await;
    assert!(version.starts_with("0.1.0+"), "{version}");
    let labels = s.config("shop-config").await.unwrap().labels().clone();
    assert!(
        labels["helm.sh/chart"].starts_with("webapp-0.1.0_"),
        "{labels:?}"
    );
    assert_eq!(s.ready_pods("shop").await.len(), 1);

    // Editing the Secret re-renders the release.
    s.api::<Secret>()
        .patch(
            "shop-values",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"values.yaml": "greeting: edited\n"}})),
        )
        .await
        .unwrap();
    let edited = Instant::now();
    s.wait_config("shop-config", "greeting", |v| v == "edited")
        .await;
    eprintln!(
        "values Secret edited → ConfigMap re-rendered in {:.1}s",
        edited.elapsed().as_secs_f64()
    );

    // Upgrade Operation (helm engine): moves the instance, completes when it is Ready.
    s.operation(
        "up",
        "shop",
        "Upgrade",
        "helm",
        json!({"targetVersion": "0.2.0"}),
    )
    .await;
    let op = s.wait_operation("up").await;
    assert_eq!(phase(&op), Some(Phase::Succeeded), "{:?}", op.status);
    let out = outputs(&op);
    assert_eq!(
        (out["previousVersion"].as_str(), out["version"].as_str()),
        ("0.1.0", "0.2.0")
    );
    let version = s.wait_config("shop-config", "chartVersion", |_| true).await;
    let hr = s
        .api::<vworkspace_operator::kinds::flux::HelmRelease>()
        .get("shop")
        .await
        .unwrap();
    let oci = s
        .api::<vworkspace_operator::kinds::flux::OCIRepository>()
        .get_opt("shop")
        .await
        .unwrap();
    assert!(
        version.starts_with("0.2.0+"),
        "{version}\nHR: {}\nOCI: {}",
        serde_json::to_string(&hr).unwrap(),
        serde_json::to_string(&oci).unwrap()
    );
}

#[tokio::test]
async fn failing_chart_is_ready_false_within_seconds_and_fails_the_upgrade() {
    let s = Scenario::start("real-fail").await;
    let started = Instant::now();
    s.create(instance(
        s.full,
        &s.ns,
        "bad",
        Source::Http,
        "broken",
        "0.2.0",
        json!({"source": "inline", "inline": {}}),
    ))
    .await;
    let (reason, message) = s.wait_condition("bad", "Ready", "False").await;
    let took = started.elapsed();
    eprintln!(
        "failing install: instance created → Ready=False in {:.1}s ({message})",
        took.as_secs_f64()
    );
    assert_eq!(reason, "HelmReleaseFailed");
    assert!(message.starts_with("InstallFailed: "), "{message}");
    // What Flux's own status said at that moment: while it retries, observedGeneration
    // stays at -1 (the old mapping showed Ready=Unknown until the retries ran out).
    let hr = s.api::<HelmRelease>().get("bad").await.unwrap();
    eprintln!(
        "failing install: HelmRelease generation {:?}, status.observedGeneration {:?}, Stalled {:?}",
        hr.metadata.generation,
        hr.status.as_ref().and_then(|st| st.observed_generation),
        hr.status
            .as_ref()
            .and_then(|st| st.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Stalled"))
            .map(|c| c.status.clone())
    );
    // Flux retries three times before it gives up; the user sees the failure before that.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let (degraded, _, _) = s.condition("bad", "Degraded").await.unwrap();
    assert_eq!(degraded, "True");

    // An Upgrade to the failing version fails the Operation.
    s.create(instance(
        s.full,
        &s.ns,
        "flaky",
        Source::Http,
        "broken",
        "0.1.0",
        json!({"source": "inline", "inline": {}}),
    ))
    .await;
    s.wait_condition("flaky", "Ready", "True").await;
    s.operation(
        "up",
        "flaky",
        "Upgrade",
        "helm",
        json!({"targetVersion": "0.2.0"}),
    )
    .await;
    let op = s.wait_operation("up").await;
    assert_eq!(phase(&op), Some(Phase::Failed), "{:?}", op.status);
    let (ready, _, message) = s.condition("flaky", "Ready").await.unwrap();
    assert_eq!(ready, "False", "{message}");
    assert!(
        ["UpgradeFailed", "RollbackSucceeded", "RetriesExceeded"]
            .iter()
            .any(|r| message.contains(r)),
        "{message}"
    );
    // Flux remediates by rolling back (the operator asks for it); the instance says so,
    // and the release runs 0.1.0 again.
    let (reason, message) = s.wait_condition("flaky", "Degraded", "True").await;
    eprintln!("after the failed upgrade: Degraded=True/{reason} ({message})");
    s.wait("Degraded=True/RolledBack", || async {
        let (status, reason, _) = s.condition("flaky", "Degraded").await?;
        (status == "True" && reason == "RolledBack").then_some(())
    })
    .await;
    let cm: Api<ConfigMap> = s.api();
    let data = cm.get("flaky-config").await.unwrap().data.unwrap();
    assert_eq!(data["chartVersion"], "0.1.0");
}
