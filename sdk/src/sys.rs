//! The host imports on wasm32; the in-memory fakes of [`crate::testing`] everywhere else.

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::fluxgate::plugin::host;
    use crate::bindings::fluxgate::plugin::types::LogLevel;
    use crate::log::Level;

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        host::log(level, message);
    }

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }

    pub(crate) fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        host::kv_set(key, value, ttl_ms)
    }

    pub(crate) fn kv_delete(key: &str) -> bool {
        host::kv_delete(key)
    }

    pub(crate) fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, String> {
        host::kv_incr(key, delta, ttl_ms)
    }

    pub(crate) fn now_ms() -> u64 {
        host::now_ms()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub(crate) use crate::testing::fake::{kv_delete, kv_get, kv_incr, kv_set, log, now_ms};
}

pub(crate) use imp::*;
