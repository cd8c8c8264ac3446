//! In which order taken jobs may run.
//!
//! Jobs on different objects are independent; jobs on the same object must be applied in
//! the order the control plane sent them, also across polls. Each taken job gets a
//! [`Turn`] from the [`Sequencer`], in server order: the turn opens once the job before
//! it on the same object (kind, namespace, name read from the payload) has been applied
//! and handed to its readiness wait. A job whose object cannot be read from its payload
//! (a credentials rotation, a malformed payload the applier will refuse) runs alone:
//! its turn opens once every job taken before it is through, and the turns of the jobs
//! after it open once it is through.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::FutureExt;
use futures::future::Shared;
use tokio::sync::oneshot;

use serde_json::Value;

use super::applier::{
    INTENT_DELETE_APPLICATION_INSTANCE, INTENT_ENSURE_APPLICATION_INSTANCE,
    INTENT_REQUEST_OPERATION,
};
use super::wire::Job;

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

/// Hands out turns in server order; see the module documentation.
#[derive(Default)]
pub struct Sequencer {
    state: Mutex<Order>,
}

#[derive(Default)]
struct Order {
    /// The last turn taken on each object.
    lanes: HashMap<String, Passed>,
    /// The last job that runs alone, if it may not have passed yet.
    barrier: Option<Passed>,
}

/// Resolves once the job holding the matching [`Turn`] is through (or gave up).
type Passed = Shared<oneshot::Receiver<()>>;

fn passed(p: &Passed) -> bool {
    // Polled, not peeked: `peek` sees only an outcome some waiter has already polled.
    p.clone().now_or_never().is_some()
}

/// A job's place in the order: wait with [`Turn::ready`]; dropping it lets the jobs
/// behind it go.
pub struct Turn {
    after: Vec<Passed>,
    _through: oneshot::Sender<()>,
}

impl Turn {
    /// Waits until every job this one must follow is through.
    pub async fn ready(&mut self) {
        // Popped only once passed, so a wait given up half-way is resumed intact.
        while let Some(p) = self.after.last().cloned() {
            // A dropped sender counts: that job is through or gave up.
            let _ = p.await;
            self.after.pop();
        }
    }
}

/// Lanes kept before passed ones are dropped (bounded memory over a long run).
const PRUNE_AT: usize = 1024;

impl Sequencer {
    /// The next turn, for a job on `key` (`None`: the job runs alone). Call in server
    /// order.
    pub fn turn(&self, key: Option<String>) -> Turn {
        let (tx, rx) = oneshot::channel();
        let mine = rx.shared();
        let mut o = match self.state.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        if o.barrier.as_ref().is_some_and(passed) {
            o.barrier = None;
        }
        let mut after: Vec<Passed> = o.barrier.iter().cloned().collect();
        match key {
            Some(k) => {
                if let Some(prev) = o.lanes.insert(k, mine)
                    && !passed(&prev)
                {
                    after.push(prev);
                }
                if o.lanes.len() > PRUNE_AT {
                    o.lanes.retain(|_, p| !passed(p));
                }
            }
            None => {
                // Everything taken so far goes first; later jobs wait for this one.
                after.extend(o.lanes.drain().map(|(_, p)| p).filter(|p| !passed(p)));
                o.barrier = Some(mine);
            }
        }
        Turn {
            after,
            _through: tx,
        }
    }
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

    /// Whether `turn` is open right now.
    fn open(turn: &mut Turn) -> bool {
        turn.ready().now_or_never().is_some()
    }

    #[test]
    fn same_object_waits_for_the_one_before_it_also_across_polls() {
        let seq = Sequencer::default();
        let key = |n: &str| Some(format!("configmap/a/{n}"));
        let mut x1 = seq.turn(key("x"));
        let mut y1 = seq.turn(key("y"));
        let mut x2 = seq.turn(key("x"));
        assert!(open(&mut x1));
        assert!(open(&mut y1));
        let mut x2b = seq.turn(key("x"));
        drop(y1);
        assert!(!open(&mut x2), "x2 follows x1");
        drop(x1);
        assert!(open(&mut x2));
        assert!(!open(&mut x2b), "a later poll's job on x follows x2");
        drop(x2);
        assert!(open(&mut x2b));
    }

    #[test]
    fn a_job_without_a_key_runs_alone() {
        let seq = Sequencer::default();
        let mut a = seq.turn(Some("k/a".into()));
        let mut b = seq.turn(Some("k/b".into()));
        let mut alone = seq.turn(None);
        let mut c = seq.turn(Some("k/c".into()));
        let mut a2 = seq.turn(Some("k/a".into()));
        assert!(open(&mut a) && open(&mut b));
        assert!(!open(&mut alone));
        drop(a);
        assert!(!open(&mut alone), "waits for every job before it");
        drop(b);
        assert!(open(&mut alone));
        assert!(!open(&mut c), "jobs after it wait for it");
        assert!(!open(&mut a2));
        drop(alone);
        assert!(open(&mut c));
        assert!(open(&mut a2));
        // Once passed, the barrier holds nobody up.
        let mut d = seq.turn(Some("k/d".into()));
        assert!(open(&mut d));
    }

    #[test]
    fn passed_lanes_are_pruned() {
        let seq = Sequencer::default();
        for i in 0..(PRUNE_AT + 10) {
            drop(seq.turn(Some(format!("k/{i}"))));
        }
        let held = seq.state.lock().unwrap().lanes.len();
        assert!(held < 20, "{held} lanes kept");
    }
}
