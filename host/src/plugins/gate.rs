//! One plugin's guard, shared by all its versions and configs: how many of its calls
//! may run at once, how many instances and idle bytes it may keep, and a breaker that
//! stops calling a plugin whose calls keep timing out or trapping.
//!
//! These are what keep one plugin from hurting the gateway: a plugin that never returns
//! gets at most `max_concurrent_calls` calls running (the rest wait for a slot, at most
//! `timeout_ms` and at most `MAX_WAITING` of them, costing no CPU), and after a few
//! failures its breaker opens and it is not called at all for a cool-off period, so it
//! cannot burn the worker the other routes share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::call::{CallError, Limits};
use crate::policy::breaker::{BreakerPermit, BreakerSpec, BreakerState, CircuitBreaker};

/// `plugins.breaker`: when a plugin is short-circuited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BreakerLimits {
    /// Failed calls (timeouts, traps, memory, rule violations) within `window` that open it.
    pub failures: u32,
    pub window: Duration,
    /// How long it stays open before one trial call is let through.
    pub open_for: Duration,
}

impl BreakerLimits {
    fn spec(self) -> BreakerSpec {
        BreakerSpec {
            failure_threshold: self.failures,
            window: self.window,
            open_for: self.open_for,
            half_open_requests: 1,
            success_threshold: 1,
        }
    }
}

/// Most calls of one plugin waiting for a slot at once; more are refused at once.
pub const MAX_WAITING: usize = 1024;

/// A plugin's shared guard.
#[derive(Debug)]
pub struct PluginGate {
    /// Calls running now (across versions and configs).
    in_flight: AtomicUsize,
    /// Calls waiting for a slot, and the bell a finished call rings.
    waiting: AtomicUsize,
    freed: Notify,
    /// Instances alive now (idle or in a call).
    pub(super) live: AtomicUsize,
    /// Linear-memory bytes of the idle instances kept.
    pub(super) idle_bytes: AtomicUsize,
    breaker: Arc<CircuitBreaker>,
}

impl PluginGate {
    pub fn new(name: &str, breaker: BreakerLimits) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            live: AtomicUsize::new(0),
            idle_bytes: AtomicUsize::new(0),
            breaker: Arc::new(CircuitBreaker::new(
                breaker.spec(),
                Arc::from(format!("plugin:{name}")),
            )),
        }
    }

    /// New breaker thresholds (a reload); the state is kept.
    pub fn configure(&self, breaker: BreakerLimits) {
        self.breaker.set_spec(breaker.spec());
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Lets one call in: at once if the plugin runs fewer than `max_concurrent` calls,
    /// else after waiting (no CPU) for a running call to finish, at most `timeout_ms`.
    /// Refused at once while the breaker is open, or when `MAX_WAITING` calls wait.
    pub async fn admit(self: &Arc<Self>, limits: &Limits) -> Result<GatePermit, CallError> {
        match self.try_admit(limits) {
            Err(CallError::Busy) => {}
            other => return other,
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(CallError::Busy);
        }
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms.max(1));
        let admitted = loop {
            // Registered before the retry, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_admit(limits) {
                Err(CallError::Busy) => {}
                other => break other,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(CallError::Busy);
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        admitted
    }

    /// Lets one call in now, or says why not: the breaker is open, or the plugin
    /// already runs `max_concurrent` calls.
    pub fn try_admit(self: &Arc<Self>, limits: &Limits) -> Result<GatePermit, CallError> {
        let breaker = self.breaker.try_acquire().ok_or(CallError::CircuitOpen)?;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limits.max_concurrent.max(1) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // Dropping the breaker permit unreported releases it without counting.
            return Err(CallError::Busy);
        }
        Ok(GatePermit {
            gate: self.clone(),
            breaker: Some(breaker),
        })
    }

    /// Reserves room for one more instance, or says the budget is spent.
    pub(super) fn reserve_instance(&self, limits: &Limits) -> Result<(), CallError> {
        let max = limits.max_instances.max(1);
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| CallError::NoInstance(max))
    }
}

/// One admitted call. Report its outcome with `done`; the running count drops with it.
#[derive(Debug)]
pub struct GatePermit {
    gate: Arc<PluginGate>,
    breaker: Option<BreakerPermit>,
}

impl GatePermit {
    /// Feeds the breaker: the failures that say the plugin itself is broken count.
    pub fn done<T>(mut self, outcome: &Result<T, CallError>) {
        let Some(breaker) = self.breaker.take() else {
            return;
        };
        match outcome {
            Ok(_) => breaker.success(),
            Err(e) if e.is_plugin_fault() => breaker.failure(),
            // Not the plugin's doing (no instance, init of another config...): neither.
            Err(_) => drop(breaker),
        }
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gate.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: usize) -> Limits {
        Limits {
            max_concurrent,
            max_instances: 2,
            timeout_ms: 50,
            ..Limits::default()
        }
    }

    fn breaker() -> BreakerLimits {
        BreakerLimits {
            failures: 2,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_limit_wait_for_a_slot_at_most_their_time_limit() {
        let gate = Arc::new(PluginGate::new("p", breaker()));
        let first = gate.admit(&limits(2)).await.unwrap();
        let _second = gate.admit(&limits(2)).await.unwrap();
        assert_eq!(gate.try_admit(&limits(2)).unwrap_err(), CallError::Busy);
        // A third waits; the first finishing lets it in.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(&limits(2)).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.done::<()>(&Ok(()));
        assert_eq!(
            waiter.await.unwrap(),
            Ok(()),
            "a finished call frees its slot"
        );
        // With every slot held, a wait ends at the time limit.
        let _third = gate.admit(&limits(2)).await.unwrap();
        let started = Instant::now();
        assert_eq!(gate.admit(&limits(2)).await.unwrap_err(), CallError::Busy);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_calls_open_the_breaker_for_a_cool_off() {
        let gate = Arc::new(PluginGate::new("p", breaker()));
        for _ in 0..2 {
            let permit = gate.try_admit(&limits(4)).unwrap();
            permit.done::<()>(&Err(CallError::Timeout));
        }
        assert_eq!(
            gate.try_admit(&limits(4)).unwrap_err(),
            CallError::CircuitOpen
        );
        assert_eq!(gate.breaker_state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(6)).await;
        let trial = gate
            .try_admit(&limits(4))
            .expect("one trial after the cool-off");
        trial.done::<()>(&Ok(()));
        assert_eq!(gate.breaker_state(), BreakerState::Closed);
        // A busy refusal is not the plugin's fault: it does not count.
        let _a = gate.try_admit(&limits(1)).unwrap();
        for _ in 0..5 {
            assert_eq!(gate.try_admit(&limits(1)).unwrap_err(), CallError::Busy);
        }
        assert_eq!(gate.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn the_instance_budget_is_a_hard_cap() {
        let gate = PluginGate::new("p", breaker());
        assert!(gate.reserve_instance(&limits(1)).is_ok());
        assert!(gate.reserve_instance(&limits(1)).is_ok());
        assert_eq!(
            gate.reserve_instance(&limits(1)).unwrap_err(),
            CallError::NoInstance(2)
        );
    }
}
