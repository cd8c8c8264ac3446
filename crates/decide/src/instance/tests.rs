//! Table tests of the ApplicationInstance pipeline.

// The case tables are tuples.
#![allow(clippy::type_complexity)]

use serde_json::{Value, json};
use vworkspace_api::conditions::{app_reasons as r, find, types};

use super::*;

const NS: &str = "team";
const T0: &str = "2026-01-01T00:00:00Z";

fn now() -> jiff::Timestamp {
    "2026-01-01T00:05:00Z".parse().unwrap()
}

fn managed() -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "wiki", "namespace": NS, "uid": "u-1", "generation": 3,
                     "finalizers": ["apps.vworkspace.io/finalizer"]},
        "spec": {"appRef": {"catalogId": "wiki"}, "mode": "managed",
                 "chart": {"sourceType": "helm", "url": "https://charts.example", "name": "wiki", "version": "1.0.0"},
                 "release": {"name": "wiki", "namespace": NS},
                 "values": {"source": "inline", "inline": {"replicas": 1}}}
    })
}

fn placeholder() -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "anchor", "namespace": NS, "uid": "u-2", "generation": 1,
                     "finalizers": ["apps.vworkspace.io/finalizer"]},
        "spec": {"appRef": {"catalogId": "anchor"}, "mode": "placeholder"}
    })
}

fn instance(v: Value) -> ApplicationInstance {
    serde_json::from_value(v).unwrap()
}

fn world(v: Value) -> Observed {
    Observed::of(instance(v))
}

fn condition<'a>(plan: &'a Plan, t: &str) -> (&'a str, &'a str, &'a str) {
    let st = plan.status.as_ref().expect("a status write");
    let c = find(&st.conditions, t).unwrap_or_else(|| panic!("no {t}"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn blocked(plan: &Plan) -> Option<(&'static str, String)> {
    match &plan.decision {
        Decision::Block { reason, message } => Some((reason, message.clone())),
        _ => None,
    }
}

fn release(conditions: Value, generation: i64, observed: i64) -> HelmRelease {
    serde_json::from_value(json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "wiki", "namespace": NS, "generation": generation},
        "spec": {"interval": "5m"},
        "status": {"observedGeneration": observed, "conditions": conditions}
    }))
    .unwrap()
}

fn applied(o: &Observed, hr: &HelmRelease) -> Plan {
    let Decision::Apply(children) = decide(o, now()).decision else {
        panic!("not applied")
    };
    after_apply(o, &children, hr, now())
}

// -------------------------------------------------------------------------- finalizer

#[test]
fn a_new_instance_first_gets_its_finalizer() {
    let mut v = managed();
    v["metadata"]["finalizers"] = json!([]);
    let o = world(v);
    assert!(matches!(decide(&o, now()).decision, Decision::AddFinalizer));
    assert_eq!(reads(&o.inst), Reads::default(), "nothing to read yet");
}

// ------------------------------------------------------------------------ validation

#[test]
fn validation_table() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "managed without chart",
            json!({"chart": null}),
            "spec.chart",
        ),
        (
            "managed without release",
            json!({"release": null}),
            "spec.release",
        ),
        (
            "chart version empty",
            json!({"chart": {"sourceType": "helm", "url": "https://c", "name": "wiki", "version": ""}}),
            "version",
        ),
        (
            "values secretRef without ref",
            json!({"values": {"source": "secretRef"}}),
            "secretRef",
        ),
    ];
    for (what, spec_patch, fragment) in cases {
        let mut v = managed();
        for (k, val) in spec_patch.as_object().unwrap() {
            if val.is_null() {
                v["spec"].as_object_mut().unwrap().remove(k);
            } else {
                v["spec"][k] = val.clone();
            }
        }
        let plan = decide(&world(v), now());
        let (reason, message) = blocked(&plan).unwrap_or_else(|| panic!("{what}: not blocked"));
        assert_eq!(reason, r::VALIDATION_FAILED, "{what}");
        assert!(message.contains(fragment), "{what}: {message}");
        assert_eq!(
            condition(&plan, types::READY),
            ("False", r::VALIDATION_FAILED, message.as_str())
        );
        assert_eq!(condition(&plan, types::BLOCKED).0, "True");
        assert_eq!(
            condition(&plan, types::RECONCILING),
            ("False", r::STABLE, "")
        );
        assert_eq!(plan.requeue, Some(BLOCKED_RECHECK), "{what}");
    }
}

