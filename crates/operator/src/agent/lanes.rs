//! Which jobs of one poll may run at the same time.
//!
//! Jobs on different objects are independent; jobs on the same object must be applied in
//! the order the control plane sent them. A poll's jobs are therefore split into lanes,
//! one per object (kind, namespace, name read from the payload), each run in order, lanes
//! side by side. A job whose object cannot be read from its payload (a credentials
//! rotation, a malformed payload the applier will refuse) runs alone: every job before it
//! finishes first, and the jobs after it start once it is done.

use std::collections::HashMap;

use serde_json::Value;

use super::applier::{
    INTENT_DELETE_APPLICATION_INSTANCE, INTENT_ENSURE_APPLICATION_INSTANCE,
    INTENT_REQUEST_OPERATION,
};
use super::wire::Job;

/// Jobs of one poll in the order they may run.
#[derive(Debug, PartialEq)]
pub enum Stage<T> {
    /// Lanes that may run side by side; each lane runs in order.
    Lanes(Vec<Vec<T>>),
    /// A job without a usable object key: runs with nothing else in flight.
    Alone(T),
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    // Kind without its group: two groups with the same kind and name share a lane,
    // which costs concurrency but never order.
    format!(
        "{}/{}/{name}",
        kind.to_ascii_lowercase(),
        namespace.unwrap_or("")
    )
}

/// The object a job writes, as `kind/namespace/name`; `None` when the payload does not
/// name one. `refused` marks the stand-ins of unreadable jobs, which touch no object.
pub fn object_key(job: &Job, refused_kind: &str) -> Option<String> {
    let p = &job.payload;
    match job.kind.as_str() {
        k if k == refused_kind => Some(format!("unreadable-job/{}", job.id)),
        "apply" => Some(key(
            text(p, &["kind"])?,
            text(p, &["metadata", "namespace"]),
            text(p, &["metadata", "name"])?,
        )),
        "delete" => Some(key(
            text(p, &["kind"])?,
            text(p, &["namespace"]),
            text(p, &["name"])?,
        )),
        "intent" => match text(p, &["intent"])? {
            INTENT_ENSURE_APPLICATION_INSTANCE => Some(key(
                "ApplicationInstance",
                text(p, &["applicationInstance", "metadata", "namespace"]),
                text(p, &["applicationInstance", "metadata", "name"])?,
            )),
            INTENT_DELETE_APPLICATION_INSTANCE => Some(key(
                "ApplicationInstance",
                text(p, &["namespace"]),
                text(p, &["name"])?,
            )),
            INTENT_REQUEST_OPERATION => Some(key(
                "Operation",
                text(p, &["operation", "metadata", "namespace"]),
                text(p, &["operation", "metadata", "name"])?,
            )),
            _ => None,
        },
        _ => None,
    }
}

/// Splits `items` (in server order) into stages; `key_of` names each item's object.
pub fn plan<T>(items: Vec<T>, key_of: impl Fn(&T) -> Option<String>) -> Vec<Stage<T>> {
    let mut stages = Vec::new();
    let mut lanes: Vec<Vec<T>> = Vec::new();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    for item in items {
        match key_of(&item) {
            Some(k) => match lane_of.get(&k) {
                Some(&i) => lanes[i].push(item),
                None => {
                    lane_of.insert(k, lanes.len());
                    lanes.push(vec![item]);
                }
            },
            None => {
                if !lanes.is_empty() {
                    stages.push(Stage::Lanes(std::mem::take(&mut lanes)));
                    lane_of.clear();
                }
                stages.push(Stage::Alone(item));
            }
        }
    }
    if !lanes.is_empty() {
        stages.push(Stage::Lanes(lanes));
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(id: &str, kind: &str, payload: Value) -> Job {
        Job {
            id: id.into(),
            kind: kind.into(),
            payload,
            ..Job::default()
        }
    }

    fn apply(id: &str, ns: &str, name: &str) -> Job {
        job(
            id,
            "apply",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": ns, "name": name}}),
        )
    }

    fn ids(stages: &[Stage<Job>]) -> Vec<Vec<Vec<&str>>> {
        stages
            .iter()
            .map(|s| match s {
                Stage::Lanes(l) => l
                    .iter()
                    .map(|lane| lane.iter().map(|j| j.id.as_str()).collect())
                    .collect(),
                Stage::Alone(j) => vec![vec![j.id.as_str(), "(alone)"]],
            })
            .collect()
    }

    #[test]
    fn keys_name_the_object_each_kind_writes() {
        let k = |j: &Job| object_key(j, "x-unreadable");
        assert_eq!(k(&apply("1", "a", "b")).as_deref(), Some("configmap/a/b"));
        let del = job(
            "2",
            "delete",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "a", "name": "b"}),
        );
        assert_eq!(k(&del).as_deref(), Some("configmap/a/b"));
        let ensure = job(
            "3",
            "intent",
            json!({"intent": INTENT_ENSURE_APPLICATION_INSTANCE,
                   "applicationInstance": {"metadata": {"namespace": "t", "name": "wiki"}}}),
        );
        let remove = job(
            "4",
            "intent",
            json!({"intent": INTENT_DELETE_APPLICATION_INSTANCE, "namespace": "t", "name": "wiki"}),
        );
        assert_eq!(k(&ensure), k(&remove));
        assert_eq!(k(&ensure).as_deref(), Some("applicationinstance/t/wiki"));
        let rotate = job(
            "5",
            "intent",
            json!({"intent": "rotate-operator-credentials"}),
        );
        assert_eq!(k(&rotate), None);
        assert_eq!(k(&job("6", "apply", json!("not an object"))), None);
        assert_eq!(k(&job("7", "apply", json!({"kind": "ConfigMap"}))), None);
        assert_eq!(k(&job("8", "bogus", json!({}))), None);
        assert_eq!(
            k(&job("9", "x-unreadable", json!({}))).as_deref(),
            Some("unreadable-job/9")
        );
    }

    #[test]
    fn same_object_shares_a_lane_in_server_order() {
        let jobs = vec![
            apply("1", "a", "x"),
            apply("2", "a", "y"),
            apply("3", "a", "x"),
            apply("4", "b", "x"),
            apply("5", "a", "x"),
        ];
        let stages = plan(jobs, |j| object_key(j, "u"));
        assert_eq!(
            ids(&stages),
            vec![vec![vec!["1", "3", "5"], vec!["2"], vec!["4"]]]
        );
    }

    #[test]
    fn jobs_without_a_key_split_the_batch() {
        let jobs = vec![
            apply("1", "a", "x"),
            apply("2", "a", "y"),
            job("3", "apply", json!({})),
            apply("4", "a", "x"),
            job(
                "5",
                "intent",
                json!({"intent": "rotate-operator-credentials"}),
            ),
            job("6", "apply", json!(null)),
        ];
        let stages = plan(jobs, |j| object_key(j, "u"));
        assert_eq!(
            ids(&stages),
            vec![
                vec![vec!["1"], vec!["2"]],
                vec![vec!["3", "(alone)"]],
                vec![vec!["4"]],
                vec![vec!["5", "(alone)"]],
                vec![vec!["6", "(alone)"]],
            ]
        );
        assert!(plan(Vec::<Job>::new(), |j| object_key(j, "u")).is_empty());
    }
}
