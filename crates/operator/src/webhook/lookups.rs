//! The reads a review needs, each bounded by a short timeout: the target instance, the
//! registered cluster ids, and whether an engine's kinds are served (discovery, cached
//! briefly so a burst of Operations costs one lookup).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::core::ApiResource;
use vworkspace_api::{ApplicationInstance, Cluster};

/// A read that takes longer fails the review (the apiserver's call times out soon after).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a discovery answer is reused.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: no answer within {}s", READ_TIMEOUT.as_secs())]
    Timeout { what: String },
}

async fn bounded<T>(
    what: impl Into<String>,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, LookupError> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(LookupError::Api {
            what: what.into(),
            source,
        }),
        Err(_) => Err(LookupError::Timeout { what: what.into() }),
    }
}

/// When a group-version was read, and the plurals it serves (`None`: not served).
type Discovered = (Instant, Option<BTreeSet<String>>);

pub struct Lookups {
    client: kube::Client,
    /// By api_version.
    discovery: Mutex<HashMap<String, Discovered>>,
}

impl Lookups {
    pub fn new(client: kube::Client) -> Self {
        Lookups {
            client,
            discovery: Mutex::new(HashMap::new()),
        }
    }

    pub async fn instance(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ApplicationInstance>, LookupError> {
        let api: Api<ApplicationInstance> = Api::namespaced(self.client.clone(), namespace);
        bounded(
            format!("ApplicationInstance {namespace}/{name}"),
            api.get_opt(name),
        )
        .await
    }

    /// `spec.clusterId` of every `Cluster` that has one.
    pub async fn cluster_ids(&self) -> Result<Vec<String>, LookupError> {
        let api: Api<Cluster> = Api::all(self.client.clone());
        let list = bounded("Clusters", api.list(&ListParams::default())).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|c| c.spec.cluster_id)
            .filter(|id| !id.trim().is_empty())
            .collect())
    }

    /// Which of `resources` are served. A discovery error other than "not found" counts
    /// as served: this rule then falls back to the controller's `EngineNotInstalled`
    /// block instead of refusing Operations because discovery hiccupped.
    pub async fn served(&self, resources: &[ApiResource]) -> Vec<(ApiResource, bool)> {
        let mut out = Vec::new();
        for ar in resources {
            let plurals = self.group_version(&ar.api_version).await;
            let served = match plurals {
                Ok(Some(p)) => p.contains(&ar.plural),
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook discovery; assuming served");
                    true
                }
            };
            out.push((ar.clone(), served));
        }
        out
    }

    async fn group_version(
        &self,
        api_version: &str,
    ) -> Result<Option<BTreeSet<String>>, LookupError> {
        if let Some((at, v)) = self
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(api_version)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(v.clone());
        }
        let what = format!("API discovery of {api_version}");
        let answer = if api_version.contains('/') {
            bounded(what, self.client.list_api_group_resources(api_version)).await
        } else {
            bounded(what, self.client.list_core_api_resources(api_version)).await
        };
        let value = match answer {
            Ok(list) => Some(list.resources.into_iter().map(|r| r.name).collect()),
            Err(LookupError::Api {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        self.discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(api_version.to_string(), (Instant::now(), value.clone()));
        Ok(value)
    }
}
