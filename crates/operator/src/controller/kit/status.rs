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
///
/// Apply removes only fields this manager owned. Fields written by another manager —
/// notably by the merge patches of operator versions before the kit — would survive, so
/// any that the answer still carries and `status` lacks are nulled by one merge patch
/// (no request when there are none).
pub async fn apply<K>(
    client: &Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let desired = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any()},
        "status": &desired,
    });
    let pp = PatchParams::apply(keys::FIELD_MANAGER_OPERATOR).force();
    let req = request(obj)
        .patch_subresource("status", &obj.name_any(), &pp, &Patch::Apply(&body))
        .map_err(kube::Error::BuildRequest)?;
    let written = client.request::<serde_json::Value>(req).await?;
    let Some(nulls) = written.get("status").and_then(|w| stale_nulls(w, &desired)) else {
        return Ok(());
    };
    let pp = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..PatchParams::default()
    };
    let req = request(obj)
        .patch_subresource(
            "status",
            &obj.name_any(),
            &pp,
            &Patch::Merge(json!({ "status": nulls })),
        )
        .map_err(kube::Error::BuildRequest)?;
    client.request::<serde_json::Value>(req).await.map(|_| ())
}

/// A merge patch nulling every object key of `written` that `desired` lacks (recursing
/// into objects present in both; lists are whole values and left alone); `None` when
/// there is nothing to remove.
pub fn stale_nulls(
    written: &serde_json::Value,
    desired: &serde_json::Value,
) -> Option<serde_json::Value> {
    let (serde_json::Value::Object(w), serde_json::Value::Object(d)) = (written, desired) else {
        return None;
    };
    let mut patch = serde_json::Map::new();
    for (k, wv) in w {
        match d.get(k) {
            None => {
                patch.insert(k.clone(), serde_json::Value::Null);
            }
            Some(dv) => {
                if let Some(inner) = stale_nulls(wv, dv) {
                    patch.insert(k.clone(), inner);
                }
            }
        }
    }
    (!patch.is_empty()).then_some(serde_json::Value::Object(patch))
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
    patch_object(client, obj, &Patch::Merge(patch)).await
}

/// JSON patch (RFC 6902) of the object itself.
pub async fn json_patch<K>(
    client: &Client,
    obj: &K,
    patch: &json_patch::Patch,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    patch_object(client, obj, &Patch::<()>::Json(patch.clone())).await
}

/// Patches the object itself, naming the operator's field manager.
async fn patch_object<K, P>(client: &Client, obj: &K, patch: &Patch<P>) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
    P: serde::Serialize + std::fmt::Debug,
{
    let pp = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..PatchParams::default()
    };
    let req = request(obj)
        .patch(&obj.name_any(), &pp, patch)
        .map_err(kube::Error::BuildRequest)?;
    client.request::<serde_json::Value>(req).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::stale_nulls;
    use serde_json::json;

    #[test]
    fn only_keys_missing_from_the_desired_status_are_nulled() {
        let written = json!({
            "phase": "Connected",
            "lastHeartbeat": "2026-12-01T12:00:00Z",
            "credentialStatus": {"secretName": "s", "registeredAt": "t"},
            "outputs": {"a": "1", "b": "2"},
            "conditions": [{"type": "Ready"}, {"type": "Old"}]
        });
        let desired = json!({
            "phase": "Pending",
            "credentialStatus": {"secretName": "s"},
            "outputs": {"a": "1"},
            "conditions": [{"type": "Ready"}]
        });
        assert_eq!(
            stale_nulls(&written, &desired),
            Some(json!({
                "lastHeartbeat": null,
                "credentialStatus": {"registeredAt": null},
                "outputs": {"b": null}
            }))
        );
        assert_eq!(stale_nulls(&desired, &desired), None);
        assert_eq!(stale_nulls(&json!({}), &desired), None);
    }
}
