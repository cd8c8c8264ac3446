//! Shared watches for readiness waits.
//!
//! A job that applied an object with readiness semantics follows that object until it is
//! done. One watch per job (a LIST and a WATCH each, with a name field selector) costs the
//! API server a list and a filtered watcher per job: with a thousand jobs in flight, a
//! thousand watchers each see every event of the namespace. Instead, jobs on objects of
//! the same kind in the same namespace share one watch, opened when the first of them
//! starts following and closed [`LINGER`] after the last one stops (so a steady trickle
//! of jobs, each through before the next arrives, does not list the namespace again for
//! each job). The watch keeps the latest version of each object it has seen while it is
//! open; a follower reads its object from there first, then from the changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use super::relist::relisting;

/// What a follower sees of its object.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Present(Value),
    Deleted,
}

/// Changes a feed passes on: the object's name and what it is now.
type Change = (String, Seen);

/// One open watch of a kind in a namespace.
struct Feed {
    /// Latest version of each object, by name; `None` until the first list completes.
    objects: Mutex<Option<HashMap<String, Value>>>,
    changes: broadcast::Sender<Change>,
    listed: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Followers holding the feed now (the lingering hold not counted).
    followers: AtomicUsize,
}

/// How long a feed stays open after its last follower stopped. A job's readiness wait
/// that finds the feed closed must wait for a fresh LIST of the namespace (measured as
/// the largest step of a job at 20 jobs/s); an idle feed costs one open watch.
pub const LINGER: Duration = Duration::from_secs(30);

impl Drop for Feed {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

/// Changes a follower may fall behind by before it re-reads its object.
const BACKLOG: usize = 4096;

type Key = (String, String, String);

/// The open feeds, by (apiVersion, kind, namespace).
pub struct Follow {
    client: kube::Client,
    open: Mutex<HashMap<Key, Weak<Feed>>>,
}

/// A job following one object.
pub struct Follower {
    feed: Arc<Feed>,
    changes: broadcast::Receiver<Change>,
    name: String,
    /// Read the object from the feed's store next (first call).
    from_store: bool,
    /// What was returned last: a change that repeats it (sent before the store was read,
    /// received after) is skipped.
    last: Option<Seen>,
}

impl Follow {
    pub fn new(client: kube::Client) -> Self {
        Follow {
            client,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Starts following `namespace/name` of kind `ar`.
    pub fn object(&self, ar: &ApiResource, namespace: &str, name: &str) -> Follower {
        let key = (
            ar.api_version.clone(),
            ar.kind.clone(),
            namespace.to_string(),
        );
        let mut open = match self.open.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        let feed = match open.get(&key).and_then(Weak::upgrade) {
            Some(f) => f,
            None => {
                let f = self.start(ar, namespace);
                open.retain(|_, w| w.strong_count() > 0);
                open.insert(key, Arc::downgrade(&f));
                f
            }
        };
        Follower::new(feed, name)
    }

    fn start(&self, ar: &ApiResource, namespace: &str) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            objects: Mutex::new(None),
            changes: broadcast::channel(BACKLOG).0,
            listed: watch::channel(false).0,
            task: Mutex::new(None),
            followers: AtomicUsize::new(0),
        });
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, ar);
        // The task holds the feed weakly: the last follower's drop ends it.
        let weak = Arc::downgrade(&feed);
        let task = tokio::spawn(async move {
            let mut events = relisting(api, watcher::Config::default()).boxed();
            let mut listing: HashMap<String, Value> = HashMap::new();
            while let Some(ev) = events.next().await {
                let Some(feed) = weak.upgrade() else { return };
                match ev {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(o)) => {
                        if let (Some(n), Ok(v)) =
                            (o.metadata.name.clone(), serde_json::to_value(&o))
                        {
                            listing.insert(n, v);
                        }
                    }
                    Ok(Event::InitDone) => feed.relisted(std::mem::take(&mut listing)),
                    Ok(Event::Apply(o)) => {
                        if let (Some(n), Ok(v)) =
                            (o.metadata.name.clone(), serde_json::to_value(&o))
                        {
                            feed.set(n, Seen::Present(v));
                        }
                    }
                    Ok(Event::Delete(o)) => {
                        if let Some(n) = o.metadata.name.clone() {
                            feed.set(n, Seen::Deleted);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "readiness watch error (retrying)"),
                }
            }
        });
        if let Ok(mut t) = feed.task.lock() {
            *t = Some(task);
        }
        feed
    }
}

impl Feed {
    fn set(&self, name: String, seen: Seen) {
        if let Ok(mut objects) = self.objects.lock()
            && let Some(objects) = objects.as_mut()
        {
            match &seen {
                Seen::Present(v) => objects.insert(name.clone(), v.clone()),
                Seen::Deleted => objects.remove(&name),
            };
        }
        // No follower listening is fine.
        let _ = self.changes.send((name, seen));
    }

