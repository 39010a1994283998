//! Traffic-policy keys: rate limits, cache, CORS (per route); health checks, outlier
//! detection, circuit breaker, retries (per upstream group).

use serde::Deserialize;

/// `rate_limit = {...}` and `user_rate_limit = {...}` on a route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RateLimitConfig {
    pub algorithm: RateAlgorithm,
    /// Buckets: size (the burst). Windows: requests allowed per window.
    pub capacity: u32,
    /// token_bucket: tokens added per second; leaky_bucket: requests drained per second.
    pub refill_per_s: f64,
    /// fixed_window / sliding_window: window length.
    pub window_ms: u64,
    /// user_rate_limit only: where the user id comes from, first found wins
    /// (same sources as `user_id_key`). Default `["ip"]`.
    pub key: Vec<String>,
    /// user_rate_limit only: most user ids tracked at once (memory bound).
    pub max_keys: u64,
    /// `node`: each gateway counts alone. `cluster`: one limit for the whole cluster,
    /// shared through `[cluster.redis]` (without Redis: the limit ÷ alive members).
    pub scope: LimitScopeConfig,
    /// scope = "cluster" only: what happens while Redis is down or slow.
    pub on_redis_error: OnRedisError,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            algorithm: RateAlgorithm::TokenBucket,
            capacity: 100,
            refill_per_s: 10.0,
            window_ms: 1_000,
            key: Vec::new(),
            max_keys: 100_000,
            scope: LimitScopeConfig::Node,
            on_redis_error: OnRedisError::Local,
        }
    }
}

/// `rate_limit.scope`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LimitScopeConfig {
    Node,
    Cluster,
}

/// `rate_limit.on_redis_error`: a cluster limit's behaviour while Redis cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Each node enforces the limit ÷ alive cluster members on its own.
    Local,
    /// Admit everything.
    Allow,
    /// Refuse everything (429).
    Deny,
}

/// `rate_limit.algorithm`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    TokenBucket,
    SlidingWindow,
    FixedWindow,
    LeakyBucket,
}

/// `cache = {...}` on a route.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct CacheConfig {
    /// Freshness of a response that carries no `max-age`/`s-maxage`.
    pub ttl_ms: u64,
    /// Most responses kept for the route.
    pub max_entries: u64,
    /// Responses with larger bodies are passed through, not stored.
    pub max_body_bytes: usize,
    /// Upper bound on an upstream's own `max-age`/`s-maxage`.
    pub max_ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 60_000,
            max_entries: 1_000,
            max_body_bytes: 1024 * 1024,
            max_ttl_ms: 24 * 3600 * 1000,
        }
    }
}

/// Per-route CORS settings: the route's `cors = { ... }` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// "*" (any origin), exact origins like "https://app.example.com", or one leading-label wildcard like "https://*.example.com".
    ///
    /// `"*"` also admits the opaque origin `null` (sandboxed iframes, `file:` pages); an
    /// explicit `"null"` entry admits only that. Wildcard entries never match `null`. An
    /// empty list admits no origin (the config checker reports it separately).
    pub allow_origins: Vec<String>,
    /// Methods allowed cross-origin; empty = GET, HEAD, POST.
    ///
    /// Config is upper-cased when compiled (so `"put"` means `PUT`); `["*"]` allows any
    /// requested method and reflects it.
    pub allow_methods: Vec<String>,
    /// Request headers allowed; empty = none beyond CORS-safelisted ones; ["*"] = any requested header is allowed (reflected).
    pub allow_headers: Vec<String>,
    /// Response headers that scripts may read besides the CORS-safelisted ones; `["*"]`
    /// means all, which browsers honour only for requests without credentials.
    pub expose_headers: Vec<String>,
    /// Whether browsers may send cookies / HTTP authentication and let scripts read the answer.
    pub allow_credentials: bool,
    /// Access-Control-Max-Age for preflights; None = header omitted.
    pub max_age_s: Option<u64>,
}

/// `health_check = {...}` on an upstream group: active probes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub expected_status: u16,
    /// Consecutive passing probes that bring an unhealthy target back.
    pub healthy_threshold: u32,
    /// Consecutive failing probes that take a healthy target out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval_ms: 2_000,
            timeout_ms: 1_000,
            expected_status: 200,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// `outlier_detection = {...}` on an upstream group: passive health from real traffic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject a target.
    pub consecutive_failures: u32,
    /// First ejection length; each further ejection doubles it.
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 10_000,
            max_ejection_ms: 300_000,
        }
    }
}

/// `circuit_breaker = {...}` on an upstream group (one breaker per target).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    pub window_s: u64,
    pub open_s: u64,
    pub half_open_requests: u32,
    pub success_threshold: u32,
    /// Response statuses counted as failures (connect errors and timeouts always are).
    pub failure_status: Vec<u16>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window_s: 60,
            open_s: 30,
            half_open_requests: 3,
            success_threshold: 2,
            failure_status: vec![500, 502, 503, 504],
        }
    }
}

/// `retry = {...}` on an upstream group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RetryConfig {
    /// Tries in all, the first included (3 = one request + up to two retries).
    pub attempts: u32,
    pub base_ms: u64,
    pub max_ms: u64,
    /// Response statuses that are retried (connect errors and timeouts always are).
    pub on_status: Vec<u16>,
    /// Also retry POST/PATCH/... (only safe when the upstream deduplicates).
    pub retry_non_idempotent: bool,
    /// Retries allowed as a share of recent requests (0.2 = at most 20% extra load).
    pub budget_ratio: f64,
    /// Retries per second always allowed, so a quiet group can still retry.
    pub budget_min_per_s: f64,
    /// Request bodies up to this size are kept so they can be re-sent; a larger or
    /// chunked body is streamed and its request is not retried.
    pub max_body_bytes: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_ms: 100,
            max_ms: 2_000,
            on_status: vec![502, 503, 504],
            retry_non_idempotent: false,
            budget_ratio: 0.2,
            budget_min_per_s: 5.0,
            max_body_bytes: 64 * 1024,
        }
    }
}
