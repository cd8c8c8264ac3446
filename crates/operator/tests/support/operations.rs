//! The Operation controller in a namespace of its own, and what the Operation tests do to
//! it and read from it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testkit::fixtures::{
    TestNamespace, eventually, job_controller_finishes, test_namespace, write_status,
    write_status_subresource,
};
use vworkspace_api::conditions::find;
use vworkspace_api::operation::Phase;
use vworkspace_api::{ApplicationInstance, Operation};
use vworkspace_operator::controller::Context;
use vworkspace_operator::controller::operation::{self, OperationConfig};
use vworkspace_operator::engines::velero;

use super::instances::instance_controller_reports;

/// The approval secret the controller is configured with.
pub const SECRET: &str = "approval-s3cret";
/// Generous: the garbage collector picks up new kinds on its 30 s discovery resync.
pub const WAIT: Duration = Duration::from_secs(90);

/// A namespace with the Operation controller watching it, and a namespace for Velero.
pub struct Env {
    pub client: Client,
    pub ns: String,
    pub velero_ns: String,
}

/// The reason of condition `t`, or "" without one.
pub fn reason(op: &Operation, t: &str) -> String {
    find(&op.status.as_ref().unwrap().conditions, t)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// The message of condition `t`, or "" without one.
pub fn message(op: &Operation, t: &str) -> String {
    find(&op.status.as_ref().unwrap().conditions, t)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

impl Env {
    /// Starts the controller on a fresh namespace and creates `targets` there (each built
    /// from the namespace's name).
    pub async fn start(prefix: &str, targets: impl FnOnce(&str) -> Vec<Value>) -> Env {
        let TestNamespace { client, ns, .. } = test_namespace(prefix).await.unwrap();
        let velero_ns = testkit::fresh_namespace(&client, "velero").await.unwrap();
        let ctx = Arc::new(Context::new(client.clone()));
        let config = OperationConfig {
            approval_secret: SECRET.into(),
            velero_namespace: velero_ns.clone(),
        };
        let scope = ns.clone();
        tokio::spawn(async move { operation::run(ctx, config, Some(&scope)).await });
        let env = Env {
            client,
            ns,
            velero_ns,
        };
        for target in targets(&env.ns) {
            env.targets()
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(target).unwrap(),
                )
                .await
                .unwrap();
        }
        env
    }

    pub fn ops(&self) -> Api<Operation> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn targets(&self) -> Api<ApplicationInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Objects of a third-party kind in the test namespace.
    pub fn dynamic(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, ar)
    }

    /// Velero objects of `kind` in the Velero namespace.
    pub fn velero(&self, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.velero_ns,
            &velero::api_resource(kind),
        )
    }

    /// The name of Operation `op`'s workload.
    pub fn workload(&self, op: &str) -> String {
        format!("{}--{op}", self.ns)
    }

    /// Creates Operation `name` of type `t` on target `target`; `extra` is merged into the spec.
    pub async fn create(
        &self,
        name: &str,
        target: &str,
        t: &str,
        engine: &str,
        extra: Value,
    ) -> Operation {
        let mut v = json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": target},
                     "type": t, "engine": engine}
        });
        if let Value::Object(m) = extra {
            for (k, val) in m {
                v["spec"][k] = val;
            }
        }
        self.ops()
            .create(&PostParams::default(), &serde_json::from_value(v).unwrap())
            .await
            .unwrap()
    }

    pub async fn wait_phase(&self, name: &str, phase: Phase) -> Operation {
        eventually(&format!("{name} {phase:?}"), WAIT, || async {
            let op = self.ops().get(name).await.unwrap();
            (op.status.as_ref()?.phase? == phase).then_some(op)
        })
        .await
    }

    /// Waits for `Blocked=True` with `reason`; returns its message.
    pub async fn wait_blocked(&self, name: &str, reason: &str) -> String {
        eventually(&format!("{name} Blocked/{reason}"), WAIT, || async {
            let op = self.ops().get(name).await.unwrap();
            let c = find(&op.status?.conditions, "Blocked")?.clone();
            (c.status == "True" && c.reason == reason).then_some(c.message)
        })
        .await
    }

    pub async fn cancel(&self, name: &str) {
        self.patch_spec(name, json!({"cancel": true})).await;
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.ops()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// Plays Velero (or Argo): their CRDs have no status subresource.
    pub async fn set_status(&self, api: &Api<DynamicObject>, name: &str, status: Value) {
        write_status(api, name, status).await.unwrap();
    }

    /// Plays VolSync or the snapshot controller: status through the subresource.
    pub async fn set_status_sub(&self, api: &Api<DynamicObject>, name: &str, status: Value) {
        write_status_subresource(api, name, status).await.unwrap();
    }

    /// Plays Velero reporting on its object `kind/name`.
    pub async fn velero_reports(&self, kind: &str, name: &str, status: Value) {
        self.set_status(&self.velero(kind), name, status).await;
    }

    /// Plays the Job controller finishing Job `name`.
    pub async fn job_reports(&self, name: &str, condition: &str, reason: &str) {
        job_controller_finishes(&self.jobs(), name, condition, reason)
            .await
            .unwrap();
    }

    /// Plays the ApplicationInstance controller (for Upgrades): current generation and
    /// chart applied, `Ready=<ready>`.
    pub async fn instance_reports(&self, name: &str, ready: &str) {
        instance_controller_reports(
            &self.targets(),
            name,
            ready,
            "HelmRelease",
            &format!("release {ready}"),
        )
        .await;
    }

    pub async fn chart_version(&self, name: &str) -> String {
        self.targets()
            .get(name)
            .await
            .unwrap()
            .spec
            .chart
            .unwrap()
            .version
    }

    /// Waits until `name` is gone from `api`.
    pub async fn gone<K>(&self, api: &Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        eventually(&format!("{name} collected"), WAIT, || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await
    }
}
