//! Rate limiting: token bucket, fixed window, sliding window and leaky bucket limiters, shared or keyed.
//!
//! The state machines here never read a clock. Every call takes the current
//! [`Instant`] explicitly, so behaviour is deterministic under test and a caller
//! can judge the route limit and the per-user limit against one timestamp.
//!
//! A spec that the config layer should have rejected still never panics, because
//! a bad limit must not take the gateway down:
//! - capacity 0 rejects everything, with `retry_after` = [`MAX_WAIT`];
//! - a refill/drain rate of 0 (or a negative or NaN one) never refills, and any wait
//!   that depends on it is reported as [`MAX_WAIT`];
//! - a window shorter than [`MIN_WINDOW`] is treated as [`MIN_WINDOW`].
//!
//! Instants earlier than one already seen are treated as that latest instant, so a
//! caller whose timestamps race slightly cannot rewind a limiter into granting more.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::sync::Cache;
use tokio::time::Instant;

/// Longest wait a [`Decision`] reports. Waits that would be longer (or infinite,
/// as with capacity 0 or no refill) are clamped to this, so headers stay finite.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest window the window algorithms use; a shorter (e.g. zero) window is
/// raised to this so window arithmetic never divides by zero.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);

/// Float slack for bucket arithmetic: a refill computed from a rounded-up wait
/// can land a hair below a whole token, and that must still count as the token.
const EPSILON: f64 = 1e-9;

/// Highest rate honoured; an infinite rate becomes this so products stay finite.
const MAX_RATE: f64 = 1e9;

/// Bounds on how long an idle key is kept by [`KeyedLimiter`].
const MIN_IDLE: Duration = Duration::from_secs(1);
const MAX_IDLE: Duration = Duration::from_secs(60 * 60);

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Continuous refill up to a burst size.
    TokenBucket,
    /// Weighted two-window estimate (see [`LimitState`]).
    SlidingWindow,
    /// Counter reset at each window boundary.
    FixedWindow,
    /// Meter that drains continuously; excess is rejected.
    LeakyBucket,
}

/// A limit's parameters (already validated by the config layer). Compared and hashed
/// by value (the rate by its bits), so it can key the limiter state kept across reloads.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// token_bucket: bucket size (burst). leaky_bucket: bucket size. fixed/sliding window: requests allowed per window.
    pub capacity: u32,
    /// token_bucket: tokens added per second. leaky_bucket: requests drained per second. Unused by windows.
    pub refill_per_s: f64,
    /// fixed/sliding window length. Unused by buckets.
    pub window: Duration,
}

impl PartialEq for LimitSpec {
    fn eq(&self, other: &Self) -> bool {
        self.algorithm == other.algorithm
            && self.capacity == other.capacity
            && self.refill_per_s.to_bits() == other.refill_per_s.to_bits()
            && self.window == other.window
    }
}

impl Eq for LimitSpec {}

impl std::hash::Hash for LimitSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.algorithm.hash(state);
        self.capacity.hash(state);
        self.refill_per_s.to_bits().hash(state);
        self.window.hash(state);
    }
}

impl LimitSpec {
    /// The rate with nonsense (NaN, negative, infinite) mapped to something finite.
    fn rate(&self) -> f64 {
        let rate = self.refill_per_s;
        if rate.is_nan() || rate <= 0.0 {
            0.0
        } else {
            rate.min(MAX_RATE)
        }
    }

    fn window_nanos(&self) -> u128 {
        self.window.max(MIN_WINDOW).as_nanos()
    }
}

/// The outcome of one check, with what the RateLimit-* and Retry-After headers need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request is admitted (and was counted).
    pub allowed: bool,
    /// RateLimit-Limit: the spec's capacity.
    pub limit: u32,
    /// RateLimit-Remaining: requests that would still be admitted right now (after this one).
    pub remaining: u32,
    /// RateLimit-Reset: time until the limiter is fully replenished (buckets) or the current window ends (windows).
    pub reset: Duration,
    /// Zero when allowed; else the time until a request would next be admitted.
    pub retry_after: Duration,
}

impl Decision {
    /// Whole seconds of `reset` for headers: rounded up, and at least 1 for a non-zero duration.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// Whole seconds of `retry_after` for headers: rounded up, and at least 1 for a
    /// non-zero duration (Retry-After: 0 would invite a busy loop).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }

