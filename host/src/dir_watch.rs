//! Watching a folder: changes to the files we care about arrive as debounced batches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Editors and copies write in bursts (truncate, write, rename): changes are gathered
/// this long after the first one before a batch is handed on.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Watches a folder while alive; dropping it stops the watch and closes the batches.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    batcher: JoinHandle<()>,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

/// Watches `dir` (not its subfolders). `key` names the file a changed path stands for,
/// or `None` to ignore it; each batch holds the keys changed in one burst. The folder
/// itself is watched, not the files: editors often replace a file, ending a watch on it.
pub fn watch<K>(
    dir: &Path,
    key: impl Fn(&Path) -> Option<K> + Send + 'static,
) -> Result<(DirWatch, mpsc::UnboundedReceiver<BTreeSet<K>>), notify::Error>
where
    K: Ord + Send + 'static,
{
    let dir: PathBuf = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<K>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reading a file raises access events; reacting to those would loop.
            Ok(event) if event.kind.is_access() => {}
            Ok(event) => {
                for k in event.paths.iter().filter_map(|p| key(p)) {
                    let _ = raw_tx.send(k);
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (batch_tx, batch_rx) = mpsc::unbounded_channel();
    let batcher = tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut batch = BTreeSet::from([first]);
            tokio::time::sleep(SETTLE).await;
            while let Ok(k) = raw_rx.try_recv() {
                batch.insert(k);
            }
            if batch_tx.send(batch).is_err() {
                break;
            }
        }
    });
    Ok((
        DirWatch {
            _watcher: watcher,
            batcher,
        },
        batch_rx,
    ))
}