#[test]
fn an_unchanged_block_writes_nothing() {
    let mut v = managed();
    v["spec"].as_object_mut().unwrap().remove("chart");
    let first = decide(&world(v.clone()), now());
    v["status"] = serde_json::to_value(first.status.unwrap()).unwrap();
    let plan = decide(&world(v), now());
    assert!(blocked(&plan).is_some());
    assert!(plan.status.is_none());
}

#[test]
fn a_pass_that_changes_nothing_but_the_time_writes_nothing() {
    let o = world(placeholder());
    let first = decide(&o, now()).status.expect("first pass writes");
    let mut v = placeholder();
    v["status"] = serde_json::to_value(&first).unwrap();
    let later: jiff::Timestamp = "2026-01-01T00:06:00Z".parse().unwrap();
    assert!(decide(&world(v.clone()), later).status.is_none());
    // A real change carries the new time along.
    v["metadata"]["generation"] = json!(2);
    let next = decide(&world(v), later).status.expect("generation moved");
    assert_eq!(next.last_reconcile_time.map(|t| t.0), Some(later));
}

// ------------------------------------------------------------------------ placeholder

#[test]
fn a_placeholder_is_ready_with_nothing_to_deliver() {
    let mut v = placeholder();
    v["status"] = json!({"helmReleaseRef": {"name": "old", "namespace": NS},
        "endpoints": [{"name": "x", "url": "https://x"}]});
    let o = world(v);
    assert_eq!(reads(&o.inst), Reads::default());
    let plan = decide(&o, now());
    assert!(matches!(plan.decision, Decision::Placeholder));
    assert_eq!(
        condition(&plan, types::READY),
        (
            "True",
            r::PLACEHOLDER,
            "placeholder instance: nothing to deliver"
        )
    );
    assert_eq!(
        condition(&plan, types::BLOCKED),
        ("False", r::UNBLOCKED, "")
    );
    assert_eq!(
        condition(&plan, types::DEGRADED),
        ("False", r::RECOVERED, "")
    );
    let st = plan.status.as_ref().unwrap();
    assert!(st.helm_release_ref.is_none() && st.endpoints.is_empty());
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(plan.requeue, None);
}

// ------------------------------------------------------------------------ values source

#[test]
fn values_source_table() {
    let secret =
        json!({"source": "secretRef", "secretRef": {"name": "wiki-values", "key": "values.yaml"}});
    let cm = json!({"source": "configMapRef", "configMapRef": {"name": "wiki-cm", "key": "v"}});
    let cases: Vec<(&str, Value, ValuesState, Option<&str>)> = vec![
        (
            "Secret missing",
            secret.clone(),
            ValuesState::Missing,
            Some(
                "Secret \"wiki-values\" referenced by spec.values.secretRef not found in namespace \"team\"",
            ),
        ),
        (
            "Secret key missing",
            secret.clone(),
            ValuesState::KeyMissing,
            Some("Secret \"wiki-values\" has no key \"values.yaml\" (spec.values.secretRef.key)"),
        ),
        ("Secret present", secret, ValuesState::Present, None),
        (
            "ConfigMap missing",
            cm.clone(),
            ValuesState::Missing,
            Some(
                "ConfigMap \"wiki-cm\" referenced by spec.values.configMapRef not found in namespace \"team\"",
            ),
        ),
        (
            "ConfigMap key missing",
            cm.clone(),
            ValuesState::KeyMissing,
            Some("ConfigMap \"wiki-cm\" has no key \"v\" (spec.values.configMapRef.key)"),
        ),
        ("ConfigMap present", cm, ValuesState::Present, None),
    ];
    for (what, values, state, message) in cases {
        let mut v = managed();
        v["spec"]["values"] = values;
        let mut o = world(v);
        assert!(reads(&o.inst).values.is_some(), "{what}");
        o.values = Some(state);
        let plan = decide(&o, now());
        match message {
            Some(m) => {
                assert_eq!(
                    blocked(&plan),
                    Some((r::WAITING_FOR_SECRET, m.to_string())),
                    "{what}"
                );
                assert_eq!(condition(&plan, types::READY).1, r::WAITING_FOR_SECRET);
                // The pass still records what generation it looked at.
                assert_eq!(plan.status.as_ref().unwrap().observed_generation, Some(3));
            }
            None => assert!(matches!(plan.decision, Decision::Apply(_)), "{what}"),
        }
    }
    assert_eq!(
        reads(&instance(managed())).values,
        None,
        "inline values: nothing to read"
    );
}

// ---------------------------------------------------------------------------- apply

