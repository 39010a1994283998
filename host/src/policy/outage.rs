//! Whether a remote system (Redis, a discovery provider) is reachable, as a plain state
//! machine: each call's outcome goes in with the time, and out come the transitions to
//! log (once each, not once per failed call) and how long to wait before trying again.

use std::time::Duration;

use tokio::time::Instant;

/// What the gateway knows of a remote system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not asked yet.
    Unknown,
    Up,
    /// Failing since `since`, `failures` calls in a row.
    Down {
        since: Instant,
        failures: u32,
    },
}

/// A change worth one log line and one metric increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// First success, or the first success after failures.
    Up { was_down_for: Option<Duration> },
    /// First failure after success (or at start).
    Down,
}

/// Reachability with exponential back-off while down.
#[derive(Debug, Clone)]
pub struct Outage {
    health: Health,
    base: Duration,
    max: Duration,
}

impl Outage {
    /// Retries start `base` after the first failure and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            health: Health::Unknown,
            base,
            max: max.max(base),
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn is_up(&self) -> bool {
        self.health == Health::Up
    }

    /// A call succeeded.
    pub fn success(&mut self, now: Instant) -> Option<Transition> {
        let transition = match self.health {
            Health::Up => None,
            Health::Unknown => Some(Transition::Up { was_down_for: None }),
            Health::Down { since, .. } => Some(Transition::Up {
                was_down_for: Some(now.saturating_duration_since(since)),
            }),
        };
        self.health = Health::Up;
        transition
    }

    /// A call failed (error or timeout).
    pub fn failure(&mut self, now: Instant) -> Option<Transition> {
        match &mut self.health {
            Health::Down { failures, .. } => {
                *failures = failures.saturating_add(1);
                None
            }
            _ => {
                self.health = Health::Down {
                    since: now,
                    failures: 1,
                };
                Some(Transition::Down)
            }
        }
    }

    /// How long to wait before the next try: zero while up, else `base` doubled per
    /// failure after the first, at most `max`.
    pub fn retry_in(&self) -> Duration {
        match self.health {
            Health::Down { failures, .. } => {
                let doublings = failures.saturating_sub(1).min(20);
                self.base.saturating_mul(1 << doublings).min(self.max)
            }
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_are_reported_once_and_back_off_doubles() {
        let mut o = Outage::new(ms(100), ms(1000));
        let t0 = Instant::now();
        assert_eq!(o.health(), Health::Unknown);
        assert_eq!(o.failure(t0), Some(Transition::Down));
        assert_eq!(o.retry_in(), ms(100));
        for expected in [200, 400, 800, 1000, 1000] {
            assert_eq!(o.failure(t0), None, "a second failure is not a transition");
            assert_eq!(o.retry_in(), ms(expected));
        }
        tokio::time::advance(ms(2500)).await;
        assert_eq!(
            o.success(Instant::now()),
            Some(Transition::Up {
                was_down_for: Some(ms(2500))
            })
        );
        assert!(o.is_up());
        assert_eq!(o.retry_in(), Duration::ZERO);
        assert_eq!(o.success(Instant::now()), None);
        assert_eq!(o.failure(Instant::now()), Some(Transition::Down));
        assert_eq!(
            o.retry_in(),
            ms(100),
            "back-off starts over after a recovery"
        );
    }

    #[test]
    fn a_first_success_is_a_transition_without_downtime() {
        let mut o = Outage::new(ms(1), ms(2));
        assert_eq!(
            o.success(Instant::now()),
            Some(Transition::Up { was_down_for: None })
        );
    }
}
