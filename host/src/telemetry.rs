//! Logging setup: text or JSON lines on stdout or in a log file (reopened on SIGHUP),
//! filtered by RUST_LOG or a level.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::EnvFilter;

use crate::log_file::LogFile;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` wins over `default_level`. With `file`,
/// lines go there (the returned handle reopens it); otherwise to stdout.
pub fn init(
    format: LogFormat,
    default_level: &str,
    file: Option<&Path>,
) -> std::io::Result<Option<LogFile>> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Some(path) = file else {
        let builder = builder.with_ansi(std::io::stdout().is_terminal());
        let _ = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        return Ok(None);
    };
    let log = LogFile::open(path)?;
    let builder = builder.with_ansi(false).with_writer(log.clone());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(Some(log))
}
