//! What the controller's instance store holds: each instance as the deflated JSON of the
//! object (without managedFields and kubectl's last-applied copy), beside the few fields
//! read without decoding it — the store key, the two routing fields and the trigger hash.
//!
//! The typed object costs about 4.4 KiB in the heap (a one-entry label map alone takes a
//! 640-byte tree node; five conditions, 1.2 KiB); its JSON 1.8 KiB, deflated 0.6 KiB
//! (condition fields, timestamps and names repeat). A pass decodes its own instance
//! once (tens of microseconds, beside two API round trips). Decoding what was encoded
//! from the same type loses no field, so decide sees what it saw before.

use std::io::Read;

use std::borrow::Cow;

use kube::Resource;
use kube::api::ObjectMeta;
use vworkspace_api::application_instance::{ApplicationInstance, ValuesSource};

use super::stored::hash_of;

#[derive(Clone, Debug)]
pub struct StoredInstance {
    /// Name, namespace, uid and resourceVersion: what kube's controller and the store's
    /// key read. The JSON leaves them out; [`StoredInstance::to_instance`] puts them back.
    meta: ObjectMeta,
    /// The rest of the object: raw deflate of its JSON.
    deflated: Box<[u8]>,
    /// `spec.release.name`: an Ingress of that release routes to this instance.
    release: Option<Box<str>>,
    /// `spec.values`' Secret or ConfigMap, by name: its appearing routes here.
    values_ref: Option<(ValuesSource, Box<str>)>,
    /// What a pass acts on (see [`trigger`]).
    trigger: u64,
}

/// The instance changes a pass acts on: spec (generation), deletion, labels and
/// annotations. Status and finalizer updates — our own writes — trigger nothing.
fn trigger(inst: &ApplicationInstance) -> u64 {
    hash_of(&(
        inst.metadata.generation,
        inst.metadata.deletion_timestamp.is_some(),
        &inst.metadata.labels,
        &inst.metadata.annotations,
    ))
}

impl StoredInstance {
    /// The stored form of `inst`. Drops what no decision reads: managedFields and
    /// kubectl's copy of the last applied object.
    pub fn new(mut inst: ApplicationInstance) -> std::io::Result<Self> {
        inst.metadata.managed_fields = None;
        if let Some(a) = &mut inst.metadata.annotations {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let trigger = trigger(&inst);
        let release = inst.spec.release.as_ref().map(|r| r.name.as_str().into());
        let values_ref = inst.spec.values.as_ref().and_then(|v| {
            let name = match v.source {
                ValuesSource::SecretRef => &v.secret_ref.as_ref()?.name,
                ValuesSource::ConfigMapRef => &v.config_map_ref.as_ref()?.name,
                ValuesSource::Inline => return None,
            };
            Some((v.source, name.as_str().into()))
        });
        let m = &mut inst.metadata;
        let meta = ObjectMeta {
            name: m.name.take(),
            namespace: m.namespace.take(),
            uid: m.uid.take(),
            resource_version: m.resource_version.take(),
            ..ObjectMeta::default()
        };
        // Fastest level: level 6 saves 5 % more at several times the cost.
        let encode = || {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            serde_json::to_writer(&mut enc, &inst)?;
            enc.finish()
        };
        // The error names the object: the caller no longer holds it.
        let deflated = encode().map_err(|e| {
            let (ns, name) = (meta.namespace.as_deref(), meta.name.as_deref());
            std::io::Error::other(format!(
                "{}/{}: {e}",
                ns.unwrap_or_default(),
                name.unwrap_or_default()
            ))
        })?;
        Ok(StoredInstance {
            meta,
            deflated: deflated.into_boxed_slice(),
            release,
            values_ref,
            trigger,
        })
    }

    /// The instance as it was stored (less what [`StoredInstance::new`] drops).
    pub fn to_instance(&self) -> std::io::Result<ApplicationInstance> {
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(&*self.deflated).read_to_end(&mut json)?;
        let mut inst: ApplicationInstance = serde_json::from_slice(&json)?;
        let m = &mut inst.metadata;
        m.name.clone_from(&self.meta.name);
        m.namespace.clone_from(&self.meta.namespace);
        m.uid.clone_from(&self.meta.uid);
        m.resource_version.clone_from(&self.meta.resource_version);
        Ok(inst)
    }

    pub fn trigger(&self) -> u64 {
        self.trigger
    }

    pub fn release(&self) -> Option<&str> {
        self.release.as_deref()
    }

    /// The Secret or ConfigMap `spec.values` reads, if any.
    pub fn values_ref(&self) -> Option<(ValuesSource, &str)> {
        self.values_ref.as_ref().map(|(k, n)| (*k, &**n))
    }
}

/// Same kind, group and version as [`ApplicationInstance`]: owner references and the
/// store's keys name the instance either way.
impl Resource for StoredInstance {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ApplicationInstance::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ApplicationInstance::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ApplicationInstance::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ApplicationInstance::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// kube's `Controller` asks its object type to be deserializable; the stored form is
/// made from the full object.
impl<'de> serde::Deserialize<'de> for StoredInstance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let inst = ApplicationInstance::deserialize(d)?;
        StoredInstance::new(inst).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(extra: serde_json::Value) -> ApplicationInstance {
        let mut v = json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
            "metadata": {
                "name": "wiki", "namespace": "team-a", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"app.vworkspace.io/cluster-id": "c-1"},
                "annotations": {
                    "note": "x",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"
                },
                "finalizers": ["apps.vworkspace.io/application-instance"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "appRef": {"catalogId": "wiki"},
                "chart": {"sourceType": "helm", "url": "https://charts.example.org",
                          "name": "wiki", "version": "1.0.0"},
                "release": {"name": "wiki-rel", "namespace": "team-a"},
                "values": {"source": "secretRef", "secretRef": {"name": "wiki-values", "key": "values.yaml"}}
            },
            "status": {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                "message": "installed", "lastTransitionTime": "2026-12-01T10:00:05Z",
                                "observedGeneration": 3}],
                "inventory": [{"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
                               "name": "wiki-rel", "namespace": "team-a"}]
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn decodes_to_the_object_without_what_no_decision_reads() {
        let full = instance(json!({"metadata": {"deletionTimestamp": "2026-12-01T11:00:00Z"}}));
        let stored = StoredInstance::new(full.clone()).unwrap();
        let mut want = full;
        want.metadata.managed_fields = None;
        want.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        assert_eq!(
            serde_json::to_value(stored.to_instance().unwrap()).unwrap(),
            serde_json::to_value(&want).unwrap()
        );
        assert_eq!(stored.meta().name.as_deref(), Some("wiki"));
        assert_eq!(stored.meta().uid.as_deref(), Some("u-1"));
        assert_eq!(stored.meta().resource_version.as_deref(), Some("42"));
        // The four are held once: in the key fields, not in the JSON.
        let mut json = String::new();
        flate2::read::DeflateDecoder::new(&*stored.deflated)
            .read_to_string(&mut json)
            .unwrap();
        assert!(!json.contains("u-1") && json.contains("wiki-rel"));
        assert!(stored.deflated.len() < json.len());
    }

