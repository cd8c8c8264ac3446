//! Jobs the agent has taken on but not yet answered, kept across restarts.
//!
//! A job is written here before it is acknowledged and removed once its result is
//! accepted (or the control plane says the job is gone). The control plane withholds an
//! acknowledged job from later polls, so without this journal an operator killed while a
//! job waits for readiness would never answer it. On start the poller resumes every
//! journaled job: acknowledging again is harmless, applying again is a server-side apply
//! of the same manifest (no change on the server), and a result the control plane already
//! holds is answered `409`, which counts as delivered — so each job ends with exactly one
//! result.
//!
//! Stored in the Secret `vworkspace-agent-inflight` in the operator namespace (payloads
//! may be sensitive), data key `jobs.json` = JSON object job id → job. At most a handful
//! of jobs wait at once, so the object stays small. A poll's jobs are added in one update;
//! additions and removals that queue up while a write is in progress are written together
//! by the next one.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta};
use tokio::sync::Mutex;

use super::wire::Job;
use super::write_params;

pub const SECRET_NAME: &str = "vworkspace-agent-inflight";
pub const DATA_KEY: &str = "jobs.json";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("in-flight journal: {0}")]
    Kube(#[from] kube::Error),
    #[error("in-flight journal is not valid JSON: {0}")]
    Decode(#[from] serde_json::Error),
}

pub struct Journal {
    api: Api<Secret>,
    /// Held across each write; holds the Secret as last written (`Some(None)`: known
    /// absent), so a write needs no read first. A conflict drops it and re-reads.
    written: Mutex<Option<Option<Secret>>>,
    /// Changes waiting for the next write: those that arrive while another write is in
    /// progress go out together in one update.
    queue: std::sync::Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    arriving: BTreeMap<String, Job>,
    leaving: HashSet<String>,
}

impl Queue {
    fn take(&mut self) -> Queue {
        std::mem::take(self)
    }

    /// Puts back what a failed write took, except `own` (its caller reports the failure).
    fn put_back(&mut self, taken: Queue, own: &(dyn Fn(&str) -> bool + Sync)) {
        for (id, job) in taken.arriving {
            if !own(&id) {
                self.arriving.entry(id).or_insert(job);
            }
        }
        self.leaving
            .extend(taken.leaving.into_iter().filter(|id| !own(id)));
    }
}

fn decode(secret: Option<&Secret>) -> Result<BTreeMap<String, Job>, JournalError> {
    match secret
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(DATA_KEY))
    {
        Some(bytes) if !bytes.0.is_empty() => Ok(serde_json::from_slice(&bytes.0)?),
        _ => Ok(BTreeMap::new()),
    }
}

impl Journal {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Journal {
            api: Api::namespaced(client, namespace),
            written: Mutex::new(None),
            queue: std::sync::Mutex::new(Queue::default()),
        }
    }

    pub async fn list(&self) -> Result<Vec<Job>, JournalError> {
        let secret = self.api.get_opt(SECRET_NAME).await?;
        Ok(decode(secret.as_ref())?.into_values().collect())
    }

    pub async fn add(&self, job: &Job) -> Result<(), JournalError> {
        self.add_all(std::slice::from_ref(job)).await
    }

    /// Journals a whole poll's jobs in one update: once this returns `Ok`, every one of
    /// them survives a restart. Changes queued meanwhile go out in the same update, and a
    /// write in progress when this is called carries these jobs too if they were queued
    /// before it started.
    pub async fn add_all(&self, jobs: &[Job]) -> Result<(), JournalError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        self.with_queue(|q| {
            for job in jobs {
                q.leaving.remove(&job.id);
                q.arriving.insert(job.id.clone(), job.clone());
            }
        });
        self.flush(&|id| ids.contains(id), |q| {
            jobs.iter().any(|j| q.arriving.contains_key(&j.id))
        })
        .await
    }

    /// Removes `id`, together with every change queued while the previous write ran.
    pub async fn remove(&self, id: &str) -> Result<(), JournalError> {
        self.with_queue(|q| {
            q.arriving.remove(id);
            q.leaving.insert(id.to_string());
        });
        self.flush(&|i| i == id, |q| q.leaving.contains(id)).await
    }

    fn with_queue(&self, f: impl FnOnce(&mut Queue)) {
        let mut q = match self.queue.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut q);
    }

    /// Writes what is queued, unless an earlier holder of the write lock already wrote
    /// the caller's change (`pending` tells whether it is still queued). A failed write
    /// puts back the changes of the other callers before it lets go of the lock, so the
    /// next holder retries them.
    async fn flush(
        &self,
        own: &(dyn Fn(&str) -> bool + Sync),
        pending: impl Fn(&Queue) -> bool,
    ) -> Result<(), JournalError> {
        let mut written = self.written.lock().await;
        let mut taken = Queue::default();
        self.with_queue(|q| {
            if pending(q) {
                taken = q.take();
            }
        });
        if taken.arriving.is_empty() && taken.leaving.is_empty() {
            return Ok(());
        }
        let result = self
            .update(&mut written, |map| {
                for id in &taken.leaving {
                    map.remove(id);
                }
                for (id, job) in &taken.arriving {
                    map.insert(id.clone(), job.clone());
                }
            })
            .await;
        if result.is_err() {
            self.with_queue(|q| q.put_back(taken, own));
        }
        result
    }

    /// Read-modify-write guarded by resourceVersion; the read is skipped when this
    /// process wrote last, and repeated after a conflict.
    async fn update(
        &self,
        written: &mut Option<Option<Secret>>,
        f: impl Fn(&mut BTreeMap<String, Job>),
    ) -> Result<(), JournalError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = match written.take() {
                Some(s) => s,
                None => self.api.get_opt(SECRET_NAME).await?,
            };
            let mut jobs = decode(current.as_ref())?;
            let before = jobs.len();
            f(&mut jobs);
            let body = ByteString(serde_json::to_vec(&jobs)?);
            let result = match current {
                None if jobs.is_empty() => {
                    *written = Some(None);
                    return Ok(());
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(SECRET_NAME.into()),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some([(DATA_KEY.to_string(), body)].into()),
                        ..Default::default()
                    };
                    self.api.create(&write_params(), &secret).await
                }
                Some(mut secret) => {
                    if jobs.len() == before && before == 0 {
                        *written = Some(Some(secret));
                        return Ok(());
                    }
                    secret.data = Some([(DATA_KEY.to_string(), body)].into());
                    self.api
                        .replace(SECRET_NAME, &write_params(), &secret)
                        .await
                }
            };
            match result {
                Ok(stored) => {
                    *written = Some(Some(stored));
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
