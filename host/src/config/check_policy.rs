//! Semantic checks of the traffic-policy keys (see `policy.rs` for the keys themselves).

use super::{
    CacheConfig, CircuitBreakerConfig, HealthCheckConfig, OutlierConfig, Problem, RateAlgorithm,
    RateLimitConfig, RetryConfig, RouteConfig, UpstreamConfig,
};
use crate::user_id::KeySource;

/// Checks an upstream group's `health_check`, `outlier_detection`, `circuit_breaker`
/// and `retry` tables.
pub(super) fn check_upstream(name: &str, upstream: &UpstreamConfig, out: &mut Vec<Problem>) {
    let at = |key: &str| format!("upstreams.{name}.{key}");
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

/// Checks a route's `rate_limit`, `user_rate_limit`, `cache`, `cors` and `websocket`.
pub(super) fn check_route(i: usize, route: &RouteConfig, out: &mut Vec<Problem>) {
    let at = |key: &str| format!("routes[{i}].{key}");
    if let Some(limit) = &route.rate_limit {
        check_rate_limit(&at("rate_limit"), limit, out);
        if !limit.key.is_empty() {
            out.push(Problem::new(
                at("rate_limit.key"),
                "a route-wide limit has no key; per-user limits go in user_rate_limit",
            ));
        }
    }
    if let Some(limit) = &route.user_rate_limit {
        check_rate_limit(&at("user_rate_limit"), limit, out);
        for (j, key) in limit.key.iter().enumerate() {
            if let Err(e) = KeySource::parse(key) {
                out.push(Problem::new(at(&format!("user_rate_limit.key[{j}]")), e));
            }
        }
        if limit.max_keys == 0 {
            out.push(Problem::new(
                at("user_rate_limit.max_keys"),
                "must be greater than 0",
            ));
        }
    }
    if let Some(cache) = &route.cache {
        check_cache(&at("cache"), cache, out);
    }
    if let Some(cors) = &route.cors
        && let Err(e) = crate::policy::cors::Cors::new(cors)
    {
        out.push(Problem::new(at("cors"), e));
    }
    if let Some(cors) = &route.cors
        && cors.allow_origins.is_empty()
    {
        out.push(Problem::new(
            at("cors.allow_origins"),
            "needs at least one origin (or \"*\")",
        ));
    }
}

fn check_rate_limit(at: &str, limit: &RateLimitConfig, out: &mut Vec<Problem>) {
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

    use crate::config::test_problems as problems;

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
