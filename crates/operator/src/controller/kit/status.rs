//! Scope-agnostic writers: the URL comes from the object (namespaced or not), so one
//! function serves the three kinds.

use kube::api::{Patch, PatchParams};
use kube::core::Request;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use vworkspace_api::application_instance::ApplicationInstanceStatus;
use vworkspace_api::cluster::ClusterStatus;
use vworkspace_api::conditions::Condition;
use vworkspace_api::keys;
use vworkspace_api::operation::OperationStatus;

/// A status that carries conditions (their transitions become Events).
pub trait Conditioned {
    fn conditions(&self) -> &[Condition];
}

impl Conditioned for ApplicationInstanceStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditioned for OperationStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl Conditioned for ClusterStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

fn request<K: Resource<DynamicType = ()>>(obj: &K) -> Request {
    Request::new(K::url_path(&(), obj.meta().namespace.as_deref()))
}

/// Server-side apply of `{status}` on the status subresource, forced: the operator is
/// the only writer of its objects' status.
pub async fn apply<K>(
    client: &Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any()},
        "status": status,
    });
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    let req = request(obj)
        .patch_subresource("status", &obj.name_any(), &pp, &Patch::Apply(&body))
        .map_err(kube::Error::BuildRequest)?;
    client.request::<serde_json::Value>(req).await.map(|_| ())
}

/// JSON merge patch of the object itself.
pub async fn merge_patch<K>(
    client: &Client,
    obj: &K,
    patch: &serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let req = request(obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    client.request::<serde_json::Value>(req).await.map(|_| ())
}
