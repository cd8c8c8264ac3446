//! Status reporter (spec §3.9): turns condition changes of `ApplicationInstance`,
//! `Operation` and `Cluster` objects into `ConditionTransition` events on the batcher.
//!
//! It watches the three kinds itself (no reconciler has to call it) and compares each
//! object's conditions with the last seen ones: a condition of a new type, or whose
//! status, reason or message changed, becomes one event carrying only that condition,
//! keyed uniquely per transition (`wire::event_key`); a condition that disappeared is
//! not reported. After a restart the first list re-reports current conditions; their
//! keys equal the ones sent before, so the server de-duplicates them.
//!
//! Memory: per object it keeps only a hash of kind/namespace/name/uid and, per
//! condition, a hash of the type and one of status+reason+message (about 100 bytes per
//! object instead of the conditions themselves, issue 10). So [`Reporter::snapshot`]
//! (reconnect re-sync) cannot re-emit from memory: it lists the three kinds from the
//! API server, a page at a time, and queues every current condition.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as KubeCondition;
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;
use vworkspace_api::{ApplicationInstance, Cluster, Operation};

use super::events::EventBatcher;
use super::wire::{Condition, EVENT_CONDITION_TRANSITION, Event, ObjectRef, event_key};

/// Objects per LIST page of a re-sync: a page is held whole while its events are
/// queued, and instances with inline values can be large.
pub const SNAPSHOT_PAGE_SIZE: u32 = 100;

/// What is kept of one condition: (hash of its type, hash of status+reason+message).
pub type Fingerprint = (u64, u64);

/// The hashes only live in this process's memory, so any stable hasher does;
/// `DefaultHasher::new()` has fixed keys (same input, same hash, for the process's life).
fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// `str` hashes with a terminator, so ("ab","c") and ("a","bc") differ.
pub fn fingerprint(c: &Condition) -> Fingerprint {
    (
        hash_of(c.type_.as_str()),
        hash_of(&(c.status.as_str(), c.reason.as_str(), c.message.as_str())),
    )
}

/// Map key of an object: the same fields the formatted key used to hold.
fn object_key(r: &ObjectRef) -> u64 {
    hash_of(&(
        r.kind.as_str(),
        r.namespace.as_str(),
        r.name.as_str(),
        r.uid.as_str(),
    ))
}

/// Indices of the conditions in `new` worth an event given the last seen `old` (pure):
/// a type not seen before, or a seen type whose status, reason or message changed.
pub fn changed(old: &[Fingerprint], new: &[Fingerprint]) -> Vec<usize> {
    new.iter()
        .enumerate()
        .filter(|(_, (t, v))| old.iter().find(|o| o.0 == *t).is_none_or(|o| o.1 != *v))
        .map(|(i, _)| i)
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

/// A kind whose conditions are reported.
trait Reported:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn conditions(&self) -> &[KubeCondition];
}

