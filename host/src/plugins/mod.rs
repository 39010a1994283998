//! WebAssembly plugins: user logic at the request and response hooks.
//!
//! - `bindings`  generated from wit/plugin.wit (the contract, `fluxgate:plugin@0.2`)
//! - `runtime`   the process-wide engine (epoch deadlines) and the store state: memory
//!   limit, WASI with nothing granted, the call an instance is working on
//! - `message`   the request and response a call works on, the edits it makes
//!   (applied only when it ends normally) and the rules they are checked against
//! - `host_api`  the handles' methods and the host imports (log, kv, clock), bounded
//!   per call
//! - `kv`        the per-plugin key-value store behind the `kv-*` imports
//! - `language`  the language runtime a component carries (its limits' defaults)
//! - `check`     `fluxgate-host plugin check`: one file loaded, initialised and called
//!   once per hook through the same registry and pools, without a gateway
//! - `call`      the limits a call runs under and the ways it can fail
//! - `gate`      per plugin: calls at once, instance and idle-memory budgets, breaker
//! - `pool`      warm instances per plugin version and config; calls under limits
//! - `registry`  which version of each plugin is in force (ArcSwap), loading/unloading
//! - `chain`     running a route's chain: on-request in order, on-response reversed
//! - `watch`     the watched plugin folder (untrusted: regular files only, size cap)

pub mod bindings;
pub mod call;
pub mod chain;
pub mod check;
pub mod gate;
pub mod host_api;
pub mod kv;
pub mod language;
pub mod message;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod watch;

pub use call::{CallError, Limits, LimitsByLanguage};
pub use chain::{Chain, ChainCache, Entries, OnRequest, PluginFailure};
pub use language::Language;
pub use message::{RequestState, ResponseState};
pub use registry::{ChainEntry, HostSettings, PluginHost};
