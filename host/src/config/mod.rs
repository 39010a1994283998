//! The gateway.toml schema: every key, its default, and how a file becomes a `Config`.
//!
//! - `schema`  the sections and their keys (`policy` the traffic-policy tables)
//! - `load`    TOML text → `Config`: syntax, unknown keys and type errors, each with
//!   its key path
//!
//! The semantic checks (references between sections, patterns, URLs) are `plan`'s,
//! which compiles a `Config` into what the gateway is built from.

mod discovery;
mod load;
mod policy;
mod schema;
mod telemetry;
mod tls;

pub use discovery::{DiscoveryCheck, DiscoveryConfig, DiscoveryKind, RedisConfig};
pub use load::{ConfigError, Parsed, Problem, parse};
pub use policy::{
    CacheConfig, CircuitBreakerConfig, CorsConfig, HealthCheckConfig, LimitScopeConfig,
    OnRedisError, OutlierConfig, RateAlgorithm, RateLimitConfig, RetryConfig,
};
pub use schema::*;
pub use telemetry::TelemetryConfig;
pub use tls::{
    AcmeChallenge, AcmeConfig, CertificateConfig, Http2Config, LETS_ENCRYPT_DIRECTORY, TlsConfig,
    UpstreamProtocol, UpstreamTlsConfig,
};
