//! Log lines, tagged by the gateway with the plugin's name.
//!
//! Functions (`log::info("text")`) and `format!`-style macros (`log::info!("n = {n}")`)
//! with the same names. The gateway keeps at most [`MAX_LINE_BYTES`] of a line (longer
//! is cut) and [`MAX_LINES_PER_CALL`] lines per hook call (more are dropped and
//! counted), and escapes control characters, so a message cannot forge another line.
//! Outside wasm32 the lines are captured by [`crate::testing`] (cut and capped the
//! same way inside the harness's hook calls, not escaped).

use crate::sys;

/// The longest log line the gateway keeps: 4 KiB.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// The most log lines one hook call may write.
pub const MAX_LINES_PER_CALL: usize = 16;

/// A log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    sys::log(level, message);
}

/// Logs at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fluxgate_log_trace {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fluxgate_log_debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fluxgate_log_info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fluxgate_log_warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fluxgate_log_error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+)) };
}

/// `format!`-style trace logging: `log::trace!("x = {x}")`.
pub use crate::__fluxgate_log_trace as trace;

/// `format!`-style debug logging: `log::debug!("x = {x}")`.
pub use crate::__fluxgate_log_debug as debug;

/// `format!`-style info logging: `log::info!("x = {x}")`.
pub use crate::__fluxgate_log_info as info;

/// `format!`-style warn logging: `log::warn!("x = {x}")`.
pub use crate::__fluxgate_log_warn as warn;

/// `format!`-style error logging: `log::error!("x = {x}")`.
pub use crate::__fluxgate_log_error as error;
