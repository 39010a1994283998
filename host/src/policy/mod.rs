//! Traffic policies: rate limits, response cache and CORS per route; health, circuit
//! breakers and retries per upstream group. The algorithms are plain state machines
//! (time passed in), wired into the request path by `pipeline` and `forward`; the state
//! they keep across reloads is carried by `snapshot`.

pub mod breaker;
pub mod cache_policy;
pub mod cors;
pub mod health;
pub mod lease;
pub mod outage;
pub mod rate_limit;
pub mod response_cache;
pub mod retry;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::cluster_limit::ClusterLimiter;
use crate::user_id::{self, KeySource, RequestView};
use cors::Cors;
use rate_limit::{Decision, KeyedLimiter, Limiter};
use response_cache::ResponseCache;

/// A route-wide limit: counted by this node, or for the whole cluster.
#[derive(Debug, Clone)]
pub enum RouteLimiter {
    Node(Arc<Limiter>),
    Cluster(Arc<ClusterLimiter>),
}

impl RouteLimiter {
    pub fn check(&self, now: Instant) -> Decision {
        match self {
            RouteLimiter::Node(l) => l.check(now),
            RouteLimiter::Cluster(l) => l.check("", now),
        }
    }
}

/// A per-user limiter: counted by this node, or for the whole cluster.
#[derive(Debug, Clone)]
pub enum UserLimiter {
    Node(Arc<KeyedLimiter>),
    Cluster(Arc<ClusterLimiter>),
}

impl UserLimiter {
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        match self {
            UserLimiter::Node(l) => l.check(key, now),
            UserLimiter::Cluster(l) => l.check(key, now),
        }
    }
}

/// A per-user limit and where the user id comes from.
#[derive(Debug)]
pub struct UserLimit {
    pub limiter: UserLimiter,
    pub keys: Vec<KeySource>,
}

/// A route's policies, built from its config (state reused across reloads when the
/// route's policy config did not change).
#[derive(Debug, Default)]
pub struct RoutePolicies {
    pub rate_limit: Option<RouteLimiter>,
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
