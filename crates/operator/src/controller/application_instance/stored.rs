//! What the child stores hold: of each Flux child only what a pass or a trigger reads,
//! in types made for it. The watch converts every object before it reaches the store;
//! the full object goes on to the owner trigger and is dropped there.
//!
//! - a chart source: that it exists, its generation and whether it is being deleted;
//! - a HelmRelease: the same, plus what the status mapping
//!   ([`vworkspace_decide::flux::status`]) reads: `spec.suspend`, Flux's observed
//!   generation, its conditions (without their transition times) and the latest release
//!   (the chart version Flux released: an OCI upgrade moves nothing else).
//!
//! Everything a stored child holds besides its name is what a pass reacts to: a change
//! of it triggers a pass ([`Stored::reaction`]), a change elsewhere does not.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::Resource;
use kube::runtime::reflector::Lookup;
use vworkspace_decide::kinds::flux::{
    HelmRelease, HelmReleaseSpec, HelmReleaseStatus, HelmRepository, OCIRepository, Snapshot,
};

/// Which child a memo entry is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum Kind {
    HelmRelease,
    HelmRepository,
    OCIRepository,
}

pub(super) fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// A Flux child kind as the watch receives and a pass applies it, and its stored form.
pub(super) trait Slim:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    type Stored: Stored;
    fn slim(&self) -> Self::Stored;
}

/// A child as the store holds it.
pub(super) trait Stored:
    Lookup<DynamicType = ()> + Clone + Hash + Send + Sync + 'static
{
    const KIND: Kind;
    fn head(&self) -> &Head;
    /// What a pass reacts to: everything stored (the name and namespace never change
    /// under one key).
    fn reaction(&self) -> u64 {
        hash_of(self)
    }
}

/// The metadata a pass reads of every child. The uid and resourceVersion are read by no
/// pass (the store's key would copy them once more); the owner references only by the
/// owner trigger, which gets the full object.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Head {
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub generation: Option<i64>,
    pub deleting: bool,
}

impl Head {
    fn of(meta: &ObjectMeta) -> Self {
        Head {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// Implements [`Lookup`] for a stored form of the Resource `$k`.
macro_rules! lookup_as {
    ($stored:ty, $k:ty $(, $g:ident: $b:path)?) => {
        impl$(<$g: $b>)? Lookup for $stored {
            type DynamicType = ();
            fn kind(dt: &()) -> Cow<'_, str> {
                <$k as Resource>::kind(dt)
            }
            fn group(dt: &()) -> Cow<'_, str> {
                <$k as Resource>::group(dt)
            }
            fn version(dt: &()) -> Cow<'_, str> {
                <$k as Resource>::version(dt)
            }
            fn plural(dt: &()) -> Cow<'_, str> {
                <$k as Resource>::plural(dt)
            }
            fn name(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.head().name))
            }
            fn namespace(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.head().namespace))
            }
            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }
            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

/// A stored chart source of kind `K`: the kind keeps the HelmRepository and
/// OCIRepository stores (and their memo entries) apart.
pub(super) struct StoredSource<K> {
    head: Head,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for StoredSource<K> {
    fn clone(&self) -> Self {
        StoredSource {
            head: self.head.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for StoredSource<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.head.fmt(f)
    }
}

impl<K> Hash for StoredSource<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.head.hash(state);
    }
}

impl<K> PartialEq for StoredSource<K> {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
    }
}

/// A chart source kind and its memo kind.
pub(super) trait Source: Resource<DynamicType = ()> + 'static {
    const KIND: Kind;
}

impl Source for HelmRepository {
    const KIND: Kind = Kind::HelmRepository;
}

impl Source for OCIRepository {
    const KIND: Kind = Kind::OCIRepository;
}

impl<K: Source> Stored for StoredSource<K> {
    const KIND: Kind = K::KIND;
    fn head(&self) -> &Head {
        &self.head
    }
}

lookup_as!(StoredSource<K>, K, K: Source);

impl Slim for HelmRepository {
    type Stored = StoredSource<HelmRepository>;
    fn slim(&self) -> Self::Stored {
        StoredSource {
            head: Head::of(&self.metadata),
            kind: PhantomData,
        }
    }
}

impl Slim for OCIRepository {
    type Stored = StoredSource<OCIRepository>;
    fn slim(&self) -> Self::Stored {
        StoredSource {
            head: Head::of(&self.metadata),
            kind: PhantomData,
        }
    }
}