    /// Of two decisions (route limit and per-user limit) the one whose headers the
    /// client should see: a rejection beats an admission; otherwise the lower
    /// `remaining`. Ties go to the longer `retry_after`, then the longer `reset`,
    /// because a request needs both limits to admit it, so the later time is the
    /// true one.
    pub fn stricter(self, other: Decision) -> Decision {
        if self.allowed != other.allowed {
            return if self.allowed { other } else { self };
        }
        let key = |d: &Decision| (std::cmp::Reverse(d.remaining), d.retry_after, d.reset);
        if key(&other) > key(&self) {
            other
        } else {
            self
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    // Rounding up already makes any non-zero duration at least 1.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Seconds to a duration, rounded up to the nanosecond so that waiting exactly
/// this long is always enough; clamped to `0..=MAX_WAIT`.
fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else if secs >= MAX_WAIT.as_secs_f64() {
        MAX_WAIT
    } else {
        Duration::from_nanos((secs * 1e9).ceil() as u64)
    }
}

/// Time for a bucket to move `amount` at `rate` per second.
fn wait_for(amount: f64, rate: f64) -> Duration {
    if amount <= EPSILON {
        Duration::ZERO
    } else if rate <= 0.0 {
        MAX_WAIT
    } else {
        secs_to_duration(amount / rate)
    }
}

fn nanos_to_duration(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Whole requests in a fractional allowance, forgiving float dust.
fn whole(x: f64) -> u32 {
    // `as` saturates (and maps NaN to 0), which is exactly the clamp wanted.
    (x.max(0.0) + EPSILON).floor() as u32
}

/// One limiter's state: a plain state machine.
///
/// - Token bucket: tokens refill continuously at `refill_per_s` up to `capacity`;
///   a request takes one.
/// - Fixed window: windows are aligned to the state's creation instant; the count
///   resets at each boundary.
/// - Sliding window: the weighted two-window estimate (as popularised by
///   Cloudflare), not a sliding log: the previous window's count weighted by the
///   fraction of it still inside the sliding window, plus the current count. It
///   needs O(1) memory per key (two counters), where a log needs one timestamp per
///   admitted request, which matters with a key per user. A request is admitted
///   when the estimate *including it* stays within `capacity`, so the estimate never
///   exceeds the limit (with an empty previous window this is simply `capacity` per
///   window). `reset` is the time until the estimate would reach 0: the end of the
///   next window if the current one has counted anything, else the end of this one.
/// - Leaky bucket: a meter whose level drains at `refill_per_s`; a request adds 1
///   if that keeps the level within `capacity`.
#[derive(Debug, Clone)]
pub struct LimitState {
    inner: State,
}

#[derive(Debug, Clone)]
enum State {
    TokenBucket { tokens: f64, last: Instant },
    FixedWindow(Window),
    SlidingWindow(Window),
    LeakyBucket { level: f64, last: Instant },
}

#[derive(Debug, Clone)]
struct Window {
    origin: Instant,
    /// Latest instant seen; earlier ones are treated as this.
    last: Instant,
    /// Index of the current window since `origin`.
    index: u128,
    current: u32,
    previous: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            origin: now,
            last: now,
            index: 0,
            current: 0,
            previous: 0,
        }
    }

    /// Rolls the counters forward to `now`; returns how far into its window `now` is.
    fn advance(&mut self, window: u128, now: Instant) -> u128 {
        let now = now.max(self.last);
        self.last = now;
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let index = elapsed / window;
        if index != self.index {
            // Only the directly preceding window still overlaps; anything older has
            // slid out entirely. A changed window length also lands here.
            self.previous = if Some(index) == self.index.checked_add(1) {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.index = index;
        }
        elapsed % window
    }
}

impl LimitState {
    /// A fresh state: a token bucket starts full, a leaky bucket empty, and windows
    /// start at `now`.
    pub fn new(spec: &LimitSpec, now: Instant) -> Self {
        let inner = match spec.algorithm {
            Algorithm::TokenBucket => State::TokenBucket {
                tokens: f64::from(spec.capacity),
                last: now,
            },
            Algorithm::FixedWindow => State::FixedWindow(Window::new(now)),
            Algorithm::SlidingWindow => State::SlidingWindow(Window::new(now)),
            Algorithm::LeakyBucket => State::LeakyBucket {
                level: 0.0,
                last: now,
            },
        };
        LimitState { inner }
    }

    fn algorithm(&self) -> Algorithm {
        match self.inner {
            State::TokenBucket { .. } => Algorithm::TokenBucket,
            State::FixedWindow(_) => Algorithm::FixedWindow,
            State::SlidingWindow(_) => Algorithm::SlidingWindow,
            State::LeakyBucket { .. } => Algorithm::LeakyBucket,
        }
    }

    /// Decides whether a request at `now` is admitted. Counts one request if admitted.
    pub fn check(&mut self, spec: &LimitSpec, now: Instant) -> Decision {
        if self.algorithm() != spec.algorithm {
            // A reload switched algorithms; the old state means nothing to the new one.
            *self = LimitState::new(spec, now);
        }
        let capacity = spec.capacity;
        match &mut self.inner {
            State::TokenBucket { tokens, last } => {
                token_bucket(tokens, last, capacity, spec.rate(), now)
            }
            State::LeakyBucket { level, last } => {
                leaky_bucket(level, last, capacity, spec.rate(), now)
            }
            State::FixedWindow(w) => fixed_window(w, capacity, spec.window_nanos(), now),
            State::SlidingWindow(w) => sliding_window(w, capacity, spec.window_nanos(), now),
        }
    }
}

/// Seconds since `last`, moving `last` forward (never back) to `now`.
fn elapsed_secs(last: &mut Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(*last).as_secs_f64();
    *last = now.max(*last);
    elapsed
}

fn token_bucket(
    tokens: &mut f64,
    last: &mut Instant,
    capacity: u32,
    rate: f64,
    now: Instant,
) -> Decision {
    let cap = f64::from(capacity);
    let elapsed = elapsed_secs(last, now);
    // The `min` also trims a bucket whose capacity was lowered by a reload.
    *tokens = (*tokens + elapsed * rate).min(cap).max(0.0);
    let allowed = *tokens + EPSILON >= 1.0;
    if allowed {
        *tokens = (*tokens - 1.0).max(0.0);
    }
    let retry_after = if allowed {
        Duration::ZERO
    } else if capacity == 0 {
        MAX_WAIT
    } else {
        wait_for(1.0 - *tokens, rate)
    };
    Decision {
        allowed,
        limit: capacity,
        remaining: whole(*tokens),
        reset: wait_for(cap - *tokens, rate),
        retry_after,
    }
}

fn leaky_bucket(
    level: &mut f64,
    last: &mut Instant,
    capacity: u32,
    rate: f64,
    now: Instant,
) -> Decision {
    let cap = f64::from(capacity);
    let elapsed = elapsed_secs(last, now);
    *level = (*level - elapsed * rate).max(0.0);
    // Excess is rejected rather than queued: queuing would hold client connections
    // open inside the gateway, turning a traffic spike into a pile of parked
    // sockets and tasks instead of cheap 429s.
    let allowed = *level + 1.0 <= cap + EPSILON;
    if allowed {
        *level += 1.0;
    }
    let retry_after = if allowed {
        Duration::ZERO
    } else if capacity == 0 {
        MAX_WAIT
    } else {
        wait_for(*level - (cap - 1.0), rate)
    };
    Decision {
        allowed,
        limit: capacity,
        remaining: whole(cap - *level),
        reset: wait_for(*level, rate),
        retry_after,
    }
}

fn fixed_window(w: &mut Window, capacity: u32, window: u128, now: Instant) -> Decision {
    let into = w.advance(window, now);
    let to_end = nanos_to_duration(window - into);
    let allowed = w.current < capacity;
    if allowed {
        w.current += 1;
    }
    let retry_after = if allowed {
        Duration::ZERO
    } else if capacity == 0 {
        MAX_WAIT
    } else {
        to_end
    };
    Decision {
        allowed,
        limit: capacity,
        remaining: capacity.saturating_sub(w.current),
        reset: to_end,
        retry_after,
    }
}

fn sliding_window(w: &mut Window, capacity: u32, window: u128, now: Instant) -> Decision {
    let into = w.advance(window, now);
    let left = window - into;
    // All in request·nanoseconds, so the weighting is exact integer arithmetic and
    // the computed retry time is exact to the nanosecond.
    let budget = u128::from(capacity).saturating_mul(window);
    let weighted_previous = u128::from(w.previous).saturating_mul(left);
    let with_this = u128::from(w.current)
        .saturating_add(1)
        .saturating_mul(window);
    let allowed = weighted_previous.saturating_add(with_this) <= budget;
    if allowed {
        w.current += 1;
    }
    let remaining =
        (budget.saturating_sub(weighted_previous) / window).saturating_sub(u128::from(w.current));
    let reset = if w.current > 0 {
        left.saturating_add(window)
    } else if w.previous > 0 {
        left
    } else {
        0
    };
    let retry_after = if allowed {
        Duration::ZERO
    } else if capacity == 0 {
        MAX_WAIT
    } else {
        nanos_to_duration(sliding_retry_nanos(
            w.previous, w.current, capacity, window, left,
        ))
    };
    Decision {
        allowed,
        limit: capacity,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset: nanos_to_duration(reset),
        retry_after,
    }
}

/// Smallest wait after which a request is admitted, for a rejected sliding window
/// with `left` nanoseconds of the current window to go. `capacity` must be >= 1.
fn sliding_retry_nanos(
    previous: u32,
    current: u32,
    capacity: u32,
    window: u128,
    left: u128,
) -> u128 {
    let (previous, current, capacity) = (
        u128::from(previous),
        u128::from(current),
        u128::from(capacity),
    );
    // Still in this window, after waiting t: previous × (left − t) + (current + 1) ×
    // window <= capacity × window, i.e. left − t <= spare / previous.
    if current < capacity && previous > 0 {
        let spare = (capacity - current - 1).saturating_mul(window);
        let keep = spare / previous;
        if keep > 0 && keep < left {
            return left - keep;
        }
    }
    // In the next window, s into it, the current count becomes the previous one:
    // current × (window − s) + window <= capacity × window; with nothing counted
    // that holds at s = 0. If even s = window is not enough (capacity 1 with a
    // request counted), the window after that is empty and admits at its start,
    // which is the same instant.
    let s = (capacity - 1)
        .saturating_mul(window)
        .checked_div(current)
        .map_or(0, |keep| window.saturating_sub(keep));
    left.saturating_add(s)
}

/// A single shared limit (per route).
#[derive(Debug)]
pub struct Limiter {
    spec: LimitSpec,
    state: Mutex<LimitState>,
}

impl Limiter {
    /// A limiter whose state starts at `now`.
    pub fn new(spec: LimitSpec, now: Instant) -> Self {
        warn_if_degenerate(&spec);
        let state = Mutex::new(LimitState::new(&spec, now));
        Limiter { spec, state }
    }

    /// The limit's parameters.
    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Decides whether a request at `now` is admitted, counting it if so.
    pub fn check(&self, now: Instant) -> Decision {
        // The state is plain data with no invariant a panicking holder could break
        // halfway, so a poisoned lock is safe to keep using.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.check(&self.spec, now)
    }
}

/// Per-key limits (per user id) with bounded memory.
///
/// An evicted key restarts with a full allowance. That is why keys are only
/// dropped once idle long enough to have fully recovered anyway (see
/// [`KeyedLimiter::new`]), or when the `max_keys` bound forces it; moka's TinyLFU
/// admission then favours frequently seen keys, so a flood of one-off keys mostly
/// evicts other one-off keys rather than active users. Expiry runs on moka's own
/// wall clock, while the limits themselves use the instants passed in.
pub struct KeyedLimiter {
    spec: LimitSpec,
    states: Cache<Box<str>, Arc<Mutex<LimitState>>>,
}

impl KeyedLimiter {
    /// `max_keys` bounds the number of tracked keys (memory stays flat under a flood
    /// of distinct keys). A bound of 0 is raised to 1, since a cache that keeps
    /// nothing would hand every request a fresh allowance.
    ///
    /// A key is dropped after being idle for as long as its state takes to become
    /// indistinguishable from a fresh one (buckets: a full refill or drain;
    /// windows: two windows), kept within 1 s ..= 1 h.
    pub fn new(spec: LimitSpec, max_keys: u64) -> Self {
        warn_if_degenerate(&spec);
        let states = Cache::builder()
            .max_capacity(max_keys.max(1))
            .time_to_idle(idle_timeout(&spec))
            .build();
        KeyedLimiter { spec, states }
    }

    /// The limit's parameters.
    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Decides whether a request for `key` at `now` is admitted, counting it if so.
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        // Look up by &str first so the common hit path allocates nothing; on a
        // miss, `get_with` makes concurrent first requests for a key share one
        // state instead of each getting a fresh allowance.
        let state = match self.states.get(key) {
            Some(state) => state,
            None => self.states.get_with(Box::from(key), || {
                Arc::new(Mutex::new(LimitState::new(&self.spec, now)))
            }),
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.check(&self.spec, now)
    }

    /// Keys currently tracked (after running moka's pending maintenance so the count
    /// is exact enough for tests/metrics).
    pub fn tracked_keys(&self) -> u64 {
        self.states.run_pending_tasks();
        self.states.entry_count()
    }
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Skips moka's maintenance: formatting should not do work on the hot cache.
        f.debug_struct("KeyedLimiter")
            .field("spec", &self.spec)
            .field("tracked_keys", &self.states.entry_count())
            .finish()
    }
}

/// How long a key must be idle before its state equals a fresh one.
pub(crate) fn idle_timeout(spec: &LimitSpec) -> Duration {
    let idle = match spec.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            // No refill means never recovering; MAX_IDLE then bounds memory instead.
            let rate = spec.rate();
            if rate > 0.0 {
                secs_to_duration(f64::from(spec.capacity) / rate)
            } else {
                MAX_IDLE
            }
        }
        Algorithm::FixedWindow | Algorithm::SlidingWindow => spec.window.saturating_mul(2),
    };
    idle.clamp(MIN_IDLE, MAX_IDLE)
}

