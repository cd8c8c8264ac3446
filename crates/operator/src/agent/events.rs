//! Event batcher (spec §3.8): the single outbound queue for `POST /api/agent/events`.
//!
//! - Batches of up to 100 events leave every second, and at once when 100 are queued;
//!   each flush drains the queue batch by batch while the server accepts.
//! - Events stay queued while there are no credentials, the agent is not registered or
//!   the control plane is unreachable (connectivity defect 5); failed batches go back in
//!   front of newer events, and retries back off (§2.11).
//! - Capacity 1000: on overflow the oldest events are dropped, counted in
//!   `vworkspace_operator_dropped_events_total`, and the overflow flag (with the drop
//!   count) feeds the Cluster `BufferOverflow` condition until the buffer has drained.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::backoff::{Backoff, BackoffConfig};
use super::client::{AgentClient, ClientError};
use super::wire::Event;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    pub max_batch: usize,
    pub flush_period: Duration,
    pub capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch: 100,
            flush_period: Duration::from_secs(1),
            capacity: 1000,
        }
    }
}

/// Where batches go.
pub trait EventSink: Send + Sync {
    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), ClientError>>;
}

impl EventSink for AgentClient {
    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(self.events(events))
    }
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Dropped since the buffer last drained; `> 0` means overflow.
    dropped: u64,
}

pub struct EventBatcher {
    config: BatcherConfig,
    queue: Mutex<Queue>,
    notify: Notify,
    flushing: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// The delivery failure last logged; the same one again is not logged (a rejected
    /// credential is refused locally on every flush and would fill the log).
    last_failure: Mutex<Option<String>>,
}

impl EventBatcher {
    pub fn new(config: BatcherConfig, metrics: Arc<Metrics>) -> Self {
        EventBatcher {
            config,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            metrics,
            last_failure: Mutex::new(None),
        }
    }

