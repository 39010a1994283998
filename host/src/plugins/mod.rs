//! WebAssembly plugins: user logic at the request and response hooks.
//!
//! - `bindings`  generated from wit/plugin.wit (the contract)
//! - `runtime`   the process-wide engine (pooling allocator, epoch deadlines) and the
//!   store state: memory limit, WASI with nothing granted, host imports
//! - `kv`        the per-plugin key-value store behind the `kv-*` imports
//! - `pool`      warm instances per plugin version and config; calls under limits
//! - `registry`  which version of each plugin is in force (ArcSwap), loading/unloading
//! - `chain`     running a route's chain: on-request in order, on-response reversed
//! - `convert`   HTTP <-> WIT records, and checks on what plugins return
//! - `watch`     the watched plugin folder

pub mod bindings;
pub mod chain;
pub mod convert;
pub mod kv;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod watch;

pub use chain::{Chain, Entries, OnRequest, PluginFailure};
pub use pool::{CallError, Limits};
pub use registry::{ChainEntry, PluginHost};
