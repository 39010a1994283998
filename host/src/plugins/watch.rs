//! The plugin folder: every `NAME.wasm` is plugin `NAME`; adding, replacing or deleting
//! a file takes effect without a restart. Compilation runs on the blocking pool, off the
//! request path.

use std::path::Path;
use std::sync::Arc;

use crate::dir_watch::{self, DirWatch};
use crate::gateway::Gateway;
use crate::plan::is_plugin_name;

/// Watches the plugin folder while alive.
pub struct PluginWatcher {
    _watch: DirWatch,
}

/// The plugin name of a path, if it is `NAME.wasm` with a valid name.
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    is_plugin_name(stem).then(|| stem.to_owned())
}

/// Loads every plugin file in `dir` now (a missing folder means no plugins).
pub async fn load_all(gateway: &Arc<Gateway>, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::info!(dir = %dir.display(), "plugin folder does not exist yet: it is created and watched for NAME.wasm files");
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| plugin_name(&e.path()))
        .collect();
    names.sort();
    for name in names {
        sync_one(gateway, dir, &name).await;
    }
}

/// Starts watching `dir` (created if missing, so plugins can be dropped in later).
pub fn watch(gateway: Arc<Gateway>, dir: &Path) -> Result<PluginWatcher, notify::Error> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the plugin folder");
    }
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let (watch, mut changes) = dir_watch::watch(&dir, plugin_name)?;
    // Ends when the watch is dropped (its batches close).
    tokio::spawn(async move {
        while let Some(names) = changes.recv().await {
            for name in names {
                sync_one(&gateway, &dir, &name).await;
            }
        }
    });
    Ok(PluginWatcher { _watch: watch })
}

/// Brings plugin `name` in line with its file: load a new version, or unload.
async fn sync_one(gateway: &Arc<Gateway>, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.wasm"));
    match tokio::fs::read(&path).await {
        Ok(bytes) => gateway.load_plugin(name, bytes).await,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => gateway.unload_plugin(name),
        Err(e) => {
            tracing::error!(plugin = name, error = %e, "cannot read plugin file; keeping the loaded version")
        }
    }
}
