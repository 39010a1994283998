//! Traffic-policy tables: value checks, and the typed limits and CORS policy a route
//! is built with (see `config/policy.rs` for the keys themselves).

use std::time::Duration;

use crate::config::{
    CacheConfig, CircuitBreakerConfig, HealthCheckConfig, LimitScopeConfig, OnRedisError,
    OutlierConfig, Problem, RateAlgorithm, RateLimitConfig, RetryConfig, RouteConfig,
    UpstreamConfig,
};
use crate::policy::cors::Cors;
use crate::policy::rate_limit::{Algorithm, LimitSpec};
use crate::user_id::KeySource;

/// Where a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// Each node counts alone.
    Node,
    /// One count for the cluster (Redis, else limit ÷ alive members).
    Cluster { on_redis_error: OnRedisError },
}

/// A route-wide limit: its spec and scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitPlan {
    pub spec: LimitSpec,
    pub scope: LimitScope,
}

/// A per-user limit: its spec, where user ids come from, how many are tracked.
#[derive(Debug, Clone, PartialEq)]
pub struct UserLimitPlan {
    pub spec: LimitSpec,
    pub keys: Vec<KeySource>,
    pub max_keys: u64,
    pub scope: LimitScope,
}

/// A route's policy tables, compiled.
#[derive(Debug, Clone, Default)]
pub(super) struct RoutePolicyPlan {
    pub rate_limit: Option<LimitPlan>,
    pub user_rate_limit: Option<UserLimitPlan>,
    pub cors: Option<Cors>,
}

/// Checks an upstream group's `health_check`, `outlier_detection`, `circuit_breaker`
/// and `retry` tables; `at` is the group's key path.
pub(super) fn check_upstream(at: &str, upstream: &UpstreamConfig, out: &mut Vec<Problem>) {
    let at = |key: &str| format!("{at}.{key}");
    if let Some(h) = &upstream.health_check {
        check_health(&at("health_check"), h, out);
    }
    if let Some(o) = &upstream.outlier_detection {
        check_outlier(&at("outlier_detection"), o, out);
    }
    if let Some(b) = &upstream.circuit_breaker {
        check_breaker(&at("circuit_breaker"), b, out);
    }
    if let Some(r) = &upstream.retry {
        check_retry(&at("retry"), r, out);
    }
}

/// The typed spec of a checked `rate_limit` table.
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

/// Checks and compiles a route's `rate_limit`, `user_rate_limit`, `cache` and `cors`;
/// `at` is the route's key path.
pub(super) fn compile_route_policies(
    at: &str,
    route: &RouteConfig,
    out: &mut Vec<Problem>,
) -> RoutePolicyPlan {
    let at = |key: &str| format!("{at}.{key}");
    let mut plan = RoutePolicyPlan::default();
    if let Some(limit) = &route.rate_limit {
        check_rate_limit(&at("rate_limit"), limit, out);
        if !limit.key.is_empty() {
            out.push(Problem::new(
                at("rate_limit.key"),
                "a route-wide limit has no key; per-user limits go in user_rate_limit",
            ));
        }
        plan.rate_limit = Some(LimitPlan {
            spec: limit_spec(limit),
            scope: limit_scope(limit),
        });
    }
    if let Some(limit) = &route.user_rate_limit {
        check_rate_limit(&at("user_rate_limit"), limit, out);
        let mut keys = Vec::with_capacity(limit.key.len());
        for (j, key) in limit.key.iter().enumerate() {
            match KeySource::parse(key) {
                Ok(k) => keys.push(k),
                Err(e) => out.push(Problem::new(at(&format!("user_rate_limit.key[{j}]")), e)),
            }
        }
        if keys.is_empty() {
            keys.push(KeySource::Ip);
        }
        if limit.max_keys == 0 {
            out.push(Problem::new(
                at("user_rate_limit.max_keys"),
                "must be greater than 0",
            ));
        }
        plan.user_rate_limit = Some(UserLimitPlan {
            spec: limit_spec(limit),
            keys,
            max_keys: limit.max_keys,
            scope: limit_scope(limit),
        });
    }
    if let Some(cache) = &route.cache {
        check_cache(&at("cache"), cache, out);
    }
    if let Some(cors) = &route.cors {
        match Cors::new(cors) {
            Ok(compiled) => plan.cors = Some(compiled),
            Err(e) => out.push(Problem::new(at("cors"), e)),
        }
        if cors.allow_origins.is_empty() {
            out.push(Problem::new(
                at("cors.allow_origins"),
                "needs at least one origin (or \"*\")",
            ));
        }
    }
    plan
}

/// The scope of a checked `rate_limit` table.
fn limit_scope(cfg: &RateLimitConfig) -> LimitScope {
    match cfg.scope {
        LimitScopeConfig::Node => LimitScope::Node,
        LimitScopeConfig::Cluster => LimitScope::Cluster {
            on_redis_error: cfg.on_redis_error,
        },
    }
}

