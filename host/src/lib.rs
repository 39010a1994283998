//! FluxGate host: a programmable API gateway.
//!
//! Layout (the request path is `pipeline::handle`, read it top to bottom):
//! - `config`    gateway.toml schema, parsing with key paths, validation
//! - `gateway`   state: the config snapshot behind ArcSwap + what outlives snapshots
//! - `server`    accept loop, HTTP/1.1 limits, slowloris 408, graceful drain
//! - `pipeline`  the ordered request path: limits → admin → normalise → route → CORS
//!   preflight → plugins on-request → rate limits → cache → breaker/balancer/forward
//!   with retries → response edits → plugins on-response → CORS headers
//! - `cluster`   gossip: memberlist wire codec, SWIM state machine, UDP/TCP driver
//! - `registry`  service registry: model, replicated store, management API, `/S/*` routes
//! - `policy`    rate limits, breaker, retries, cache, health checks, CORS (state
//!   machines with time passed in)
//! - `plugins`   WebAssembly plugins: bindings, engine, instance pools, chains, folder watch
//! - `router`    path patterns and most-specific-first matching (pure)
//! - `user_id`   user identification for per-user routes (pure)
//! - `balancer`  load-balancing algorithms (pure)
//! - `upstream`  upstream groups, target counters, pooled HTTP client
//! - `headers`   hop-by-hop removal, X-Forwarded-*
//! - `rewrite`   path prefix rewrites and header edits
//! - `admin`     /api/v1/health, /api/v1/upstreams and /metrics
//! - `metrics`   Prometheus registry
//! - `body`      body types and the end-of-response hook
//! - `error`     GatewayError and its one conversion to a JSON response
//! - `reload`    config file watcher
//! - `dir_watch` debounced folder watching (config and plugin folder)
//! - `telemetry` log setup

pub mod admin;
pub mod balancer;
pub mod body;
pub mod cluster;
pub mod config;
pub mod dir_watch;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod user_id;
pub mod websocket;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use gateway::Gateway;

/// Runs a gateway on an already-bound listener until `shutdown` completes, then drains.
/// Tests bind `127.0.0.1:0` and pass the listener in.
pub async fn run(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let maintenance = tokio::spawn(registry_maintenance(gateway.clone()));
    let served = server::serve(listener, gateway, shutdown).await;
    maintenance.abort();
    served
}

/// Expires registry instances whose TTL passed, once a second.
async fn registry_maintenance(gateway: Arc<Gateway>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        gateway.expire_registrations();
    }
}
