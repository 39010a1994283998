//! Suspicion timing: how long a suspect has to refute, shortened by each confirmation.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

/// memberlist's `suspicionTimeout` (util.go): `mult × max(1, log10(max(1, n))) × interval`,
/// with the node scale truncated to thousandths as Go's integer `Duration` maths does.
pub fn suspicion_timeout(suspicion_mult: u32, n: usize, interval: Duration) -> Duration {
    let node_scale = (n.max(1) as f64).log10().max(1.0);
    let scale_milli = (node_scale * 1000.0) as u128;
    let nanos = u128::from(suspicion_mult) * scale_milli * interval.as_nanos() / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The overall suspicion timeout (from the start of suspicion) after `n` of `k` wanted
/// confirmations: memberlist's `remainingSuspicionTime` plus the elapsed time it subtracts.
/// It shrinks logarithmically from `max` (no confirmation) to `min` (k confirmations).
pub fn suspicion_total_timeout(n: u32, k: u32, min: Duration, max: Duration) -> Duration {
    if k == 0 {
        return min;
    }
    let frac = (f64::from(n) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let raw = max.as_secs_f64() - frac * (max.as_secs_f64() - min.as_secs_f64());
    let millis = (1000.0 * raw).floor().max(0.0) as u64;
    Duration::from_millis(millis).max(min)
}

/// memberlist's `suspicion` (suspicion.go): a timer that starts at `max` and is driven
/// towards `min` by independent confirmations.
#[derive(Debug, Clone)]
pub(super) struct Suspicion {
    k: u32,
    pub(super) n: u32,
    min: Duration,
    max: Duration,
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    /// Who already confirmed (the accuser included, as `newSuspicion` does).
    confirmations: BTreeSet<String>,
}

impl Suspicion {
    /// `newSuspicion`: the max timeout, or the min when no confirmations are expected.
    pub(super) fn new(from: &str, k: u32, min: Duration, max: Duration, now: Instant) -> Self {
        let timeout = if k < 1 { min } else { max };
        Suspicion {
            k,
            n: 0,
            min,
            max,
            start: now,
            deadline: now + timeout,
            confirmations: BTreeSet::from([from.to_string()]),
        }
    }

    /// `Confirm`: returns true when this was a new confirmation (worth re-gossiping).
    pub(super) fn confirm(&mut self, from: &str) -> bool {
        if self.n >= self.k || self.confirmations.contains(from) {
            return false;
        }
        self.confirmations.insert(from.to_string());
        self.n += 1;
        self.deadline = self.start + suspicion_total_timeout(self.n, self.k, self.min, self.max);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::Message;
    use crate::cluster::swim::test_support::*;
    use crate::cluster::swim::{MemberEvent, MemberState, Output, Swim};

    #[test]
    fn suspicion_timeout_matches_memberlist() {
        let sec = Duration::from_secs(1);
        // DefaultLANConfig: SuspicionMult 4, ProbeInterval 1 s.
        assert_eq!(suspicion_timeout(4, 1, sec), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 10, sec), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 50, sec), Duration::from_millis(6792));
        // memberlist's TestSuspicionTimeout table (mult 3, divided by 3).
        for (n, ms) in [
            (5, 1000),
            (10, 1000),
            (50, 1698),
            (100, 2000),
            (500, 2698),
            (1000, 3000),
        ] {
            assert_eq!(
                suspicion_timeout(3, n, sec) / 3,
                Duration::from_millis(ms),
                "n = {n}"
            );
        }
        // Max is SuspicionMaxTimeoutMult (6) × min.
        assert_eq!(
            suspicion_timeout(4, 50, sec) * 6,
            Duration::from_millis(40_752)
        );
    }

    #[test]
    fn confirmations_shorten_the_suspicion_timeout() {
        // memberlist's TestSuspicion_remainingSuspicionTime (k 3, 2 s .. 30 s) + elapsed.
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(30));
        let total = |n| suspicion_total_timeout(n, 3, min, max);
        assert_eq!(total(0), Duration::from_secs(30));
        assert_eq!(total(1), Duration::from_secs(16));
        assert_eq!(total(2), Duration::from_millis(7810));
        assert_eq!(total(3), min);
        assert_eq!(total(4), min);

        // Through the state machine: 50 known nodes, k = 2, min 6.792 s, max 40.752 s.
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 50, now);
        let accuse = |from: &str| Message::Suspect(suspect(1, "n2", from));
        s.handle_packet(addr(3), vec![accuse("n3")], now);
        let deadline = |s: &Swim| s.suspicions["n2"].deadline - now;
        assert_eq!(deadline(&s), Duration::from_millis(40_752));
        s.handle_packet(addr(3), vec![accuse("n3")], now); // the accuser never confirms
        assert_eq!(deadline(&s), Duration::from_millis(40_752));
        s.handle_packet(addr(4), vec![accuse("n4")], now);
        assert_eq!(deadline(&s), Duration::from_millis(19_325));
        s.handle_packet(addr(5), vec![accuse("n5")], now);
        assert_eq!(deadline(&s), Duration::from_millis(6792));

        // The timer fires into a dead declaration.
        let out = s.tick(now + Duration::from_millis(6792));
        assert!(out.contains(&Output::Event(MemberEvent::Died("n2".into()))));
        assert_eq!(member(&s.members(), "n2").state, MemberState::Dead);
    }

    #[test]
    fn suspicion_of_a_newer_incarnation_restarts_the_timer() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 50, now);
        let accuse = |inc: u32, from: &str| Message::Suspect(suspect(inc, "n2", from));
        s.handle_packet(addr(3), vec![accuse(1, "n3"), accuse(1, "n4")], now);
        assert_eq!(
            s.suspicions["n2"].deadline - now,
            Duration::from_millis(19_325)
        );
        // n2 refuted (we missed it) and is suspected again at incarnation 2: a fresh round,
        // not a confirmation that would fire our stale timer at once.
        let later = now + Duration::from_secs(20);
        s.handle_packet(addr(5), vec![accuse(2, "n5")], later);
        assert_eq!(
            s.suspicions["n2"].deadline - later,
            Duration::from_millis(40_752)
        );
        assert_eq!(member(&s.members(), "n2").incarnation, 2);
        s.tick(later + Duration::from_millis(10));
        assert_eq!(member(&s.members(), "n2").state, MemberState::Suspect);
    }
}
