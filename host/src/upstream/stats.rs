//! A target's live counters (in flight, requests, failures), health and breaker: state
//! kept across reloads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::policy::breaker::{BreakerSpec, CircuitBreaker};
use crate::policy::health::TargetHealth;

/// Live counters of one target. Kept across config reloads (keyed by URL) so in-flight
/// counts stay right while old and new snapshots both send traffic.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub health: TargetHealth,
    /// Kept here (not in the snapshot) so a reload does not close an open circuit.
    breaker: Mutex<Option<Arc<CircuitBreaker>>>,
}

impl TargetStats {
    /// Installs, updates (state kept) or removes the target's breaker.
    pub(super) fn set_breaker(
        &self,
        spec: Option<BreakerSpec>,
        label: &str,
    ) -> Option<Arc<CircuitBreaker>> {
        let mut slot = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        *slot = match (spec, slot.take()) {
            (None, _) => None,
            (Some(spec), Some(existing)) => {
                existing.set_spec(spec);
                Some(existing)
            }
            (Some(spec), None) => Some(Arc::new(CircuitBreaker::new(spec, Arc::from(label)))),
        };
        slot.clone()
    }
}

/// Decrements a target's in-flight count when the request is over, however it ends.
#[derive(Debug)]
pub struct InFlight(Arc<TargetStats>);

impl InFlight {
    pub fn start(stats: &Arc<TargetStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }

    pub fn failed(&self) {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