fn warn_if_degenerate(spec: &LimitSpec) {
    if spec.capacity == 0 {
        tracing::warn!(?spec, "rate limit with capacity 0 rejects every request");
    }
    match spec.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket if spec.rate() == 0.0 => {
            tracing::warn!(?spec, "rate limit without a positive rate never recovers");
        }
        Algorithm::FixedWindow | Algorithm::SlidingWindow if spec.window < MIN_WINDOW => {
            tracing::warn!(
                ?spec,
                ?MIN_WINDOW,
                "rate limit window raised to the minimum"
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(algorithm: Algorithm, capacity: u32, refill_per_s: f64, window: Duration) -> LimitSpec {
        LimitSpec {
            algorithm,
            capacity,
            refill_per_s,
            window,
        }
    }

    fn bucket(algorithm: Algorithm, capacity: u32, refill_per_s: f64) -> LimitSpec {
        spec(algorithm, capacity, refill_per_s, Duration::ZERO)
    }

    fn window(algorithm: Algorithm, capacity: u32, window: Duration) -> LimitSpec {
        spec(algorithm, capacity, 0.0, window)
    }

    #[track_caller]
    fn assert_near(actual: Duration, expected: Duration) {
        let diff = actual.abs_diff(expected);
        assert!(
            diff <= ms(1),
            "{actual:?} is not within 1ms of {expected:?}"
        );
    }

    /// Admits `n` requests at `now`, checking the countdown of `remaining`.
    #[track_caller]
    fn burst(state: &mut LimitState, spec: &LimitSpec, now: Instant, n: u32, remaining_after: u32) {
        for i in 1..=n {
            let d = state.check(spec, now);
            assert!(d.allowed, "request {i} of {n} rejected: {d:?}");
            assert_eq!(d.remaining, remaining_after + n - i, "request {i}: {d:?}");
            assert_eq!(d.retry_after, Duration::ZERO);
            assert_eq!(d.limit, spec.capacity);
        }
    }

    #[test]
    fn token_bucket_burst_then_refill() {
        let t0 = Instant::now();
        let s = bucket(Algorithm::TokenBucket, 5, 2.0);
        let mut st = LimitState::new(&s, t0);

        let first = st.check(&s, t0);
        assert!(first.allowed);
        assert_eq!(first.remaining, 4);
        assert_near(first.reset, ms(500));
        burst(&mut st, &s, t0, 4, 0);

        let d = st.check(&s, t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_near(d.retry_after, ms(500));
        assert_near(d.reset, ms(2500));

        assert!(!st.check(&s, t0 + ms(499)).allowed);
        let d = st.check(&s, t0 + ms(500));
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, 0);
        assert_near(d.reset, ms(2500));
    }

    #[test]
    fn token_bucket_refills_only_to_capacity() {
        let t0 = Instant::now();
        let s = bucket(Algorithm::TokenBucket, 3, 10.0);
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0, 3, 0);
        let later = t0 + Duration::from_secs(3600);
        burst(&mut st, &s, later, 3, 0);
        let d = st.check(&s, later);
        assert!(!d.allowed);
        assert_near(d.retry_after, ms(100));
    }

    #[test]
    fn token_bucket_partial_refill() {
        let t0 = Instant::now();
        let s = bucket(Algorithm::TokenBucket, 10, 4.0);
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0, 10, 0);
        // 1 s later four tokens are back: one is taken now, three remain.
        let d = st.check(&s, t0 + Duration::from_secs(1));
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        assert_near(d.reset, ms(1750));
    }

    #[test]
    fn leaky_bucket_fills_then_drains() {
        let t0 = Instant::now();
        let s = bucket(Algorithm::LeakyBucket, 3, 1.0);
        let mut st = LimitState::new(&s, t0);

        let first = st.check(&s, t0);
        assert!(first.allowed);
        assert_eq!(first.remaining, 2);
        assert_near(first.reset, ms(1000));
        burst(&mut st, &s, t0, 2, 0);

        let d = st.check(&s, t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_near(d.retry_after, ms(1000));
        assert_near(d.reset, ms(3000));

        assert!(!st.check(&s, t0 + ms(999)).allowed);
        let d = st.check(&s, t0 + ms(1000));
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, 0);
        assert_near(d.reset, ms(3000));

        // Fully drained after 3 s more: a whole burst fits again.
        burst(&mut st, &s, t0 + ms(4000), 3, 0);
    }

    #[test]
    fn fixed_window_resets_at_boundary() {
        let t0 = Instant::now();
        let s = window(Algorithm::FixedWindow, 3, Duration::from_secs(1));
        let mut st = LimitState::new(&s, t0);

        let at = t0 + ms(100);
        let first = st.check(&s, at);
        assert_eq!((first.allowed, first.remaining), (true, 2));
        assert_eq!(first.reset, ms(900));
        burst(&mut st, &s, at, 2, 0);

        let d = st.check(&s, at);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, ms(900));
        assert_eq!(d.reset, ms(900));

        assert!(!st.check(&s, t0 + ms(999)).allowed);
        let d = st.check(&s, t0 + ms(1000));
        assert_eq!((d.allowed, d.remaining), (true, 2));
        assert_eq!(d.reset, ms(1000));
    }

    #[test]
    fn fixed_window_is_aligned_to_creation() {
        let t0 = Instant::now();
        let s = window(Algorithm::FixedWindow, 2, Duration::from_secs(1));
        let mut st = LimitState::new(&s, t0);
        // First request 2.5 s in: it falls in the window [2 s, 3 s).
        let d = st.check(&s, t0 + ms(2500));
        assert_eq!(d.reset, ms(500));
        assert!(st.check(&s, t0 + ms(2999)).allowed);
        assert!(!st.check(&s, t0 + ms(2999)).allowed);
        assert!(st.check(&s, t0 + ms(3000)).allowed);
    }

    #[test]
    fn sliding_window_burst_in_fresh_window() {
        let t0 = Instant::now();
        let s = window(Algorithm::SlidingWindow, 10, Duration::from_secs(1));
        let mut st = LimitState::new(&s, t0);
        let at = t0 + ms(200);
        burst(&mut st, &s, at, 10, 0);
        let d = st.check(&s, at);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // Estimate reaches 0 at the end of the next window.
        assert_eq!(d.reset, ms(1800));
        // In the next window these 10 weigh 10 × (1 − s); one more fits once that
        // is <= 9, at s = 0.1, i.e. 1.1 s after t0.
        assert_eq!(d.retry_after, ms(900));
    }

    #[test]
    fn sliding_window_weights_previous_window() {
        let t0 = Instant::now();
        let s = window(Algorithm::SlidingWindow, 10, Duration::from_secs(1));
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0 + ms(900), 10, 0);

        // 25% into window 2 the previous window still weighs 0.75 → 7.5, so only
        // two more requests fit (7.5 + 2 <= 10; a third would make 10.5).
        let at = t0 + ms(1250);
        let d = st.check(&s, at);
        assert_eq!((d.allowed, d.remaining), (true, 1));
        let d = st.check(&s, at);
        assert_eq!((d.allowed, d.remaining), (true, 0));
        let d = st.check(&s, at);
        assert!(!d.allowed);
        // Needs 10 × w + 3 <= 10 → w <= 0.7 → 300 ms into the window.
        assert_eq!(d.retry_after, ms(50));
        assert_eq!(d.reset, ms(1750));

        let mut early = st.clone();
        assert!(!early.check(&s, at + d.retry_after - ms(5)).allowed);
        assert!(st.check(&s, at + d.retry_after).allowed);
    }

    #[test]
    fn sliding_window_retry_after_crosses_into_next_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);

        let s = window(Algorithm::SlidingWindow, 2, w);
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0, 2, 0);
        let now = t0 + ms(500);
        let d = st.check(&s, now);
        assert!(!d.allowed);
        // In window 2 the two requests weigh 2 × (1 − s); one more fits at s = 0.5.
        assert_eq!(d.retry_after, ms(1000));
        assert!(!st.clone().check(&s, now + d.retry_after - ms(5)).allowed);
        assert!(st.check(&s, now + d.retry_after).allowed);

        // Capacity 1: nothing fits until the counted request has fully slid out.
        let s = window(Algorithm::SlidingWindow, 1, w);
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0, 1, 0);
        let now = t0 + ms(200);
        let d = st.check(&s, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, ms(1800));
        assert!(!st.clone().check(&s, now + d.retry_after - ms(5)).allowed);
        assert!(st.check(&s, now + d.retry_after).allowed);
    }

    #[test]
    fn sliding_window_forgets_after_two_windows() {
        let t0 = Instant::now();
        let s = window(Algorithm::SlidingWindow, 4, ms(100));
        let mut st = LimitState::new(&s, t0);
        burst(&mut st, &s, t0, 4, 0);
        // Skipping a whole window means the old count no longer overlaps at all.
        let d = st.check(&s, t0 + ms(200));
        assert_eq!((d.allowed, d.remaining), (true, 3));
    }

    const ALL: [Algorithm; 4] = [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::LeakyBucket,
    ];

    #[test]
    fn zero_capacity_rejects_everything() {
        let t0 = Instant::now();
        for algorithm in ALL {
            let s = spec(algorithm, 0, 5.0, Duration::from_secs(1));
            let mut st = LimitState::new(&s, t0);
            for i in 0..5u64 {
                let d = st.check(&s, t0 + Duration::from_secs(i * 1000));
                assert!(!d.allowed, "{algorithm:?}: {d:?}");
                assert_eq!(d.limit, 0);
                assert_eq!(d.remaining, 0);
                assert_eq!(d.retry_after, MAX_WAIT, "{algorithm:?}");
                assert!(d.reset <= MAX_WAIT.saturating_mul(2));
            }
        }
    }

    #[test]
    fn zero_refill_never_refills() {
        let t0 = Instant::now();
        for algorithm in [Algorithm::TokenBucket, Algorithm::LeakyBucket] {
            let s = bucket(algorithm, 2, 0.0);
            let mut st = LimitState::new(&s, t0);
            burst(&mut st, &s, t0, 2, 0);
            for days in [0, 1, 10, 10_000] {
                let d = st.check(&s, t0 + Duration::from_secs(days * 86_400));
                assert!(!d.allowed, "{algorithm:?} after {days} days");
                assert_eq!(d.retry_after, MAX_WAIT);
                assert_eq!(d.reset, MAX_WAIT);
            }
        }
    }

    #[test]
    fn nonsense_rates_do_not_panic() {
        let t0 = Instant::now();
        for algorithm in [Algorithm::TokenBucket, Algorithm::LeakyBucket] {
            for rate in [f64::NAN, -3.0, f64::NEG_INFINITY, 0.0, f64::MIN_POSITIVE] {
                let s = bucket(algorithm, 1, rate);
                let mut st = LimitState::new(&s, t0);
                assert!(st.check(&s, t0).allowed);
                let d = st.check(&s, t0 + Duration::from_secs(5));
                assert!(!d.allowed, "{algorithm:?} {rate}");
                assert_eq!(d.retry_after, MAX_WAIT);
            }
            // An infinite rate refills instantly rather than producing NaN.
            let s = bucket(algorithm, 2, f64::INFINITY);
            let mut st = LimitState::new(&s, t0);
            burst(&mut st, &s, t0, 2, 0);
            let d = st.check(&s, t0);
            assert!(!d.allowed);
            assert!(d.retry_after <= Duration::from_nanos(2), "{d:?}");
            assert!(st.check(&s, t0 + ms(1)).allowed);
        }
    }

    #[test]
    fn zero_window_does_not_panic() {
        let t0 = Instant::now();
        for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            let s = window(algorithm, 2, Duration::ZERO);
            let mut st = LimitState::new(&s, t0);
            burst(&mut st, &s, t0, 2, 0);
            let d = st.check(&s, t0);
            assert!(!d.allowed);
            assert!(
                d.retry_after > Duration::ZERO && d.retry_after <= ms(2),
                "{d:?}"
            );
            assert!(st.check(&s, t0 + d.retry_after).allowed, "{algorithm:?}");
        }
    }

    #[test]
    fn earlier_instants_do_not_rewind() {
        let t0 = Instant::now();
        for algorithm in ALL {
            let s = spec(algorithm, 2, 1.0, Duration::from_secs(1));
            let mut st = LimitState::new(&s, t0 + Duration::from_secs(10));
            burst(&mut st, &s, t0 + Duration::from_secs(10), 2, 0);
            let d = st.check(&s, t0);
            assert!(!d.allowed, "{algorithm:?}: {d:?}");
            assert!(
                d.retry_after <= Duration::from_secs(2),
                "{algorithm:?}: {d:?}"
            );
        }
    }

    #[test]
    fn algorithm_change_starts_fresh() {
        let t0 = Instant::now();
        let fixed = window(Algorithm::FixedWindow, 1, Duration::from_secs(60));
        let mut st = LimitState::new(&fixed, t0);
        assert!(st.check(&fixed, t0).allowed);
        assert!(!st.check(&fixed, t0).allowed);
        let tokens = bucket(Algorithm::TokenBucket, 3, 1.0);
        let d = st.check(&tokens, t0);
        assert_eq!((d.allowed, d.remaining), (true, 2));
    }

    /// Tiny deterministic generator so the invariant test needs no extra crate.
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// For random traffic, checks on clones of the state that every figure in a
    /// decision is what the limiter then actually does.
    #[test]
    fn decisions_match_subsequent_behaviour() {
        let t0 = Instant::now();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let rates = [0.5, 1.0, 3.0, 7.5, 40.0];
        let windows = [ms(100), ms(1000), ms(3000)];
        for round in 0..40 {
            let algorithm = ALL[round % ALL.len()];
            let capacity = 1 + rng.below(12) as u32;
            let s = spec(
                algorithm,
                capacity,
                rates[rng.below(rates.len() as u64) as usize],
                windows[rng.below(windows.len() as u64) as usize],
            );
            let mut st = LimitState::new(&s, t0);
            let mut now = t0;
            for _ in 0..60 {
                now += Duration::from_micros(rng.below(400_000));
                let d = st.check(&s, now);
                let ctx = format!("{s:?} at {:?}: {d:?}", now - t0);

                // `remaining` more are admitted right now, and not one more.
                let mut probe = st.clone();
                for _ in 0..d.remaining {
                    assert!(probe.check(&s, now).allowed, "remaining too high: {ctx}");
                }
                assert!(!probe.check(&s, now).allowed, "remaining too low: {ctx}");

                if d.allowed {
                    assert_eq!(d.retry_after, Duration::ZERO);
                } else {
                    assert!(st.clone().check(&s, now + d.retry_after).allowed, "{ctx}");
                    if let Some(before) = d.retry_after.checked_sub(Duration::from_micros(1)) {
                        assert!(!st.clone().check(&s, now + before).allowed, "{ctx}");
                    }
                }

                // After `reset` the limiter is as good as new.
                let fresh = st.clone().check(&s, now + d.reset);
                assert_eq!(fresh.remaining, capacity - 1, "reset too early: {ctx}");
            }
        }
    }

    fn decision(allowed: bool, remaining: u32, retry_ms: u64) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            reset: ms(1000),
            retry_after: ms(retry_ms),
        }
    }

    #[test]
    fn stricter_prefers_rejection_then_lower_remaining() {
        let ok_many = decision(true, 7, 0);
        let ok_few = decision(true, 2, 0);
        let no_short = decision(false, 0, 300);
        let no_long = decision(false, 0, 900);

        assert_eq!(ok_many.stricter(ok_few), ok_few);
        assert_eq!(ok_few.stricter(ok_many), ok_few);
        assert_eq!(ok_few.stricter(no_short), no_short);
        assert_eq!(no_short.stricter(ok_few), no_short);
        assert_eq!(no_short.stricter(no_long), no_long);
        assert_eq!(no_long.stricter(no_short), no_long);
        assert_eq!(ok_many.stricter(ok_many), ok_many);
    }

    #[test]
    fn header_seconds_round_up() {
        let mut d = decision(false, 0, 0);
        for (duration, secs) in [
            (Duration::ZERO, 0),
            (ms(1), 1),
            (Duration::from_nanos(1), 1),
            (ms(1000), 1),
            (ms(1200), 2),
            (ms(59_999), 60),
        ] {
            d.retry_after = duration;
            d.reset = duration;
            assert_eq!(d.retry_after_secs(), secs, "{duration:?}");
            assert_eq!(d.reset_secs(), secs, "{duration:?}");
        }
    }

    #[test]
    fn limiter_counts_exactly_across_threads() {
        let t0 = Instant::now();
        let limiter = Limiter::new(bucket(Algorithm::TokenBucket, 50, 1.0), t0);
        assert_eq!(limiter.spec().capacity, 50);
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..40).filter(|_| limiter.check(t0).allowed).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 50);
    }

    #[test]
    fn limiter_survives_poisoned_lock() {
        let t0 = Instant::now();
        let limiter = Limiter::new(
            window(Algorithm::FixedWindow, 2, Duration::from_secs(1)),
            t0,
        );
        assert!(limiter.check(t0).allowed);
        let poisoner = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = limiter.state.lock();
                    panic!("poison the limiter lock on purpose");
                })
                .join()
        });
        assert!(poisoner.is_err());
        assert!(limiter.state.is_poisoned());
        // The count from before the panic is kept: one more fits, then no more.
        assert!(limiter.check(t0).allowed);
        assert!(!limiter.check(t0).allowed);
    }

    #[test]
    fn keyed_limits_are_independent() {
        let t0 = Instant::now();
        let keyed = KeyedLimiter::new(
            window(Algorithm::FixedWindow, 2, Duration::from_secs(1)),
            100,
        );
        assert_eq!(keyed.spec().capacity, 2);
        assert!(keyed.check("alice", t0).allowed);
        assert!(keyed.check("alice", t0).allowed);
        assert!(!keyed.check("alice", t0).allowed);
        let bob = keyed.check("bob", t0);
        assert_eq!((bob.allowed, bob.remaining), (true, 1));
        assert!(!keyed.check("alice", t0 + ms(999)).allowed);
        assert!(keyed.check("alice", t0 + ms(1000)).allowed);
        assert_eq!(keyed.tracked_keys(), 2);
        assert!(format!("{keyed:?}").contains("tracked_keys: 2"));
    }

    #[test]
    fn keyed_first_requests_share_one_state() {
        let t0 = Instant::now();
        let keyed = KeyedLimiter::new(bucket(Algorithm::LeakyBucket, 10, 1.0), 100);
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..10).filter(|_| keyed.check("k", t0).allowed).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 10);
    }

    #[test]
    fn keyed_memory_stays_bounded_under_key_flood() {
        let t0 = Instant::now();
        let keyed = KeyedLimiter::new(bucket(Algorithm::TokenBucket, 5, 1.0), 1_000);
        let mut key = String::new();
        for i in 0..200_000u32 {
            key.clear();
            key.push_str("user-");
            key.push_str(&i.to_string());
            assert!(keyed.check(&key, t0).allowed);
        }
        let tracked = keyed.tracked_keys();
        assert!(tracked > 0 && tracked <= 1_100, "tracked {tracked}");
    }

    #[test]
    fn idle_timeout_matches_recovery_time() {
        let s = bucket(Algorithm::TokenBucket, 10, 5.0);
        assert_eq!(idle_timeout(&s), Duration::from_secs(2));
        let s = bucket(Algorithm::LeakyBucket, 100, 0.5);
        assert_eq!(idle_timeout(&s), Duration::from_secs(200));
        let s = bucket(Algorithm::TokenBucket, 10, 0.0);
        assert_eq!(idle_timeout(&s), MAX_IDLE);
        let s = bucket(Algorithm::TokenBucket, 1, 1000.0);
        assert_eq!(idle_timeout(&s), MIN_IDLE);
        let s = window(Algorithm::SlidingWindow, 10, Duration::from_secs(90));
        assert_eq!(idle_timeout(&s), Duration::from_secs(180));
        let s = window(Algorithm::FixedWindow, 10, Duration::ZERO);
        assert_eq!(idle_timeout(&s), MIN_IDLE);
        let s = window(Algorithm::FixedWindow, 10, Duration::from_secs(86_400));
        assert_eq!(idle_timeout(&s), MAX_IDLE);
    }
}
