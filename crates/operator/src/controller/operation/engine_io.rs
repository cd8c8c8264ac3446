//! Executes engine reads ([`Query`]) and writes ([`Write`]) against the apiserver as
//! dynamic objects, so no engine-specific code lives in the controller.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use vworkspace_api::keys;
use vworkspace_api::operation::Operation;
use vworkspace_decide::engines::{Build, Query, Select, Write};
use vworkspace_decide::operation::StartOutcome;

fn dynamic(client: &Client, ns: &str, ar: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, ar)
}

/// Runs one engine read; results carry their type so engines can parse them.
pub async fn read(client: &Client, q: &Query) -> Result<Vec<DynamicObject>, kube::Error> {
    let api = dynamic(client, &q.namespace, &q.resource);
    let mut found = match &q.select {
        Select::Name(name) => api.get_opt(name).await?.into_iter().collect(),
        Select::Labels(selector) => {
            api.list(&ListParams::default().labels(selector))
                .await?
                .items
        }
        Select::All => api.list(&ListParams::default()).await?.items,
    };
    for o in &mut found {
        o.types = Some(kube::core::TypeMeta {
            api_version: q.resource.api_version.clone(),
            kind: q.resource.kind.clone(),
        });
    }
    Ok(found)
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    }
}

/// Stops (or removes) a workload; objects already gone count as stopped.
pub async fn apply_all(client: &Client, writes: &[Write]) -> Result<(), kube::Error> {
    let bg = DeleteParams::background();
    for w in writes {
        let result = match w {
            Write::Delete {
                resource,
                namespace,
                name,
            } => dynamic(client, namespace, resource)
                .delete(name, &bg)
                .await
                .map(|_| ()),
            Write::Patch {
                resource,
                namespace,
                name,
                patch,
            } => dynamic(client, namespace, resource)
                .patch(name, &patch_params(), &Patch::Merge(patch))
                .await
                .map(|_| ()),
            Write::DeleteSelected {
                resource,
                namespace,
                selector,
            } => {
                // One by one: the chart's RBAC grants delete, not deletecollection.
                let api = dynamic(client, namespace, resource);
                let mut result = Ok(());
                for o in api
                    .list_metadata(&ListParams::default().labels(selector))
                    .await?
                    .items
                {
                    if let Err(e) = api.delete(&o.name_any(), &bg).await
                        && !is_not_found(&e)
                    {
                        result = Err(e);
                    }
                }
                result
            }
            Write::CreateOwned { resource, object } => {
                dynamic(client, &object.namespace().unwrap_or_default(), resource)
                    .create(&post_params(), object)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Err(e) if is_not_found(&e) => {}
            other => other?,
        }
    }
    Ok(())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(keys::FIELD_MANAGER_OPERATOR.into()),
        ..Default::default()
    }
}

/// Runs the start writes in order; the first one that cannot go through ends the start.
pub async fn start(
    client: &Client,
    op: &Operation,
    build: &Build,
) -> Result<StartOutcome, kube::Error> {
    let uid = op.uid().unwrap_or_default();
    let mut written = Vec::new();
    for w in &build.writes {
        match w {
            Write::CreateOwned { resource, object } => {
                let name = object.name_any();
                let ns = object.namespace().unwrap_or_default();
                let api = dynamic(client, &ns, resource);
                match api.get_opt(&name).await? {
                    Some(existing)
                        if existing.labels().get(keys::LABEL_OPERATION) != Some(&uid) =>
                    {
                        return Ok(StartOutcome::Taken {
                            kind: resource.kind.clone(),
                            namespace: existing.namespace().unwrap_or_default(),
                            name,
                        });
                    }
                    Some(existing) => written.push(existing),
                    None => match api.create(&post_params(), object).await {
                        Ok(created) => written.push(created),
                        // Raced with ourselves: the next pass sees it and checks the label.
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            written.push((**object).clone())
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            return Ok(StartOutcome::NotServed {
                                kind: resource.kind.clone(),
                                api_version: resource.api_version.clone(),
                            });
                        }
                        Err(e) => return Err(e),
                    },
                }
            }
            Write::Patch {
                resource,
                namespace,
                name,
                patch,
            } => {
                let patched = dynamic(client, namespace, resource)
                    .patch(name, &patch_params(), &Patch::Merge(patch))
                    .await;
                match patched {
                    Ok(p) => written.push(p),
                    // The apiserver refused the change (schema/CEL): a failure, not a retry.
                    Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                        return Ok(StartOutcome::Refused {
                            kind: resource.kind.clone(),
                            message: s.message,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            other => apply_all(client, std::slice::from_ref(other)).await?,
        }
    }
    Ok(StartOutcome::Written(written))
}
