//! Connectivity state machine (spec §3.11), fed by every round trip to the control plane
//! (polls, event batches, heartbeats).
//!
//! `Connected` after a successful round trip; `Reconnecting` on the first failure;
//! `Disconnected` once failures have persisted for the grace period (5 min) without any
//! success; from `Disconnected`, back to `Connected` only after success has held for the
//! recovery window (1 min) — a single lucky request does not flap the phase. Plain
//! network failures never touch authentication state.

use std::time::Duration;

use jiff::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Failures must persist this long before `Disconnected`.
    pub disconnect_after: Duration,
    /// Success must hold this long before `Disconnected` becomes `Connected`.
    pub recover_after: Duration,
}

impl Default for Windows {
    fn default() -> Self {
        Windows {
            disconnect_after: Duration::from_secs(300),
            recover_after: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No round trip yet.
    Unknown,
    Connected,
    /// Failing since the given instant, not yet for the whole grace period.
    Reconnecting {
        since: Timestamp,
    },
    /// Declared disconnected at the given instant.
    Disconnected {
        since: Timestamp,
    },
    /// Disconnected, but succeeding since the given instant.
    Recovering {
        since: Timestamp,
    },
}

/// What a transition means for the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Entered `Disconnected`: Kubernetes event `ConnectivityLost`.
    Lost,
    /// Left `Disconnected`/`Recovering` for `Connected`: event `ConnectivityConnected`.
    Restored,
}

#[derive(Clone, Debug)]
pub struct Connectivity {
    pub windows: Windows,
    state: State,
    last_error: Option<String>,
    last_success: Option<Timestamp>,
    /// Job polling pauses until then on a `429` (other round trips may still succeed,
    /// so the state alone would read `Connected`).
    throttled_until: Option<Timestamp>,
}

impl Connectivity {
    pub fn new(windows: Windows) -> Self {
        Connectivity {
            windows,
            state: State::Unknown,
            last_error: None,
            last_success: None,
            throttled_until: None,
        }
    }

    /// Records that job polling pauses for `pause` from `now` on a `429`.
    pub fn throttle(&mut self, now: Timestamp, pause: Duration) {
        self.throttled_until = now.checked_add(pause).ok();
    }

    /// Until when job polling is paused by the control plane, if it still is at `now`.
    pub fn throttled_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.throttled_until.filter(|t| *t > now)
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn last_success(&self) -> Option<Timestamp> {
        self.last_success
    }

    /// `1` connected, `0` reconnecting/unknown/recovering, `-1` disconnected.
    pub fn gauge(&self) -> i64 {
        match self.state {
            State::Connected => 1,
            State::Disconnected { .. } => -1,
            _ => 0,
        }
    }

    pub fn is_disconnected(&self) -> bool {
        matches!(
            self.state,
            State::Disconnected { .. } | State::Recovering { .. }
        )
    }

    pub fn success(&mut self, now: Timestamp) -> Transition {
        self.last_success = Some(now);
        let (next, t) = match self.state {
            State::Unknown | State::Connected | State::Reconnecting { .. } => {
                (State::Connected, Transition::None)
            }
            State::Disconnected { .. } => (State::Recovering { since: now }, Transition::None),
            State::Recovering { since } => {
                if elapsed(since, now) >= self.windows.recover_after {
                    (State::Connected, Transition::Restored)
                } else {
                    (State::Recovering { since }, Transition::None)
                }
            }
        };
        if next == State::Connected {
            self.last_error = None;
        }
        self.state = next;
        t
    }

    pub fn failure(&mut self, now: Timestamp, error: impl Into<String>) -> Transition {
        self.last_error = Some(error.into());
        let (next, t) = match self.state {
            State::Unknown | State::Connected => {
                (State::Reconnecting { since: now }, Transition::None)
            }
            State::Reconnecting { since } => {
                if elapsed(since, now) >= self.windows.disconnect_after {
                    (State::Disconnected { since: now }, Transition::Lost)
                } else {
                    (State::Reconnecting { since }, Transition::None)
                }
            }
            State::Disconnected { since } => (State::Disconnected { since }, Transition::None),
            // A failure during recovery restarts the recovery window.
            State::Recovering { .. } => (State::Disconnected { since: now }, Transition::None),
        };
        self.state = next;
        t
    }

    /// Re-evaluates time-based transitions without a new round trip (a reconcile tick).
    pub fn tick(&mut self, now: Timestamp) -> Transition {
        match self.state {
            State::Reconnecting { since }
                if elapsed(since, now) >= self.windows.disconnect_after =>
            {
                self.state = State::Disconnected { since: now };
                Transition::Lost
            }
            State::Recovering { since } if elapsed(since, now) >= self.windows.recover_after => {
                self.state = State::Connected;
                self.last_error = None;
                Transition::Restored
            }
            _ => Transition::None,
        }
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn failures_need_the_grace_period_to_disconnect() {
        let mut c = Connectivity::new(Windows::default());
        assert_eq!(c.success(at(0)), Transition::None);
        assert_eq!(c.gauge(), 1);
        assert_eq!(c.failure(at(10), "refused"), Transition::None);
        assert_eq!(c.state(), State::Reconnecting { since: at(10) });
        assert_eq!(c.gauge(), 0);
        assert_eq!(c.failure(at(200), "refused"), Transition::None);
        // A success inside the window goes straight back to Connected.
        assert_eq!(c.success(at(250)), Transition::None);
        assert_eq!(c.state(), State::Connected);
        c.failure(at(300), "refused");
        assert_eq!(c.failure(at(600), "refused"), Transition::Lost);
        assert_eq!(c.gauge(), -1);
        assert!(c.is_disconnected());
        assert_eq!(c.last_error(), Some("refused"));
    }

    #[test]
    fn throttling_is_visible_while_other_round_trips_succeed() {
        let mut c = Connectivity::new(Windows::default());
        c.success(at(0));
        c.throttle(at(0), Duration::from_secs(300));
        c.success(at(10));
        assert_eq!(c.state(), State::Connected);
        assert_eq!(c.throttled_until(at(10)), Some(at(300)));
        assert_eq!(c.throttled_until(at(300)), None);
    }

    #[test]
    fn recovery_must_hold_for_a_minute() {
        let mut c = Connectivity::new(Windows::default());
        c.failure(at(0), "x");
        assert_eq!(c.tick(at(301)), Transition::Lost);
        assert_eq!(c.success(at(400)), Transition::None);
        assert!(c.is_disconnected());
        assert_eq!(c.success(at(430)), Transition::None);
        // Flap: failure restarts the window.
        assert_eq!(c.failure(at(440), "x"), Transition::None);
        assert_eq!(c.success(at(450)), Transition::None);
        assert_eq!(c.success(at(500)), Transition::None);
        assert_eq!(c.success(at(511)), Transition::Restored);
        assert_eq!(c.state(), State::Connected);
        assert_eq!(c.last_error(), None);
        // tick() can complete a recovery too.
        c.failure(at(600), "x");
        c.tick(at(1000));
        c.success(at(1001));
        assert_eq!(c.tick(at(1062)), Transition::Restored);
    }
}