/// A word of Flux's small vocabularies (condition types, statuses and common reasons,
/// Helm release statuses) is one shared allocation; anything else is kept as it came.
/// An `Arc<str>` is also smaller inline than a `Cow<'static, str>` (16 B, not 24).
type Word = Arc<str>;

const VOCABULARY: &[&str] = &[
    // Condition types and statuses.
    "Ready",
    "Released",
    "Reconciling",
    "Stalled",
    "Remediated",
    "TestSuccess",
    "True",
    "False",
    "Unknown",
    // helm-controller reasons.
    "InstallSucceeded",
    "InstallFailed",
    "UpgradeSucceeded",
    "UpgradeFailed",
    "TestSucceeded",
    "TestFailed",
    "RollbackSucceeded",
    "RollbackFailed",
    "UninstallSucceeded",
    "UninstallFailed",
    "ArtifactFailed",
    "InitFailed",
    "GetLastReleaseFailed",
    "SourceNotReady",
    "DependencyNotReady",
    "Progressing",
    "ProgressingWithRetry",
    "ReconciliationSucceeded",
    "ReconciliationFailed",
    "Succeeded",
    // Helm release statuses.
    "deployed",
    "superseded",
    "failed",
    "pending-install",
    "pending-upgrade",
    "pending-rollback",
    "uninstalling",
    "uninstalled",
    "unknown",
];

/// [`VOCABULARY`], allocated once and shared by every stored release.
static WORDS: LazyLock<Box<[Word]>> =
    LazyLock::new(|| VOCABULARY.iter().map(|w| Arc::from(*w)).collect());

fn word(s: &str) -> Word {
    WORDS
        .iter()
        .find(|w| ***w == *s)
        .map_or_else(|| Arc::from(s), Arc::clone)
}

/// One Flux condition as the mapping reads it: everything but the transition time.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct StoredCondition {
    type_: Word,
    status: Word,
    reason: Word,
    /// Shared with the condition before it when equal: once a release succeeds, Flux's
    /// Ready repeats Released's message.
    message: Arc<str>,
    observed_generation: Option<i64>,
}

/// A stored HelmRelease (see the module comment).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct StoredRelease {
    head: Head,
    suspended: bool,
    observed_generation: Option<i64>,
    conditions: Box<[StoredCondition]>,
    /// The newest entry of `status.history`: chart version and Helm status (an entry
    /// with neither reads as no entry).
    latest_version: Option<Box<str>>,
    latest_status: Option<Word>,
}

impl Stored for StoredRelease {
    const KIND: Kind = Kind::HelmRelease;
    fn head(&self) -> &Head {
        &self.head
    }
}

lookup_as!(StoredRelease, HelmRelease);

impl Slim for HelmRelease {
    type Stored = StoredRelease;
    fn slim(&self) -> StoredRelease {
        let status = self.status.as_ref();
        let mut previous: Option<Arc<str>> = None;
        let conditions = status
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let message = match previous.take() {
                    Some(p) if *p == *c.message => p,
                    _ => Arc::from(c.message.as_str()),
                };
                previous = Some(message.clone());
                StoredCondition {
                    type_: word(&c.type_),
                    status: word(&c.status),
                    reason: word(&c.reason),
                    message,
                    observed_generation: c.observed_generation,
                }
            })
            .collect();
        let latest = status
            .and_then(|s| s.history.as_ref())
            .and_then(|h| h.first());
        StoredRelease {
            head: Head::of(&self.metadata),
            suspended: self.spec.suspend == Some(true),
            observed_generation: status.and_then(|s| s.observed_generation),
            conditions,
            latest_version: latest.and_then(|l| l.chart_version.as_deref().map(Into::into)),
            latest_status: latest.and_then(|l| l.status.as_deref().map(word)),
        }
    }
}

