//! Target health: the verdict of active probes and passive outlier ejection, as a
//! state machine with time passed in (the probe tasks live in `upstream::probe`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;

/// Whether a target may get traffic. Lives in `TargetStats`, so it survives reloads.
/// Reads are lock-free (every pick reads it); only outcome recording with outlier
/// detection on takes the lock.
#[derive(Debug)]
pub struct TargetHealth {
    /// Origin of `ejected_until_ms`.
    base: Instant,
    /// False after `unhealthy_threshold` failed probes, until `healthy_threshold` pass.
    active_ok: AtomicBool,
    /// Milliseconds since `base` until which the target is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    passive: Mutex<Passive>,
    /// Probe results in a row (passes, failures) and when the last probe ran (ms since
    /// `base`, plus one; 0 = never). Kept here, not in the probe task, because every snapshot
    /// rebuild (a reload, a registry change) restarts the tasks: the runs and the
    /// schedule carry over instead of starting again.
    probe_passes: AtomicU32,
    probe_failures: AtomicU32,
    last_probe_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Passive {
    consecutive_failures: u32,
    /// Ejections in a row: each doubles the next one.
    ejections: u32,
    last_ejection_end: Option<Instant>,
}

impl Default for TargetHealth {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            active_ok: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            passive: Mutex::new(Passive::default()),
            probe_passes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            last_probe_ms: AtomicU64::new(0),
        }
    }
}

impl TargetHealth {
    /// Healthy by the probes and not ejected.
    pub fn is_serving(&self, now: Instant) -> bool {
        self.active_ok() && self.ejected_for(now).is_none()
    }

    pub fn active_ok(&self) -> bool {
        self.active_ok.load(Ordering::Relaxed)
    }

    /// Sets the probes' verdict; returns whether it changed.
    pub fn set_active(&self, ok: bool) -> bool {
        self.active_ok.swap(ok, Ordering::Relaxed) != ok
    }

    /// Time left in the current ejection, if any.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now_ms = self.ms_since_base(now);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// Records a real request's outcome for outlier detection. Returns the ejection
    /// length when this failure ejected the target.
    pub fn record(&self, success: bool, spec: &OutlierConfig, now: Instant) -> Option<Duration> {
        let mut p = self.passive.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            p.consecutive_failures = 0;
            return None;
        }
        p.consecutive_failures = p.consecutive_failures.saturating_add(1);
        if p.consecutive_failures < spec.consecutive_failures.max(1)
            || self.ejected_for(now).is_some()
        {
            return None;
        }
        let max = Duration::from_millis(spec.max_ejection_ms);
        // A target that stayed in service for a whole max_ejection period starts over
        // at the base length: old trouble should not lengthen a new ejection.
        if p.last_ejection_end
            .is_some_and(|end| now.saturating_duration_since(end) > max)
        {
            p.ejections = 0;
        }
        let factor = 1u64 << p.ejections.min(20);
        let length = Duration::from_millis(spec.base_ejection_ms.saturating_mul(factor)).min(max);
        p.ejections = p.ejections.saturating_add(1);
        p.consecutive_failures = 0;
        p.last_ejection_end = Some(now + length);
        let until = self.ms_since_base(now + length).max(1);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        Some(length)
    }

    /// Counts one probe result; returns the runs of passes and failures so far.
    pub fn record_probe(&self, passed: bool, now: Instant) -> (u32, u32) {
        // Stored plus one, so that 0 keeps meaning "never probed".
        self.last_probe_ms
            .store(self.ms_since_base(now) + 1, Ordering::Relaxed);
        let (bump, reset) = if passed {
            (&self.probe_passes, &self.probe_failures)
        } else {
            (&self.probe_failures, &self.probe_passes)
        };
        reset.store(0, Ordering::Relaxed);
        let run = bump.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if passed { (run, 0) } else { (0, run) }
    }

    /// When the next probe is due, continuing the schedule of an earlier probe task.
    pub fn next_probe(&self, interval: Duration, now: Instant) -> Instant {
        match self.last_probe_ms.load(Ordering::Relaxed) {
            0 => now,
            stored => (self.base + Duration::from_millis(stored - 1) + interval).max(now),
        }
    }

    /// Forgets passive state (outlier detection was turned off).
    pub fn clear_ejection(&self) {
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        *self.passive.lock().unwrap_or_else(|e| e.into_inner()) = Passive::default();
    }

    fn ms_since_base(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 5_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_doubling_backoff() {
        let h = TargetHealth::default();
        let t0 = Instant::now();
        assert!(h.is_serving(t0));
        assert_eq!(h.record(false, &spec(), t0), None);
        assert_eq!(
            h.record(true, &spec(), t0),
            None,
            "a success resets the run"
        );
        assert_eq!(h.record(false, &spec(), t0), None);
        assert_eq!(h.record(false, &spec(), t0), None);
        assert_eq!(h.record(false, &spec(), t0), Some(Duration::from_secs(1)));
        assert!(!h.is_serving(t0 + Duration::from_millis(999)));
        let back = t0 + Duration::from_millis(1_001);
        assert!(h.is_serving(back));
        for _ in 0..2 {
            h.record(false, &spec(), back);
        }
        assert_eq!(h.record(false, &spec(), back), Some(Duration::from_secs(2)));
        let mut t = back + Duration::from_secs(3);
        for expected in [4, 5, 5] {
            for _ in 0..2 {
                h.record(false, &spec(), t);
            }
            assert_eq!(
                h.record(false, &spec(), t),
                Some(Duration::from_secs(expected)),
                "capped at max_ejection_ms"
            );
            t += Duration::from_secs(expected + 1);
        }
        // In service for longer than max_ejection_ms: the next ejection starts over.
        t += Duration::from_secs(10);
        for _ in 0..2 {
            h.record(false, &spec(), t);
        }
        assert_eq!(h.record(false, &spec(), t), Some(Duration::from_secs(1)));
        h.clear_ejection();
        assert!(h.is_serving(t));
    }

    #[tokio::test(start_paused = true)]
    async fn probe_runs_and_schedule_survive_a_new_probe_task() {
        let h = TargetHealth::default();
        let interval = Duration::from_secs(2);
        let t0 = Instant::now();
        assert_eq!(h.next_probe(interval, t0), t0, "never probed: probe now");
        assert_eq!(h.record_probe(false, t0), (0, 1));
        assert_eq!(h.record_probe(false, t0), (0, 2));
        // A task started 500 ms later (a rebuild) continues the run and the schedule.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(h.next_probe(interval, later), t0 + interval);
        assert_eq!(h.record_probe(false, later), (0, 3));
        assert_eq!(
            h.record_probe(true, later),
            (1, 0),
            "a pass ends the failure run"
        );
        assert_eq!(
            h.next_probe(interval, later + Duration::from_secs(10)),
            later + Duration::from_secs(10)
        );
    }

    #[test]
    fn active_verdict_gates_traffic() {
        let h = TargetHealth::default();
        let now = Instant::now();
        assert!(h.set_active(false));
        assert!(!h.set_active(false), "no change the second time");
        assert!(!h.is_serving(now));
        assert!(h.set_active(true));
        assert!(h.is_serving(now));
    }
}
