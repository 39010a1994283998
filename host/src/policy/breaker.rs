//! Circuit breaker per upstream target: a pure state machine plus a shared, logging wrapper.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A breaker's thresholds, as configured for an upstream group.
///
/// The counts are clamped at use: a `failure_threshold`, `half_open_requests` or
/// `success_threshold` of 0 is treated as 1, so a config typo cannot wedge the breaker
/// (a threshold of 0 would otherwise open on nothing or never admit a trial).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSpec {
    /// Failures within `window` that open the circuit (0 is treated as 1).
    pub failure_threshold: u32,
    /// How far back failures count; a failure exactly `window` old still counts.
    pub window: Duration,
    /// How long the circuit stays open before it lets trial requests through.
    pub open_for: Duration,
    /// Most trial requests in flight at once while half-open (0 is treated as 1).
    pub half_open_requests: u32,
    /// Trial successes in a row that close the circuit again (0 is treated as 1).
    pub success_threshold: u32,
}

impl BreakerSpec {
    fn failure_threshold(&self) -> usize {
        usize::try_from(self.failure_threshold.max(1)).unwrap_or(usize::MAX)
    }

    fn half_open_requests(&self) -> u32 {
        self.half_open_requests.max(1)
    }

    fn success_threshold(&self) -> u32 {
        self.success_threshold.max(1)
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow; failures are being counted.
    Closed,
    /// Requests are refused until `open_for` has elapsed.
    Open,
    /// A few trial requests probe whether the target has recovered.
    HalfOpen,
}

impl BreakerState {
    /// The state's name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The state as a gauge value, ordered by severity: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// What a request was admitted as; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    trial: bool,
    epoch: u64,
}

/// The pure state machine; the caller supplies the time.
///
/// Every transition starts a new epoch, and an outcome is only counted if its request was
/// admitted in the current epoch. Requests are slow compared to state changes, so without
/// this a request admitted while closed but finishing after the circuit went half-open
/// would be taken for a trial, and could close the circuit (or re-open it) on the strength
/// of a request that never probed the recovered target. Stale outcomes are dropped whole,
/// failures included: the circuit already reacted to the period they belong to.
#[derive(Debug, Clone)]
pub struct Breaker {
    spec: BreakerSpec,
    state: BreakerState,
    epoch: u64,
    /// Closed only: times of recent failures, oldest first, never longer than the threshold.
    failures: VecDeque<Instant>,
    /// Open only. Kept as a start rather than an end so a reload of `open_for` applies to
    /// the current open period, and so a huge `open_for` cannot overflow an `Instant`.
    opened_at: Option<Instant>,
    /// Half-open only: trial slots taken and trial successes so far.
    trials_in_flight: u32,
    trial_successes: u32,
    /// The last transition, for the shared wrapper to log outside its lock.
    transition: Option<(BreakerState, BreakerState)>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: BreakerSpec) -> Self {
        Breaker {
            spec,
            state: BreakerState::Closed,
            epoch: 0,
            failures: VecDeque::new(),
            opened_at: None,
            trials_in_flight: 0,
            trial_successes: 0,
            transition: None,
        }
    }

    /// Config reload: new thresholds, current state kept.
    ///
    /// In-flight admissions stay valid. A lower threshold takes effect at the next outcome
    /// (e.g. the next failure opens the circuit if enough are already on record), and a new
    /// `open_for` applies to the current open period.
    pub fn set_spec(&mut self, spec: BreakerSpec) {
        self.spec = spec;
        let keep = self.spec.failure_threshold();
        while self.failures.len() > keep {
            self.failures.pop_front();
        }
    }

    /// The thresholds as configured (before clamping).
    pub fn spec(&self) -> &BreakerSpec {
        &self.spec
    }

