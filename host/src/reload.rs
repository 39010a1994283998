//! Config hot reload: watch gateway.toml, validate every edit, swap in the good ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError};
use crate::gateway::Gateway;

/// Editors save in bursts (truncate, write, rename); changes are gathered for this long
/// before the file is read.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches a config file while alive; dropping it stops the watch.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `path`. `adjust` is applied to every new config before it is used
/// (command-line overrides such as `--port`).
pub fn watch(
    path: &Path,
    gateway: Arc<Gateway>,
    adjust: impl Fn(&mut Config) + Send + 'static,
) -> Result<ConfigWatcher, notify::Error> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    // Watch the directory: editors often replace the file, which ends a watch on it.
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let name = path.file_name().map(ToOwned::to_owned);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reading the file raises access events; reacting to those would loop.
            Ok(event) if event.kind.is_access() => {}
            Ok(event) if event.paths.iter().any(|p| p.file_name() == name.as_deref()) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut last_text = std::fs::read_to_string(&path).ok();
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
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
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            match config::parse(&text) {
                Ok(mut config) => {
                    adjust(&mut config);
                    let generation = gateway.apply(config);
                    gateway
                        .metrics
                        .config_reloads
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(generation, path = %path.display(), "config reloaded");
                }
                Err(e) => reject(&gateway, &e),
            }
            last_text = Some(text);
        }
    });
    Ok(ConfigWatcher {
        _watcher: watcher,
        task,
    })
}

fn reject(gateway: &Gateway, error: &ConfigError) {
    gateway
        .metrics
        .config_reloads
        .with_label_values(&["error"])
        .inc();
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
