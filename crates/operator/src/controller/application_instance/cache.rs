//! What the controller keeps between passes: stores of the Flux children (in the slim
//! forms of [`stored`](super::stored)) and the Ingresses, filled by the watches it already
//! runs, and a memo per child of what the last pass applied and saw.
//!
//! The memo serves two purposes:
//! - a pass skips the server-side apply of a child whose desired object equals the one it
//!   last applied while the stored child still has the generation that apply returned;
//! - a watch event of a child triggers a pass only when what a pass reacts to (the stored
//!   form: generation, deletion, Flux's observed generation, conditions and latest
//!   release) differs from what the last pass saw, so the echo of our own apply wakes
//!   nothing. Events arriving while a pass is applying that child are held; if one
//!   differs from what the apply returned, the pass asks for another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::Store;
use vworkspace_decide::instance::Child;
use vworkspace_decide::kinds::flux::{HelmRepository, OCIRepository};

use super::stored::{Kind, Source, Stored, StoredRelease, StoredSource, hash_of};

/// A memo entry's child: its kind and `namespace/name` in one allocation (neither part
/// can hold a `/`, so the pair is exact).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key(Kind, Box<str>);

/// Where a child's watch events stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Watch {
    /// Neither a pass nor a trigger saw it (or a failed apply forgot what was seen).
    #[default]
    Unseen,
    /// Reaction hash of the child as the last pass (or trigger) saw it.
    Seen(u64),
    /// A pass is applying this child: events are held instead of triggering, the last
    /// one's reaction in `Held`. What was seen before no longer matters: the apply's
    /// answer replaces it.
    Applying,
    Held(u64),
}

#[derive(Debug, Default)]
struct Memo {
    /// Hash of the desired object last applied, and the generation the apply returned.
    applied: Option<(u64, Option<i64>)>,
    watch: Watch,
    /// A pass deleted this child and saw it go at once: its deletion event is that
    /// pass's own echo.
    deleted_at_once: bool,
    /// A pass is deleting this child: a deletion event arriving before the DELETE's
    /// answer is noted in `deletion_seen` instead of triggering.
    deleting: bool,
    deletion_seen: bool,
}

/// Stores and memo shared by the watches and the passes.
pub(super) struct Cache {
    pub releases: Store<StoredRelease>,
    pub helm_repositories: Store<StoredSource<HelmRepository>>,
    pub oci_repositories: Store<StoredSource<OCIRepository>>,
    pub ingresses: Store<Ingress>,
    memo: Mutex<HashMap<Key, Memo>>,
}

/// Hash of a desired object as it would be sent (its JSON).
pub(super) fn desired_hash(obj: &impl serde::Serialize) -> u64 {
    hash_of(&serde_json::to_string(obj).unwrap_or_default())
}

fn key_of(kind: Kind, namespace: &str, name: &str) -> Key {
    Key(kind, format!("{namespace}/{name}").into_boxed_str())
}

fn key<S: Stored>(namespace: &str, name: &str) -> Key {
    key_of(S::KIND, namespace, name)
}

fn key_of_stored<S: Stored>(obj: &S) -> Key {
    key::<S>(&obj.head().namespace, &obj.head().name)
}

impl Cache {
    pub fn new(
        releases: Store<StoredRelease>,
        helm_repositories: Store<StoredSource<HelmRepository>>,
        oci_repositories: Store<StoredSource<OCIRepository>>,
        ingresses: Store<Ingress>,
    ) -> Arc<Self> {
        Arc::new(Cache {
            releases,
            helm_repositories,
            oci_repositories,
            ingresses,
            memo: Mutex::new(HashMap::new()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Key, Memo>) -> T) -> T {
        let mut memo = self
            .memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut memo)
    }

    /// Whether a watch event of `obj` should trigger a pass (see the module comment).
    pub fn triggers<S: Stored>(&self, obj: &S) -> bool {
        let reaction = obj.reaction();
        let k = key_of_stored(obj);
        self.with(|memo| {
            let m = memo.entry(k).or_default();
            match m.watch {
                Watch::Applying | Watch::Held(_) => {
                    m.watch = Watch::Held(reaction);
                    false
                }
                Watch::Seen(seen) if seen == reaction => false,
                Watch::Seen(_) | Watch::Unseen => {
                    m.watch = Watch::Seen(reaction);
                    true
                }
            }
        })
    }

    /// A deleted child: forget it; whether its deletion should trigger a pass — always,
    /// unless a pass deleted it and saw it go at once (that pass already acted on it).
    pub fn forget<S: Stored>(&self, obj: &S) -> bool {
        let k = key_of_stored(obj);
        self.with(|memo| match memo.get_mut(&k) {
            // The pass deleting it acts on the outcome; see `Deleting::done`.
            Some(m) if m.deleting => {
                m.deletion_seen = true;
                false
            }
            _ => memo.remove(&k).is_none_or(|m| !m.deleted_at_once),
        })
    }

    /// Starts deleting `child`: until [`Deleting::done`], its deletion event is this
    /// pass's to handle and triggers nothing (the event may come before the answer).
    pub fn deleting(self: &Arc<Self>, namespace: &str, child: &Child) -> Deleting {
        let k = child_key(namespace, child);
        self.with(|memo| {
            let m = memo.entry(k.clone()).or_default();
            m.deleting = true;
            m.deletion_seen = false;
        });
        Deleting {
            cache: self.clone(),
            key: Some(k),
        }
    }

    /// The stored child when the last apply of exactly `desired` still stands: the same
    /// desired hash and the stored object still at the generation that apply returned.
    pub fn unchanged<S: Stored>(
        &self,
        store: &Store<S>,
        namespace: &str,
        name: &str,
        desired: u64,
    ) -> Option<S> {
        let applied =
            self.with(|memo| memo.get(&key::<S>(namespace, name)).and_then(|m| m.applied))?;
        let live = store.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))?;
        (applied == (desired, live.head().generation) && !live.head().deleting)
            .then(|| (*live).clone())
    }

    /// Whether a pass applied this child and no deletion of it has been seen since: the
    /// store may not show it yet (its watch event still on the way).
    pub fn applied<S: Stored>(&self, namespace: &str, name: &str) -> bool {
        self.with(|memo| {
            memo.get(&key::<S>(namespace, name))
                .is_some_and(|m| m.applied.is_some())
        })
    }

    /// Starts applying a child: its events are held until [`Applying::done`].
    pub fn applying<S: Stored>(self: &Arc<Self>, namespace: &str, name: &str) -> Applying {
        let k = key::<S>(namespace, name);
        self.with(|memo| {
            let m = memo.entry(k.clone()).or_default();
            m.watch = Watch::Applying;
            m.deleted_at_once = false;
        });
        Applying {
            cache: self.clone(),
            key: Some(k),
        }
    }
}