    /// Current state; Open becomes HalfOpen once open_for has elapsed.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open
            && self
                .opened_at
                .is_some_and(|at| now.saturating_duration_since(at) >= self.spec.open_for)
        {
            self.transition_to(BreakerState::HalfOpen, now);
        }
        self.state
    }

    /// Would a request be admitted now? Takes no slot (the balancer uses this to skip targets).
    pub fn can_admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.trials_in_flight < self.spec.half_open_requests(),
        }
    }

    /// Admits a request (taking a half-open trial slot if half-open) or refuses it.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        if !self.can_admit(now) {
            return None;
        }
        let trial = self.state == BreakerState::HalfOpen;
        if trial {
            self.trials_in_flight += 1;
        }
        Some(Admission {
            trial,
            epoch: self.epoch,
        })
    }

    /// Reports the outcome of an admitted request.
    ///
    /// Outcomes from an earlier epoch are ignored (see the type's docs).
    pub fn record(&mut self, now: Instant, admission: Admission, success: bool) {
        self.state(now);
        if admission.epoch != self.epoch {
            return;
        }
        match self.state {
            BreakerState::Closed => {
                if success {
                    return;
                }
                let window = self.spec.window;
                while self
                    .failures
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) > window)
                {
                    self.failures.pop_front();
                }
                self.failures.push_back(now);
                if self.failures.len() >= self.spec.failure_threshold() {
                    self.transition_to(BreakerState::Open, now);
                }
            }
            BreakerState::HalfOpen => {
                self.trials_in_flight = self.trials_in_flight.saturating_sub(1);
                if !success {
                    self.transition_to(BreakerState::Open, now);
                    return;
                }
                self.trial_successes += 1;
                if self.trial_successes >= self.spec.success_threshold() {
                    self.transition_to(BreakerState::Closed, now);
                }
            }
            // Nothing is admitted while open and opening starts a new epoch, so a
            // current-epoch admission cannot meet this state.
            BreakerState::Open => {}
        }
    }

    /// An admitted request ended without an outcome (e.g. client went away): frees its trial slot, counts nothing.
    ///
    /// A stale admission frees nothing: its slot belonged to a half-open period that has
    /// since ended, and the new period started with all its slots free.
    pub fn release(&mut self, admission: Admission) {
        if admission.trial && admission.epoch == self.epoch && self.state == BreakerState::HalfOpen
        {
            self.trials_in_flight = self.trials_in_flight.saturating_sub(1);
        }
    }

    fn transition_to(&mut self, to: BreakerState, now: Instant) {
        self.transition = Some((self.state, to));
        self.state = to;
        self.epoch = self.epoch.wrapping_add(1);
        self.failures.clear();
        self.trials_in_flight = 0;
        self.trial_successes = 0;
        self.opened_at = (to == BreakerState::Open).then_some(now);
    }
}

/// A breaker shared by all requests to one target. Logs each transition (tracing::warn for opening, info otherwise) with the target label.
#[derive(Debug)]
pub struct CircuitBreaker {
    label: Arc<str>,
    inner: Mutex<Breaker>,
}

impl CircuitBreaker {
    /// A closed breaker for the target named `label` in logs.
    pub fn new(spec: BreakerSpec, label: Arc<str>) -> Self {
        CircuitBreaker {
            label,
            inner: Mutex::new(Breaker::new(spec)),
        }
    }

    /// Config reload: new thresholds, current state kept.
    pub fn set_spec(&self, spec: BreakerSpec) {
        self.with(|b, _| b.set_spec(spec));
    }

    /// Current state; Open becomes HalfOpen once open_for has elapsed.
    pub fn state(&self) -> BreakerState {
        self.with(|b, now| b.state(now))
    }

    /// Would a request be admitted now? Takes no slot.
    pub fn can_admit(&self) -> bool {
        self.with(|b, now| b.can_admit(now))
    }

    /// Admits a request, or returns `None` if the circuit refuses it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<BreakerPermit> {
        let admission = self.with(|b, now| b.admit(now))?;
        Some(BreakerPermit {
            breaker: Arc::clone(self),
            admission: Some(admission),
        })
    }

    /// Runs `f` under the lock, then logs any transition once the lock is released.
    fn with<R>(&self, f: impl FnOnce(&mut Breaker, Instant) -> R) -> R {
        let (result, transition) = {
            let mut breaker = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Read the clock under the lock so the machine sees time move forward only.
            let result = f(&mut breaker, Instant::now());
            (result, breaker.transition.take())
        };
        if let Some((from, to)) = transition {
            if to == BreakerState::Open {
                tracing::warn!(breaker = %self.label, from = from.as_str(), to = to.as_str(), "circuit breaker opened");
            } else {
                tracing::info!(breaker = %self.label, from = from.as_str(), to = to.as_str(), "circuit breaker state changed");
            }
        }
        result
    }
}

/// An admitted request's permit; report with success()/failure(). Dropped unreported = release().
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    /// `None` once reported, so `Drop` knows not to release it as well.
    admission: Option<Admission>,
}

impl BreakerPermit {
    /// The request succeeded.
    pub fn success(mut self) {
        self.report(true);
    }

    /// The request failed in a way that counts against the target.
    pub fn failure(mut self) {
        self.report(false);
    }

    fn report(&mut self, success: bool) {
        if let Some(admission) = self.admission.take() {
            self.breaker
                .with(|b, now| b.record(now, admission, success));
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.breaker.with(|b, _| b.release(admission));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            failure_threshold: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 2,
            success_threshold: 2,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fail(b: &mut Breaker, now: Instant) {
        let a = b.admit(now).expect("admitted");
        b.record(now, a, false);
    }

    /// A breaker opened at `t0 + 1s`, and the time it goes half-open.
    fn opened(t0: Instant) -> (Breaker, Instant) {
        let mut b = Breaker::new(spec());
        for _ in 0..3 {
            fail(&mut b, t0 + secs(1));
        }
        assert_eq!(b.state(t0 + secs(1)), BreakerState::Open);
        (b, t0 + secs(31))
    }

    #[test]
    fn state_names_and_gauges() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::Closed.gauge(), 0);
        assert_eq!(BreakerState::HalfOpen.gauge(), 1);
        assert_eq!(BreakerState::Open.gauge(), 2);
    }

