//! Config hot reload: watch gateway.toml, validate every edit, swap in the good ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ConfigError;
use crate::dir_watch::{self, DirWatch};
use crate::gateway::Gateway;
use crate::plan::{self, Overrides};

/// Watches a config file while alive; dropping it stops the watch.
pub struct ConfigWatcher {
    _watch: DirWatch,
    reloader: Reloader,
}

impl ConfigWatcher {
    /// A handle that forces a reload (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }
}

/// Asks the config watcher to read and apply the file now, even if its text did not
/// change (SIGHUP's convention).
#[derive(Debug, Clone)]
pub struct Reloader(tokio::sync::mpsc::Sender<()>);

impl Reloader {
    pub fn reload(&self) {
        // A reload already asked for and not yet done covers this one.
        let _ = self.0.try_send(());
    }
}

/// Starts watching `path`. `overrides` (the command line's `--port` and friends) apply
/// to every new version of the file, as they did at start.
pub fn watch(
    path: &Path,
    gateway: Arc<Gateway>,
    overrides: Overrides,
) -> Result<ConfigWatcher, notify::Error> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let name = path.file_name().map(ToOwned::to_owned);
    let (watch, mut changes) = dir_watch::watch(&dir, move |p| {
        (p.file_name() == name.as_deref()).then_some(())
    })?;
    let mut last_text = std::fs::read_to_string(&path).ok();
    let (force, mut forced) = tokio::sync::mpsc::channel::<()>(1);
    // Ends when the watch is dropped (its batches close).
    tokio::spawn(async move {
        loop {
            let is_forced = tokio::select! {
                change = changes.recv() => match change {
                    Some(_) => false,
                    None => break,
                },
                Some(()) = forced.recv() => true,
            };
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(e) => {
                    reject(
                        &gateway,
                        &ConfigError::Read {
                            path: path.clone(),
                            source: e,
                        },
                    );
                    continue;
                }
            };
            if !is_forced && last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            match plan::from_text(&text, Some(&path), &overrides) {
                Ok(plan) => {
                    let generation = gateway.apply(plan);
                    gateway
                        .metrics
                        .config_reloads
                        .with_label_values(&["ok"])
                        .inc();
                    gateway.note_reload(Ok(generation));
                    tracing::info!(generation, forced = is_forced, path = %path.display(), "config reloaded");
                }
                Err(e) => reject(&gateway, &e),
            }
            last_text = Some(text);
        }
    });
    Ok(ConfigWatcher {
        _watch: watch,
        reloader: Reloader(force),
    })
}

fn reject(gateway: &Gateway, error: &ConfigError) {
    gateway
        .metrics
        .config_reloads
        .with_label_values(&["error"])
        .inc();
    let summary = match error {
        ConfigError::Invalid(problems) => problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        ConfigError::Read { .. } => error.to_string(),
    };
    gateway.note_reload(Err(summary));
    match error {
        ConfigError::Invalid(problems) => {
            for problem in problems {
                tracing::error!(key = %problem.path, "config reload rejected: {problem}");
            }
        }
        ConfigError::Read { .. } => tracing::error!("config reload rejected: {error}"),
    }
    tracing::warn!("keeping the previous config");
}