    /// A (re-)list completed: it replaces what was known; followers re-read their object.
    fn relisted(&self, listed: HashMap<String, Value>) {
        if let Ok(mut objects) = self.objects.lock() {
            let gone: Vec<String> = objects
                .as_ref()
                .map(|o| {
                    o.keys()
                        .filter(|k| !listed.contains_key(*k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for (name, v) in &listed {
                let _ = self.changes.send((name.clone(), Seen::Present(v.clone())));
            }
            for name in gone {
                let _ = self.changes.send((name, Seen::Deleted));
            }
            *objects = Some(listed);
        }
        self.listed.send_replace(true);
    }

    fn get(&self, name: &str) -> Option<Value> {
        self.objects
            .lock()
            .ok()
            .and_then(|o| o.as_ref().and_then(|o| o.get(name).cloned()))
    }
}

impl Follower {
    fn new(feed: Arc<Feed>, name: &str) -> Self {
        feed.followers.fetch_add(1, Ordering::AcqRel);
        Follower {
            changes: feed.changes.subscribe(),
            feed,
            name: name.to_string(),
            from_store: true,
            last: None,
        }
    }

    /// The next state of the object: first what the feed holds (once it has listed), then
    /// each change. An object not (yet) there is waited for, as with a watch.
    pub async fn next(&mut self) -> Seen {
        let seen = self.next_change().await;
        self.last = Some(seen.clone());
        seen
    }

    async fn next_change(&mut self) -> Seen {
        if self.from_store {
            let mut listed = self.feed.listed.subscribe();
            // The sender lives in the feed this follower holds: never closed here.
            let _ = listed.wait_for(|l| *l).await;
            self.from_store = false;
            if let Some(v) = self.feed.get(&self.name) {
                return Seen::Present(v);
            }
        }
        loop {
            match self.changes.recv().await {
                Ok((name, seen)) if name == self.name && self.last.as_ref() != Some(&seen) => {
                    return seen;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: what the feed holds now is the latest. Not there: its
                    // first event may not have come yet, so keep waiting (a deletion
                    // missed this way ends with the wait's timeout).
                    if let Some(v) = self.feed.get(&self.name) {
                        return Seen::Present(v);
                    }
                }
                // The feed outlives its followers' receivers.
                Err(broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // The last follower out keeps the feed open a while longer (see `LINGER`).
        if self.feed.followers.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let feed = self.feed.clone();
            rt.spawn(async move {
                tokio::time::sleep(LINGER).await;
                drop(feed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    fn feed() -> Arc<Feed> {
        Arc::new(Feed {
            objects: Mutex::new(None),
            changes: broadcast::channel(4).0,
            listed: watch::channel(false).0,
            task: Mutex::new(None),
            followers: AtomicUsize::new(0),
        })
    }

    fn follower(feed: &Arc<Feed>, name: &str) -> Follower {
        Follower::new(feed.clone(), name)
    }

    #[tokio::test]
    async fn a_follower_sees_the_listed_object_then_only_its_own_changes() {
        let f = feed();
        let mut a = follower(&f, "a");
        assert!(a.next().now_or_never().is_none(), "nothing before the list");
        f.relisted(HashMap::from([("a".to_string(), json!({"v": 1}))]));
        assert_eq!(a.next().await, Seen::Present(json!({"v": 1})));
        f.set("b".into(), Seen::Present(json!({"v": 9})));
        assert!(a.next().now_or_never().is_none(), "b is not a's");
        f.set("a".into(), Seen::Present(json!({"v": 2})));
        assert_eq!(a.next().await, Seen::Present(json!({"v": 2})));
        f.set("a".into(), Seen::Deleted);
        assert_eq!(a.next().await, Seen::Deleted);
    }

    #[tokio::test]
    async fn an_object_created_after_the_list_is_waited_for_and_a_relist_reports_deletions() {
        let f = feed();
        f.relisted(HashMap::new());
        let mut c = follower(&f, "c");
        assert!(c.next().now_or_never().is_none());
        f.set("c".into(), Seen::Present(json!({"v": 1})));
        assert_eq!(c.next().await, Seen::Present(json!({"v": 1})));
        f.relisted(HashMap::new());
        assert_eq!(c.next().await, Seen::Deleted);
    }

    #[tokio::test]
    async fn the_feed_outlives_its_last_follower() {
        let f = feed();
        let held = Arc::downgrade(&f);
        let (a, b) = (follower(&f, "a"), follower(&f, "b"));
        drop(f);
        drop(a);
        drop(b);
        tokio::task::yield_now().await;
        assert!(held.upgrade().is_some(), "kept open for the next job");
    }

    #[tokio::test]
    async fn a_follower_that_fell_behind_reads_the_latest() {
        let f = feed();
        f.relisted(HashMap::new());
        let mut d = follower(&f, "d");
        d.from_store = false;
        for i in 0..10 {
            f.set(format!("x{i}"), Seen::Present(json!({})));
        }
        f.set("d".into(), Seen::Present(json!({"v": 7})));
        assert_eq!(d.next().await, Seen::Present(json!({"v": 7})));
    }
}
