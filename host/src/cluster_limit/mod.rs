//! Cluster-wide rate limits (`scope = "cluster"`): one limit for every gateway node,
//! counted in Redis, without a Redis round trip on the request path.
//!
//! Each node leases small batches of tokens from Redis (`policy::lease` decides when
//! and how many; `link` runs the script calls) and spends them locally, so phase 7
//! stays a synchronous, non-blocking check. Calls run as short tokio tasks; a task that
//! took tokens waits until the lease ends and gives back what was not spent.
//!
//! Without `[cluster.redis]`, or while Redis is down with `on_redis_error = "local"`,
//! each node enforces the limit ÷ alive cluster members on its own (approximate: exact
//! only when traffic is spread evenly over the nodes).

pub mod link;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use moka::sync::Cache;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::config::OnRedisError;
use crate::metrics::Metrics;
use crate::plan::RedisSettings;
use crate::policy::lease::{Lease, LeaseConfig, Leftover};
use crate::policy::rate_limit::{Algorithm, Decision, LimitSpec, LimitState, idle_timeout};
use link::{Call, RedisLink};

/// Most tries of one sync task in a row (a grant that left the node still short).
const MAX_ROUNDS: usize = 4;

/// What every cluster limiter of a gateway shares: the Redis link (if configured), the
/// count of alive cluster members, the lease settings.
#[derive(Debug)]
pub struct ClusterLimits {
    link: Option<Arc<RedisLink>>,
    alive: Arc<AtomicUsize>,
    lease: Duration,
    batch: Duration,
    key_prefix: String,
    fallback: [IntCounter; 3],
}

impl ClusterLimits {
    /// Links to `redis` (connecting in the background when a runtime is running).
    pub fn new(redis: Option<&RedisSettings>, metrics: &Metrics) -> Self {
        let link = redis.and_then(|settings| match RedisLink::new(settings, metrics.clone()) {
            Ok(link) => {
                link.start();
                Some(link)
            }
            Err(e) => {
                tracing::error!("cluster.redis: {e}; cluster rate limits stay local");
                None
            }
        });
        let defaults = crate::config::RedisConfig::default();
        Self {
            link,
            alive: Arc::new(AtomicUsize::new(1)),
            lease: redis.map_or(Duration::from_millis(defaults.lease_ms), |r| r.lease),
            batch: redis.map_or(Duration::from_millis(defaults.batch_ms), |r| r.batch),
            key_prefix: redis.map_or(defaults.key_prefix, |r| r.key_prefix.clone()),
            fallback: ["local", "allow", "deny"]
                .map(|m| metrics.rate_limit_fallback.with_label_values(&[m])),
        }
    }

    /// The alive-members count the cluster driver keeps up to date (1 without gossip).
    pub fn alive_counter(&self) -> Arc<AtomicUsize> {
        self.alive.clone()
    }

    /// The Redis link, if `[cluster.redis]` is set.
    pub fn link(&self) -> Option<&Arc<RedisLink>> {
        self.link.as_ref()
    }

    /// A limiter for route `label` (`user`: a per-user limit tracking at most
    /// `max_keys` users).
    pub fn limiter(
        &self,
        label: &str,
        user: bool,
        spec: LimitSpec,
        on_error: OnRedisError,
        max_keys: u64,
    ) -> ClusterLimiter {
        let key_base = format!(
            "{}:rl:{}:{}:{:016x}",
            self.key_prefix,
            if user { "user" } else { "route" },
            label,
            spec_digest(&spec)
        );
        let states = Cache::builder()
            .max_capacity(max_keys.max(1))
            .time_to_idle(idle_timeout(&spec).max(self.lease * 4))
            .build();
        ClusterLimiter {
            inner: Arc::new(Inner {
                spec,
                on_error,
                key_base,
                link: self.link.clone(),
                alive: self.alive.clone(),
                lease: self.lease,
                batch: self.batch,
                fallback: self.fallback.clone(),
                states,
                handle: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }
}

/// One cluster-scoped limit (route-wide: the key is ""; per user: the user id).
#[derive(Debug)]
pub struct ClusterLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    spec: LimitSpec,
    on_error: OnRedisError,
    key_base: String,
    link: Option<Arc<RedisLink>>,
    alive: Arc<AtomicUsize>,
    lease: Duration,
    batch: Duration,
    /// rate_limit_fallback_total for local, allow, deny.
    fallback: [IntCounter; 3],
    states: Cache<Box<str>, Arc<Mutex<KeyState>>>,
    handle: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimiter")
            .field("key", &self.key_base)
            .field("spec", &self.spec)
            .finish()
    }
}

/// One key's state: the Redis lease, and the local limiter used without Redis.
#[derive(Debug)]
struct KeyState {
    lease: Lease,
    fallback: LimitState,
    /// The fallback's spec: the limit ÷ `divided_by` alive members.
    fallback_spec: LimitSpec,
    divided_by: usize,
}

impl ClusterLimiter {
    /// The limit's parameters (cluster-wide).
    pub fn spec(&self) -> &LimitSpec {
        &self.inner.spec
    }

