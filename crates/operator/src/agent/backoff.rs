//! Retry pacing for control-plane calls (spec §2.11): exponential backoff with full
//! jitter, and `Retry-After` parsing.

use std::time::Duration;

/// Default longest pause a `Retry-After` can impose (docs/agent.md): a larger value, or a date
/// further ahead, waits this long and then tries again. Five minutes is the disconnect
/// window, so a throttled agent never goes quiet for longer than an outage would take
/// to be reported.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Backoff settings. Defaults are the spec's recommendation: first delay 2 s, factor 2,
/// cap 60 s, full jitter, never less than 1 s between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub first: Duration,
    pub cap: Duration,
    pub floor: Duration,
    /// Ceiling of a `Retry-After` pause. Default [`MAX_RETRY_AFTER`].
    pub max_retry_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            first: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            floor: Duration::from_secs(1),
            max_retry_after: MAX_RETRY_AFTER,
        }
    }
}

/// Exponential backoff with full jitter: attempt `n` (from 0) waits a uniformly random
/// time in `[0, min(cap, first·2ⁿ)]`, raised to `floor`. [`Backoff::reset`] after any
/// success.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// Upper bound of the jitter window for the current attempt.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.config
            .first
            .saturating_mul(factor)
            .min(self.config.cap)
            .max(self.config.floor)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(fastrand::f64());
        jittered.max(self.config.floor)
    }

    /// The delay after a response that carried `Retry-After`: at least that long, and
    /// the backoff keeps growing for later failures.
    pub fn next_delay_after(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = self.next_delay();
        match retry_after {
            Some(r) => r.min(self.config.max_retry_after).max(self.config.floor),
            None => d,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past is zero.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    Some(at.duration_since(now).try_into().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_respect_the_floor() {
        let mut b = Backoff::new(BackoffConfig::default());
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c, "{d:?} > {c:?}");
                assert!(d >= Duration::from_secs(1));
                c.as_secs()
            })
            .collect();
        assert_eq!(ceilings, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        // Many attempts never overflow.
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(BackoffConfig::default());
            for _ in 0..5 {
                b.next_delay();
            }
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 10, "no jitter: {seen:?}");
    }

    #[test]
    fn retry_after_wins_over_a_shorter_backoff() {
        let mut b = Backoff::new(BackoffConfig::default());
        assert_eq!(
            b.next_delay_after(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(b.attempts(), 1);
        assert_eq!(
            b.next_delay_after(Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn retry_after_is_capped() {
        let mut b = Backoff::new(BackoffConfig::default());
        assert_eq!(
            b.next_delay_after(Some(Duration::from_secs(999_999))),
            MAX_RETRY_AFTER
        );
        let far = parse_retry_after(
            "Fri, 01 Jan 2100 00:00:00 GMT",
            "2026-01-01T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(b.next_delay_after(far), MAX_RETRY_AFTER);
        assert_eq!(
            b.next_delay_after(Some(Duration::from_secs(299))),
            Duration::from_secs(299)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
