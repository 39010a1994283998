//! FluxGate host: a programmable API gateway.
//!
//! Layout (the request path is `pipeline::handle`, read it top to bottom):
//! - `config`    gateway.toml schema, parsing with key paths, validation
//! - `gateway`   state: the config snapshot behind ArcSwap + what outlives snapshots
//! - `server`    accept loop, HTTP/1.1 limits, slowloris 408, graceful drain
//! - `pipeline`  the ordered request path: limits → admin → normalise → route →
//!   plugins on-request → forward → response edits → plugins on-response
//! - `plugins`   WebAssembly plugins: bindings, engine, instance pools, chains, folder watch
//! - `router`    path patterns and most-specific-first matching (pure)
//! - `user_id`   user identification for per-user routes (pure)
//! - `balancer`  load-balancing algorithms (pure)
//! - `upstream`  upstream groups, target counters, pooled HTTP client
//! - `headers`   hop-by-hop removal, X-Forwarded-*
//! - `rewrite`   path prefix rewrites and header edits
//! - `admin`     /api/v1/health and /metrics
//! - `metrics`   Prometheus registry
//! - `body`      body types and the end-of-response hook
//! - `error`     GatewayError and its one conversion to a JSON response
//! - `reload`    config file watcher
//! - `dir_watch` debounced folder watching (config and plugin folder)
//! - `telemetry` log setup

pub mod admin;
pub mod balancer;
pub mod body;
pub mod config;
pub mod dir_watch;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod reload;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod user_id;

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
    server::serve(listener, gateway, shutdown).await
}