    /// Decides a request for `key` at `now` without waiting for Redis.
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        let inner = &self.inner;
        let state = match inner.states.get(key) {
            Some(s) => s,
            None => inner.states.get_with(Box::from(key), || {
                Arc::new(Mutex::new(KeyState::new(&inner.spec, now)))
            }),
        };
        let alive = inner.alive.load(Ordering::Relaxed).max(1);
        let link = match (&inner.link, &inner.handle) {
            (Some(link), Some(handle)) => Some((link, handle)),
            _ => None,
        };
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((link, handle)) = link.filter(|(l, _)| l.is_up()) else {
            // No Redis configured is the documented approximate mode, not a fallback.
            let mode = if link.is_none() {
                OnRedisError::Local
            } else {
                inner.on_error
            };
            return inner.without_redis(&mut st, mode, link.is_some(), alive, now);
        };
        let cfg = inner.lease_config(alive);
        let (decision, sync) = st.lease.check(inner.spec.capacity, &cfg, now);
        if sync {
            let want = st.lease.want(&cfg, now);
            drop(st);
            handle.spawn(sync_task(
                self.inner.clone(),
                link.clone(),
                key.to_owned(),
                state.clone(),
                want,
            ));
        }
        decision
    }
}

impl Inner {
    fn lease_config(&self, alive: usize) -> LeaseConfig {
        LeaseConfig {
            lease: self.lease,
            batch: self.batch,
            max_batch: LeaseConfig::max_batch_for(self.spec.capacity, alive),
        }
    }

    fn without_redis(
        &self,
        st: &mut KeyState,
        mode: OnRedisError,
        counted: bool,
        alive: usize,
        now: Instant,
    ) -> Decision {
        let index = match mode {
            OnRedisError::Local => 0,
            OnRedisError::Allow => 1,
            OnRedisError::Deny => 2,
        };
        if counted {
            self.fallback[index].inc();
        }
        let limit = self.spec.capacity;
        match mode {
            OnRedisError::Local => {
                if st.divided_by != alive {
                    st.fallback_spec = divided(&self.spec, alive);
                    st.divided_by = alive;
                }
                st.fallback.check(&st.fallback_spec, now)
            }
            OnRedisError::Allow => Decision {
                allowed: true,
                limit,
                remaining: limit,
                reset: Duration::ZERO,
                retry_after: Duration::ZERO,
            },
            OnRedisError::Deny => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: Duration::from_secs(1),
                retry_after: Duration::from_secs(1),
            },
        }
    }

    /// The script call taking (`want` > 0) or giving back (`want` < 0) tokens.
    fn call(&self, key: &str, want: i64, epoch: i64) -> Call {
        let key = if key.is_empty() {
            self.key_base.clone()
        } else {
            format!("{}:{key}", self.key_base)
        };
        let spec = &self.spec;
        match spec.algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => Call::Bucket {
                key,
                capacity: spec.capacity,
                refill_per_s: spec.refill_per_s,
                want,
            },
            Algorithm::FixedWindow | Algorithm::SlidingWindow => Call::Window {
                key,
                capacity: spec.capacity,
                window_ms: u64::try_from(spec.window.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                sliding: spec.algorithm == Algorithm::SlidingWindow,
                want,
                epoch,
            },
        }
    }
}

impl Drop for Inner {
    /// A limiter going away (a reload changed it, or the gateway stops) gives back the
    /// tokens it still holds.
    fn drop(&mut self) {
        let (Some(link), Some(handle)) = (&self.link, &self.handle) else {
            return;
        };
        let mut calls = Vec::new();
        for (key, state) in self.states.iter() {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(Leftover { tokens, epoch }) = st.lease.take_all() {
                calls.push(self.call(&key, -i64::from(tokens), epoch));
            }
        }
        if calls.is_empty() || !link.is_up() {
            return;
        }
        let link = link.clone();
        handle.spawn(async move {
            for call in calls {
                let _ = link.call(&call).await;
            }
        });
    }
}

