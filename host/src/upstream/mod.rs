//! Upstream groups: targets, their live counters, the balancer, and the pooled client.
//!
//! - `addr`    a target's address, parsed once
//! - `stats`   a target's counters, health and breaker (kept across reloads)
//! - `group`   a group as the request path uses it: targets, pick, retry policy
//! - `client`     the pooled hyper client (HTTP/2 targets, health probes)
//! - `h1_client`  our HTTP/1.1 client: connections owned by the request, per-worker pools
//! - `build`   groups built from compiled plans, state carried over
//! - `probe`   active health-check tasks (the I/O side of `policy::health`)

pub mod addr;
mod build;
pub mod client;
pub mod group;
pub mod h1_client;
pub mod probe;
pub mod stats;

pub use addr::TargetAddr;
pub use build::{BuiltUpstreams, UpstreamState};
pub use client::HttpClient;
pub use group::{RetryPolicy, Target, UpstreamGroup};
pub use stats::{InFlight, TargetStats};
