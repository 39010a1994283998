//! Traffic policies: rate limits, response cache and CORS per route; health, circuit
//! breakers and retries per upstream group. The algorithms are plain state machines
//! (time passed in), wired into the request path by `pipeline`.

pub mod breaker;
pub mod cache_policy;
pub mod cors;
pub mod health;
pub mod rate_limit;
pub mod response_cache;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::config::{RateAlgorithm, RateLimitConfig, RouteConfig};
use crate::user_id::{self, KeySource, RequestView};
use cors::Cors;
use rate_limit::{Algorithm, Decision, KeyedLimiter, LimitSpec, Limiter};
use response_cache::ResponseCache;

fn limit_spec(cfg: &RateLimitConfig) -> LimitSpec {
    LimitSpec {
        algorithm: match cfg.algorithm {
            RateAlgorithm::TokenBucket => Algorithm::TokenBucket,
            RateAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
            RateAlgorithm::FixedWindow => Algorithm::FixedWindow,
            RateAlgorithm::LeakyBucket => Algorithm::LeakyBucket,
        },
        capacity: cfg.capacity,
        refill_per_s: cfg.refill_per_s,
        window: Duration::from_millis(cfg.window_ms),
    }
}

/// A per-user limit and where the user id comes from.
#[derive(Debug)]
pub struct UserLimit {
    pub limiter: Arc<KeyedLimiter>,
    pub keys: Vec<KeySource>,
}

/// A route's policies, built from its config (state reused across reloads when the
/// route's policy config did not change).
#[derive(Debug, Default)]
pub struct RoutePolicies {
    pub rate_limit: Option<Arc<Limiter>>,
    pub user_rate_limit: Option<UserLimit>,
    pub cache: Option<Arc<ResponseCache>>,
    pub cors: Option<Cors>,
    pub websocket: bool,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Route,
    User,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Route => "route",
            LimitScope::User => "user",
        }
    }
}

impl RoutePolicies {
    /// Runs the route limit, then the user limit. `Ok(Some(d))` = admitted with the
    /// headers of the stricter limit; `Err` = refused.
    pub fn check_limits(
        &self,
        view: &RequestView<'_>,
        now: Instant,
    ) -> Result<Option<Decision>, (LimitScope, Decision)> {
        let mut shown: Option<Decision> = None;
        if let Some(limiter) = &self.rate_limit {
            let d = limiter.check(now);
            if !d.allowed {
                return Err((LimitScope::Route, d));
            }
            shown = Some(d);
        }
        if let Some(user) = &self.user_rate_limit {
            // Requests that carry none of the keys share one allowance rather than
            // going unlimited.
            let key = user_id::resolve(&user.keys, view).unwrap_or_default();
            let d = user.limiter.check(&key, now);
            if !d.allowed {
                return Err((LimitScope::User, d));
            }
            shown = Some(shown.map_or(d, |s| s.stricter(d)));
        }
        Ok(shown)
    }

    /// Does the user limit read a form field (so the body must be read first)?
    pub fn reads_form(&self) -> bool {
        self.user_rate_limit
            .as_ref()
            .is_some_and(|u| u.keys.iter().any(|k| matches!(k, KeySource::Form(_))))
    }
}

/// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (and
/// `Retry-After` on a refusal).
pub fn rate_limit_headers(headers: &mut HeaderMap, d: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(d.reset_secs()));
    if !d.allowed {
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(d.retry_after_secs()),
        );
    }
}

/// Policy state that outlives snapshots: a reload that leaves a route's limit or
/// cache config unchanged keeps its counters and stored responses.
#[derive(Debug, Default)]
pub struct PolicyState {
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
    user_limiters: Mutex<HashMap<String, Arc<KeyedLimiter>>>,
    caches: Mutex<HashMap<String, Arc<ResponseCache>>>,
}

/// Collects what a snapshot uses, so state of removed routes is dropped.
#[derive(Default)]
pub struct PolicyBuild {
    limiters: HashMap<String, Arc<Limiter>>,
    user_limiters: HashMap<String, Arc<KeyedLimiter>>,
    caches: HashMap<String, Arc<ResponseCache>>,
}

/// The state kept for (`label`, `cfg`) if the last snapshot had it, else a new one;
/// either way recorded in the new snapshot's `kept` set.
fn reuse<T, C: std::fmt::Debug>(
    current: &Mutex<HashMap<String, Arc<T>>>,
    kept: &mut HashMap<String, Arc<T>>,
    label: &str,
    cfg: &C,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    // The Debug text covers every setting, so any change starts fresh state.
    let key = format!("{label}\n{cfg:?}");
    let existing = current
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let state = existing.unwrap_or_else(make);
    kept.insert(key, state.clone());
    state
}

impl PolicyState {
    /// Builds one route's policies; `label` identifies the route across reloads.
    pub fn route(
        &self,
        label: &str,
        route: &RouteConfig,
        build: &mut PolicyBuild,
    ) -> RoutePolicies {
        let now = Instant::now();
        let rate_limit = route.rate_limit.as_ref().map(|cfg| {
            reuse(&self.limiters, &mut build.limiters, label, cfg, || {
                Arc::new(Limiter::new(limit_spec(cfg), now))
            })
        });
        let user_rate_limit = route.user_rate_limit.as_ref().map(|cfg| {
            let limiter = reuse(
                &self.user_limiters,
                &mut build.user_limiters,
                label,
                cfg,
                || Arc::new(KeyedLimiter::new(limit_spec(cfg), cfg.max_keys)),
            );
            let mut keys: Vec<KeySource> = cfg
                .key
                .iter()
                .filter_map(|k| KeySource::parse(k).ok())
                .collect();
            if keys.is_empty() {
                keys.push(KeySource::Ip);
            }
            UserLimit { limiter, keys }
        });
        let cache = route.cache.as_ref().map(|cfg| {
            reuse(&self.caches, &mut build.caches, label, cfg, || {
                ResponseCache::new(cfg.clone())
            })
        });
        RoutePolicies {
            rate_limit,
            user_rate_limit,
            cache,
            // Validation has compiled this already; an invalid table is dropped.
            cors: route.cors.as_ref().and_then(|c| Cors::new(c).ok()),
            websocket: route.websocket,
        }
    }

    /// Keeps exactly what the new snapshot uses.
    pub fn commit(&self, build: PolicyBuild) {
        *self.limiters.lock().unwrap_or_else(|e| e.into_inner()) = build.limiters;
        *self.user_limiters.lock().unwrap_or_else(|e| e.into_inner()) = build.user_limiters;
        *self.caches.lock().unwrap_or_else(|e| e.into_inner()) = build.caches;
    }
}

/// A header map from (name, value) pairs, for the policy modules' tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}