impl KeyState {
    fn new(spec: &LimitSpec, now: Instant) -> Self {
        let fallback_spec = divided(spec, 1);
        Self {
            lease: Lease::new(now),
            fallback: LimitState::new(&fallback_spec, now),
            fallback_spec,
            divided_by: 1,
        }
    }
}

/// A node's share of `spec` when `alive` nodes enforce it without Redis.
fn divided(spec: &LimitSpec, alive: usize) -> LimitSpec {
    let n = u32::try_from(alive.max(1)).unwrap_or(u32::MAX);
    LimitSpec {
        capacity: (spec.capacity / n).max(1),
        refill_per_s: spec.refill_per_s / f64::from(n),
        ..spec.clone()
    }
}

/// Takes `want` tokens for `key`, then, once the lease runs out, gives back what was
/// not spent. Holds the limiter only weakly while it waits.
async fn sync_task(
    inner: Arc<Inner>,
    link: Arc<RedisLink>,
    key: String,
    state: Arc<Mutex<KeyState>>,
    mut want: u32,
) {
    let mut expires = None;
    for round in 1..=MAX_ROUNDS {
        let call = inner.call(&key, i64::from(want), 0);
        let result = link.call(&call).await;
        let now = Instant::now();
        let alive = inner.alive.load(Ordering::Relaxed).max(1);
        let cfg = inner.lease_config(alive);
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(grant) => {
                let again = st.lease.granted(grant, &cfg, now);
                expires = st.lease.expires();
                // `want` marks a call under way: only when this task makes it.
                if !again || round == MAX_ROUNDS {
                    break;
                }
                want = st.lease.want(&cfg, now);
            }
            Err(_) => {
                st.lease.failed();
                return;
            }
        }
    }
    let Some(expires) = expires else { return };
    let weak: Weak<Inner> = Arc::downgrade(&inner);
    drop(inner);
    tokio::time::sleep_until(expires).await;
    let Some(inner) = weak.upgrade() else { return };
    let leftover = state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .lease
        .take_leftover(Instant::now());
    if let Some(Leftover { tokens, epoch }) = leftover {
        let _ = link
            .call(&inner.call(&key, -i64::from(tokens), epoch))
            .await;
    }
}

/// A stable digest of a spec (FNV-1a over its fields), so every node names a limit's
/// Redis key the same way and a changed limit starts on a fresh key.
fn spec_digest(spec: &LimitSpec) -> u64 {
    let algorithm: u8 = match spec.algorithm {
        Algorithm::TokenBucket => 1,
        Algorithm::SlidingWindow => 2,
        Algorithm::FixedWindow => 3,
        Algorithm::LeakyBucket => 4,
    };
    let mut bytes = vec![algorithm];
    bytes.extend_from_slice(&spec.capacity.to_le_bytes());
    bytes.extend_from_slice(&spec.refill_per_s.to_bits().to_le_bytes());
    bytes.extend_from_slice(&spec.window.as_nanos().to_le_bytes());
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(capacity: u32, rate: f64) -> LimitSpec {
        LimitSpec {
            algorithm: Algorithm::TokenBucket,
            capacity,
            refill_per_s: rate,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn without_redis_each_node_enforces_its_share() {
        let limits = ClusterLimits::new(None, &Metrics::new());
        let limiter = limits.limiter("/a", false, bucket(30, 0.001), OnRedisError::Local, 1);
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| limiter.check("", t0).allowed).count();
        assert_eq!(admitted, 30, "one node: the whole limit");

        limits.alive_counter().store(3, Ordering::Relaxed);
        let limiter = limits.limiter("/b", false, bucket(30, 0.001), OnRedisError::Local, 1);
        let admitted = (0..100).filter(|_| limiter.check("", t0).allowed).count();
        assert_eq!(admitted, 10, "three nodes: a third each");
    }

    #[test]
    fn keys_are_stable_and_change_with_the_spec() {
        assert_eq!(spec_digest(&bucket(5, 1.0)), spec_digest(&bucket(5, 1.0)));
        assert_ne!(spec_digest(&bucket(5, 1.0)), spec_digest(&bucket(6, 1.0)));
        assert_ne!(spec_digest(&bucket(5, 1.0)), spec_digest(&bucket(5, 2.0)));
    }

    #[test]
    fn a_share_is_at_least_one() {
        let d = divided(&bucket(2, 3.0), 4);
        assert_eq!((d.capacity, d.refill_per_s), (1, 0.75));
    }
}
