//! Status reporter (spec §3.9): turns condition changes of `ApplicationInstance`,
//! `Operation` and `Cluster` objects into `ConditionTransition` events on the batcher.
//!
//! It watches the three kinds itself (no reconciler has to call it) and compares each
//! object's conditions with the last seen list: a condition of a new type, or whose
//! status, reason or message changed, becomes one event carrying only that condition,
//! keyed uniquely per transition (`wire::event_key`). After a restart the first list
//! re-reports current conditions; their keys equal the ones sent before, so the server
//! de-duplicates them. [`Reporter::snapshot`] re-emits everything (reconnect re-sync).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as KubeCondition;
use kube::Resource;
use kube::api::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster, Operation};

use super::events::EventBatcher;
use super::wire::{Condition, EVENT_CONDITION_TRANSITION, Event, ObjectRef, event_key};

#[derive(Clone, Debug)]
struct Seen {
    reference: ObjectRef,
    conditions: Vec<Condition>,
}

/// Conditions of `new` worth an event given `old` (pure).
pub fn changed(old: &[Condition], new: &[Condition]) -> Vec<Condition> {
    new.iter()
        .filter(|c| {
            old.iter().find(|o| o.type_ == c.type_).is_none_or(|o| {
                o.status != c.status || o.reason != c.reason || o.message != c.message
            })
        })
        .cloned()
        .collect()
}

pub fn transition_event(reference: &ObjectRef, c: &Condition) -> Event {
    Event {
        event_key: event_key::condition_key(reference, c),
        kind: EVENT_CONDITION_TRANSITION.into(),
        resource_ref: reference.clone(),
        conditions: vec![c.clone()],
        endpoints: Vec::new(),
        timestamp: jiff::Timestamp::now(),
    }
}

pub struct Reporter {
    batcher: Arc<EventBatcher>,
    seen: Mutex<HashMap<String, Seen>>,
}

fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef {
    ObjectRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
        generation: obj.meta().generation.unwrap_or_default(),
    }
}

fn map_key(r: &ObjectRef) -> String {
    format!("{}/{}/{}/{}", r.kind, r.namespace, r.name, r.uid)
}

impl Reporter {
    pub fn new(batcher: Arc<EventBatcher>) -> Self {
        Reporter {
            batcher,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an object's conditions and queues events for what changed.
    pub fn observe(&self, reference: ObjectRef, conditions: &[KubeCondition]) {
        let new: Vec<Condition> = conditions.iter().map(Condition::from).collect();
        let key = map_key(&reference);
        let events: Vec<Event> = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            let old = seen
                .get(&key)
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let diff = changed(&old, &new);
            seen.insert(
                key,
                Seen {
                    reference: reference.clone(),
                    conditions: new,
                },
            );
            diff.iter()
                .map(|c| transition_event(&reference, c))
                .collect()
        };
        for e in events {
            tracing::info!(kind = %e.resource_ref.kind, namespace = %e.resource_ref.namespace, name = %e.resource_ref.name,
                condition = %e.conditions[0].type_, status = %e.conditions[0].status, "condition transition queued for the control plane");
            self.batcher.enqueue(e);
        }
    }

    fn forget(&self, reference: &ObjectRef) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&map_key(reference));
        }
    }

    /// Current conditions of a known object.
    pub fn conditions_of(&self, kind: &str, namespace: &str, name: &str) -> Option<Vec<Condition>> {
        let seen = self.seen.lock().ok()?;
        seen.values()
            .find(|s| {
                s.reference.kind == kind
                    && s.reference.namespace == namespace
                    && s.reference.name == name
            })
            .map(|s| s.conditions.clone())
    }

    /// Re-queues every current condition of every watched object (reconnect re-sync:
    /// heals gaps left by buffer overflow; already-delivered keys are de-duplicated by
    /// the server). Returns how many events were queued.
    pub fn snapshot(&self) -> usize {
        let events: Vec<Event> = match self.seen.lock() {
            Ok(seen) => seen
                .values()
                .flat_map(|s| {
                    s.conditions
                        .iter()
                        .map(|c| transition_event(&s.reference, c))
                })
                .collect(),
            Err(_) => return 0,
        };
        let n = events.len();
        for e in events {
            self.batcher.enqueue(e);
        }
        n
    }

    /// Watches the three kinds until `cancel`. `namespace` limits the namespaced kinds.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        namespace: Option<String>,
        cancel: CancellationToken,
    ) {
        let ns = namespace.as_deref();
        let instances: Api<ApplicationInstance> = match ns {
            Some(n) => Api::namespaced(client.clone(), n),
            None => Api::all(client.clone()),
        };
        let operations: Api<Operation> = match ns {
            Some(n) => Api::namespaced(client.clone(), n),
            None => Api::all(client.clone()),
        };
        let clusters: Api<Cluster> = Api::all(client);
        let a = self.clone().watch(instances, |i: &ApplicationInstance| {
            i.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        });
        let o = self.clone().watch(operations, |o: &Operation| {
            o.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        });
        let c = self.clone().watch(clusters, |c: &Cluster| {
            c.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default()
        });
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = futures::future::join3(a, o, c) => {}
        }
    }

    async fn watch<K>(self: Arc<Self>, api: Api<K>, conditions: fn(&K) -> Vec<KubeCondition>)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let mut stream = super::relist::relisting(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                    self.observe(object_ref(&obj), &conditions(&obj));
                }
                Ok(watcher::Event::Delete(obj)) => self.forget(&object_ref(&obj)),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, kind = %K::kind(&()), "reporter watch error (retrying)");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn c(t: &str, s: &str, r: &str, m: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: m.into(),
            last_transition_time: None,
            observed_generation: 0,
        }
    }

    #[test]
    fn only_changes_are_reported() {
        let old = vec![c("Ready", "False", "A", ""), c("Blocked", "False", "X", "")];
        let new = vec![
            c("Ready", "False", "B", ""),
            c("Blocked", "False", "X", ""),
            c("Degraded", "True", "D", ""),
        ];
        let d = changed(&old, &new);
        assert_eq!(
            d.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            vec!["Ready", "Degraded"]
        );
        assert!(changed(&new, &new).is_empty());
        // Disappeared conditions are not reported.
        assert!(changed(&new, &[]).is_empty());
    }

    #[test]
    fn observe_and_snapshot() {
        let batcher = Arc::new(EventBatcher::new(
            Default::default(),
            Arc::new(Metrics::new()),
        ));
        let r = Reporter::new(batcher.clone());
        let reference = ObjectRef {
            api_version: "ops.vworkspace.io/v1alpha1".into(),
            kind: "Cluster".into(),
            name: "local".into(),
            uid: "u".into(),
            ..Default::default()
        };
        let kc = |s: &str| KubeCondition {
            type_: "Connected".into(),
            status: s.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(100).unwrap(),
            ),
        };
        r.observe(reference.clone(), &[kc("True")]);
        r.observe(reference.clone(), &[kc("True")]);
        assert_eq!(batcher.len(), 1);
        r.observe(reference.clone(), &[kc("False")]);
        assert_eq!(batcher.len(), 2);
        assert_eq!(r.snapshot(), 1);
        assert_eq!(batcher.len(), 3);
        assert_eq!(
            r.conditions_of("Cluster", "", "local").unwrap()[0].status,
            "False"
        );
    }
}
