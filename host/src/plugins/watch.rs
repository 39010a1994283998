//! The plugin folder: every `NAME.wasm` is plugin `NAME`; adding, replacing or deleting
//! a file takes effect without a restart. Compilation runs on the blocking pool, off the
//! request path.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// Tries of a swap rejected for a transient reason, and the first wait (doubling).
const RETRIES: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Brings plugin `name` in line with its file: load a new version, or unload. A load
/// rejected for a transient reason (every instance of the plugin busy) is tried again
/// a few times, with a growing wait, on a task of its own.
async fn sync_one(gateway: &Arc<Gateway>, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.wasm"));
    let max_bytes = gateway.snapshot().config().plugins.max_file_bytes();
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || read_plugin_file(&path, max_bytes)).await
    };
    let bytes = match read {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return gateway.unload_plugin(name),
        Ok(Err(skip)) => {
            tracing::error!(plugin = name, path = %path.display(), "plugin file skipped: {skip}; keeping the loaded version");
            return;
        }
        Err(e) => {
            tracing::error!(plugin = name, error = %e, "reading the plugin file failed");
            return;
        }
    };
    if !gateway.load_plugin(name, bytes).await.is_transient() {
        return;
    }
    let (gateway, dir, name) = (gateway.clone(), dir.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let mut wait = FIRST_RETRY;
        for attempt in 1..=RETRIES {
            tokio::time::sleep(wait).await;
            tracing::info!(plugin = %name, attempt, "trying the rejected plugin file again");
            let path = dir.join(format!("{name}.wasm"));
            let Ok(Some(bytes)) = read_plugin_file(&path, max_bytes) else {
                return;
            };
            if !gateway.load_plugin(&name, bytes).await.is_transient() {
                return;
            }
            wait *= 2;
        }
        tracing::error!(plugin = %name, "plugin file still rejected after {RETRIES} tries; change the file to try again");
    });
}

/// Reads a plugin file the folder holds, treating the folder as untrusted: only a
/// regular file is read (a FIFO, device or folder is refused without opening it for a
/// blocking read), and only up to `max_bytes`. `Ok(None)`: the file is gone.
pub fn read_plugin_file(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    check_file(&meta, max_bytes)?;
    // Non-blocking open: if the path was swapped for a FIFO since the check, the open
    // and the read below return at once instead of waiting for a writer.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    check_file(&meta, max_bytes)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut file)
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "it grew past plugins.max_file_mb ({max_bytes} bytes)"
        ));
    }
    Ok(Some(bytes))
}

fn check_file(meta: &std::fs::Metadata, max_bytes: u64) -> Result<(), String> {
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a folder"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("it is {what}, not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "it is {} bytes, over plugins.max_file_mb ({max_bytes} bytes)",
            meta.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.wasm");
        std::fs::write(&ok, b"0123456789").unwrap();
        assert_eq!(
            read_plugin_file(&ok, 10).unwrap(),
            Some(b"0123456789".to_vec())
        );
        let err = read_plugin_file(&ok, 9).unwrap_err();
        assert!(err.contains("over plugins.max_file_mb"), "{err}");
        assert_eq!(
            read_plugin_file(&dir.path().join("gone.wasm"), 10).unwrap(),
            None
        );
        let folder = dir.path().join("dir.wasm");
        std::fs::create_dir(&folder).unwrap();
        assert!(
            read_plugin_file(&folder, 10)
                .unwrap_err()
                .contains("a folder")
        );
        let fifo = dir.path().join("fifo.wasm");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Returns at once (nothing blocks waiting for a writer).
        assert!(read_plugin_file(&fifo, 10).unwrap_err().contains("a FIFO"));
    }
}