impl StoredRelease {
    /// The HelmRelease the status mapping reads, with only the stored fields filled.
    pub fn to_release(&self) -> HelmRelease {
        let conditions: Vec<Condition> = self
            .conditions
            .iter()
            .map(|c| Condition {
                type_: c.type_.to_string(),
                status: c.status.to_string(),
                reason: c.reason.to_string(),
                message: c.message.to_string(),
                observed_generation: c.observed_generation,
                // Read by no pass, so not stored.
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            })
            .collect();
        let latest = Snapshot {
            chart_version: self.latest_version.as_deref().map(str::to_owned),
            status: self.latest_status.as_deref().map(str::to_owned),
        };
        let mut hr = HelmRelease::new(
            &self.head.name,
            HelmReleaseSpec {
                suspend: self.suspended.then_some(true),
                ..HelmReleaseSpec::default()
            },
        );
        hr.metadata.namespace = Some(self.head.namespace.to_string());
        hr.metadata.generation = self.head.generation;
        hr.status = Some(HelmReleaseStatus {
            observed_generation: self.observed_generation,
            conditions: (!conditions.is_empty()).then_some(conditions),
            last_attempted_revision: None,
            history: (latest != Snapshot::default()).then(|| vec![latest]),
        });
        hr
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kube::runtime::reflector::ObjectRef;
    use serde_json::json;
    use vworkspace_decide::flux::status::release_conditions;

    fn json_of(hr: &HelmRelease) -> serde_json::Value {
        serde_json::to_value(hr).unwrap()
    }

    fn meta() -> serde_json::Value {
        json!({
            "name": "wiki", "namespace": "team", "generation": 3, "uid": "u1",
            "resourceVersion": "7", "finalizers": ["flux"],
            "labels": {"a": "b"}, "annotations": {"c": "d"},
            "managedFields": [{"manager": "m", "operation": "Apply"}],
            "ownerReferences": [{"apiVersion": "apps.vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance", "name": "wiki", "uid": "owner",
                "controller": true}]
        })
    }

    /// A HelmRelease as Flux leaves it, with much that no pass reads.
    fn full() -> HelmRelease {
        serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": meta(),
            "spec": {"interval": "5m", "suspend": false,
                     "values": {"big": "x".repeat(1000)},
                     "chart": {"spec": {"chart": "wiki", "version": "0.2.0",
                         "sourceRef": {"kind": "HelmRepository", "name": "wiki"}}}},
            "status": {
                "observedGeneration": 3,
                "lastAttemptedRevision": "0.2.0",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "UpgradeSucceeded",
                     "message": "Helm upgrade succeeded", "observedGeneration": 3,
                     "lastTransitionTime": "2026-12-01T00:00:00Z"},
                    {"type": "Released", "status": "True", "reason": "A reason Flux may add",
                     "message": "Helm upgrade succeeded", "observedGeneration": 3,
                     "lastTransitionTime": "2026-12-01T00:00:00Z"}],
                "history": [{"chartVersion": "0.2.0", "status": "deployed"},
                            {"chartVersion": "0.1.0", "status": "superseded"}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_stored_release_rebuilds_exactly_what_the_mapping_reads() {
        let hr = full();
        let rebuilt = hr.slim().to_release();
        let expected: HelmRelease = serde_json::from_value(json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "wiki", "namespace": "team", "generation": 3},
            "spec": {"interval": ""},
            "status": {
                "observedGeneration": 3,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "UpgradeSucceeded",
                     "message": "Helm upgrade succeeded", "observedGeneration": 3,
                     "lastTransitionTime": "1970-01-01T00:00:00Z"},
                    {"type": "Released", "status": "True", "reason": "A reason Flux may add",
                     "message": "Helm upgrade succeeded", "observedGeneration": 3,
                     "lastTransitionTime": "1970-01-01T00:00:00Z"}],
                "history": [{"chartVersion": "0.2.0", "status": "deployed"}]
            }
        }))
        .unwrap();
        assert_eq!(json_of(&rebuilt), json_of(&expected));
        for wanted in [None, Some("0.2.0"), Some("0.3.0")] {
            assert_eq!(
                release_conditions(Some(&rebuilt), wanted),
                release_conditions(Some(&hr), wanted),
                "the mapping of the stored form equals that of the full object"
            );
        }
    }

    /// Each edit changes one field a pass reads: the stored form, its reaction and the
    /// rebuilt HelmRelease must all change (a conversion that dropped the field would
    /// neither trigger a pass nor show the pass the change).
    fn status(hr: &mut HelmRelease) -> &mut HelmReleaseStatus {
        hr.status.as_mut().unwrap()
    }

    #[test]
    fn every_field_a_pass_reads_changes_the_stored_form() {
        type Edit = fn(&mut HelmRelease);
        let edits: Vec<(&str, Edit)> = vec![
            ("generation", |hr| hr.metadata.generation = Some(4)),
            ("deletion", |hr| {
                hr.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
            }),
            ("suspend", |hr| hr.spec.suspend = Some(true)),
            ("observedGeneration", |hr| {
                status(hr).observed_generation = Some(2);
            }),
            ("condition type", |hr| {
                status(hr).conditions.as_mut().unwrap()[1].type_ = "Stalled".into();
            }),
            ("condition status", |hr| {
                status(hr).conditions.as_mut().unwrap()[0].status = "False".into();
            }),
            ("condition reason", |hr| {
                status(hr).conditions.as_mut().unwrap()[0].reason = "UpgradeFailed".into();
            }),
            ("condition message", |hr| {
                status(hr).conditions.as_mut().unwrap()[0].message = "m".into();
            }),
            ("condition observedGeneration", |hr| {
                status(hr).conditions.as_mut().unwrap()[0].observed_generation = Some(2);
            }),
            ("a condition less", |hr| {
                hr.status
                    .as_mut()
                    .unwrap()
                    .conditions
                    .as_mut()
                    .unwrap()
                    .pop();
            }),
            ("latest chart version", |hr| {
                status(hr).history.as_mut().unwrap()[0].chart_version = Some("0.3.0".into());
            }),
            ("latest release status", |hr| {
                status(hr).history.as_mut().unwrap()[0].status = Some("pending-upgrade".into());
            }),
        ];
        let base = full().slim();
        for (what, edit) in edits {
            let mut hr = full();
            edit(&mut hr);
            let stored = hr.slim();
            assert_ne!(stored, base, "{what} not stored");
            assert_ne!(
                stored.reaction(),
                base.reaction(),
                "{what} triggers nothing"
            );
            if what != "deletion" {
                assert_ne!(
                    json_of(&stored.to_release()),
                    json_of(&base.to_release()),
                    "{what} not rebuilt"
                );
            }
        }
        // What no pass reads changes nothing: no trigger.
        let mut hr = full();
        hr.spec.values = None;
        hr.metadata.labels = None;
        hr.metadata.resource_version = Some("8".into());
        status(&mut hr).last_attempted_revision = None;
        status(&mut hr).history.as_mut().unwrap().pop();
        status(&mut hr).conditions.as_mut().unwrap()[0].last_transition_time =
            Time(jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(hr.slim(), base);
    }

    #[test]
    fn the_store_key_has_no_uid_or_resource_version() {
        let stored = full().slim();
        let key = stored.to_object_ref(());
        assert_eq!(key, ObjectRef::new("wiki").within("team"));
        assert!(key.extra.uid.is_none() && key.extra.resource_version.is_none());
        assert_eq!(StoredRelease::kind(&()), "HelmRelease");
    }

    #[test]
    fn a_stored_source_keeps_its_head_and_its_kind() {
        let repo: HelmRepository = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
            "metadata": meta(),
            "spec": {"url": "https://charts.example.org", "interval": "10m"},
            "status": {"observedGeneration": 3}
        }))
        .unwrap();
        let stored = repo.slim();
        assert_eq!(
            stored.head,
            Head {
                name: "wiki".into(),
                namespace: "team".into(),
                generation: Some(3),
                deleting: false,
            }
        );
        let mut deleted = repo.clone();
        deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_ne!(deleted.slim().reaction(), stored.reaction());
        assert_eq!(StoredSource::<HelmRepository>::kind(&()), "HelmRepository");
        assert_eq!(StoredSource::<OCIRepository>::kind(&()), "OCIRepository");
        assert_ne!(
            <StoredSource<HelmRepository> as Stored>::KIND,
            <StoredSource<OCIRepository> as Stored>::KIND
        );
    }

    #[test]
    fn a_message_repeated_by_the_next_condition_is_stored_once() {
        let stored = full().slim();
        assert!(Arc::ptr_eq(
            &stored.conditions[0].message,
            &stored.conditions[1].message
        ));
        let mut hr = full();
        status(&mut hr).conditions.as_mut().unwrap()[1].message = "other".into();
        let stored = hr.slim();
        assert_eq!(&*stored.conditions[1].message, "other");
    }

    #[test]
    fn common_words_cost_no_allocation() {
        assert!(Arc::ptr_eq(&word("Ready"), &word("Ready")));
        assert!(Arc::ptr_eq(
            &word("pending-upgrade"),
            &word("pending-upgrade")
        ));
        assert_eq!(&*word("SomethingNew"), "SomethingNew");
        assert!(!Arc::ptr_eq(&word("SomethingNew"), &word("SomethingNew")));
    }
}
