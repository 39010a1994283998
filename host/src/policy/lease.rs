//! A node's share of a cluster-wide limit, as a plain state machine (time passed in).
//!
//! The limit itself lives in Redis. A node does not ask Redis per request: it takes a
//! small batch of tokens at a time (one script call), spends them locally, and asks for
//! the next batch *before* it runs out. What it learns from each call (tokens left in
//! the shared limit, when the next one appears) tells it when to stop asking.
//!
//! - **Batch size** follows the node's own demand: about `batch` worth of its recent
//!   request rate, at least 1, at most `max_batch` (a fraction of the limit ÷ alive
//!   nodes, so no node can hoard much of it).
//! - **Refill** is requested when the local tokens fall to half a batch, so under
//!   steady load the next batch arrives before the last token is spent.
//! - **Leftovers**: tokens not spent within `lease` of their grant go back to Redis, so
//!   a node that goes quiet strands at most one batch, and only for `lease`.
//! - **Credit**: with no local token and no word that the shared limit is empty, a
//!   request is admitted on credit and paid back from the next grant: one request, or
//!   up to a tenth of what Redis last said was left (at most `max_batch`); for a key
//!   Redis has not answered for yet, up to `max_batch`. A quiet route therefore never
//!   answers 429 just because its lease lapsed, and a busy node does not refuse while
//!   its next batch is on the way. Credit is only over-admission when the shared limit
//!   turns out to be spent; it is bounded by one request per node and key once Redis
//!   said the limit is nearly spent, and by `max_batch` for a key new to the node.
//! - **Empty**: when Redis says the limit is spent, the node refuses locally until the
//!   time Redis named for the next token (at least `MIN_POLL`), then asks again.

use std::time::Duration;

use tokio::time::Instant;

use super::rate_limit::Decision;

/// Shortest time between two asks while the shared limit is empty.
pub const MIN_POLL: Duration = Duration::from_millis(5);

/// Requests always allowed on credit, per node and key, before a grant pays them back.
const CREDIT: u32 = 1;

/// How a node leases tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Unspent tokens go back after this long.
    pub lease: Duration,
    /// A batch is about this much of the node's recent demand.
    pub batch: Duration,
    /// The largest batch.
    pub max_batch: u32,
}

impl LeaseConfig {
    /// `max_batch` for a limit of `capacity` shared by `alive` nodes: a tenth of each
    /// node's fair share, at least 1.
    pub fn max_batch_for(capacity: u32, alive: usize) -> u32 {
        let alive = u32::try_from(alive.max(1)).unwrap_or(u32::MAX);
        (capacity / alive.saturating_mul(10)).max(1)
    }
}

/// What one Redis call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens taken for this node.
    pub granted: u32,
    /// Whole tokens left in the shared limit after the take.
    pub remaining: u32,
    /// Until the shared limit has a token again (zero when `remaining` ≥ 1).
    pub next_token: Duration,
    /// Until the shared limit is full again (buckets) or its window ends (windows).
    pub reset: Duration,
    /// The window the tokens were counted in (buckets: 0); leftovers go back to it.
    pub epoch: i64,
}

/// Tokens to give back: how many, and the epoch they were taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    pub tokens: u32,
    pub epoch: i64,
}

/// One node's lease on one limit key.
#[derive(Debug, Clone)]
pub struct Lease {
    tokens: u32,
    debt: u32,
    epoch: i64,
    /// When the tokens held go back (set by each grant).
    expires: Option<Instant>,
    /// Redis said the limit is spent: refuse locally until then.
    empty_until: Option<Instant>,
    /// A call to Redis is under way.
    pending: bool,
    /// Demand: requests seen in the current period, and the smoothed rate per second.
    seen: u32,
    period_start: Instant,
    rate: f64,
    /// For the RateLimit-* headers (and the credit): what the last grant said.
    remote_remaining: u32,
    /// Redis has answered for this key at least once.
    remote_known: bool,
    reset_at: Instant,
}

