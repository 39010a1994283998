//! Certificate files watched: a file replaced in place, by atomic rename, or by
//! swapping a symlink (certbot's `live/` links, a Kubernetes secret's `..data`) is served to new handshakes within a
//! second, without touching open connections. A broken replacement is logged and the
//! certificates in force keep serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::CertificateConfig;
use crate::dir_watch::{self, DirWatch};
use crate::metrics::Metrics;

use super::CertStore;
use super::certs::{self, CertError, LoadedCert};

/// How often the files are read again regardless of events (a change notify missed,
/// a symlink target changed outside the watched folders).
const RECHECK: Duration = Duration::from_secs(30);

/// Watches the certificate files while alive.
pub struct CertWatcher {
    _watches: Vec<DirWatch>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads every certificate again: all of them, or the first error of each that fails.
pub fn load_all(certificates: &[CertificateConfig]) -> Result<Vec<LoadedCert>, Vec<CertError>> {
    let mut loaded = Vec::with_capacity(certificates.len());
    let mut errors = Vec::new();
    for c in certificates {
        match certs::load(&c.cert, &c.key) {
            Ok(cert) => loaded.push(cert),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// Starts watching the folders of `certificates`; on a change (or every `RECHECK`) the
/// files are read again and, if all are good, swapped into `store`.
pub fn watch(
    certificates: Vec<CertificateConfig>,
    store: Arc<CertStore>,
    metrics: Metrics,
) -> Result<CertWatcher, notify::Error> {
    let folders: BTreeSet<PathBuf> = certificates
        .iter()
        .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
        .filter_map(Path::parent)
        .map(Path::to_owned)
        .collect();
    let (events, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watches = Vec::new();
    for folder in folders {
        // Any change in the folder counts, not only the files' own names: a Kubernetes
        // secret swaps a `..data` symlink the files point through. The fingerprint
        // below tells a real change from noise.
        let (watch, mut batches) = dir_watch::watch(&folder, |_| Some(()))?;
        let events = events.clone();
        tokio::spawn(async move {
            while batches.recv().await.is_some() {
                if events.send(()).is_err() {
                    break;
                }
            }
        });
        watches.push(watch);
    }
    let task = tokio::spawn(async move {
        let mut last = fingerprint(&certificates);
        loop {
            let event = tokio::time::timeout(RECHECK, changed.recv()).await;
            if matches!(event, Ok(None)) {
                break;
            }
            let now = fingerprint(&certificates);
            if now == last {
                continue;
            }
            match load_all(&certificates) {
                Ok(loaded) => {
                    let names: Vec<String> = loaded.iter().flat_map(|c| c.names.clone()).collect();
                    store.replace(loaded);
                    super::publish_expiry(&metrics, &store);
                    metrics
                        .tls_certificate_reloads
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(?names, "TLS certificates reloaded");
                    last = now;
                }
                Err(errors) => {
                    metrics
                        .tls_certificate_reloads
                        .with_label_values(&["error"])
                        .inc();
                    for e in errors {
                        tracing::error!(
                            "TLS certificate reload rejected: {e}; the certificates in force keep serving"
                        );
                    }
                    // Not remembered: the next event (the fixed file) tries again.
                }
            }
        }
    });
    Ok(CertWatcher {
        _watches: watches,
        task,
    })
}

/// What the files hold now (following symlinks), to tell a real change from noise.
fn fingerprint(certificates: &[CertificateConfig]) -> Vec<u64> {
    certificates
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| std::fs::read(p).map_or(0, |b| crate::balancer::stable_hash(&b)))
        .collect()
}
