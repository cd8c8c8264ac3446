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
//! of jobs wait at once, so the object stays small.

use std::collections::BTreeMap;

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
    lock: Mutex<()>,
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
            lock: Mutex::new(()),
        }
    }

    pub async fn list(&self) -> Result<Vec<Job>, JournalError> {
        let secret = self.api.get_opt(SECRET_NAME).await?;
        Ok(decode(secret.as_ref())?.into_values().collect())
    }

    pub async fn add(&self, job: &Job) -> Result<(), JournalError> {
        let job = job.clone();
        self.update(move |jobs| {
            jobs.insert(job.id.clone(), job.clone());
        })
        .await
    }

    pub async fn remove(&self, id: &str) -> Result<(), JournalError> {
        self.update(|jobs| {
            jobs.remove(id);
        })
        .await
    }

    /// Read-modify-write with the resourceVersion read; retried on conflicts.
    async fn update(&self, f: impl Fn(&mut BTreeMap<String, Job>)) -> Result<(), JournalError> {
        let _guard = self.lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.api.get_opt(SECRET_NAME).await?;
            let mut jobs = decode(current.as_ref())?;
            let before = jobs.len();
            f(&mut jobs);
            let body = ByteString(serde_json::to_vec(&jobs)?);
            let result = match current {
                None if jobs.is_empty() => return Ok(()),
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
                    self.api.create(&write_params(), &secret).await.map(|_| ())
                }
                Some(mut secret) => {
                    if jobs.len() == before && before == 0 {
                        return Ok(());
                    }
                    secret.data = Some([(DATA_KEY.to_string(), body)].into());
                    self.api
                        .replace(SECRET_NAME, &write_params(), &secret)
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
