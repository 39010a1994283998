//! Retry policy helpers: jittered exponential backoff, idempotency, and a retry budget.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Exponential backoff with full jitter: retry n (1-based) waits uniform [0, min(max, base * 2^(n-1))]. Saturating arithmetic, no overflow for large n.
///
/// Full jitter (rather than a fixed or half-jittered delay) spreads out the retries of
/// many clients that failed together, so they do not hit a recovering target in waves.
pub fn backoff(base: Duration, max: Duration, retry: u32, rng: &mut impl rand::Rng) -> Duration {
    let ceiling = backoff_ceiling(base, max, retry).as_nanos();
    from_nanos(rng.random_range(0..=ceiling))
}

/// The ceiling before jitter (for tests/docs): `min(max, base * 2^(retry-1))`; retry 0 is
/// treated as 1.
pub fn backoff_ceiling(base: Duration, max: Duration, retry: u32) -> Duration {
    let shift = retry.saturating_sub(1);
    let base = base.as_nanos();
    let max = max.as_nanos();
    // Exact in u128 nanoseconds; anything that would overflow is far above any `max`.
    let scaled = if base == 0 {
        0
    } else if shift >= base.leading_zeros() {
        u128::MAX
    } else {
        base << shift
    };
    from_nanos(scaled.min(max))
}

/// RFC 9110 idempotent methods: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &http::Method) -> bool {
    // Method names are case-sensitive, so an extension method "get" is not GET.
    matches!(
        method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Converts nanoseconds back to a `Duration`, saturating (callers pass values that came
/// from a `Duration`, so this only guards against misuse).
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

/// Negative or NaN rates mean "none"; infinity is left as "unlimited".
fn rate(x: f64) -> f64 {
    if x > 0.0 { x } else { 0.0 }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    requests: u64,
    retries: u64,
}

/// The pure counting behind [`RetryBudget`]: requests and retries over a sliding window of
/// 1-second buckets; the caller supplies the time and the budget's parameters.
#[derive(Debug, Clone)]
pub struct BudgetState {
    buckets: Vec<Bucket>,
    /// Seconds are counted from the first time the state is used, so construction needs no clock.
    origin: Option<Instant>,
    /// The second (since `origin`) the newest bucket belongs to.
    head: u64,
}

impl BudgetState {
    /// An empty budget over `window`, rounded up to whole seconds; a window under 1 s
    /// (including 0) is clamped to 1 s, and one over a day to a day.
    pub fn new(window: Duration) -> Self {
        let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        // A ring longer than a day buys nothing and would only cost memory.
        let len = usize::try_from(secs.clamp(1, 86_400)).unwrap_or(1);
        BudgetState {
            buckets: vec![Bucket::default(); len],
            origin: None,
            head: 0,
        }
    }

    /// The window actually used, after rounding and clamping.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.buckets.len() as u64)
    }

    /// Counts one original (non-retry) request.
    pub fn record_request(&mut self, now: Instant) {
        let bucket = self.roll(now);
        bucket.requests = bucket.requests.saturating_add(1);
    }

    /// Takes one retry if `ratio × requests + min_per_s × window seconds` allows another
    /// within the window.
    ///
    /// The allowance is rounded down, so a ratio of 0.2 over 100 requests allows exactly
    /// 20 retries; a tiny tolerance absorbs float error such as 0.29 × 100 = 28.999….
    pub fn try_spend(&mut self, now: Instant, ratio: f64, min_per_s: f64) -> bool {
        self.roll(now);
        let (requests, retries) = self.buckets.iter().fold((0u64, 0u64), |(q, r), b| {
            (q.saturating_add(b.requests), r.saturating_add(b.retries))
        });
        let allowed =
            rate(ratio) * requests as f64 + rate(min_per_s) * self.buckets.len() as f64 + 1e-9;
        if (retries as f64) + 1.0 > allowed.floor() {
            return false;
        }
        let bucket = self.roll(now);
        bucket.retries = bucket.retries.saturating_add(1);
        true
    }

    /// Advances the ring to `now`'s second, emptying the buckets of the seconds in between,
    /// and returns the current bucket.
    fn roll(&mut self, now: Instant) -> &mut Bucket {
        let origin = *self.origin.get_or_insert(now);
        let second = now.saturating_duration_since(origin).as_secs();
        let len = self.buckets.len() as u64;
        // A `now` older than the head (callers racing to the lock) counts in the head bucket
        // rather than rewinding the ring.
        if second > self.head {
            let gap = second - self.head;
            if gap >= len {
                self.buckets.fill(Bucket::default());
            } else {
                for s in self.head + 1..=second {
                    self.buckets[(s % len) as usize] = Bucket::default();
                }
            }
            self.head = second;
        }
        let index = (self.head % len) as usize;
        &mut self.buckets[index]
    }
}

#[derive(Debug)]
struct BudgetInner {
    state: BudgetState,
    ratio: f64,
    min_per_s: f64,
}

/// Caps retries to a fraction of recent requests so an outage is not amplified
/// (like Finagle's/Envoy's retry budgets): over a sliding `window` (1-second buckets in a ring),
/// retries allowed = ratio × requests + min_per_s × window seconds.
///
/// Negative or NaN `ratio`/`min_per_s` are treated as 0.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<BudgetInner>,
}

