//! The chart's in-apiserver admission objects, for harnesses that want a control plane
//! set up as the default install leaves it.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding,
};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde::Deserialize;

use crate::binaries::repo_root;

/// The file the chart renders its admission policies from.
pub const POLICIES_FILE: &str = "charts/vworkspace-operator/files/admission-policies.yaml";

/// Server-side-applies the shipped MutatingAdmissionPolicy objects (the finalizer
/// policy and its binding) as the chart installs them. The validating policies are left
/// out: they also need the namespace gate, which harness namespaces do not carry.
pub async fn install_mutating_policies(client: &Client) -> Result<()> {
    let path = repo_root().join(POLICIES_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let pp = PatchParams::apply("testkit").force();
    let mut applied = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc = serde_json::Value::deserialize(doc)?;
        let ar = match doc["kind"].as_str().unwrap_or_default() {
            "MutatingAdmissionPolicy" => ApiResource::erase::<MutatingAdmissionPolicy>(&()),
            "MutatingAdmissionPolicyBinding" => {
                ApiResource::erase::<MutatingAdmissionPolicyBinding>(&())
            }
            _ => continue,
        };
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a policy without a name")?
            .to_string();
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .with_context(|| format!("applying {}/{name}", ar.kind))?;
        applied += 1;
    }
    if applied == 0 {
        bail!("{} holds no MutatingAdmissionPolicy", path.display());
    }
    Ok(())
}
