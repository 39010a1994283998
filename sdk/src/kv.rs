//! The plugin's key-value store, shared by all instances of the plugin in a gateway
//! process (all routes, all configs) and bounded in bytes (`plugins.kv_max_mb`; the
//! entries closest to expiry are evicted first).
//!
//! Keys are at most [`MAX_KEY_BYTES`] and values at most [`MAX_VALUE_BYTES`]; one hook
//! call may write ([`set`], [`incr`]) at most [`MAX_WRITES_PER_CALL`] times. A write
//! the store refuses returns an error saying why. Outside wasm32 (in `cargo test`)
//! these functions use the in-memory store of [`crate::testing`], which applies the
//! same limits inside the harness's hook calls.

use crate::sys;

/// The longest key: 1 KiB.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest value: 64 KiB.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The most writes ([`set`], [`incr`]) one hook call may make.
pub const MAX_WRITES_PER_CALL: usize = 64;

/// The value stored under `key`, if any (and not expired).
pub fn get(key: &str) -> Option<Vec<u8>> {
    sys::kv_get(key)
}

/// The value under `key` as UTF-8 text, if present and valid.
pub fn get_string(key: &str) -> Option<String> {
    get(key).and_then(|v| String::from_utf8(v).ok())
}

/// Stores `value` under `key`; `ttl_ms` of `None` keeps it until deleted or evicted.
/// An error says why the write was refused (key or value too long, too many writes in
/// this hook call).
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl_ms: Option<u64>) -> Result<(), String> {
    sys::kv_set(key, value.as_ref(), ttl_ms)
}

/// Deletes `key`; true if it existed.
pub fn delete(key: &str) -> bool {
    sys::kv_delete(key)
}

/// Atomically adds `delta` to the counter under `key` and returns the new value.
/// Counters are stored as decimal text (so [`get_string`] reads them); a missing,
/// expired or non-numeric value counts as 0. `ttl_ms` applies only when the key is
/// created. An error says why the write was refused.
///
/// `incr` is a write even with a `delta` of 0: read a counter with [`get_string`].
pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
    sys::kv_incr(key, delta, ttl_ms)
}