impl Reported for ApplicationInstance {
    fn conditions(&self) -> &[KubeCondition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl Reported for Operation {
    fn conditions(&self) -> &[KubeCondition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl Reported for Cluster {
    fn conditions(&self) -> &[KubeCondition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
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

/// Keys of one kind's objects: a re-list sends no deletion for an object deleted while
/// the watch was down, so what a re-list no longer shows is dropped when it ends.
#[derive(Default)]
struct KindKeys {
    live: HashSet<u64>,
    /// Keys seen since the re-list began (`Init`), until `InitDone`.
    listed: Option<HashSet<u64>>,
}

pub struct Reporter {
    batcher: Arc<EventBatcher>,
    client: kube::Client,
    /// Limits the namespaced kinds (watches and re-sync lists alike).
    namespace: Option<String>,
    page_size: u32,
    seen: Mutex<HashMap<u64, Box<[Fingerprint]>>>,
    /// Whether there is a control plane to tell (see [`Reporter::with_gate`]).
    gate: Option<Gate>,
    /// Transitions were left out while the gate was shut: the next contact re-syncs.
    suppressed: AtomicBool,
}

type Gate = Box<dyn Fn() -> bool + Send + Sync>;

impl Reporter {
    /// `namespace` limits the namespaced kinds; Clusters are always cluster-wide.
    pub fn new(
        batcher: Arc<EventBatcher>,
        client: kube::Client,
        namespace: Option<String>,
    ) -> Self {
        Reporter {
            batcher,
            client,
            namespace,
            page_size: SNAPSHOT_PAGE_SIZE,
            seen: Mutex::new(HashMap::new()),
            gate: None,
            suppressed: AtomicBool::new(false),
        }
    }

    /// Queue transitions only while `open()` holds (the agent: while it has
    /// credentials). With no Cluster registered there is no one to send them to, and
    /// 10,000 instances' transitions would only overflow the buffer. The fingerprints are
    /// kept either way; what was left out is re-sent by [`Reporter::snapshot`] when
    /// [`Reporter::take_suppressed`] says so.
    pub fn with_gate(mut self, open: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.gate = Some(Box::new(open));
        self
    }

    /// Whether transitions were left out since the last call; clears the flag.
    pub fn take_suppressed(&self) -> bool {
        self.suppressed.swap(false, Ordering::Relaxed)
    }

    /// Objects per LIST page of [`Reporter::snapshot`] (default [`SNAPSHOT_PAGE_SIZE`]).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Records an object's conditions and queues events for what changed.
    pub fn observe(&self, reference: ObjectRef, conditions: &[KubeCondition]) {
        self.record(&reference, conditions);
    }

    /// Stores the fingerprints of `conditions` and queues an event for each changed one.
    fn record(&self, reference: &ObjectRef, conditions: &[KubeCondition]) {
        let new: Vec<Condition> = conditions.iter().map(Condition::from).collect();
        let fingerprints: Box<[Fingerprint]> = new.iter().map(fingerprint).collect();
        let picked = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            let key = object_key(reference);
            let picked = changed(seen.get(&key).map_or(&[], |s| &s[..]), &fingerprints);
            seen.insert(key, fingerprints);
            picked
        };
        if !picked.is_empty() && self.gate.as_ref().is_some_and(|open| !open()) {
            self.suppressed.store(true, Ordering::Relaxed);
            return;
        }
        for &i in &picked {
            tracing::info!(kind = %reference.kind, namespace = %reference.namespace, name = %reference.name,
                condition = %new[i].type_, status = %new[i].status, "condition transition queued for the control plane");
            self.batcher.enqueue(transition_event(reference, &new[i]));
        }
    }

    fn forget(&self, reference: &ObjectRef) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&object_key(reference));
        }
    }

    fn apis(&self) -> (Api<ApplicationInstance>, Api<Operation>, Api<Cluster>) {
        let c = &self.client;
        match self.namespace.as_deref() {
            Some(n) => (
                Api::namespaced(c.clone(), n),
                Api::namespaced(c.clone(), n),
                Api::all(c.clone()),
            ),
            None => (
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
            ),
        }
    }

    /// Re-queues every current condition of every object of the three kinds, listed
    /// from the API server (reconnect re-sync: heals gaps left by buffer overflow;
    /// already-delivered keys are de-duplicated by the server). The kept fingerprints
    /// are the watch's alone: a page listed before a newer watch event must not put an
    /// older state (or a deleted object) back. Each kind is listed on its own, so a
    /// failed list (logged; the next reconnect re-syncs again) skips only that kind.
    /// Returns how many events were queued.
    pub async fn snapshot(&self) -> usize {
        let (instances, operations, clusters) = self.apis();
        let mut queued = 0;
        queued += self.resend(&instances).await;
        queued += self.resend(&operations).await;
        queued += self.resend(&clusters).await;
        queued
    }

    /// Lists `api` page by page and queues every condition; returns how many. An expired
    /// continue token (`410`, a long list on a busy server) starts the list over once.
    async fn resend<K: Reported>(&self, api: &Api<K>) -> usize {
        let mut queued = 0;
        let mut restarted = false;
        let mut params = ListParams::default().limit(self.page_size);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(s)) if s.code == 410 && !restarted => {
                    restarted = true;
                    params = ListParams::default().limit(self.page_size);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&()), queued,
                        "condition re-sync: list failed; the next reconnect re-syncs again");
                    return queued;
                }
            };
            for obj in &page.items {
                let reference = object_ref(obj);
                for c in obj.conditions() {
                    self.batcher
                        .enqueue(transition_event(&reference, &Condition::from(c)));
                    queued += 1;
                }
            }
            match page.metadata.continue_.as_deref() {
                Some(token) if !token.is_empty() => params = params.continue_token(token),
                _ => return queued,
            }
        }
    }

    /// Watches the three kinds until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let (instances, operations, clusters) = self.apis();
        let a = self.clone().watch(instances);
        let o = self.clone().watch(operations);
        let c = self.clone().watch(clusters);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = futures::future::join3(a, o, c) => {}
        }
    }

    /// One watch event of kind `K`; `keys` tracks that kind's objects across re-lists.
    fn on_event<K: Reported>(&self, keys: &mut KindKeys, ev: watcher::Event<K>) {
        match ev {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let reference = object_ref(&obj);
                let key = object_key(&reference);
                keys.live.insert(key);
                if let Some(l) = &mut keys.listed {
                    l.insert(key);
                }
                self.observe(reference, obj.conditions());
            }
            watcher::Event::Delete(obj) => {
                let reference = object_ref(&obj);
                keys.live.remove(&object_key(&reference));
                self.forget(&reference);
            }
            watcher::Event::Init => keys.listed = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(listed) = keys.listed.take() {
                    if let Ok(mut seen) = self.seen.lock() {
                        for k in keys.live.difference(&listed) {
                            seen.remove(k);
                        }
                    }
                    keys.live = listed;
                }
            }
        }
    }

    async fn watch<K: Reported>(self: Arc<Self>, api: Api<K>) {
        let mut stream = super::relist::relisting(api, watcher::Config::default()).boxed();
        let mut keys = KindKeys::default();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => self.on_event(&mut keys, ev),
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

    fn fps(cs: &[Condition]) -> Vec<Fingerprint> {
        cs.iter().map(fingerprint).collect()
    }

    /// Types of the conditions in `new` that `changed` picks against `old`.
    fn picked<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a str> {
        changed(&fps(old), &fps(new))
            .into_iter()
            .map(|i| new[i].type_.as_str())
            .collect()
    }

    #[test]
    fn only_changes_are_reported() {
        let old = vec![
            c("Ready", "False", "A", "m"),
            c("Blocked", "False", "X", ""),
            c("Synced", "True", "S", "m"),
            c("Paused", "False", "P", "m"),
        ];
        let new = vec![
            c("Ready", "False", "B", "m"),  // reason changed
            c("Blocked", "False", "X", ""), // unchanged
            c("Synced", "True", "S", "m2"), // message changed
            c("Paused", "True", "P", "m"),  // status changed
            c("Degraded", "True", "D", ""), // new type
        ];
        assert_eq!(
            picked(&old, &new),
            vec!["Ready", "Synced", "Paused", "Degraded"]
        );
        assert!(picked(&new, &new).is_empty());
        // Disappeared conditions are not reported.
        assert!(picked(&new, &[]).is_empty());
        assert!(picked(&new, &new[1..2]).is_empty());
        // Everything is new to an object not seen before.
        assert_eq!(picked(&[], &new).len(), new.len());
        // The timestamp alone is no transition.
        let mut later = new[1].clone();
        later.last_transition_time = Some(jiff::Timestamp::from_second(5).unwrap());
        assert!(picked(&new, &[later]).is_empty());
    }

    #[test]
    fn fingerprints_keep_field_boundaries() {
        // Moving text between reason and message, or status and reason, is a change.
        assert_ne!(
            fingerprint(&c("Ready", "True", "ab", "c")),
            fingerprint(&c("Ready", "True", "a", "bc"))
        );
        assert_ne!(
            fingerprint(&c("Ready", "True", "", "x")),
            fingerprint(&c("Ready", "Truex", "", ""))
        );
        assert_eq!(
            fingerprint(&c("Ready", "True", "a", "b")),
            fingerprint(&c("Ready", "True", "a", "b"))
        );
    }

    /// A client for an address where nothing listens: every request fails fast.
    fn unreachable_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A condition of `type_` with `status`, reason `R`, no message.
    fn kube_condition(type_: &str, status: &str) -> KubeCondition {
        KubeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(100).unwrap(),
            ),
        }
    }

    fn batcher() -> Arc<EventBatcher> {
        Arc::new(EventBatcher::new(
            Default::default(),
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn a_shut_gate_queues_nothing_and_asks_for_a_resync() {
        let batcher = batcher();
        let open = Arc::new(AtomicBool::new(false));
        let gate = open.clone();
        let r = Reporter::new(batcher.clone(), unreachable_client(), None)
            .with_gate(move || gate.load(Ordering::Relaxed));
        let reference = ObjectRef {
            kind: "ApplicationInstance".into(),
            name: "wiki".into(),
            uid: "u".into(),
            ..Default::default()
        };
        let kc = |s: &str| kube_condition("Ready", s);
        assert!(!r.take_suppressed());
        r.observe(reference.clone(), &[kc("False")]);
        assert_eq!(batcher.len(), 0, "no credentials: nothing queued");
        assert!(r.take_suppressed());
        assert!(!r.take_suppressed(), "taking the flag clears it");
        // An unchanged condition is no left-out transition.
        r.observe(reference.clone(), &[kc("False")]);
        assert!(!r.take_suppressed());
        // The fingerprints were kept: once open, only a change is queued.
        open.store(true, Ordering::Relaxed);
        r.observe(reference.clone(), &[kc("False")]);
        assert_eq!(batcher.len(), 0);
        r.observe(reference.clone(), &[kc("True")]);
        assert_eq!(batcher.len(), 1);
        assert!(!r.take_suppressed());
    }

    #[tokio::test]
    async fn observe_then_snapshot_without_an_api_server() {
        let batcher = batcher();
        let r = Reporter::new(batcher.clone(), unreachable_client(), None);
        let reference = ObjectRef {
            api_version: "ops.vworkspace.io/v1alpha1".into(),
            kind: "Cluster".into(),
            name: "local".into(),
            uid: "u".into(),
            ..Default::default()
        };
        let kc = |s: &str| kube_condition("Connected", s);
        r.observe(reference.clone(), &[kc("True")]);
        r.observe(reference.clone(), &[kc("True")]);
        assert_eq!(batcher.len(), 1);
        r.observe(reference.clone(), &[kc("False")]);
        assert_eq!(batcher.len(), 2);
        let key = event_key::condition_key(&reference, &Condition::from(&kc("False")));
        assert!(batcher.contains_key(&key));
        // Another object with the same name is tracked on its own (the uid differs).
        let other = ObjectRef {
            uid: "u2".into(),
            ..reference.clone()
        };
        r.observe(other, &[kc("False")]);
        assert_eq!(batcher.len(), 3);
        // A deleted and re-created object reports again.
        r.forget(&reference);
        r.observe(reference.clone(), &[kc("False")]);
        assert_eq!(batcher.len(), 4);
        // The re-sync reads the API server, not memory: a failed list queues nothing.
        assert_eq!(r.snapshot().await, 0);
        assert_eq!(batcher.len(), 4);
    }

    #[tokio::test]
    async fn a_relist_drops_objects_deleted_while_the_watch_was_down() {
        let r = Reporter::new(
            Arc::new(EventBatcher::new(
                Default::default(),
                Arc::new(Metrics::new()),
            )),
            unreachable_client(),
            None,
        );
        let cluster = |name: &str| -> Cluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": name, "uid": format!("uid-{name}")},
                "spec": {}
            }))
            .unwrap()
        };
        let kept = |r: &Reporter| r.seen.lock().unwrap().len();
        let mut keys = KindKeys::default();
        r.on_event(&mut keys, watcher::Event::<Cluster>::Init);
        for n in ["a", "b", "c"] {
            r.on_event(&mut keys, watcher::Event::InitApply(cluster(n)));
        }
        r.on_event(&mut keys, watcher::Event::<Cluster>::InitDone);
        assert_eq!(kept(&r), 3);
        r.on_event(&mut keys, watcher::Event::Delete(cluster("c")));
        assert_eq!(kept(&r), 2);
        // The watch was down while "b" was deleted: the re-list shows only "a" and "d".
        r.on_event(&mut keys, watcher::Event::<Cluster>::Init);
        r.on_event(&mut keys, watcher::Event::InitApply(cluster("a")));
        r.on_event(&mut keys, watcher::Event::InitApply(cluster("d")));
        assert_eq!(
            kept(&r),
            3,
            "nothing is dropped before the list is complete"
        );
        r.on_event(&mut keys, watcher::Event::<Cluster>::InitDone);
        assert_eq!(kept(&r), 2);
        assert_eq!(keys.live.len(), 2);
        let b = object_ref(&cluster("b"));
        assert!(!r.seen.lock().unwrap().contains_key(&object_key(&b)));
    }
}
