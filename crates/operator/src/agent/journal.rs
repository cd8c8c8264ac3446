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
//! removals that queue up while a write is in progress are written together.

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
    /// Ids whose removal is waiting for the next write: removals that arrive while
    /// another write is in progress go out together in one update.
    leaving: std::sync::Mutex<HashSet<String>>,
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
            leaving: std::sync::Mutex::new(HashSet::new()),
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
    /// them survives a restart. Removals queued meanwhile go out in the same update.
    pub async fn add_all(&self, jobs: &[Job]) -> Result<(), JournalError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut written = self.written.lock().await;
        let leaving: Vec<String> = match self.leaving.lock() {
            Ok(mut l) => l.drain().collect(),
            Err(_) => Vec::new(),
        };
        let result = self
            .update(&mut written, |map| {
                for id in &leaving {
                    map.remove(id);
                }
                for job in jobs {
                    map.insert(job.id.clone(), job.clone());
                }
            })
            .await;
        if result.is_err() {
            self.queue_leaving(leaving);
        }
        result
    }

    /// Removes `id`, together with every removal queued while the previous write ran.
    pub async fn remove(&self, id: &str) -> Result<(), JournalError> {
        self.queue_leaving([id.to_string()]);
        let mut written = self.written.lock().await;
        let ids: Vec<String> = match self.leaving.lock() {
            // Not queued any more: an earlier holder of the lock wrote it out (a failed
            // write puts its ids back before it lets go of the lock).
            Ok(l) if !l.contains(id) => return Ok(()),
            Ok(mut l) => l.drain().collect(),
            Err(_) => vec![id.to_string()],
        };
        let result = self
            .update(&mut written, |map| {
                for id in &ids {
                    map.remove(id);
                }
            })
            .await;
        if result.is_err() {
            // Others may be waiting on these ids: the next holder retries them.
            self.queue_leaving(ids.into_iter().filter(|i| i != id));
        }
        result
    }

    fn queue_leaving(&self, ids: impl IntoIterator<Item = String>) {
        if let Ok(mut l) = self.leaving.lock() {
            l.extend(ids);
        }
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