fn child_key(namespace: &str, child: &Child) -> Key {
    match child {
        Child::HelmRelease(n) => key_of(Kind::HelmRelease, namespace, n),
        Child::HelmRepository(n) => key_of(HelmRepository::KIND, namespace, n),
        Child::OCIRepository(n) => key_of(OCIRepository::KIND, namespace, n),
    }
}

/// A child being deleted; dropping it without [`Deleting::done`] (a failed DELETE)
/// lets its deletion event trigger again.
pub(super) struct Deleting {
    cache: Arc<Cache>,
    key: Option<Key>,
}

impl Deleting {
    /// The DELETE answered; `gone_now` says whether the answer showed the child gone.
    /// Returns whether it is gone, counting a deletion event that came meanwhile. When
    /// it is, its deletion event (still to come) is this pass's echo and wakes nothing.
    pub fn done(mut self, gone_now: bool) -> bool {
        let Some(k) = self.key.take() else {
            return gone_now;
        };
        self.cache.with(|memo| {
            if memo.get(&k).is_some_and(|m| m.deletion_seen) {
                // Its event came already: nothing left to remember.
                memo.remove(&k);
                return true;
            }
            let m = memo.entry(k).or_default();
            m.deleting = false;
            m.deleted_at_once = gone_now;
            gone_now
        })
    }
}

impl Drop for Deleting {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.cache.with(|memo| {
                if let Some(m) = memo.get_mut(&k) {
                    m.deleting = false;
                    m.deletion_seen = false;
                }
            });
        }
    }
}

/// A child being applied; dropping it without [`Applying::done`] (a failed apply) lets
/// events trigger again and forgets what was applied.
pub(super) struct Applying {
    cache: Arc<Cache>,
    key: Option<Key>,
}