#[test]
fn a_managed_instance_applies_its_children_and_reads_its_ingresses() {
    let o = world(managed());
    assert_eq!(
        reads(&o.inst).ingresses,
        Some((
            NS.to_string(),
            "app.kubernetes.io/instance=wiki".to_string()
        ))
    );
    let plan = decide(&o, now());
    let Decision::Apply(children) = &plan.decision else {
        panic!()
    };
    assert_eq!(children.helm_release.metadata.name.as_deref(), Some("wiki"));
    assert!(matches!(children.source, ChartSource::Helm(_)));
    assert_eq!(
        stale_source(children),
        Child::OCIRepository("wiki-source".into())
    );
    assert!(plan.status.is_none(), "the status follows the apply");
}

#[test]
fn an_oci_chart_removes_a_stale_helm_repository() {
    let mut v = managed();
    v["spec"]["chart"]["sourceType"] = json!("oci");
    v["spec"]["chart"]["url"] = json!("oci://registry.example/charts");
    let Decision::Apply(children) = decide(&world(v), now()).decision else {
        panic!()
    };
    assert_eq!(
        stale_source(&children),
        Child::HelmRepository("wiki-source".into())
    );
}

#[test]
fn status_follows_the_applied_release_table() {
    let ready = json!([{"type": "Ready", "status": "True", "reason": "InstallSucceeded",
        "message": "Helm install succeeded", "lastTransitionTime": T0}]);
    let failed = json!([{"type": "Ready", "status": "False", "reason": "InstallFailed",
        "message": "boom", "lastTransitionTime": T0}]);
    let cases: Vec<(&str, HelmRelease, &str)> = vec![
        (
            "ready at its generation",
            release(ready.clone(), 2, 2),
            "True",
        ),
        (
            "ready for an older generation",
            release(ready, 3, 2),
            "Unknown",
        ),
        ("failed", release(failed, 2, 2), "False"),
        ("no status yet", release(json!([]), 1, 0), "Unknown"),
    ];
    for (what, hr, ready_status) in cases {
        let plan = applied(&world(managed()), &hr);
        assert!(matches!(plan.decision, Decision::Applied));
        assert_eq!(condition(&plan, types::READY).0, ready_status, "{what}");
        assert_eq!(
            condition(&plan, types::BLOCKED),
            ("False", r::UNBLOCKED, ""),
            "{what}"
        );
        let st = plan.status.as_ref().unwrap();
        assert_eq!(
            st.helm_release_ref.as_ref().map(|r| r.name.as_str()),
            Some("wiki")
        );
        assert_eq!(
            st.last_applied_chart.as_ref().map(|c| c.version.as_str()),
            Some("1.0.0")
        );
        assert_eq!(
            st.inventory.len(),
            2,
            "{what}: HelmRelease and chart source"
        );
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.last_reconcile_time.as_ref().map(|t| t.0), Some(now()));
        assert_eq!(plan.requeue, None);
    }
}

#[test]
fn endpoints_come_from_the_observed_ingresses() {
    let mut o = world(managed());
    o.ingresses = vec![serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "wiki", "namespace": NS, "labels": {"app.kubernetes.io/instance": "wiki"}},
        "spec": {"rules": [{"host": "wiki.example"}], "tls": [{"hosts": ["wiki.example"]}]}
    }))
    .unwrap()];
    let plan = applied(&o, &release(json!([]), 1, 0));
    let st = plan.status.as_ref().unwrap();
    assert_eq!(st.endpoints.len(), 1);
    assert_eq!(st.endpoints[0].url, "https://wiki.example");
}

#[test]
fn a_blocked_instance_is_unblocked_once_applied() {
    let mut v = managed();
    v["spec"]["values"] = json!({"source": "secretRef", "secretRef": {"name": "s", "key": "k"}});
    let mut o = world(v.clone());
    o.values = Some(ValuesState::Missing);
    let earlier: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
    let first = decide(&o, earlier);
    v["status"] = serde_json::to_value(first.status.unwrap()).unwrap();
    let mut o = world(v);
    o.values = Some(ValuesState::Present);
    let plan = applied(&o, &release(json!([]), 1, 0));
    let status = plan.status.unwrap();
    let blocked = find(&status.conditions, types::BLOCKED).unwrap();
    assert_eq!(
        (blocked.status.as_str(), blocked.reason.as_str()),
        ("False", r::UNBLOCKED)
    );
    // A flip: the transition time moves (the kit turns it into an Event).
    assert_eq!(blocked.last_transition_time.0, now());
}

// --------------------------------------------------------------------------- deletion