    #[test]
    fn opens_at_exactly_the_threshold_within_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(spec());
        fail(&mut b, t0);
        fail(&mut b, t0 + secs(5));
        assert_eq!(b.state(t0 + secs(5)), BreakerState::Closed);
        // Successes in between do not reset the count.
        let a = b.admit(t0 + secs(6)).unwrap();
        b.record(t0 + secs(6), a, true);
        assert_eq!(b.state(t0 + secs(6)), BreakerState::Closed);
        // The window is inclusive: the first failure is exactly 10 s old.
        fail(&mut b, t0 + secs(10));
        assert_eq!(b.state(t0 + secs(10)), BreakerState::Open);
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(spec());
        for i in 0..10 {
            fail(&mut b, t0 + secs(6 * i));
            assert_eq!(
                b.state(t0 + secs(6 * i)),
                BreakerState::Closed,
                "failure {i}"
            );
        }
        assert!(b.failures.len() < 3);
    }

    #[test]
    fn open_refuses_until_open_for_then_half_opens() {
        let t0 = Instant::now();
        let (mut b, half_open_at) = opened(t0);
        let just_before = half_open_at - Duration::from_millis(1);
        assert!(!b.can_admit(just_before));
        assert_eq!(b.admit(just_before), None);
        assert_eq!(b.state(just_before), BreakerState::Open);
        assert_eq!(b.state(half_open_at), BreakerState::HalfOpen);
        assert!(b.can_admit(half_open_at));
    }

    #[test]
    fn half_open_limits_concurrent_trials() {
        let t0 = Instant::now();
        let (mut b, t) = opened(t0);
        let first = b.admit(t).unwrap();
        let second = b.admit(t).unwrap();
        assert!(first.trial && second.trial);
        assert!(!b.can_admit(t));
        assert_eq!(b.admit(t), None);
        // A finished trial frees its slot.
        b.record(t, first, true);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        assert!(b.admit(t).is_some());
        assert_eq!(b.admit(t), None);
    }

    #[test]
    fn success_threshold_successes_close_and_clear_failures() {
        let t0 = Instant::now();
        let (mut b, t) = opened(t0);
        let first = b.admit(t).unwrap();
        let second = b.admit(t).unwrap();
        b.record(t, first, true);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        b.record(t, second, true);
        assert_eq!(b.state(t), BreakerState::Closed);
        // Failure history starts over: two more failures are not enough.
        fail(&mut b, t);
        fail(&mut b, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        fail(&mut b, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn one_trial_failure_reopens_for_a_fresh_open_for() {
        let t0 = Instant::now();
        let (mut b, t) = opened(t0);
        let trial = b.admit(t).unwrap();
        let failed_at = t + secs(2);
        b.record(failed_at, trial, false);
        assert_eq!(b.state(failed_at), BreakerState::Open);
        let almost = failed_at + secs(30) - Duration::from_millis(1);
        assert_eq!(b.admit(almost), None);
        assert_eq!(b.state(almost), BreakerState::Open);
        assert_eq!(b.state(failed_at + secs(30)), BreakerState::HalfOpen);
    }

    #[test]
    fn release_frees_a_trial_slot_and_counts_nothing() {
        let t0 = Instant::now();
        let (mut b, t) = opened(t0);
        let first = b.admit(t).unwrap();
        let _second = b.admit(t).unwrap();
        assert!(!b.can_admit(t));
        b.release(first);
        assert!(b.can_admit(t));
        assert_eq!(b.trial_successes, 0);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(spec());
        let slow_ok = b.admit(t0).unwrap();
        let slow_err = b.admit(t0).unwrap();
        for _ in 0..3 {
            fail(&mut b, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);

        // Reported while open: counted as nothing.
        b.record(t0 + secs(1), slow_err, false);
        assert_eq!(b.state(t0 + secs(1)), BreakerState::Open);
        assert_eq!(b.state(t0 + secs(29)), BreakerState::Open);

        // Reported while half-open: neither a trial success nor a re-opening failure.
        let t = t0 + secs(30);
        let trial = b.admit(t).unwrap();
        b.record(t, slow_ok, true);
        b.record(t, slow_ok, true);
        b.record(t, slow_err, false);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        assert_eq!(b.trial_successes, 0);
        assert_eq!(b.trials_in_flight, 1);
        b.release(slow_ok);
        assert_eq!(b.trials_in_flight, 1);
        b.record(t, trial, true);
        assert_eq!(b.trials_in_flight, 0);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
    }

    #[test]
    fn stale_trials_do_not_free_or_underflow_slots() {
        let t0 = Instant::now();
        let (mut b, t) = opened(t0);
        let old_trial = b.admit(t).unwrap();
        let failing = b.admit(t).unwrap();
        b.record(t, failing, false);
        let t = t + secs(30);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        // The old trial's slot belonged to the previous half-open period.
        b.release(old_trial);
        b.record(t, old_trial, true);
        assert_eq!(b.trials_in_flight, 0);
        assert_eq!(b.trial_successes, 0);
        let a = b.admit(t).unwrap();
        let c = b.admit(t).unwrap();
        assert_eq!(b.admit(t), None);
        b.release(old_trial);
        assert_eq!(b.admit(t), None);
        b.record(t, a, true);
        b.record(t, c, true);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn set_spec_keeps_state() {
        let t0 = Instant::now();
        let (mut b, _) = opened(t0);
        let longer = BreakerSpec {
            open_for: secs(60),
            ..spec()
        };
        b.set_spec(longer.clone());
        assert_eq!(b.spec(), &longer);
        // Still open, and the new open_for applies to the current period.
        assert_eq!(b.state(t0 + secs(31)), BreakerState::Open);
        assert_eq!(b.state(t0 + secs(61)), BreakerState::HalfOpen);

        // Failures on record survive a reload; a lower threshold applies at the next one.
        let mut b = Breaker::new(spec());
        fail(&mut b, t0);
        fail(&mut b, t0);
        b.set_spec(BreakerSpec {
            failure_threshold: 5,
            ..spec()
        });
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.set_spec(BreakerSpec {
            failure_threshold: 2,
            ..spec()
        });
        assert_eq!(b.failures.len(), 2);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn zero_thresholds_are_clamped_to_one() {
        let t0 = Instant::now();
        let zeros = BreakerSpec {
            failure_threshold: 0,
            window: Duration::ZERO,
            open_for: Duration::ZERO,
            half_open_requests: 0,
            success_threshold: 0,
        };
        let mut b = Breaker::new(zeros.clone());
        assert_eq!(b.spec(), &zeros);
        assert!(b.can_admit(t0));
        let ok = b.admit(t0).unwrap();
        b.record(t0, ok, true);
        assert_eq!(b.state(t0), BreakerState::Closed);
        let a = b.admit(t0).unwrap();
        b.record(t0, a, false);
        // One failure opens; open_for 0 goes half-open at once, with one trial slot.
        assert_eq!(b.state(t0), BreakerState::HalfOpen);
        let trial = b.admit(t0).unwrap();
        assert_eq!(b.admit(t0), None);
        // One success closes.
        b.record(t0, trial, true);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn huge_open_for_does_not_overflow() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerSpec {
            failure_threshold: 1,
            open_for: Duration::MAX,
            ..spec()
        });
        fail(&mut b, t0);
        assert_eq!(b.state(t0 + secs(86_400 * 365)), BreakerState::Open);
        assert!(!b.can_admit(t0 + secs(86_400 * 365)));
    }

    fn shared() -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(spec(), Arc::from("10.0.0.1:8080")))
    }

    async fn open_shared(cb: &Arc<CircuitBreaker>) {
        for _ in 0..3 {
            cb.try_acquire().expect("closed").failure();
        }
        assert_eq!(cb.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_opens_and_half_opens_with_time() {
        let cb = shared();
        assert!(cb.can_admit());
        open_shared(&cb).await;
        assert!(!cb.can_admit());
        assert!(cb.try_acquire().is_none());
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert_eq!(cb.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        let a = cb.try_acquire().expect("trial");
        let b = cb.try_acquire().expect("trial");
        assert!(cb.try_acquire().is_none());
        a.success();
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        b.success();
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_permit_releases_its_trial_slot() {
        let cb = shared();
        open_shared(&cb).await;
        tokio::time::advance(secs(30)).await;
        let a = cb.try_acquire().expect("trial");
        let b = cb.try_acquire().expect("trial");
        assert!(!cb.can_admit());
        drop(a);
        assert!(cb.can_admit());
        // The dropped trial counted neither way.
        b.success();
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        let c = cb.try_acquire().expect("trial");
        c.failure();
        assert_eq!(cb.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn shared_breaker_failures_expire_with_time() {
        let cb = shared();
        cb.try_acquire().unwrap().failure();
        cb.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_millis(10_001)).await;
        cb.try_acquire().unwrap().failure();
        assert_eq!(cb.state(), BreakerState::Closed);
        cb.set_spec(BreakerSpec {
            failure_threshold: 2,
            ..spec()
        });
        cb.try_acquire().unwrap().failure();
        assert_eq!(cb.state(), BreakerState::Open);
    }
}
