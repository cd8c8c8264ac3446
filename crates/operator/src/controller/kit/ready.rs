//! Waiting for a reflector store's first list, from any number of passes at once.
//!
//! kube-runtime's `Store::wait_until_ready` keeps a single waker: of several futures
//! waiting at the same time, only the one polled last is woken when the list completes;
//! the others sleep until something else polls them. Inside a controller nothing does,
//! so every pass but one that started before a store was ready hung for good (seen after
//! a restart: Operations left `Running` although their Jobs had completed). Each waiter
//! here polls again every [`REPOLL`], so a lost wake-up costs at most that long.

use std::hash::Hash;
use std::time::Duration;

use kube::runtime::reflector::{Lookup, Store};

/// How long a waiter sleeps at most before it looks at the store again.
pub const REPOLL: Duration = Duration::from_millis(50);

/// Resolves once `store` holds its first complete list: `true`, or `false` when its
/// writer is gone and it never will.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    loop {
        if let Ok(outcome) = tokio::time::timeout(REPOLL, store.wait_until_ready()).await {
            return outcome.is_ok();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    #[tokio::test]
    async fn every_concurrent_waiter_wakes_when_the_list_completes() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store_ready(&store).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "ready too early");
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        for w in waiters {
            let ready = tokio::time::timeout(Duration::from_secs(2), w).await;
            assert!(ready.unwrap().unwrap(), "a waiter was not woken");
        }
    }

    #[tokio::test]
    async fn a_dropped_writer_ends_the_wait_with_false() {
        let (store, writer) = reflector::store::<ConfigMap>();
        drop(writer);
        assert!(!store_ready(&store).await);
    }
}