    #[test]
    fn routing_fields() {
        let stored = StoredInstance::new(instance(json!({}))).unwrap();
        assert_eq!(stored.release(), Some("wiki-rel"));
        assert_eq!(
            stored.values_ref(),
            Some((ValuesSource::SecretRef, "wiki-values"))
        );
        let cm = instance(json!({"spec": {"values": {"source": "configMapRef",
            "configMapRef": {"name": "wiki-cm", "key": "v"}}}}));
        let stored = StoredInstance::new(cm).unwrap();
        assert_eq!(
            stored.values_ref(),
            Some((ValuesSource::ConfigMapRef, "wiki-cm"))
        );
        let inline = instance(json!({"spec": {"values": {"source": "inline", "inline": {}}}}));
        assert_eq!(StoredInstance::new(inline).unwrap().values_ref(), None);
    }

    #[test]
    fn triggers_on_spec_deletion_labels_and_annotations_only() {
        let base = StoredInstance::new(instance(json!({}))).unwrap().trigger();
        let moved = |extra| StoredInstance::new(instance(extra)).unwrap().trigger() != base;
        assert!(moved(json!({"metadata": {"generation": 4}})));
        assert!(moved(
            json!({"metadata": {"deletionTimestamp": "2026-12-01T11:00:00Z"}})
        ));
        assert!(moved(json!({"metadata": {"labels": {"x": "y"}}})));
        assert!(moved(json!({"metadata": {"annotations": {"note": "z"}}})));
        // Our own writes: status, finalizers; and what every write moves.
        assert!(!moved(json!({"status": {"observedGeneration": 2}})));
        assert!(!moved(json!({"metadata": {"finalizers": []}})));
        assert!(!moved(json!({"metadata": {"resourceVersion": "43"}})));
        assert!(!moved(json!({"metadata": {"managedFields": []}})));
    }

    #[test]
    fn deserializes_through_the_full_type() {
        let full = instance(json!({}));
        let stored: StoredInstance =
            serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(stored.meta().name.as_deref(), Some("wiki"));
        assert_eq!(stored.to_instance().unwrap().spec, full.spec);
    }
}