fn deleting(mut v: Value, since: &str) -> Value {
    v["metadata"]["deletionTimestamp"] = json!(since);
    v
}

#[test]
fn deletion_reads_the_children_of_a_managed_release_only() {
    let o = world(deleting(managed(), T0));
    assert_eq!(
        reads(&o.inst).children,
        vec![
            Child::HelmRelease("wiki".into()),
            Child::HelmRepository("wiki-source".into()),
            Child::OCIRepository("wiki-source".into()),
        ]
    );
    assert!(
        reads(&instance(deleting(placeholder(), T0)))
            .children
            .is_empty()
    );
}

#[test]
fn deletion_table() {
    let hr = || {
        vec![
            Child::HelmRelease("wiki".into()),
            Child::HelmRepository("wiki-source".into()),
        ]
    };
    let cases: Vec<(
        &str,
        Value,
        Vec<Child>,
        bool,
        Option<(&str, &str)>,
        Option<Duration>,
    )> = vec![
        (
            "placeholder: let go at once",
            deleting(placeholder(), T0),
            vec![],
            true,
            Some((r::DELETING, "removing the instance")),
            None,
        ),
        (
            "managed without a release: let go at once",
            {
                let mut v = deleting(managed(), T0);
                v["spec"].as_object_mut().unwrap().remove("release");
                v
            },
            vec![],
            true,
            Some((r::DELETING, "removing the instance")),
            None,
        ),
        (
            "children gone: let go",
            deleting(managed(), T0),
            vec![],
            true,
            None,
            None,
        ),
        (
            "children left: delete and wait for Flux",
            deleting(managed(), T0),
            hr(),
            false,
            Some((
                r::UNINSTALLING,
                "waiting for Flux to uninstall: HelmRelease wiki, HelmRepository wiki-source",
            )),
            Some(Duration::from_secs(301)),
        ),
        (
            "waited too long: let go and say what is left",
            deleting(managed(), "2025-12-31T23:54:00Z"),
            hr(),
            true,
            Some((
                r::WAITING_FOR_CHILD_RESOURCES,
                "gave up waiting for Flux after 600s; left behind: HelmRelease wiki, HelmRepository wiki-source",
            )),
            None,
        ),
    ];
    for (what, v, present, remove, deleting_condition, requeue) in cases {
        let mut o = world(v);
        o.children = present.clone();
        let plan = decide(&o, now());
        let Decision::Release {
            delete,
            remove_finalizer,
        } = &plan.decision
        else {
            panic!("{what}: {:?}", plan.decision)
        };
        assert_eq!(delete, &present, "{what}");
        assert_eq!(*remove_finalizer, remove, "{what}");
        match deleting_condition {
            Some((reason, message)) => {
                assert_eq!(
                    condition(&plan, types::DELETING),
                    ("True", reason, message),
                    "{what}"
                )
            }
            None => assert!(plan.status.is_none(), "{what}"),
        }
        assert_eq!(plan.requeue, requeue, "{what}");
    }
}

#[test]
fn a_deleted_instance_without_our_finalizer_is_left_alone() {
    let mut v = deleting(managed(), T0);
    v["metadata"]["finalizers"] = json!(["other/finalizer"]);
    let o = world(v);
    assert!(reads(&o.inst).children.is_empty());
    assert!(matches!(decide(&o, now()).decision, Decision::Nothing));
}

#[test]
fn an_edit_of_the_values_source_asks_flux_to_render_again() {
    let helm_release_of = |revision: Option<&str>, values: Value| {
        let mut v = managed();
        v["spec"]["values"] = values;
        let mut o = world(v);
        o.values = Some(ValuesState::Present);
        o.values_revision = revision.map(str::to_string);
        match decide(&o, now()).decision {
            Decision::Apply(children) => children.helm_release,
            other => panic!("expected Apply, got {other:?}"),
        }
    };
    let secret = json!({"source": "secretRef", "secretRef": {"name": "s", "key": "k"}});
    let requested = |hr: &crate::kinds::flux::HelmRelease| {
        hr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::instance::RECONCILE_REQUEST_ANNOTATION))
            .cloned()
    };
    let before = helm_release_of(Some("41"), secret.clone());
    let after = helm_release_of(Some("42"), secret);
    assert_eq!(requested(&before).as_deref(), Some("values-41"));
    assert_eq!(requested(&after).as_deref(), Some("values-42"));
    // Inline values change the HelmRelease spec itself: nothing to request.
    let inline = helm_release_of(None, json!({"source": "inline", "inline": {"a": 1}}));
    assert_eq!(requested(&inline), None);
}