impl Applying {
    /// Records the apply of `desired` that returned `live`; true when an event held
    /// meanwhile showed a change the apply result does not include.
    pub fn done<S: Stored>(mut self, desired: u64, live: &S) -> bool {
        let Some(k) = self.key.take() else {
            return false;
        };
        let reaction = live.reaction();
        self.cache.with(|memo| {
            let m = memo.entry(k).or_default();
            let held = match m.watch {
                Watch::Held(h) => Some(h),
                _ => None,
            };
            m.applied = Some((desired, live.head().generation));
            m.watch = Watch::Seen(reaction);
            held.is_some_and(|h| h != reaction)
        })
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.cache.with(|memo| {
                if let Some(m) = memo.get_mut(&k) {
                    m.applied = None;
                    m.watch = Watch::Unseen;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::controller::application_instance::stored::Slim;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use vworkspace_decide::kinds::flux::HelmRelease;

    /// A HelmRelease as the watch stores it.
    fn release(generation: i64, ready: Option<&str>) -> StoredRelease {
        let mut v = serde_json::json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "wiki", "namespace": "team", "generation": generation},
            "spec": {"interval": "5m"}
        });
        if let Some(s) = ready {
            v["status"] = serde_json::json!({"observedGeneration": generation, "conditions": [
                {"type": "Ready", "status": s, "reason": "R", "message": "",
                 "lastTransitionTime": "2026-12-01T00:00:00Z"}]});
        }
        serde_json::from_value::<HelmRelease>(v).unwrap().slim()
    }

    fn cache() -> (Arc<Cache>, store::Writer<StoredRelease>) {
        let (releases, w) = store();
        let cache = Cache::new(releases, store().0, store().0, store().0);
        (cache, w)
    }

    #[test]
    fn the_echo_of_our_own_apply_triggers_nothing_but_flux_status_does() {
        let (cache, _) = cache();
        let applying = cache.applying::<StoredRelease>("team", "wiki");
        // The echo may arrive before the apply's answer: held, not a trigger.
        assert!(!cache.triggers(&release(1, None)));
        assert!(!applying.done(7, &release(1, None)));
        // ... or after it: the same as what the pass saw.
        assert!(!cache.triggers(&release(1, None)));
        // Flux reports: a change a pass maps.
        assert!(cache.triggers(&release(1, Some("True"))));
        assert!(!cache.triggers(&release(1, Some("True"))));
    }

    #[test]
    fn a_change_held_during_the_apply_asks_for_another_pass() {
        let (cache, _) = cache();
        let applying = cache.applying::<StoredRelease>("team", "wiki");
        assert!(!cache.triggers(&release(1, Some("False"))));
        assert!(applying.done(7, &release(1, None)));
    }

    #[test]
    fn an_apply_is_skipped_only_while_it_still_stands() {
        let (cache, mut w) = cache();
        let applying = cache.applying::<StoredRelease>("team", "wiki");
        applying.done(7, &release(1, None));
        assert!(
            cache
                .unchanged(&cache.releases, "team", "wiki", 7)
                .is_none(),
            "not stored yet"
        );
        w.apply_watcher_event(&Event::Apply(release(1, None)));
        assert!(
            cache
                .unchanged(&cache.releases, "team", "wiki", 7)
                .is_some()
        );
        assert!(
            cache
                .unchanged(&cache.releases, "team", "wiki", 8)
                .is_none(),
            "desired changed"
        );
        w.apply_watcher_event(&Event::Apply(release(2, None)));
        assert!(
            cache
                .unchanged(&cache.releases, "team", "wiki", 7)
                .is_none(),
            "edited since"
        );
    }

    #[test]
    fn an_applied_child_counts_until_its_deletion_is_seen() {
        let (cache, _) = cache();
        assert!(!cache.applied::<StoredRelease>("team", "wiki"));
        cache
            .applying::<StoredRelease>("team", "wiki")
            .done(7, &release(1, None));
        assert!(cache.applied::<StoredRelease>("team", "wiki"));
        assert!(
            !cache.applied::<StoredSource<HelmRepository>>("team", "wiki"),
            "per kind"
        );
        cache.forget(&release(1, None));
        assert!(!cache.applied::<StoredRelease>("team", "wiki"));
    }

    #[test]
    fn only_a_deletion_a_pass_saw_complete_is_silent() {
        let (cache, _) = cache();
        // Deleted by someone else (or by Flux after its uninstall): a pass must look.
        cache
            .applying::<StoredRelease>("team", "wiki")
            .done(7, &release(1, None));
        assert!(cache.forget(&release(1, None)));
        assert!(cache.forget(&release(1, None)), "unknown child");
        // Deleted by a pass that saw it go: the echo wakes nothing, once.
        let wiki = Child::HelmRelease("wiki".into());
        assert!(cache.deleting("team", &wiki).done(true));
        let mut repo = HelmRepository::new("wiki", Default::default());
        repo.metadata.namespace = Some("team".into());
        assert!(cache.forget(&repo.slim()), "per kind");
        assert!(!cache.forget(&release(1, None)));
        assert!(cache.forget(&release(1, None)));
        // A new apply of the same name clears a mark whose echo never came.
        assert!(cache.deleting("team", &wiki).done(true));
        cache
            .applying::<StoredRelease>("team", "wiki")
            .done(7, &release(1, None));
        assert!(cache.forget(&release(1, None)));
    }

    #[test]
    fn a_deletion_event_before_the_delete_answer_is_the_passes_own() {
        let (cache, _) = cache();
        let wiki = Child::HelmRelease("wiki".into());
        // The event overtakes the answer: no trigger, and the pass counts it as gone
        // even if the answer (read earlier) still showed a finalizer.
        let deleting = cache.deleting("team", &wiki);
        assert!(!cache.forget(&release(1, None)));
        assert!(deleting.done(false));
        assert!(cache.forget(&release(1, None)), "nothing left behind");
        // Held by a finalizer (Flux uninstalling): the later event must wake a pass.
        assert!(!cache.deleting("team", &wiki).done(false));
        assert!(cache.forget(&release(1, None)));
        // A failed DELETE (guard dropped): the event triggers as usual.
        drop(cache.deleting("team", &wiki));
        assert!(cache.forget(&release(1, None)));
    }

    #[test]
    fn a_failed_apply_forgets_what_was_applied() {
        let (cache, mut w) = cache();
        cache
            .applying::<StoredRelease>("team", "wiki")
            .done(7, &release(1, None));
        w.apply_watcher_event(&Event::Apply(release(1, None)));
        drop(cache.applying::<StoredRelease>("team", "wiki"));
        assert!(
            cache
                .unchanged(&cache.releases, "team", "wiki", 7)
                .is_none()
        );
        assert!(cache.triggers(&release(1, None)));
    }
}
