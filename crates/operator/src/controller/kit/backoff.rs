//! Per-object exponential backoff for the error policy.
//!
//! A failing object is retried after 1 s, 2 s, 4 s … up to 1 min; a successful pass
//! forgets it. The map is bounded: past [`MAX_TRACKED`] objects the one whose last
//! failure is oldest is dropped (it then restarts from the first delay — harmless).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Objects whose failures are remembered at once.
pub const MAX_TRACKED: usize = 4096;

/// Delay schedule: `first × 2^(attempt-1)`, capped, with up to `jitter` of it added so
/// objects failing together do not retry in lock-step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
    /// Fraction of the delay (0..=1) added at random.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << exp)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// `delay(attempt)` plus `unit × jitter` of it, `unit` in `0..1`.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay(attempt);
        base + base.mul_f64(self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0))
    }
}

/// Failure counts per object key, bounded.
#[derive(Debug)]
pub struct Backoffs {
    schedule: Backoff,
    capacity: usize,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Default for Backoffs {
    fn default() -> Self {
        Backoffs::new(Backoff::default(), MAX_TRACKED)
    }
}

impl Backoffs {
    pub fn new(schedule: Backoff, capacity: usize) -> Self {
        Backoffs {
            schedule,
            capacity: capacity.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key`; returns the attempt number and its delay.
    pub fn failed(&self, key: &str) -> (u32, Duration) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.capacity {
            let oldest = map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let entry = map.entry(key.to_string()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        let attempt = entry.0;
        (attempt, self.schedule.jittered(attempt, fastrand::f64()))
    }

    /// Forgets `key` after a successful pass.
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub fn attempts(&self, key: &str) -> u32 {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|(n, _)| *n).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.failures.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pause schedule of a controller's trigger watches after a watch error: 250 ms doubling
/// to 5 s, forgotten at the next event that arrives.
///
/// kube's default holds one backoff for all of a controller's watches, grows to 30 s and
/// forgets only after 120 s without an error; after an API-server restart every watch
/// reports its own loss and its own "resource version too old", each doubling a pause
/// that stops all of them, and the controller stayed deaf for minutes.
#[derive(Clone, Debug, Default)]
pub struct TriggerBackoff {
    attempt: u32,
}

impl TriggerBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(5);
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = Self::FIRST
            .checked_mul(1u32 << self.attempt.min(16))
            .map_or(Self::CAP, |d| d.min(Self::CAP));
        self.attempt = self.attempt.saturating_add(1);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trigger_backoff_is_short_capped_and_reset_by_an_event() {
        use kube::runtime::utils::Backoff as _;
        let mut b = super::TriggerBackoff::default();
        let first: Vec<u128> = b.by_ref().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(
            b.nth(100),
            Some(Duration::from_secs(5)),
            "never past the cap"
        );
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }

    use super::*;

    #[test]
    fn delays_double_from_one_second_up_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<u64> = (1..=10).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(
            b.delay(u32::MAX),
            b.cap,
            "no overflow on huge attempt counts"
        );
    }

    #[test]
    fn jitter_adds_at_most_its_fraction() {
        let b = Backoff::default();
        assert_eq!(b.jittered(3, 0.0), Duration::from_secs(4));
        assert_eq!(b.jittered(3, 1.0), Duration::from_millis(4400));
        assert_eq!(
            b.jittered(3, 7.0),
            Duration::from_millis(4400),
            "unit clamped"
        );
    }

    #[test]
    fn failures_accumulate_per_object_and_success_resets() {
        let m = Backoffs::new(
            Backoff {
                jitter: 0.0,
                ..Backoff::default()
            },
            16,
        );
        assert_eq!(m.failed("a"), (1, Duration::from_secs(1)));
        assert_eq!(m.failed("a"), (2, Duration::from_secs(2)));
        assert_eq!(m.failed("b"), (1, Duration::from_secs(1)));
        assert_eq!(m.failed("a"), (3, Duration::from_secs(4)));
        m.succeeded("a");
        assert_eq!(m.attempts("a"), 0);
        assert_eq!(m.failed("a"), (1, Duration::from_secs(1)));
        assert_eq!(m.attempts("b"), 1);
    }

    #[test]
    fn the_map_is_bounded_and_drops_the_stalest_object() {
        let m = Backoffs::new(Backoff::default(), 3);
        for k in ["a", "b", "c"] {
            m.failed(k);
            std::thread::sleep(Duration::from_millis(2));
        }
        m.failed("b");
        m.failed("d");
        assert_eq!(m.len(), 3);
        assert_eq!(m.attempts("a"), 0, "oldest failure evicted");
        assert_eq!(m.attempts("b"), 2);
        assert_eq!(m.attempts("d"), 1);
    }
}