fn check_rate_limit(at: &str, limit: &RateLimitConfig, out: &mut Vec<Problem>) {
    if limit.scope == LimitScopeConfig::Node && limit.on_redis_error != OnRedisError::Local {
        out.push(Problem::new(
            format!("{at}.on_redis_error"),
            "only applies with scope = \"cluster\"",
        ));
    }
    if limit.capacity == 0 {
        out.push(Problem::new(
            format!("{at}.capacity"),
            "must be greater than 0",
        ));
    }
    match limit.algorithm {
        RateAlgorithm::TokenBucket | RateAlgorithm::LeakyBucket => {
            if !(limit.refill_per_s.is_finite() && limit.refill_per_s > 0.0) {
                out.push(Problem::new(
                    format!("{at}.refill_per_s"),
                    "must be a number greater than 0",
                ));
            }
        }
        RateAlgorithm::FixedWindow | RateAlgorithm::SlidingWindow => {
            if limit.window_ms == 0 || limit.window_ms > 86_400_000 {
                out.push(Problem::new(
                    format!("{at}.window_ms"),
                    "must be between 1 and 86400000",
                ));
            }
        }
    }
}

fn check_cache(at: &str, cache: &CacheConfig, out: &mut Vec<Problem>) {
    for (key, value) in [
        ("ttl_ms", cache.ttl_ms),
        ("max_entries", cache.max_entries),
        ("max_body_bytes", cache.max_body_bytes as u64),
        ("max_ttl_ms", cache.max_ttl_ms),
    ] {
        if value == 0 {
            out.push(Problem::new(
                format!("{at}.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if cache.max_body_bytes > 64 * 1024 * 1024 {
        out.push(Problem::new(
            format!("{at}.max_body_bytes"),
            "must be at most 67108864",
        ));
    }
}

fn check_health(at: &str, h: &HealthCheckConfig, out: &mut Vec<Problem>) {
    if !h.path.starts_with('/') {
        out.push(Problem::new(
            format!("{at}.path"),
            format!("\"{}\" must start with '/'", h.path),
        ));
    } else if h.path.parse::<http::uri::PathAndQuery>().is_err() {
        out.push(Problem::new(format!("{at}.path"), "is not a valid path"));
    }
    if h.interval_ms < 100 {
        out.push(Problem::new(
            format!("{at}.interval_ms"),
            "must be at least 100",
        ));
    }
    if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms.max(1) {
        out.push(Problem::new(
            format!("{at}.timeout_ms"),
            "must be greater than 0 and at most interval_ms",
        ));
    }
    if !(100..=599).contains(&h.expected_status) {
        out.push(Problem::new(
            format!("{at}.expected_status"),
            "must be an HTTP status (100-599)",
        ));
    }
    for (key, value) in [
        ("healthy_threshold", h.healthy_threshold),
        ("unhealthy_threshold", h.unhealthy_threshold),
    ] {
        if value == 0 {
            out.push(Problem::new(
                format!("{at}.{key}"),
                "must be greater than 0",
            ));
        }
    }
}

fn check_outlier(at: &str, o: &OutlierConfig, out: &mut Vec<Problem>) {
    if o.consecutive_failures == 0 {
        out.push(Problem::new(
            format!("{at}.consecutive_failures"),
            "must be greater than 0",
        ));
    }
    if o.base_ejection_ms == 0 || o.base_ejection_ms > o.max_ejection_ms {
        out.push(Problem::new(
            format!("{at}.base_ejection_ms"),
            "must be greater than 0 and at most max_ejection_ms",
        ));
    }
}

fn check_breaker(at: &str, b: &CircuitBreakerConfig, out: &mut Vec<Problem>) {
    for (key, value) in [
        ("failure_threshold", u64::from(b.failure_threshold)),
        ("window_s", b.window_s),
        ("open_s", b.open_s),
        ("half_open_requests", u64::from(b.half_open_requests)),
        ("success_threshold", u64::from(b.success_threshold)),
    ] {
        if value == 0 {
            out.push(Problem::new(
                format!("{at}.{key}"),
                "must be greater than 0",
            ));
        }
    }
    check_statuses(&format!("{at}.failure_status"), &b.failure_status, out);
}

fn check_retry(at: &str, r: &RetryConfig, out: &mut Vec<Problem>) {
    if !(1..=10).contains(&r.attempts) {
        out.push(Problem::new(
            format!("{at}.attempts"),
            "must be between 1 and 10 (tries in all, the first included)",
        ));
    }
    if r.base_ms > r.max_ms {
        out.push(Problem::new(
            format!("{at}.base_ms"),
            "must be at most max_ms",
        ));
    }
    if !(r.budget_ratio.is_finite() && (0.0..=1.0).contains(&r.budget_ratio)) {
        out.push(Problem::new(
            format!("{at}.budget_ratio"),
            "must be between 0.0 and 1.0",
        ));
    }
    if !(r.budget_min_per_s.is_finite() && r.budget_min_per_s >= 0.0) {
        out.push(Problem::new(
            format!("{at}.budget_min_per_s"),
            "must be a number of at least 0",
        ));
    }
    if r.max_body_bytes > 16 * 1024 * 1024 {
        out.push(Problem::new(
            format!("{at}.max_body_bytes"),
            "must be at most 16777216",
        ));
    }
    check_statuses(&format!("{at}.on_status"), &r.on_status, out);
}

fn check_statuses(at: &str, statuses: &[u16], out: &mut Vec<Problem>) {
    for (j, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            out.push(Problem::new(
                format!("{at}[{j}]"),
                format!("{status} is not an HTTP status"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {

    use crate::plan::test_problems as problems;

    const UPSTREAM: &str = "[upstreams.u]\ntargets = [{ url = \"http://127.0.0.1:9000\" }]\n";

    #[test]
    fn the_design_example_policies_are_valid() {
        let text = format!(
            "{UPSTREAM}health_check = {{ path = \"/health\", interval_ms = 2000, timeout_ms = 1000, expected_status = 200 }}\n\
             circuit_breaker = {{ failure_threshold = 5, window_s = 60, open_s = 30, half_open_requests = 3, success_threshold = 2 }}\n\
             retry = {{ attempts = 3, base_ms = 100, on_status = [502, 503, 504] }}\n\
             outlier_detection = {{ consecutive_failures = 5 }}\n\
             [[routes]]\npath = \"/api/*\"\nupstream = \"u\"\nwebsocket = true\n\
             rate_limit = {{ algorithm = \"token_bucket\", capacity = 100, refill_per_s = 10 }}\n\
             user_rate_limit = {{ algorithm = \"sliding_window\", capacity = 20, window_ms = 1000, key = [\"header:X-User-ID\", \"ip\"] }}\n\
             cache = {{ ttl_ms = 60000, max_entries = 100 }}\n\
             cors = {{ allow_origins = [\"https://app.example\"], allow_credentials = true }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn bad_policy_values_are_reported_with_their_key_paths() {
        let text = format!(
            "{UPSTREAM}health_check = {{ path = \"health\", interval_ms = 10, timeout_ms = 0, expected_status = 999, healthy_threshold = 0 }}\n\
             circuit_breaker = {{ failure_threshold = 0, failure_status = [42] }}\n\
             retry = {{ attempts = 0, base_ms = 500, max_ms = 100, budget_ratio = 2.0 }}\n\
             outlier_detection = {{ consecutive_failures = 0, base_ejection_ms = 0 }}\n\
             [[routes]]\npath = \"/a\"\nupstream = \"u\"\n\
             rate_limit = {{ capacity = 0, refill_per_s = 0.0, key = [\"ip\"] }}\n\
             user_rate_limit = {{ algorithm = \"fixed_window\", window_ms = 0, key = [\"smoke:x\"], max_keys = 0 }}\n\
             cache = {{ ttl_ms = 0 }}\n\
             cors = {{ allow_origins = [], allow_headers = [\"bad header\"] }}\n"
        );
        let found = problems(&text);
        for expected in [
            "upstreams.u.health_check.path:",
            "upstreams.u.health_check.interval_ms:",
            "upstreams.u.health_check.timeout_ms:",
            "upstreams.u.health_check.expected_status:",
            "upstreams.u.health_check.healthy_threshold:",
            "upstreams.u.circuit_breaker.failure_threshold:",
            "upstreams.u.circuit_breaker.failure_status[0]: 42 is not an HTTP status",
            "upstreams.u.retry.attempts:",
            "upstreams.u.retry.base_ms: must be at most max_ms",
            "upstreams.u.retry.budget_ratio:",
            "upstreams.u.outlier_detection.consecutive_failures:",
            "upstreams.u.outlier_detection.base_ejection_ms:",
            "routes[0].rate_limit.capacity:",
            "routes[0].rate_limit.refill_per_s:",
            "routes[0].rate_limit.key:",
            "routes[0].user_rate_limit.window_ms:",
            "routes[0].user_rate_limit.key[0]:",
            "routes[0].user_rate_limit.max_keys:",
            "routes[0].cache.ttl_ms:",
            "routes[0].cors.allow_origins:",
            "routes[0].cors:",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_policy_keys_are_errors() {
        let text = format!(
            "{UPSTREAM}retry = {{ attempts = 2, tries = 3 }}\n[[routes]]\npath = \"/a\"\nupstream = \"u\"\ncache = {{ ttl = 5 }}\n"
        );
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("upstreams.u.retry.tries")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("routes[0].cache.ttl")),
            "{found:?}"
        );
    }
}
