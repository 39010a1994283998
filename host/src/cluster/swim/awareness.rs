//! Lifeguard's local health score (awareness.go), which stretches our probe timing.

use std::time::Duration;

/// memberlist's `awareness` (Lifeguard local health): 0 is healthy, `max - 1` worst.
#[derive(Debug, Clone)]
pub(super) struct Awareness {
    pub(super) max: u32,
    pub(super) score: u32,
}

impl Awareness {
    /// `ApplyDelta`: clamp to `[0, max - 1]`.
    pub(super) fn apply_delta(&mut self, delta: i64) {
        let top = i64::from(self.max.saturating_sub(1));
        let score = (i64::from(self.score) + delta).clamp(0, top);
        self.score = u32::try_from(score).unwrap_or(0);
    }

    /// `ScaleTimeout`: `timeout × (score + 1)`.
    pub(super) fn scale(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.score + 1)
    }
}
