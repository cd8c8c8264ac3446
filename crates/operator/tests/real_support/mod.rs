//! Helpers for the `real_*` tests: the full test cluster (kube-scheduler, kwok, Flux,
//! chart sources) and the operator binary. Nothing here writes another controller's
//! status; the tests only read what the real controllers did.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testkit::{FullCluster, fresh_namespace};
use vworkspace_api::operation::Phase;
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_operator::kinds::flux::HelmRelease;

/// Real installs include Helm waiting for pods and for the hook Job.
pub const WAIT: Duration = Duration::from_secs(180);

/// Every capability the tests use, as a catalog entry declares them.
pub fn capabilities() -> Value {
    json!({"ops.vworkspace.io/runcommand": "job", "ops.vworkspace.io/upgrade": "helm",
           "ops.vworkspace.io/migration": "helmHookJob"})
}

#[derive(Clone, Copy, Debug)]
pub enum Source {
    Http,
    Oci,
}

/// An ApplicationInstance for one of the test charts.
pub fn instance(
    full: &FullCluster,
    ns: &str,
    name: &str,
    source: Source,
    chart: &str,
    version: &str,
    values: Value,
) -> Value {
    let (source_type, url) = match source {
        Source::Http => ("helm", full.full.helm_repository_url.clone()),
        Source::Oci => ("oci", full.full.oci_chart_url()),
    };
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns, "annotations": capabilities()},
        "spec": {"appRef": {"catalogId": chart},
                 "chart": {"sourceType": source_type, "url": url, "name": chart, "version": version},
                 "release": {"name": name, "namespace": ns},
                 "values": values}
    })
}

/// One test's namespace, clients and operator (watching only that namespace).
pub struct Scenario {
    pub full: &'static FullCluster,
    pub client: Client,
    pub ns: String,
    pub operator: crate::support::Operator,
}

impl Scenario {
    pub async fn start(prefix: &str) -> Scenario {
        let full = FullCluster::get().await.unwrap();
        let client = full.client().await.unwrap();
        let ns = fresh_namespace(&client, prefix).await.unwrap();
        let watch = format!("--watch-namespace={ns}");
        let operator = crate::support::Operator::start(full, &ns, &[watch.as_str()]).await;
        Scenario {
            full,
            client,
            ns,
            operator,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create(&self, instance: Value) {
        self.api::<ApplicationInstance>()
            .create(
                &PostParams::default(),
                &serde_json::from_value(instance).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Polls `f` until it yields; on timeout prints what the cluster shows, then panics.
    pub async fn wait<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                self.dump().await;
                panic!("timed out after {}s waiting for {what}", WAIT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn dump(&self) {
        let hrs = self.api::<HelmRelease>().list(&ListParams::default()).await;
        for hr in hrs.map(|l| l.items).unwrap_or_default() {
            eprintln!(
                "HelmRelease {} gen {:?} status: {}",
                hr.name_any(),
                hr.metadata.generation,
                serde_json::to_string(&hr.status).unwrap_or_default()
            );
        }
        let insts = self
            .api::<ApplicationInstance>()
            .list(&ListParams::default())
            .await;
        for i in insts.map(|l| l.items).unwrap_or_default() {
            eprintln!(
                "ApplicationInstance {} status: {}",
                i.name_any(),
                serde_json::to_string(&i.status).unwrap_or_default()
            );
        }
        let pods = self.api::<Pod>().list(&ListParams::default()).await;
        for p in pods.map(|l| l.items).unwrap_or_default() {
            eprintln!(
                "Pod {} node {:?} phase {:?}",
                p.name_any(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.status.as_ref().and_then(|s| s.phase.clone())
            );
        }
        let log = self.operator.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "operator log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        eprintln!("component logs in {}", self.full.dir.display());
    }

    /// The instance's condition `type_` as (status, reason, message), once it is current.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let inst = self
            .api::<ApplicationInstance>()
            .get_opt(name)
            .await
            .ok()??;
        let status = inst.status?;
        if status.observed_generation != inst.metadata.generation {
            return None;
        }
        vworkspace_api::conditions::find(&status.conditions, type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> (String, String) {
        self.wait(&format!("{name} {type_}={status}"), || async {
            let (s, reason, message) = self.condition(name, type_).await?;
            (s == status).then_some((reason, message))
        })
        .await
    }

    pub async fn config(&self, name: &str) -> Option<ConfigMap> {
        self.api::<ConfigMap>().get_opt(name).await.unwrap()
    }

    /// Waits until the ConfigMap's `key` satisfies `ok`, and returns the value.
    pub async fn wait_config(&self, cm: &str, key: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait(&format!("ConfigMap {cm} {key}"), || async {
            let v = self.config(cm).await?.data?.get(key)?.clone();
            ok(&v).then_some(v)
        })
        .await
    }

    /// Pods of a release that run on the simulated node and are Ready.
    pub async fn ready_pods(&self, release: &str) -> Vec<Pod> {
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={release},app.kubernetes.io/name=webapp"
        ));
        let pods = self.api::<Pod>().list(&lp).await.unwrap().items;
        pods.into_iter()
            .filter(|p| {
                let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.full.full.node.as_str());
                let st = p.status.clone().unwrap_or_default();
                let ready = st
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                on_node && ready && st.phase.as_deref() == Some("Running")
            })
            .collect()
    }

    pub async fn job_complete(&self, name: &str) -> bool {
        let Ok(Some(job)) = self.api::<Job>().get_opt(name).await else {
            return false;
        };
        job.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
    }

    pub async fn operation(&self, name: &str, target: &str, t: &str, engine: &str, params: Value) {
        let op: Operation = serde_json::from_value(json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1",
                                   "kind": "ApplicationInstance", "name": target},
                     "type": t, "engine": engine, "parameters": params}
        }))
        .unwrap();
        self.api::<Operation>()
            .create(&PostParams::default(), &op)
            .await
            .unwrap();
    }

    /// Waits for a terminal phase and returns the Operation.
    pub async fn wait_operation(&self, name: &str) -> Operation {
        self.wait(&format!("Operation {name} to finish"), || async {
            let op = self.api::<Operation>().get(name).await.ok()?;
            matches!(op.status.as_ref()?.phase?, Phase::Succeeded | Phase::Failed).then_some(op)
        })
        .await
    }

    pub async fn patch_instance(&self, name: &str, patch: Value) {
        self.api::<ApplicationInstance>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.api::<Deployment>().get_opt(name).await.unwrap()
    }
}

pub fn phase(op: &Operation) -> Option<Phase> {
    op.status.as_ref().and_then(|s| s.phase)
}

pub fn outputs(op: &Operation) -> std::collections::BTreeMap<String, String> {
    op.status
        .as_ref()
        .and_then(|s| s.outputs.clone())
        .unwrap_or_default()
}
