//! FluxGate host: a programmable API gateway.
//!
//! Layout (the request path is `pipeline`: read its `mod.rs` top to bottom). Modules
//! depend one way: `launch` → `server` → `pipeline` → `forward`/`websocket` →
//! `upstream` → `policy`; all of them may use the leaves below.
//! - `launch`    one startup path (binary and tests): listener, gateway, gossip,
//!   plugin folder, config watcher; `run` serves until shutdown
//! - `server`    accept loops (plain, TLS) per worker, HTTP/1.1 (our codec) and HTTP/2
//!   (hyper) connections, drain; `worker` per-worker state
//! - `h1`        the HTTP/1.1 codec (httparse + bytes): heads, framing, chunked,
//!   client and upstream connections; `http_upgrade` a client connection after a 101
//! - `tls`       TLS termination (SNI, ALPN, reloaded certificates), TLS to upstreams
//! - `pipeline`  the ordered request path, one `Exchange` per request: limits → own
//!   endpoints → normalise → route → CORS preflight → plugins on-request → rate
//!   limits → cache → forward → response edits → cache store → plugins on-response
//!   → CORS and RateLimit headers → access log
//! - `forward`   target pick (health, breaker), send, retries; `websocket` the tunnel
//!   (`tunnels` counts the open ones for a drain)
//! - `gateway`   state: the snapshot behind ArcSwap + what outlives snapshots
//! - `snapshot`  one config view built from a plan (routes, groups, chains), with
//!   state carried over by `carry` (keyed by typed values)
//! - `plan`      the config compiled once: every check yields the typed value built
//!   from (validate, startup and reload share it)
//! - `config`    gateway.toml schema and parsing with key paths
//! - `upstream`  upstream groups, target counters, our HTTP/1.1 client with per-worker
//!   pools, hyper's client for HTTP/2, health probes
//! - `policy`    rate limits, breaker, retries, cache, health verdicts, CORS (state
//!   machines with time passed in)
//! - `plugins`   WebAssembly plugins: bindings, engine, instance pools, chains, folder watch
//! - `cluster`   gossip: memberlist wire codec, SWIM state machine, UDP/TCP driver
//! - `registry`  service registry: model, replicated store, management API, `/S/*` routes
//! - `admin`     /api/v1/health, /api/v1/upstreams and /metrics; `paths` the reserved
//!   paths; `access` who may use the admin API (loopback or the admin token)
//! - `dashboard` the embedded /dashboard page, its data and per-route history
//! - `router`    path patterns and most-specific-first matching (pure)
//! - `user_id`   user identification for per-user routes (pure)
//! - `balancer`  load-balancing algorithms (pure)
//! - `headers`   hop-by-hop removal, X-Forwarded-*; `rewrite` path and header edits
//! - `peer`      the client end of a connection; `sockets` listening sockets
//! - `metrics`   Prometheus registry; `memory` allocator settings and release
//! - `body`      body types, the one bounded reader, the end-of-response hook;
//!   `body_error` why a body failed
//! - `error`     GatewayError and its one conversion to a JSON response
//! - `reload`    config file watcher; `dir_watch` debounced folder watching
//! - `telemetry` log setup (`log_file` the file reopened on SIGHUP); `trace` request
//!   ids, trace context, OTLP span export
//! - `binary_upgrade` replacing the binary: the successor started with the sockets of
//!   `handoff`; `pid_file`, `sd_notify` tell others which process serves

pub mod access;
pub mod admin;
pub mod balancer;
pub mod binary_upgrade;
pub mod body;
pub mod body_error;
pub mod carry;
pub mod cluster;
pub mod cluster_limit;
pub mod config;
pub mod dashboard;
pub mod dir_watch;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod gateway;
pub mod h1;
pub mod handoff;
pub mod headers;
pub mod http_upgrade;
pub mod launch;
pub mod log_file;
pub mod memory;
pub mod metrics;
pub mod paths;
pub mod peer;
pub mod pid_file;
pub mod pipeline;
pub mod plan;
pub mod plugins;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod rewrite;
pub mod router;
pub mod scaffold;
pub mod sd_notify;
pub mod server;
pub mod snapshot;
pub mod sockets;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod tunnels;
pub mod upstream;
pub mod user_id;
pub mod websocket;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use gateway::Gateway;
pub use plan::Plan;

/// Runs a gateway on an already-bound listener until `shutdown` completes, then drains.
/// Tests bind `127.0.0.1:0` and pass the listener in.
pub async fn run(
    listeners: server::Listeners,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let maintenance = tokio::spawn(registry_maintenance(gateway.clone()));
    let sampler = tokio::spawn(dashboard::sample(gateway.clone()));
    let served = server::serve(listeners, gateway, shutdown).await;
    maintenance.abort();
    sampler.abort();
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