impl RetryBudget {
    /// An empty budget; `window` is rounded up to whole seconds, and 0 is clamped to 1 s.
    pub fn new(ratio: f64, min_per_s: f64, window: Duration) -> Self {
        RetryBudget {
            inner: Mutex::new(BudgetInner {
                state: BudgetState::new(window),
                ratio,
                min_per_s,
            }),
        }
    }

    /// Config reload: new ratio and floor; the counts so far are kept.
    pub fn set_params(&self, ratio: f64, min_per_s: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.ratio = ratio;
        inner.min_per_s = min_per_s;
    }

    /// Counts one original (non-retry) request.
    pub fn record_request(&self, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.state.record_request(now);
    }

    /// Takes one retry from the budget if available.
    pub fn try_spend(&self, now: Instant) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (ratio, min_per_s) = (inner.ratio, inner.min_per_s);
        inner.state.try_spend(now, ratio, min_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceilings_double_then_cap_at_max() {
        let ceilings: Vec<u64> = (1..=8)
            .map(|n| backoff_ceiling(ms(100), ms(5_000), n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        assert_eq!(backoff_ceiling(ms(100), ms(5_000), 0), ms(100));
        assert_eq!(
            backoff_ceiling(Duration::ZERO, ms(5_000), 10),
            Duration::ZERO
        );
        assert_eq!(backoff_ceiling(ms(100), Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let max = Duration::from_secs(30);
        for n in [32, 33, 64, 65, 127, 128, 129, 1_000, u32::MAX] {
            assert_eq!(backoff_ceiling(ms(100), max, n), max, "retry {n}");
        }
        // A 1 ns base still doubles exactly past 2^32 ns.
        assert_eq!(
            backoff_ceiling(Duration::from_nanos(1), Duration::MAX, 34),
            Duration::from_nanos(1 << 33)
        );
        assert_eq!(
            backoff_ceiling(Duration::MAX, Duration::MAX, u32::MAX),
            Duration::MAX
        );
        let mut rng = StdRng::seed_from_u64(7);
        assert!(backoff(Duration::MAX, Duration::MAX, u32::MAX, &mut rng) <= Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let mut rng = StdRng::seed_from_u64(42);
        for n in 1..=5 {
            let ceiling = backoff_ceiling(ms(100), ms(1_000), n);
            let samples: Vec<Duration> = (0..1_000)
                .map(|_| backoff(ms(100), ms(1_000), n, &mut rng))
                .collect();
            assert!(samples.iter().all(|&d| d <= ceiling), "retry {n}");
            assert!(samples.iter().any(|&d| d != samples[0]), "retry {n}");
            // Full jitter: both halves of the range get used.
            assert!(samples.iter().any(|&d| d < ceiling / 2), "retry {n}");
            assert!(samples.iter().any(|&d| d > ceiling / 2), "retry {n}");
        }
        assert_eq!(
            backoff(ms(100), Duration::ZERO, 1, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
        assert!(!is_idempotent(&Method::from_bytes(b"get").unwrap()));
        assert!(!is_idempotent(&Method::from_bytes(b"PURGE").unwrap()));
    }

    #[test]
    fn ratio_allows_exactly_its_share_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0.0, Duration::from_secs(10));
        assert!(!budget.try_spend(t0));
        for _ in 0..100 {
            budget.record_request(t0);
        }
        for i in 0..20 {
            assert!(budget.try_spend(t0 + ms(10)), "retry {}", i + 1);
        }
        assert!(!budget.try_spend(t0 + ms(10)), "retry 21");
        // Five more requests earn exactly one more retry.
        for _ in 0..5 {
            budget.record_request(t0 + ms(20));
        }
        assert!(budget.try_spend(t0 + ms(20)));
        assert!(!budget.try_spend(t0 + ms(20)));
    }

    #[test]
    fn float_error_does_not_cost_a_retry() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(Duration::from_secs(1));
        for _ in 0..100 {
            state.record_request(t0);
        }
        // 0.29 * 100.0 == 28.999999999999996 in f64.
        let granted = (0..100).filter(|_| state.try_spend(t0, 0.29, 0.0)).count();
        assert_eq!(granted, 29);
    }

    #[test]
    fn min_per_s_allows_retries_without_traffic() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 1.0, Duration::from_secs(3));
        for _ in 0..3 {
            assert!(budget.try_spend(t0));
        }
        assert!(!budget.try_spend(t0));
    }

    #[test]
    fn counts_expire_after_the_window() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(Duration::from_secs(10));
        for _ in 0..50 {
            state.record_request(t0);
        }
        for _ in 0..10 {
            assert!(state.try_spend(t0, 0.2, 0.0));
        }
        assert!(!state.try_spend(t0, 0.2, 0.0));
        // Still inside the window (second 9 of 0..=9): the spent retries still count.
        assert!(!state.try_spend(t0 + ms(9_999), 0.2, 0.0));
        // Second 10: both the requests and the retries of second 0 have expired.
        assert!(!state.try_spend(t0 + Duration::from_secs(10), 0.2, 0.0));
        for _ in 0..5 {
            state.record_request(t0 + Duration::from_secs(10));
        }
        assert!(state.try_spend(t0 + Duration::from_secs(10), 0.2, 0.0));
        assert!(!state.try_spend(t0 + Duration::from_secs(10), 0.2, 0.0));
    }

    #[test]
    fn ring_rolls_across_partial_and_long_gaps() {
        let t0 = Instant::now();
        let mut state = BudgetState::new(Duration::from_secs(3));
        let at = |s: u64| t0 + Duration::from_secs(s);
        for s in 0..3 {
            for _ in 0..10 {
                state.record_request(at(s));
            }
        }
        // 30 requests in seconds 0..=2.
        assert_eq!(count_grants(&mut state, at(2)), 3);
        // Second 4: seconds 0 and 1 have expired, second 2's 10 requests (and 3 retries) remain.
        for _ in 0..10 {
            state.record_request(at(4));
        }
        assert_eq!(count_grants(&mut state, at(4)), 0);
        // Second 5 drops second 2, retries included: 10 requests left.
        assert_eq!(count_grants(&mut state, at(5)), 1);
        // A gap of many windows empties everything.
        assert_eq!(count_grants(&mut state, at(1_000)), 0);
        state.record_request(at(1_000));
        assert_eq!(count_grants(&mut state, at(1_000)), 0);
    }

    fn count_grants(state: &mut BudgetState, now: Instant) -> usize {
        (0..100).filter(|_| state.try_spend(now, 0.1, 0.0)).count()
    }

    #[test]
    fn window_is_clamped_and_rounded_up() {
        assert_eq!(
            BudgetState::new(Duration::ZERO).window(),
            Duration::from_secs(1)
        );
        assert_eq!(BudgetState::new(ms(1)).window(), Duration::from_secs(1));
        assert_eq!(BudgetState::new(ms(2_500)).window(), Duration::from_secs(3));
        // A zero window works as one second: min_per_s 2 allows 2 retries.
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.0, 2.0, Duration::ZERO);
        assert!(budget.try_spend(t0));
        assert!(budget.try_spend(t0));
        assert!(!budget.try_spend(t0));
        assert!(budget.try_spend(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn set_params_keeps_counts() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.1, 0.0, Duration::from_secs(10));
        for _ in 0..100 {
            budget.record_request(t0);
        }
        let granted = (0..50).filter(|_| budget.try_spend(t0)).count();
        assert_eq!(granted, 10);
        budget.set_params(0.2, 0.0);
        let granted = (0..50).filter(|_| budget.try_spend(t0)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn bad_rates_mean_no_retries() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(f64::NAN, -1.0, Duration::from_secs(1));
        budget.record_request(t0);
        assert!(!budget.try_spend(t0));
    }
}
