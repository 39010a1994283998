//! End-to-end tests: the real gateway on 127.0.0.1:0, real upstream servers started
//! in-process, the real binary for CLI, signal and log checks.

// A test crate: a panic is a failed test, which is the point (clippy.toml allows
// unwrap/expect in #[test] functions; the helpers here are test code too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod balancing;
mod binary_upgrade;
mod cli;
mod cluster;
mod cluster_interop;
mod cluster_limits;
mod dashboard;
mod deploy;
mod discovery;
mod framing;
mod http2;
mod plugin_langs;
mod plugin_safety;
mod plugins;
mod policies;
mod proxying;
mod registry;
mod reload;
mod routing;
mod support;
mod tls;
mod tracing;
mod upstream_tls;
