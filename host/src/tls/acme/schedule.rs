//! When to order: right away without a certificate, `renew_before` ahead of the end of
//! the one served (a third of its lifetime ahead for short-lived ones), and after a
//! failure an exponential backoff with jitter. Pure: times are passed in.

use std::time::Duration;

use crate::policy::retry::backoff_ceiling;

/// A certificate's validity, seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// The renewal and retry settings of `[tls.acme]`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub renew_before: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Schedule {
    /// When a certificate is renewed (epoch seconds): `renew_before` before it ends,
    /// but never more than a third of its lifetime before (a 6-day certificate is
    /// renewed with 2 days left, a 90-day one with 30).
    pub fn renew_at(&self, cert: Validity) -> u64 {
        let lifetime = cert.not_after.saturating_sub(cert.not_before);
        let ahead = self.renew_before.as_secs().min(lifetime / 3);
        cert.not_after - ahead
    }

    /// How long to wait from `now` before the next order: until `retry_at` after a
    /// failure, else until the served certificate's renewal time, else not at all.
    pub fn wait(&self, now: u64, served: Option<Validity>, retry_at: Option<u64>) -> Duration {
        let due = match (retry_at, served) {
            (Some(at), _) => at,
            (None, Some(cert)) => self.renew_at(cert),
            (None, None) => return Duration::ZERO,
        };
        Duration::from_secs(due.saturating_sub(now))
    }

    /// The wait after the `failures`-th failure in a row (1-based): `retry_min`
    /// doubling per failure up to `retry_max`, of which the upper half is random
    /// (`jitter` in [0, 1)), so gateways that failed together do not retry together,
    /// yet none retries sooner than half the step.
    pub fn retry_delay(&self, failures: u32, jitter: f64) -> Duration {
        let ceiling = backoff_ceiling(self.retry_min, self.retry_max, failures);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn schedule() -> Schedule {
        Schedule {
            renew_before: Duration::from_secs(30 * DAY),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
        }
    }

    fn valid(from: u64, days: u64) -> Validity {
        Validity {
            not_before: from,
            not_after: from + days * DAY,
        }
    }

    #[test]
    fn a_long_lived_certificate_is_renewed_renew_before_its_end() {
        let s = schedule();
        let t0 = 1_700_000_000;
        assert_eq!(s.renew_at(valid(t0, 90)), t0 + 60 * DAY);
        assert_eq!(s.renew_at(valid(t0, 365)), t0 + 335 * DAY);
        // Waiting from issuance: 60 days; once due, no wait.
        assert_eq!(
            s.wait(t0, Some(valid(t0, 90)), None),
            Duration::from_secs(60 * DAY)
        );
        assert_eq!(
            s.wait(t0 + 61 * DAY, Some(valid(t0, 90)), None),
            Duration::ZERO
        );
    }

    #[test]
    fn a_short_lived_certificate_is_renewed_a_third_of_its_life_ahead() {
        let s = schedule();
        let t0 = 1_700_000_000;
        assert_eq!(s.renew_at(valid(t0, 6)), t0 + 4 * DAY);
        let minute = Validity {
            not_before: t0,
            not_after: t0 + 30,
        };
        assert_eq!(s.renew_at(minute), t0 + 20);
        // Nonsense validity (ends before it starts): due at its end, no underflow.
        let odd = Validity {
            not_before: t0 + 10,
            not_after: t0,
        };
        assert_eq!(s.renew_at(odd), t0);
    }

    #[test]
    fn without_a_certificate_the_order_is_due_now_and_a_failure_waits_for_its_retry() {
        let s = schedule();
        let t0 = 1_700_000_000;
        assert_eq!(s.wait(t0, None, None), Duration::ZERO);
        assert_eq!(s.wait(t0, None, Some(t0 + 90)), Duration::from_secs(90));
        // A failed renewal waits for its retry even though renewal is due.
        let due = valid(t0 - 80 * DAY, 90);
        assert_eq!(s.wait(t0, Some(due), Some(t0 + 5)), Duration::from_secs(5));
        assert_eq!(s.wait(t0, Some(due), Some(t0 - 5)), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half_up_to_the_cap() {
        let s = schedule();
        for (failures, ceiling) in [
            (1, 60),
            (2, 120),
            (3, 240),
            (6, 1920),
            (9, 15_360),
            (10, 6 * 3600),
        ] {
            let low = s.retry_delay(failures, 0.0);
            let high = s.retry_delay(failures, 0.999_999);
            assert_eq!(low, Duration::from_secs(ceiling / 2), "failure {failures}");
            assert!(high <= Duration::from_secs(ceiling), "failure {failures}");
            assert!(
                high > Duration::from_secs(ceiling) * 99 / 100,
                "failure {failures}"
            );
        }
        // Far past the cap (no overflow), jitter out of range clamped.
        assert_eq!(s.retry_delay(1000, 2.0), Duration::from_secs(6 * 3600));
        assert_eq!(s.retry_delay(u32::MAX, -1.0), Duration::from_secs(3 * 3600));
    }
}
