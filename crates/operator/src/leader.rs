//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Controllers are safe to run in every replica (they only converge objects), but the
//! Pull-mode agent must poll from exactly one: two pollers would ack and apply the same
//! job twice. The elector publishes leadership on a `watch` channel; the agent runtime
//! runs while it reads `true`.
//!
//! Optimistic concurrency does the work: every write carries the `resourceVersion` that
//! was read, so two candidates racing for an expired lease cannot both win.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Name of the Lease (kept from the original operator so mixed rollouts cannot both lead).
pub const LEASE_NAME: &str = "dad03b25.vworkspace.io";

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process; the pod name in a cluster.
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    /// Cadence of acquire/renew attempts.
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease_name: LEASE_NAME.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What one attempt decided, given the lease as read (pure; unit-tested).
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// No lease yet: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but let it expire (or released it): take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Attempt {
    let Some(lease) = lease else {
        return Attempt::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Attempt::Renew;
    }
    if holder.is_empty() {
        return Attempt::TakeOver;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match spec.renew_time.or(spec.acquire_time) {
        Some(MicroTime(t)) => t
            .checked_add(jiff::SignedDuration::from_secs(duration))
            .map(|end| end < now)
            .unwrap_or(true),
        None => true,
    };
    if expired {
        Attempt::TakeOver
    } else {
        Attempt::Follow { holder }
    }
}

/// Runs the elector until `shutdown`, then releases the lease if held. With
/// `config == None` (election disabled) the process is always the leader.
pub fn spawn(
    client: kube::Client,
    config: Option<LeaderConfig>,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let Some(config) = config else {
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive so receivers never see a closed channel.
        tokio::spawn(async move {
            shutdown.cancelled().await;
            drop(tx);
        });
        return rx;
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut last_renew = tokio::time::Instant::now();
        loop {
            let leading = *tx.borrow();
            match try_once(&api, &config).await {
                Ok(true) => {
                    last_renew = tokio::time::Instant::now();
                    if !leading {
                        tracing::info!(identity = %config.identity, lease = %config.lease_name, "became leader");
                        let _ = tx.send(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(identity = %config.identity, "lost leadership");
                        let _ = tx.send(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election attempt failed");
                    if leading && last_renew.elapsed() > config.renew_deadline {
                        tracing::warn!(identity = %config.identity, "could not renew the lease in time; stepping down");
                        let _ = tx.send(false);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(config.retry_period) => {}
            }
        }
        if *tx.borrow() {
            let _ = tx.send(false);
            if let Err(e) = release(&api, &config).await {
                tracing::warn!(error = %e, "could not release the lease");
            }
        }
    });
    rx
}

/// One acquire-or-renew round; `Ok(true)` when we hold the lease afterwards.
async fn try_once(api: &Api<Lease>, config: &LeaderConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&config.lease_name).await?;
    let now = Timestamp::now();
    let attempt = decide(current.as_ref(), &config.identity, now);
    let duration = i32::try_from(config.lease_duration.as_secs()).unwrap_or(15);
    let write = match (attempt, current) {
        (Attempt::Follow { .. }, _) => return Ok(false),
        (Attempt::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.lease_name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (attempt, Some(mut lease)) => {
            let mut spec = lease.spec.take().unwrap_or_default();
            if attempt == Attempt::TakeOver {
                spec.holder_identity = Some(config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(MicroTime(now));
            lease.spec = Some(spec);
            // `replace` sends the resourceVersion we read: a concurrent winner makes it 409.
            api.replace(&config.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        (_, None) => return Ok(false),
    };
    match write {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Clears the holder so a successor does not wait for the lease to expire.
async fn release(api: &Api<Lease>, config: &LeaderConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&config.lease_name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64) -> Lease {
        let now = Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    now - jiff::SignedDuration::from_secs(renewed_secs_ago),
                )),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Attempt::Create);
        assert_eq!(decide(Some(&lease(Some("a"), 1)), "a", now), Attempt::Renew);
        assert_eq!(
            decide(Some(&lease(Some("b"), 1)), "a", now),
            Attempt::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 60)), "a", now),
            Attempt::TakeOver
        );
        assert_eq!(decide(Some(&lease(None, 1)), "a", now), Attempt::TakeOver);
    }
}
