//! Long-poll loop and job pipeline (spec §3.4, §3.5).
//!
//! Loop: fetch with `wait` = poll interval; a credential change restarts the fetch with
//! the new token at once; rejected credentials stop polling until the Secret changes;
//! failures back off (§2.11). After a failure streak, the first successful fetch first
//! flushes the event queue, then re-emits the condition snapshot and flushes again, and
//! only then processes jobs (§3.11 reconnect re-sync).
//!
//! Pipeline per job, in server order: ack (404 → drop) → expiry (`noop`/`expired`) →
//! idempotency (`noop`) → signature → dispatch → result. Objects with readiness
//! semantics get interim `status` posts and their result from a spawned waiter, so one
//! slow instance never blocks the loop; results are retried until accepted, `404` or
//! `409`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use jiff::Timestamp;
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::Agent;
use super::applier::{Applied, ApplyError, Readiness, split_api_version};
use super::backoff::Backoff;
use super::client::{ClientError, Delivery};
use super::follow::Seen;
use super::lanes;
use super::readiness::{Verdict, evaluate};
use super::signing;
use super::wire::batch::{Entry, MAX_RESPONSE_BYTES};
use super::wire::{
    Job, JobResult, OUTCOME_FAILED, OUTCOME_NOOP, OUTCOME_SUCCEEDED, ObjectRef, StatusUpdate,
};

#[derive(Clone)]
pub struct Poller {
    agent: Agent,
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Same-object order across polls (see `lanes`).
    order: Arc<lanes::Sequencer>,
    /// Jobs between their turn and their hand-off to a readiness wait.
    slots: Arc<Semaphore>,
    /// Jobs taken on and not yet through their pipeline: polling pauses at
    /// [`MAX_PENDING`].
    pending: Arc<watch::Sender<usize>>,
}

fn wire_ref(a: &Applied) -> ObjectRef {
    let r = &a.reference;
    ObjectRef {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
        generation: r.generation,
    }
}

/// Debug trace of where a job's time goes: milliseconds since the control plane created
/// it when it reaches `stage` (`RUST_LOG=vworkspace_operator::agent::poller=debug`).
fn stage(job: &Job, stage: &'static str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let ms = job
            .created_at
            .map(|c| Timestamp::now().duration_since(c).as_secs_f64() * 1000.0);
        tracing::debug!(job_id = %job.id, stage, since_created_ms = ms, "job stage");
    }
}

fn result(outcome: &str, error: impl Into<String>, applied_ref: Option<ObjectRef>) -> JobResult {
    JobResult {
        outcome: outcome.into(),
        error: error.into(),
        applied_ref,
        timestamp: Timestamp::now(),
    }
}

impl Poller {
    pub fn new(agent: Agent) -> Self {
        Poller {
            agent,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
            order: Arc::new(lanes::Sequencer::default()),
            slots: Arc::new(Semaphore::new(CONCURRENT_JOBS)),
            pending: Arc::new(watch::channel(0).0),
        }
    }