impl Lease {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: 0,
            debt: 0,
            epoch: 0,
            expires: None,
            empty_until: None,
            pending: false,
            seen: 0,
            period_start: now,
            rate: 0.0,
            remote_remaining: 0,
            remote_known: false,
            reset_at: now,
        }
    }

    /// Tokens held locally.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// When the tokens held go back, if any are held.
    pub fn expires(&self) -> Option<Instant> {
        self.expires
    }

    /// Decides one request of a limit of `capacity`. The `bool` asks the caller to
    /// start a Redis call (then call [`Lease::want`]); it is never true while one is
    /// under way.
    pub fn check(&mut self, capacity: u32, cfg: &LeaseConfig, now: Instant) -> (Decision, bool) {
        self.observe(cfg, now);
        let empty = self.empty_until.is_some_and(|t| t > now);
        let credit = if self.remote_known {
            (self.remote_remaining / 10).min(cfg.max_batch).max(CREDIT)
        } else {
            cfg.max_batch.max(CREDIT)
        };
        let allowed = if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else if !empty && self.debt < credit {
            self.debt += 1;
            true
        } else {
            false
        };
        let low = self.tokens <= self.batch(cfg, now) / 2;
        let sync = low && !self.pending && !empty;
        let retry_after = if allowed {
            Duration::ZERO
        } else {
            self.empty_until
                .map_or(MIN_POLL, |t| t.saturating_duration_since(now))
                .max(MIN_POLL)
        };
        let decision = Decision {
            allowed,
            limit: capacity,
            remaining: self
                .remote_remaining
                .saturating_add(self.tokens)
                .min(capacity),
            reset: self.reset_at.saturating_duration_since(now),
            retry_after,
        };
        (decision, sync)
    }

    /// Starts a Redis call: how many tokens to ask for (the batch plus any debt).
    pub fn want(&mut self, cfg: &LeaseConfig, now: Instant) -> u32 {
        self.observe(cfg, now);
        self.pending = true;
        self.batch(cfg, now).saturating_add(self.debt)
    }

    /// A Redis call answered. Returns true when the node should ask again at once
    /// (the grant did not even lift it above the refill mark, and the limit is not
    /// empty).
    pub fn granted(&mut self, grant: Grant, cfg: &LeaseConfig, now: Instant) -> bool {
        self.pending = false;
        let paid = grant.granted.min(self.debt);
        self.debt -= paid;
        self.tokens = self.tokens.saturating_add(grant.granted - paid);
        self.epoch = grant.epoch;
        self.remote_remaining = grant.remaining;
        self.remote_known = true;
        self.reset_at = now + grant.reset;
        if self.tokens > 0 {
            self.expires = Some(now + cfg.lease);
        }
        self.empty_until = (grant.remaining == 0).then(|| now + grant.next_token.max(MIN_POLL));
        self.empty_until.is_none() && grant.granted > 0 && self.tokens <= self.batch(cfg, now) / 2
    }

    /// A Redis call failed or timed out.
    pub fn failed(&mut self) {
        self.pending = false;
    }

    /// Unspent tokens whose lease has run out, taken out of the lease to go back.
    pub fn take_leftover(&mut self, now: Instant) -> Option<Leftover> {
        let due = self.expires.is_some_and(|t| t <= now);
        if !due {
            return None;
        }
        self.expires = None;
        let tokens = std::mem::take(&mut self.tokens);
        (tokens > 0).then_some(Leftover {
            tokens,
            epoch: self.epoch,
        })
    }

    /// Everything held, for a limiter being dropped.
    pub fn take_all(&mut self) -> Option<Leftover> {
        self.expires = None;
        let tokens = std::mem::take(&mut self.tokens);
        (tokens > 0).then_some(Leftover {
            tokens,
            epoch: self.epoch,
        })
    }

    /// The batch size for the demand seen: the smoothed rate, or the current period's
    /// rate so far when that is higher (a burst, or the first period).
    fn batch(&self, cfg: &LeaseConfig, now: Instant) -> u32 {
        let period = cfg.batch.max(Duration::from_millis(1));
        let so_far = now
            .saturating_duration_since(self.period_start)
            .max(period / 4);
        let current = f64::from(self.seen) / so_far.as_secs_f64();
        let wanted = (self.rate.max(current) * cfg.batch.as_secs_f64()).ceil();
        // `as` saturates; NaN becomes 0.
        (wanted as u32).clamp(1, cfg.max_batch.max(1))
    }

    /// Counts a request into the demand estimate: the rate over each `batch` period,
    /// smoothed (half old, half new), decaying through quiet periods.
    fn observe(&mut self, cfg: &LeaseConfig, now: Instant) {
        let period = cfg.batch.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed >= period {
            let measured = f64::from(self.seen) / elapsed.as_secs_f64();
            let quiet_periods = (elapsed.as_secs_f64() / period.as_secs_f64()) - 1.0;
            let decay = 0.5f64.powf(quiet_periods.max(0.0));
            self.rate = (0.5 * self.rate + 0.5 * measured) * decay;
            self.seen = 0;
            self.period_start = now;
        }
        self.seen = self.seen.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(max_batch: u32) -> LeaseConfig {
        LeaseConfig {
            lease: ms(250),
            batch: ms(50),
            max_batch,
        }
    }

    fn grant(granted: u32, remaining: u32) -> Grant {
        Grant {
            granted,
            remaining,
            next_token: if remaining == 0 { ms(100) } else { ms(0) },
            reset: ms(1000),
            epoch: 0,
        }
    }

    #[test]
    fn max_batch_is_a_tenth_of_a_fair_share() {
        assert_eq!(LeaseConfig::max_batch_for(600, 3), 20);
        assert_eq!(LeaseConfig::max_batch_for(5, 3), 1);
        assert_eq!(LeaseConfig::max_batch_for(1000, 0), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_is_admitted_on_credit_and_repaid_by_the_grant() {
        let c = cfg(1);
        let mut l = Lease::new(Instant::now());
        let (d, sync) = l.check(100, &c, Instant::now());
        assert!(d.allowed && sync, "credit admits, and a call is asked for");
        let want = l.want(&c, Instant::now());
        assert_eq!(want, 2, "a batch of one plus the debt");
        let (d, sync) = l.check(100, &c, Instant::now());
        assert!(!d.allowed, "credit is one request; the call is under way");
        assert!(!sync, "never two calls at once");
        assert!(!l.granted(grant(2, 98), &c, Instant::now()));
        assert_eq!(l.tokens(), 1, "one token paid the debt");
        assert!(l.check(100, &c, Instant::now()).0.allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn credit_grows_with_what_redis_said_was_left_but_not_past_a_batch() {
        let c = cfg(5);
        let mut l = Lease::new(Instant::now());
        let _ = l.want(&c, Instant::now());
        l.granted(grant(0, 1000), &c, Instant::now());
        let _ = l.check(10_000, &c, Instant::now());
        let _ = l.want(&c, Instant::now());
        let admitted = (0..20)
            .filter(|_| l.check(10_000, &c, Instant::now()).0.allowed)
            .count();
        assert_eq!(admitted + 1, 5, "credit is capped at max_batch");
        let mut l = Lease::new(Instant::now());
        let _ = l.want(&c, Instant::now());
        l.granted(grant(0, 15), &c, Instant::now());
        let admitted = (0..20)
            .filter(|_| l.check(10_000, &c, Instant::now()).0.allowed)
            .count();
        assert_eq!(admitted, 1, "a tenth of 15 left: one request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_redis_has_not_answered_for_gets_a_batch_of_credit() {
        let c = cfg(4);
        let mut l = Lease::new(Instant::now());
        let admitted = (0..10)
            .filter(|_| l.check(100, &c, Instant::now()).0.allowed)
            .count();
        assert_eq!(
            admitted, 4,
            "max_batch on credit while the first answer is awaited"
        );
        let _ = l.want(&c, Instant::now());
        l.granted(grant(4, 0), &c, Instant::now());
        assert_eq!(l.tokens(), 0, "the grant paid the debt");
        assert!(
            !l.check(100, &c, Instant::now()).0.allowed,
            "and Redis said empty"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_limit_refuses_locally_until_the_next_token() {
        let c = cfg(1);
        let mut l = Lease::new(Instant::now());
        let _ = l.check(10, &c, Instant::now());
        let _ = l.want(&c, Instant::now());
        l.granted(grant(0, 0), &c, Instant::now());
        for _ in 0..50 {
            let (d, sync) = l.check(10, &c, Instant::now());
            assert!(!d.allowed && !sync, "no call while Redis said empty");
            assert_eq!(d.retry_after, ms(100));
        }
        tokio::time::advance(ms(100)).await;
        let (d, sync) = l.check(10, &c, Instant::now());
        assert!(
            !d.allowed,
            "the debt from before is still unpaid: no more credit"
        );
        assert!(sync, "asks again once the next token is due");
        assert_eq!(l.want(&c, Instant::now()), 2, "asks for the debt too");
    }

    #[tokio::test(start_paused = true)]
    async fn batches_follow_demand_and_refill_before_running_out() {
        let c = cfg(1000);
        let mut l = Lease::new(Instant::now());
        // 2000 requests per second for half a second.
        let mut calls = 0;
        let mut refused = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_micros(500)).await;
            let now = Instant::now();
            let (d, sync) = l.check(1_000_000, &c, now);
            refused += usize::from(!d.allowed);
            if sync {
                calls += 1;
                let want = l.want(&c, now);
                // Redis answers at once with everything asked.
                l.granted(grant(want, 1_000_000), &c, now);
            }
        }
        assert!(
            refused == 0,
            "a limit that has tokens never refuses: {refused}"
        );
        // ~100 tokens per 50 ms batch: far fewer calls than requests.
        assert!(calls < 40, "{calls} calls for 1000 requests");
        let want = l.want(&c, Instant::now());
        assert!(
            (80..=120).contains(&want),
            "batch {want} for 2000/s over 50 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_never_exceeds_max_batch() {
        let c = cfg(3);
        let mut l = Lease::new(Instant::now());
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_micros(100)).await;
            let _ = l.check(10, &c, Instant::now());
        }
        // A batch of 3 plus the 3 admitted on credit before Redis ever answered.
        assert_eq!(l.want(&c, Instant::now()), 3 + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn leftovers_go_back_after_the_lease_and_a_new_grant_extends_it() {
        let c = cfg(10);
        let mut l = Lease::new(Instant::now());
        let _ = l.want(&c, Instant::now());
        l.granted(
            Grant {
                epoch: 7,
                ..grant(5, 50)
            },
            &c,
            Instant::now(),
        );
        assert_eq!(l.take_leftover(Instant::now()), None, "lease still running");
        tokio::time::advance(ms(200)).await;
        let _ = l.want(&c, Instant::now());
        l.granted(grant(2, 48), &c, Instant::now());
        tokio::time::advance(ms(100)).await;
        assert_eq!(
            l.take_leftover(Instant::now()),
            None,
            "the second grant extended the lease"
        );
        tokio::time::advance(ms(150)).await;
        assert_eq!(
            l.take_leftover(Instant::now()),
            Some(Leftover {
                tokens: 7,
                epoch: 0
            })
        );
        assert_eq!(l.tokens(), 0);
        assert_eq!(l.take_leftover(Instant::now()), None, "given back once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_allows_the_next_one() {
        let c = cfg(10);
        let mut l = Lease::new(Instant::now());
        let (_, sync) = l.check(10, &c, Instant::now());
        assert!(sync);
        let _ = l.want(&c, Instant::now());
        assert!(!l.check(10, &c, Instant::now()).1);
        l.failed();
        assert!(l.check(10, &c, Instant::now()).1);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_show_the_shared_remaining_and_reset() {
        let c = cfg(10);
        let mut l = Lease::new(Instant::now());
        let _ = l.want(&c, Instant::now());
        l.granted(grant(4, 40), &c, Instant::now());
        tokio::time::advance(ms(400)).await;
        let (d, _) = l.check(100, &c, Instant::now());
        assert_eq!((d.limit, d.remaining), (100, 43));
        assert_eq!(d.reset, ms(600));
    }
}
