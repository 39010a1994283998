//! The plugin's key-value store, shared by all instances of the plugin in a gateway.
//!
//! Keys are at most 1 KiB and values at most 64 KiB. Outside wasm32 (in `cargo test`)
//! these functions use the in-memory store of [`crate::testing`].

use crate::sys;

/// The value stored under `key`, if any (and not expired).
pub fn get(key: &str) -> Option<Vec<u8>> {
    sys::kv_get(key)
}

/// The value under `key` as UTF-8 text, if present and valid.
pub fn get_string(key: &str) -> Option<String> {
    get(key).and_then(|v| String::from_utf8(v).ok())
}

/// Stores `value` under `key`; `ttl_ms` of `None` keeps it until deleted or evicted.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl_ms: Option<u64>) {
    sys::kv_set(key, value.as_ref(), ttl_ms);
}

/// Deletes `key`; true if it existed.
pub fn delete(key: &str) -> bool {
    sys::kv_delete(key)
}

/// Atomically adds `delta` to the counter under `key` (a missing or expired key counts
/// from 0) and returns the new value. `ttl_ms` applies only when the key is created.
///
/// `incr(key, 0, ttl)` reads a counter without changing it.
pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
    sys::kv_incr(key, delta, ttl_ms)
}