    fn wait_seconds(&self) -> u64 {
        self.agent.config().poll_interval.as_secs()
    }

    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let agent = self.agent.clone();
        let store = agent.store().clone();
        let mut creds_rx = store.subscribe();
        let mut backoff = Backoff::new(agent.config().backoff);
        let mut failing = false;
        if let Some(c) = store.current() {
            tracing::info!(cluster_id = %c.cluster_id, "poller started");
        }
        let mut resumed = false;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            creds_rx.borrow_and_update();
            if store.current().is_none() || store.is_rejected() {
                // Nothing to do until the credentials (Secret content) change.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = creds_rx.changed() => if r.is_err() { return },
                }
                continue;
            }
            // Jobs of earlier polls run while this one waits; only a long queue of
            // jobs not yet started holds the next poll back.
            let mut pending = self.pending.subscribe();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = pending.wait_for(|n| *n < MAX_PENDING) => {}
            }
            let started = tokio::time::Instant::now();
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return,
                // New token/URL: restart the poll with it.
                _ = creds_rx.changed() => continue,
                // The first fetch does not wait for new jobs: the journal is resumed
                // after it, and should not sit out a whole poll interval first.
                r = agent.client().poll(if resumed { self.wait_seconds() } else { 0 }) => r,
            };
            match fetched {
                Ok(batch) => {
                    backoff.reset();
                    agent.metrics().poll_throttled_seconds.set(0);
                    agent
                        .inner
                        .connected_once
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    // Also after transitions were left out for want of credentials
                    // (see `Reporter::with_gate`): the first contact sends them.
                    let suppressed = agent.reporter().take_suppressed();
                    if failing || suppressed {
                        failing = false;
                        self.resync().await;
                    }
                    if !resumed {
                        resumed = true;
                        self.resume(&cancel).await;
                    }
                    let now = Timestamp::now();
                    let lag = batch
                        .entries
                        .iter()
                        .filter_map(|e| match e {
                            Entry::Job(j) => j.created_at,
                            Entry::Malformed { .. } => None,
                        })
                        .min()
                        .map(|t| now.duration_since(t).as_secs_f64().max(0.0))
                        .unwrap_or(0.0);
                    agent.metrics().pull_job_lag_seconds.set(lag);
                    if batch.truncated {
                        tracing::warn!(
                            limit_bytes = MAX_RESPONSE_BYTES,
                            "jobs answer over the size limit: read up to the limit; later jobs come with a later poll"
                        );
                    }
                    let mut jobs = Vec::with_capacity(batch.entries.len());
                    for entry in batch.entries {
                        match entry {
                            Entry::Job(job) => {
                                stage(&job, "polled");
                                jobs.push(*job)
                            }
                            Entry::Malformed {
                                id: Some(id),
                                problem,
                            } => {
                                tracing::warn!(job_id = %id, problem = %problem, "job cannot be read; answering failed");
                                jobs.push(refused(&id, &problem));
                            }
                            Entry::Malformed { id: None, problem } => {
                                agent.metrics().malformed_jobs_total.inc();
                                tracing::warn!(problem = %problem, "job without a usable id cannot be read or answered; skipped and counted");
                            }
                        }
                    }
                    self.take_on(jobs, false, &cancel).await;
                    if cancel.is_cancelled() {
                        return;
                    }
                    if self.wait_seconds() == 0 {
                        let min_gap = Duration::from_secs(1).saturating_sub(started.elapsed());
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(min_gap) => {}
                        }
                    }
                }
                Err(e) if e.is_auth() || matches!(e, ClientError::NoCredentials) => {
                    // Loop top waits for new credentials.
                }
                Err(e) => {
                    failing = true;
                    let delay = backoff.next_delay_after(e.retry_after());
                    if let ClientError::RateLimited { retry_after } = &e {
                        // Shown in the metric and on the Cluster (the connectivity record).
                        agent
                            .metrics()
                            .poll_throttled_seconds
                            .set(delay.as_secs() as i64);
                        agent.client().throttled(delay);
                        if retry_after.is_some_and(|r| r > delay) {
                            tracing::warn!(
                                cap_seconds = agent.config().backoff.max_retry_after.as_secs(),
                                "Retry-After beyond the agent's cap; polling again after the cap"
                            );
                        }
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "job fetch failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = creds_rx.changed() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Re-sync after a reconnect, or after transitions were left out while there were
    /// no credentials: flush, snapshot, flush.
    async fn resync(&self) {
        let a = &self.agent;
        let _ = a.batcher().flush(a.client()).await;
        let n = a.reporter().snapshot().await;
        let _ = a.batcher().flush(a.client()).await;
        tracing::info!(
            snapshot_events = n,
            "re-sync: queued events flushed and condition snapshot re-sent"
        );
    }

    fn mark(&self, id: &str) -> bool {
        self.in_flight
            .lock()
            .map(|mut s| s.insert(id.to_string()))
            .unwrap_or(true)
    }

    /// Finishes the jobs an earlier run took on but never answered (see `journal`).
    async fn resume(&self, cancel: &CancellationToken) {
        let jobs = match self.agent.inner.journal.list().await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the in-flight journal");
                return;
            }
        };
        for job in &jobs {
            tracing::info!(job_id = %job.id, kind = %job.kind, "resuming a job taken on before a restart");
        }
        self.take_on(jobs, true, cancel).await;
    }

    /// Takes on one poll's jobs (in server order): marks them in flight, starts writing
    /// them all to the journal in one update, and starts each in its own task without
    /// waiting for them (nor for the journal: the poller polls again meanwhile). A job
    /// is acknowledged only once its poll's journal update is through; its turn (see
    /// `lanes`) opens once the job before it on the same object is through, and at most
    /// [`CONCURRENT_JOBS`] run their pipeline at once. `journaled`: resumed from the
    /// journal.
    async fn take_on(&self, jobs: Vec<Job>, journaled: bool, cancel: &CancellationToken) {
        let mut taken = Vec::with_capacity(jobs.len());
        for job in jobs {
            if !self.mark(&job.id) {
                tracing::debug!(job_id = %job.id, "job redelivered while still in progress; skipped");
                continue;
            }
            let done = InFlight(self.in_flight.clone(), job.id.clone());
            taken.push(Taken {
                job,
                done,
                journaled,
            });
        }
        if taken.is_empty() {
            return;
        }
        // Resolves to whether the poll's jobs are journaled; spawned, so the write runs
        // whether or not a job is waiting for it yet.
        let journal: Shared<BoxFuture<'static, bool>> = if journaled {
            futures::future::ready(true).boxed().shared()
        } else {
            let jobs: Vec<Job> = taken.iter().map(|t| t.job.clone()).collect();
            let a = self.agent.clone();
            let write = tokio::spawn(async move {
                match a.inner.journal.add_all(&jobs).await {
                    Ok(()) => true,
                    // Each job is then journaled on its own before its ack (with
                    // retries): a large poll may not fit the Secret while its jobs one by
                    // one do.
                    Err(e) => {
                        tracing::warn!(jobs = jobs.len(), error = %e, "cannot journal the poll's jobs together; journaling them one by one");
                        false
                    }
                }
            });
            write.map(|r| r.unwrap_or(false)).boxed().shared()
        };
        for mut t in taken {
            // Turns are handed out here, in server order, before any task runs.
            let mut turn = self.order.turn(lanes::object_key(&t.job, REFUSED_KIND));
            self.pending.send_modify(|n| *n += 1);
            let pending = Pending(self.pending.clone());
            let (p, cancel, journal) = (self.clone(), cancel.clone(), journal.clone());
            tokio::spawn(async move {
                let _pending = pending;
                if !t.journaled {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        j = journal => {
                            if j {
                                stage(&t.job, "journaled");
                            }
                            t.journaled = j;
                        }
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = turn.ready() => {}
                }
                let Ok(slot) = p.slots.clone().acquire_owned().await else {
                    return;
                };
                if cancel.is_cancelled() {
                    // Stays journaled: the next run resumes it.
                    return;
                }
                let id = t.job.id.clone();
                let step = p.settle(t, &cancel).await;
                // The next job on this object and the next job waiting for a slot go
                // now; the journal removal is not theirs to wait for.
                drop(turn);
                drop(slot);
                if step == Step::Settled {
                    forget(&p.agent, &id).await;
                }
            });
        }
    }

    /// A taken job: journaled (if its poll's update failed) before it is acknowledged.
    /// `Settled`: the control plane holds its answer, it may leave the journal.
    async fn settle(&self, t: Taken, cancel: &CancellationToken) -> Step {
        let a = &self.agent;
        let Taken {
            job,
            done,
            journaled,
        } = t;
        if !journaled {
            let mut backoff = Backoff::new(a.config().backoff);
            let mut attempt = 0;
            while let Err(e) = a.inner.journal.add(&job).await {
                attempt += 1;
                if attempt >= JOURNAL_ATTEMPTS {
                    // A control plane may hand a job out only once: answering it without
                    // the journal (lost only if the operator also dies before the result)
                    // beats leaving it unanswered for good.
                    tracing::warn!(job_id = %job.id, error = %e, "cannot journal the job; processing it unjournaled");
                    break;
                }
                tracing::debug!(job_id = %job.id, error = %e, "cannot journal the job; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Step::Unsettled,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
        self.pipeline(job, cancel, done).await
    }

    /// The pipeline after journaling.
    async fn pipeline(&self, job: Job, cancel: &CancellationToken, done: InFlight) -> Step {
        let a = &self.agent;
        let closed = match ack(a, &job.id, cancel).await {
            Acked::Yes => false,
            // A resumed job the control plane already holds a result for (a crash fell
            // between that result and the job's removal from the journal): finished as
            // usual, so a `succeeded` job's key is recorded, but no second result is
            // posted (it would be refused with `409`).
            Acked::Closed => {
                tracing::info!(job_id = %job.id, "job already closed on the control plane; finishing it without posting a result");
                true
            }
            Acked::Gone => {
                tracing::info!(job_id = %job.id, "job unknown or closed on the control plane; dropped");
                return Step::Settled;
            }
            Acked::Cancelled => return Step::Unsettled,
        };
        stage(&job, "acked");
        if job.kind == REFUSED_KIND {
            let problem = job.payload["problem"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            return Step::from_delivery(
                post_result(
                    a,
                    &job,
                    closed,
                    result(OUTCOME_FAILED, problem, None),
                    cancel,
                )
                .await,
            );
        }
        if job.expires_at.is_some_and(|t| t <= Timestamp::now()) {
            tracing::info!(job_id = %job.id, kind = %job.kind, "job expired; not applied");
            return Step::from_delivery(
                post_result(
                    a,
                    &job,
                    closed,
                    result(OUTCOME_NOOP, "expired", None),
                    cancel,
                )
                .await,
            );
        }
        match a.inner.idempotency.contains(&job.idempotency_key).await {
            Ok(true) => {
                tracing::info!(job_id = %job.id, idempotency_key = %job.idempotency_key, "idempotent replay; noop");
                return Step::from_delivery(
                    post_result(a, &job, closed, result(OUTCOME_NOOP, "", None), cancel).await,
                );
            }
            Ok(false) => {}
            Err(e) => {
                return Step::from_delivery(
                    post_result(
                        a,
                        &job,
                        closed,
                        result(OUTCOME_FAILED, e.to_string(), None),
                        cancel,
                    )
                    .await,
                );
            }
        }
        if job
            .encrypted_payload
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            return Step::from_delivery(post_result(
                a,
                &job,
                closed,
                result(
                    OUTCOME_FAILED,
                    "JobPayloadDecryptionFailed: encrypted payloads are not supported by this agent",
                    None,
                ),
                cancel,
            ).await);
        }
        if let Err(why) = signing::check(
            a.config().signing_mode,
            a.inner.verifying_key.as_ref(),
            &job.payload,
            job.signature.as_deref(),
        ) {
            tracing::warn!(job_id = %job.id, kind = %job.kind, reason = %why, "job refused: signature");
            return Step::from_delivery(
                post_result(a, &job, closed, result(OUTCOME_FAILED, why, None), cancel).await,
            );
        }
        let cluster_id = a
            .store()
            .current()
            .map(|c| c.cluster_id)
            .unwrap_or_default();
        let applied = match job.kind.as_str() {
            "apply" => a.inner.applier.apply(&job.payload, &cluster_id).await,
            "delete" => a.inner.applier.delete(&job.payload).await,
            "intent" => {
                a.inner
                    .applier
                    .intent(&job.payload, &cluster_id, a.active_cluster().as_deref())
                    .await
            }
            other => Err(ApplyError::Malformed(format!(
                "unknown job kind {other:?} (expected apply, delete or intent)"
            ))),
        };
        stage(&job, "applied");
        let applied = match applied {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(job_id = %job.id, kind = %job.kind, idempotency_key = %job.idempotency_key, error = %e, "job failed");
                return Step::from_delivery(
                    post_result(
                        a,
                        &job,
                        closed,
                        result(e.outcome(), e.to_string(), None),
                        cancel,
                    )
                    .await,
                );
            }
        };
        if applied.readiness == Readiness::None {
            let delivered = finish(
                a,
                &job,
                closed,
                &applied,
                Verdict::Succeeded(String::new()),
                cancel,
            )
            .await;
            drop(done);
            return Step::from_delivery(delivered);
        }
        // Wait for readiness off the loop; the in-flight mark moves with it.
        let (a2, cancel2) = (a.clone(), cancel.clone());
        tokio::spawn(async move {
            let verdict = wait_ready(&a2, &job, closed, &applied, &cancel2).await;
            stage(&job, "ready");
            // No verdict means shutdown or lost leadership: the job stays journaled and
            // the next leader resumes it.
            if let Some(v) = verdict
                && finish(&a2, &job, closed, &applied, v, &cancel2).await
            {
                forget(&a2, &job.id).await;
            }
            drop(done);
        });
        Step::HandedOff
    }
}

/// Jobs in their pipeline (ack → apply) at once; readiness waits do not count.
pub const CONCURRENT_JOBS: usize = 64;

/// Jobs taken on but not started or not through their pipeline above which polling
/// pauses (a poll may still bring more: its size is bounded by bytes).
pub const MAX_PENDING: usize = 256;

/// Counts a taken job as pending until dropped.
struct Pending(Arc<watch::Sender<usize>>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A job this process has taken on: in flight until `done` drops.
struct Taken {
    job: Job,
    done: InFlight,
    /// Already in the journal (journaled with its poll, or resumed from it).
    journaled: bool,
}

/// How often journaling a job is tried before it is processed unjournaled.
const JOURNAL_ATTEMPTS: u32 = 5;

/// Journal kind of a job that could not be read: only its id and the problem are kept,
/// so a restart still answers it (and a multi-MB job never reaches the journal Secret).
const REFUSED_KIND: &str = "x-vworkspace-unreadable";

/// The stand-in of an unreadable job with a usable id.
fn refused(id: &str, problem: &str) -> Job {
    // The problem names the limit or the decoding error; a bounded length keeps the
    // journal and the result small whatever the server sent.
    let problem: String = problem.chars().take(1024).collect();
    Job {
        id: id.to_string(),
        kind: REFUSED_KIND.into(),
        payload: serde_json::json!({ "problem": problem }),
        ..Job::default()
    }
}

enum Acked {
    Yes,
    /// `409`: the control plane already holds a result for the job.
    Closed,
    /// `404`: unknown or closed on the control plane.
    Gone,
    /// Shutdown or lost leadership before an ack went through.
    Cancelled,
}

/// Acknowledges until the control plane takes it. Retrying instead of waiting for a
/// redelivery keeps jobs safe on servers that hand a job out only once; a redelivery
/// meanwhile is skipped by the in-flight mark.
async fn ack(a: &Agent, id: &str, cancel: &CancellationToken) -> Acked {
    let mut backoff = Backoff::new(a.config().backoff);
    loop {
        let e = match a.client().ack(id).await {
            Ok(Delivery::Accepted) => return Acked::Yes,
            Ok(Delivery::AlreadyClosed) => return Acked::Closed,
            Err(ClientError::JobGone) => return Acked::Gone,
            Err(e) => e,
        };
        let delay = backoff.next_delay_after(e.retry_after());
        tracing::warn!(job_id = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "ack failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return Acked::Cancelled,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Where a job stands when the pipeline returns.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Answered, dropped or never acknowledged: leaves the journal.
    Settled,
    /// Its result could not be delivered now: stays journaled for the next run.
    Unsettled,
    /// A readiness waiter owns it (and removes it from the journal when done).
    HandedOff,
}

impl Step {
    fn from_delivery(delivered: bool) -> Step {
        if delivered {
            Step::Settled
        } else {
            Step::Unsettled
        }
    }
}

async fn forget(a: &Agent, id: &str) {
    if let Err(e) = a.inner.journal.remove(id).await {
        tracing::warn!(job_id = %id, error = %e, "cannot remove the job from the in-flight journal");
    }
}

/// Removes a job id from the in-flight set when dropped.
struct InFlight(Arc<Mutex<HashSet<String>>>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(&self.1);
        }
    }
}

async fn finish(
    a: &Agent,
    job: &Job,
    closed: bool,
    applied: &Applied,
    verdict: Verdict,
    cancel: &CancellationToken,
) -> bool {
    let r = wire_ref(applied);
    let res = match verdict {
        Verdict::Succeeded(_) => {
            // The key is recorded beside the result post, not before it: the job stays
            // journaled until both are through, so a crash before the key is written
            // makes the next run resume the job (second ack `409`, second apply a
            // no-op, key recorded, second result `409`). Replays meanwhile see the key
            // as being recorded (`IdempotencyStore::contains`).
            let res = result(OUTCOME_SUCCEEDED, "", Some(r));
            let (recorded, delivered) = tokio::join!(
                record(a, job, cancel),
                post_result(a, job, closed, res, cancel)
            );
            return recorded && delivered;
        }
        Verdict::Failed(why) => result(OUTCOME_FAILED, why, Some(r)),
        Verdict::Pending { message, .. } => result(
            OUTCOME_FAILED,
            format!(
                "not ready within {}s: {message}",
                a.config().ready_timeout.as_secs()
            ),
            Some(r),
        ),
    };
    post_result(a, job, closed, res, cancel).await
}

/// How often recording a succeeded job's idempotency key is tried in this run.
const RECORD_ATTEMPTS: u32 = 5;

/// Records a succeeded job's idempotency key, with retries. `false` (shutdown, or the
/// store keeps failing): the job stays journaled, and the next run resumes it and
/// records the key then.
async fn record(a: &Agent, job: &Job, cancel: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(a.config().backoff);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = match a.inner.idempotency.record(&job.idempotency_key).await {
            Ok(()) => {
                stage(job, "recorded");
                return true;
            }
            Err(e) => e,
        };
        if attempt >= RECORD_ATTEMPTS {
            tracing::warn!(job_id = %job.id, idempotency_key = %job.idempotency_key, error = %e, "cannot record the idempotency key; the job stays journaled and the next run finishes it");
            return false;
        }
        tracing::debug!(job_id = %job.id, error = %e, "cannot record the idempotency key; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Watches the applied object until it succeeds, fails or the timeout passes, posting an
/// interim `status` whenever its state changes. `None` when cancelled.
async fn wait_ready(
    a: &Agent,
    job: &Job,
    closed: bool,
    applied: &Applied,
    cancel: &CancellationToken,
) -> Option<Verdict> {
    let r = &applied.reference;
    let (group, version) = split_api_version(&r.api_version);
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &r.kind));
    // One watch per kind and namespace, shared by every job waiting there.
    let mut follower = a.inner.follow.object(&ar, &r.namespace, &r.name);
    let deadline = tokio::time::sleep(a.config().ready_timeout);
    tokio::pin!(deadline);
    let mut last: Option<Verdict> = None;
    let mut posting: Option<tokio::task::JoinHandle<Result<(), ClientError>>> = None;
    loop {
        let seen = tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = &mut deadline => return Some(last.unwrap_or(Verdict::Pending { phase: String::new(), message: "no status yet".into() })),
            seen = follower.next() => seen,
        };
        let value = match seen {
            Seen::Present(v) => v,
            Seen::Deleted => {
                return Some(Verdict::Failed(format!(
                    "{} {} was deleted before it became ready",
                    r.kind, r.name
                )));
            }
        };
        let verdict = evaluate(applied.readiness, &value, r.generation);
        stage(job, "observed");
        if let Verdict::Pending { phase, message } = &verdict
            && last.as_ref() != Some(&verdict)
            && !closed
        {
            let update = StatusUpdate {
                phase: phase.clone(),
                conditions: super::readiness::conditions(&value),
                message: message.clone(),
                timestamp: Timestamp::now(),
            };
            // Posted beside the wait, not before it: the next state is seen as soon as
            // it comes. Posts of one job stay in order (each waits for the one before).
            if !status_posted(job, posting.take()).await {
                return None;
            }
            let (a2, job2) = (a.clone(), job.clone());
            posting = Some(tokio::spawn(async move {
                let r = a2.client().status(&job2.id, &update).await;
                if r.is_ok() {
                    stage(&job2, "status posted");
                }
                r
            }));
        }
        if !matches!(verdict, Verdict::Pending { .. }) {
            // The result goes after the interim states.
            return status_posted(job, posting.take()).await.then_some(verdict);
        }
        last = Some(verdict);
    }
}

/// Waits for an interim status post; `false` when the control plane said the job is
/// closed (no result is due then).
async fn status_posted(
    job: &Job,
    posting: Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
) -> bool {
    match posting {
        Some(h) => match h.await {
            Ok(Err(ClientError::JobGone)) => {
                tracing::info!(job_id = %job.id, "job closed on the control plane while waiting for readiness");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(job_id = %job.id, error = %e, "interim status not delivered");
                true
            }
            _ => true,
        },
        None => true,
    }
}

/// Posts a result until it is accepted, already recorded (`409`) or the job is gone
/// (`404`). A `400` falls back once to `failed` with a short error.
/// `true` once the control plane holds a result for the job (accepted, `409`, or the job
/// is gone); `false` when delivery was abandoned (shutdown, rejected credentials) and
/// the job must stay journaled. `closed`: its ack said the control plane already holds a
/// result, so none is posted.
pub async fn post_result(
    a: &Agent,
    job: &Job,
    closed: bool,
    mut res: JobResult,
    cancel: &CancellationToken,
) -> bool {
    if closed {
        tracing::info!(job_id = %job.id, kind = %job.kind, outcome = %res.outcome, "job result not posted: the control plane already holds one");
        return true;
    }
    let mut backoff = Backoff::new(a.config().backoff);
    let mut fell_back = false;
    loop {
        match a.client().result(&job.id, &res).await {
            Ok(d) => {
                stage(job, "answered");
                if d == Delivery::Accepted {
                    a.metrics().record_result(&res.outcome);
                    if let Some(created) = job.created_at {
                        let secs = Timestamp::now().duration_since(created).as_secs_f64();
                        a.metrics().job_latency_seconds.observe(secs.max(0.0));
                    }
                }
                if res.outcome == OUTCOME_SUCCEEDED {
                    a.metrics().applied_jobs_total.inc();
                    a.metrics().pull_job_lag_seconds.set(0.0);
                }
                tracing::info!(job_id = %job.id, kind = %job.kind, outcome = %res.outcome, "job result delivered");
                return true;
            }
            Err(ClientError::JobGone) => {
                tracing::info!(job_id = %job.id, "job gone before its result was posted");
                return true;
            }
            Err(ClientError::BadRequest(m)) if !fell_back => {
                fell_back = true;
                tracing::warn!(job_id = %job.id, error = %m, "result rejected; sending a short failed result");
                res = result(
                    OUTCOME_FAILED,
                    "result rejected by the control plane (400)",
                    None,
                );
            }
            Err(e) if e.is_auth() || matches!(e, ClientError::BadRequest(_)) => {
                tracing::error!(job_id = %job.id, error = %e, "result could not be delivered");
                return false;
            }
            Err(e) => {
                let delay = backoff.next_delay_after(e.retry_after());
                tracing::warn!(job_id = %job.id, error = %e, retry_in_ms = delay.as_millis() as u64, "result post failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