    fn with_queue<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        match self.queue.lock() {
            Ok(mut q) => f(&mut q),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn trim(&self, q: &mut Queue) {
        let over = q.events.len().saturating_sub(self.config.capacity);
        if over > 0 {
            q.events.drain(..over);
            // Once per overflow: while it lasts (e.g. not registered yet, every new event
            // drops one) the metric and the Cluster condition carry the count; a line per
            // event filled the log with tens of thousands of identical warnings.
            if q.dropped == 0 {
                tracing::warn!(
                    capacity = self.config.capacity,
                    "event buffer full: dropping the oldest events until it drains \
                     (counted in vworkspace_operator_dropped_events_total)"
                );
            }
            q.dropped += over as u64;
            self.metrics.dropped_events_total.inc_by(over as u64);
        }
        self.metrics
            .event_buffer_occupancy
            .set(q.events.len() as i64);
    }

    /// Queues an event (never blocks, never fails).
    pub fn enqueue(&self, event: Event) {
        let len = self.with_queue(|q| {
            q.events.push_back(event);
            self.trim(q);
            q.events.len()
        });
        if len >= self.config.max_batch {
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.with_queue(|q| q.events.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Some(dropped)` while the buffer has overflowed and not yet drained.
    pub fn overflow(&self) -> Option<u64> {
        self.with_queue(|q| (q.dropped > 0).then_some(q.dropped))
    }

    /// Whether an event with this key is queued.
    pub fn contains_key(&self, key: &str) -> bool {
        self.with_queue(|q| q.events.iter().any(|e| e.event_key == key))
    }

    /// Sends queued events batch by batch until the queue is empty or a batch fails
    /// (the failed batch goes back in front). Returns how many were delivered.
    pub async fn flush(&self, sink: &dyn EventSink) -> Result<usize, ClientError> {
        let _guard = self.flushing.lock().await;
        let mut delivered = 0;
        loop {
            let batch: Vec<Event> = self.with_queue(|q| {
                let n = q.events.len().min(self.config.max_batch);
                q.events.drain(..n).collect()
            });
            if batch.is_empty() {
                return Ok(delivered);
            }
            match sink.send(&batch).await {
                Ok(()) => {
                    delivered += batch.len();
                    if let Ok(mut l) = self.last_failure.lock() {
                        *l = None;
                    }
                    self.with_queue(|q| {
                        if q.events.is_empty() && q.dropped > 0 {
                            tracing::info!(
                                dropped = q.dropped,
                                "event buffer drained after an overflow"
                            );
                            q.dropped = 0;
                        }
                        self.metrics
                            .event_buffer_occupancy
                            .set(q.events.len() as i64);
                    });
                }
                Err(e) => {
                    let size = batch.len();
                    self.with_queue(|q| {
                        for ev in batch.into_iter().rev() {
                            q.events.push_front(ev);
                        }
                        self.trim(q);
                    });
                    let text = e.to_string();
                    let news = self
                        .last_failure
                        .lock()
                        .map(|mut l| l.replace(text.clone()) != Some(text))
                        .unwrap_or(true);
                    // Auth failures repeat locally until the Secret changes: log the first.
                    // Others are paced by the backoff and each is worth a line.
                    if !matches!(e, ClientError::NoCredentials) && (news || !e.is_auth()) {
                        tracing::warn!(error = %e, batch = size, "event delivery failed; kept queued");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Flushes every period (and when a full batch is queued) until `cancel`, then makes
    /// one last attempt.
    pub async fn run(
        &self,
        sink: &dyn EventSink,
        backoff: BackoffConfig,
        cancel: CancellationToken,
    ) {
        let mut backoff = Backoff::new(backoff);
        let mut delay = self.config.flush_period;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = self.notify.notified() => {}
            }
            delay = match self.flush(sink).await {
                Ok(_) => {
                    backoff.reset();
                    self.config.flush_period
                }
                // Not registered yet / credentials rejected: wait, keep everything.
                Err(e) if matches!(e, ClientError::NoCredentials) || e.is_auth() => {
                    self.config.flush_period.max(Duration::from_secs(1))
                }
                Err(e) => backoff
                    .next_delay_after(e.retry_after())
                    .max(self.config.flush_period),
            };
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.flush(sink)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::ObjectRef;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn ev(i: usize) -> Event {
        Event {
            event_key: format!("k{i}"),
            kind: "ConditionTransition".into(),
            resource_ref: ObjectRef::default(),
            conditions: vec![],
            endpoints: vec![],
            timestamp: jiff::Timestamp::now(),
        }
    }

    #[derive(Default)]
    struct Sink {
        down: AtomicBool,
        got: Mutex<Vec<Vec<String>>>,
    }

    impl EventSink for Sink {
        fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), ClientError>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err(ClientError::Unavailable("down".into()));
                }
                self.got
                    .lock()
                    .unwrap()
                    .push(events.iter().map(|e| e.event_key.clone()).collect());
                Ok(())
            })
        }
    }

    fn batcher(capacity: usize) -> EventBatcher {
        EventBatcher::new(
            BatcherConfig {
                max_batch: 3,
                flush_period: Duration::from_millis(10),
                capacity,
            },
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn failed_batches_stay_in_order_and_drain_later() {
        let b = batcher(100);
        let sink = Sink::default();
        sink.down.store(true, Ordering::SeqCst);
        for i in 0..7 {
            b.enqueue(ev(i));
        }
        assert!(b.flush(&sink).await.is_err());
        b.enqueue(ev(7));
        assert_eq!(b.len(), 8);
        assert!(b.contains_key("k0") && b.contains_key("k7"));
        sink.down.store(false, Ordering::SeqCst);
        assert_eq!(b.flush(&sink).await.unwrap(), 8);
        let got = sink.got.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "batches of at most 3: {got:?}");
        let flat: Vec<String> = got.concat();
        assert_eq!(flat, (0..8).map(|i| format!("k{i}")).collect::<Vec<_>>());
        assert!(b.is_empty());
    }

    /// Counts WARN events of this module.
    struct Warnings(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *e.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    struct Refusing(ClientError);

    impl EventSink for Refusing {
        fn send<'a>(&'a self, _: &'a [Event]) -> BoxFuture<'a, Result<(), ClientError>> {
            Box::pin(async move { Err(self.0.clone()) })
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rejected_credentials_are_reported_once_not_every_flush() {
        use tracing_subscriber::layer::SubscriberExt;
        let warnings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);
        let b = batcher(100);
        b.enqueue(ev(0));
        let forbidden = Refusing(ClientError::Forbidden("agent API error (403): no".into()));
        for _ in 0..10 {
            assert!(b.flush(&forbidden).await.is_err());
        }
        assert_eq!(warnings.load(Ordering::SeqCst), 1);
        // Another failure is news again.
        let down = Refusing(ClientError::Unavailable("refused".into()));
        assert!(b.flush(&down).await.is_err());
        assert_eq!(warnings.load(Ordering::SeqCst), 2);
        assert_eq!(b.len(), 1, "events stay queued");
    }

    #[tokio::test]
    async fn overflow_drops_oldest_and_clears_after_drain() {
        let metrics = Arc::new(Metrics::new());
        let b = EventBatcher::new(
            BatcherConfig {
                max_batch: 100,
                flush_period: Duration::from_millis(10),
                capacity: 5,
            },
            metrics.clone(),
        );
        for i in 0..8 {
            b.enqueue(ev(i));
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.overflow(), Some(3));
        assert!(!b.contains_key("k2") && b.contains_key("k3"));
        assert_eq!(metrics.dropped_events_total.get(), 3);
        assert_eq!(metrics.event_buffer_occupancy.get(), 5);
        let sink = Sink::default();
        b.flush(&sink).await.unwrap();
        assert_eq!(b.overflow(), None);
        assert_eq!(sink.got.lock().unwrap()[0][0], "k3");
        assert_eq!(metrics.event_buffer_occupancy.get(), 0);
    }

    #[tokio::test]
    async fn a_full_batch_flushes_without_waiting_for_the_tick() {
        let b = Arc::new(EventBatcher::new(
            BatcherConfig {
                max_batch: 3,
                flush_period: Duration::from_secs(3600),
                capacity: 100,
            },
            Arc::new(Metrics::new()),
        ));
        let sink = Arc::new(Sink::default());
        let cancel = CancellationToken::new();
        let (b2, s2, c2) = (b.clone(), sink.clone(), cancel.clone());
        let task = tokio::spawn(async move { b2.run(&*s2, BackoffConfig::default(), c2).await });
        for i in 0..3 {
            b.enqueue(ev(i));
        }
        for _ in 0..200 {
            if b.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(b.is_empty());
        cancel.cancel();
        task.await.unwrap();
    }
}
