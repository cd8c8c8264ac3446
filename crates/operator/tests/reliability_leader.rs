//! Leader failover (issue 11): two replicas of the operator binary with leader election
//! against the mock control plane. The leader is SIGKILLed while a job waits for its
//! instance to become Ready; the standby must take the Lease over within the lease
//! duration (15 s, plus one 2 s retry period) and answer the job exactly once, resuming it
//! from the in-flight journal. Figures: docs/reliability.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::{Client, ResourceExt};
use support::{eventually, job, managed_instance, start_replica};
use testkit::ControlPlane;
use testkit::fixtures::{create_namespace, helm_controller_reports};
use vworkspace_api::ApplicationInstance;
use vworkspace_operator::kinds::flux::HelmRelease;
use vworkspace_operator::leader::LEASE_NAME;

const CLUSTER_ID: &str = "3e1d9b7a-0f42-4d6c-8b1e-1eade0000001";
const REG_TOKEN: &str = "vwksp-reg-leader00000000000000000000001";
const OP_NS: &str = "vworkspace-system";
const APPS: &str = "org-leader";
const LONG: Duration = Duration::from_secs(90);
/// `LeaderConfig::new`: the operator binary's lease duration and retry period.
const LEASE: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

async fn holder(leases: &Api<Lease>) -> Option<(String, jiff::Timestamp)> {
    let spec = leases.get_opt(LEASE_NAME).await.ok()??.spec?;
    Some((spec.holder_identity?, spec.renew_time?.0))
}

async fn flux_ready(client: &Client, name: &str) {
    let hrs: Api<HelmRelease> = Api::namespaced(client.clone(), APPS);
    eventually(&format!("HelmRelease {name}"), LONG, || async {
        hrs.get_opt(name).await.unwrap()
    })
    .await;
    helm_controller_reports(&hrs, name, "True", "InstallSucceeded", "played")
        .await
        .unwrap();
}

#[tokio::test]
async fn standby_takes_over_a_killed_leader_and_answers_once() {
    let cp = ControlPlane::get().await.unwrap();
    let client = cp.client().await.unwrap();
    for ns in [OP_NS, APPS] {
        create_namespace(&client, ns).await.unwrap();
    }
    let mock = support::mock(REG_TOKEN, CLUSTER_ID).await;
    let admin = mock.admin();
    let kubeconfig = cp
        .kubeconfig_for_service_account(
            OP_NS,
            "vworkspace-operator",
            support::chart_rules("manager-rules.yaml"),
            support::chart_rules("namespace-rules.yaml"),
        )
        .await
        .unwrap();
    let flags = ["--agent-poll-interval=2s"];
    let mut a = Some(start_replica(
        kubeconfig.clone(),
        OP_NS,
        "replica-a",
        &flags,
    ));
    support::register_cluster(&client, OP_NS, &mock.url(), CLUSTER_ID, REG_TOKEN).await;
    let mut b = Some(start_replica(kubeconfig, OP_NS, "replica-b", &flags));
    let leases: Api<Lease> = Api::namespaced(client.clone(), OP_NS);
    let (leader, _) = eventually("a leader", LONG, || holder(&leases)).await;
    assert_eq!(
        leader, "replica-a",
        "the first replica registered, so it leads"
    );
    // The standby is up and following (its log says so) before the leader dies.
    eventually("standby running", LONG, || async {
        let log = b.as_ref().unwrap().log();
        log.contains("starting controllers").then_some(())
    })
    .await;

    // A job the leader takes on, then dies with, while waiting for Ready.
    let apps: Api<ApplicationInstance> = Api::namespaced(client.clone(), APPS);
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "failover-1",
                "apply",
                "applicationinstance/org-leader/wiki@1",
                managed_instance(APPS, "wiki", "1.0.0"),
            ),
        )
        .await
        .unwrap();
    let created = eventually("instance applied", LONG, || async {
        apps.get_opt("wiki").await.unwrap()
    })
    .await;
    eventually("acked", LONG, || async {
        admin.was_acked("failover-1").await.unwrap().then_some(())
    })
    .await;
    let (_, last_renew) = holder(&leases).await.unwrap();
    a.as_mut().unwrap().kill().await;
    let killed = Instant::now();
    let killed_at = jiff::Timestamp::now();
    assert!(
        admin.result("failover-1").await.unwrap().is_none(),
        "answered before the kill"
    );

    let (new_leader, _) = eventually("takeover", LONG, || async {
        holder(&leases).await.filter(|(h, _)| h == "replica-b")
    })
    .await;
    let takeover = killed.elapsed();
    let since_renewal = (jiff::Timestamp::now() - last_renew).get_seconds();
    eprintln!(
        "leader failover: {new_leader} leads {:.1}s after the SIGKILL, {since_renewal}s after \
         the dead leader's last renewal (lease {}s, retry {}s; killed {killed_at})",
        takeover.as_secs_f64(),
        LEASE.as_secs(),
        RETRY.as_secs()
    );
    assert!(
        takeover <= LEASE + RETRY + Duration::from_secs(1),
        "takeover took {takeover:?}"
    );

    // The new leader resumes the journaled job; Flux becomes Ready; answered once.
    flux_ready(&client, "wiki").await;
    let r = admin.wait_for_result("failover-1", LONG).await.unwrap();
    let answered = killed.elapsed();
    assert_eq!(r.outcome, "succeeded", "{r:?}");
    let info = admin.job("failover-1").await.unwrap().unwrap();
    assert_eq!(info.result_posts, 1, "answered once");
    assert_eq!(info.deliveries, 1, "handed out once");
    let after = apps.get("wiki").await.unwrap();
    assert_eq!(after.uid(), created.uid());
    assert_eq!(after.metadata.generation, Some(1), "applied once");
    let log_b = b.as_ref().unwrap().log();
    assert!(
        log_b.contains("resuming a job taken on before a restart"),
        "the standby did not resume from the journal:\n{log_b}"
    );
    // And it serves new jobs.
    admin
        .enqueue(
            CLUSTER_ID,
            &job(
                "after-failover",
                "apply",
                "",
                managed_instance(APPS, "chat", "1.0.0"),
            ),
        )
        .await
        .unwrap();
    flux_ready(&client, "chat").await;
    let r2 = admin.wait_for_result("after-failover", LONG).await.unwrap();
    assert_eq!(r2.outcome, "succeeded", "{r2:?}");
    eprintln!(
        "failover-1 answered {:.1}s after the kill (incl. the test playing Flux)",
        answered.as_secs_f64()
    );
    b.take().unwrap().kill().await;
}
