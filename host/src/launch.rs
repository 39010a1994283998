//! One startup path, for the binary and the end-to-end tests alike: bind (or take a
//! bound listener), build the gateway, start gossip and the discovery providers, load
//! and watch the plugin folder, watch the config file; then serve until shutdown, stop
//! the providers and leave the cluster cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::AcmeChallenge;
use crate::gateway::Gateway;
use crate::plan::TlsPlan;
use crate::plan::{Overrides, Plan};
use crate::plugins::watch::PluginWatcher;
use crate::reload::ConfigWatcher;
use crate::server::Listeners;
use crate::tls::{CertStore, Terminator, TerminatorSettings, TlsListener};
use crate::{cluster, discovery, plugins, reload, sockets};

/// How long a stopping node waits for its "leaving" gossip to go out.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// What a gateway starts from.
pub struct Launch {
    pub plan: Plan,
    /// The config file, watched for hot reload; `None` = built-in defaults.
    pub config_path: Option<PathBuf>,
    /// Command-line overrides, applied to every reloaded version of the file too.
    pub overrides: Overrides,
    /// An already-bound listener (tests bind `127.0.0.1:0`); `None` = bind
    /// `server.listen`.
    pub listener: Option<TcpListener>,
    /// The same for the TLS listener (used only with a `[tls]` section); `None` = bind
    /// `tls.listen`.
    pub tls_listener: Option<TcpListener>,
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start gossip on {addr}: {source}")]
    Gossip {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("watching the plugin folder {dir}: {source}")]
    PluginWatch { dir: PathBuf, source: notify::Error },
    #[error("watching the config file {path}: {source}")]
    ConfigWatch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("setting up TLS: {0}")]
    Tls(String),
}

/// A started gateway, not yet serving.
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// The address actually bound.
    pub addr: SocketAddr,
    /// The TLS listener's address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    listeners: Listeners,
    cluster: Option<JoinHandle<()>>,
    /// Discovery provider tasks: aborted when the gateway stops (or this is dropped).
    providers: Tasks,
    _plugin_watcher: PluginWatcher,
    _config_watcher: Option<ConfigWatcher>,
}

/// Starts everything but the accept loop.
pub async fn start(launch: Launch) -> Result<Running, StartError> {
    let Launch {
        plan,
        config_path,
        overrides,
        listener,
        tls_listener,
    } = launch;
    // Before the gateway is built: per-worker state (connection pools) is sized by it.
    crate::worker::set_count(crate::worker::resolve(plan.config.server.workers));
    let listener = match listener {
        Some(listener) => listener,
        None => bind(plan.listen).map_err(|source| StartError::Listen {
            addr: plan.listen,
            source,
        })?,
    };
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: plan.listen,
        source,
    })?;
    let plugin_dir = plan.config.plugins.dir.clone();
    let cluster_settings = plan.cluster.clone().filter(|c| c.gossip);
    let discovery_plans = plan.discovery.clone();
    let tls_plan = plan.tls.clone();
    let gateway = Gateway::new(plan, addr);
    let tls = match tls_plan {
        Some(tls_plan) => Some(start_tls(&gateway, &tls_plan, tls_listener)?),
        None => None,
    };
    let tls_addr = tls.as_ref().and_then(|t| t.listener.local_addr().ok());
    let cluster = match cluster_settings {
        Some(settings) => {
            if settings.advertise.is_none() && settings.gossip_listen.ip().is_unspecified() {
                tracing::warn!(
                    "cluster.advertise not set: other nodes are told 127.0.0.1 (single-host clusters only)"
                );
            }
            let gossip = settings.gossip_listen;
            let (view, task) =
                cluster::start(gateway.clone(), settings)
                    .await
                    .map_err(|source| StartError::Gossip {
                        addr: gossip,
                        source,
                    })?;
            let _ = gateway.cluster.set(view);
            Some(task)
        }
        None => None,
    };
    let providers = Tasks(discovery::start(&gateway, &discovery_plans));
    plugins::watch::load_all(&gateway, &plugin_dir).await;
    let plugin_watcher = plugins::watch::watch(gateway.clone(), &plugin_dir).map_err(|source| {
        StartError::PluginWatch {
            dir: plugin_dir.clone(),
            source,
        }
    })?;
    let config_watcher =
        match &config_path {
            Some(path) => Some(reload::watch(path, gateway.clone(), overrides).map_err(
                |source| StartError::ConfigWatch {
                    path: path.clone(),
                    source,
                },
            )?),
            None => None,
        };
    tracing::info!(listen = %addr, tls = ?tls_addr, config = ?config_path, "fluxgate listening");
    Ok(Running {
        gateway,
        addr,
        tls_addr,
        listeners: Listeners {
            plain: listener,
            tls,
        },
        cluster,
        providers,
        _plugin_watcher: plugin_watcher,
        _config_watcher: config_watcher,
    })
}

impl Running {
    /// Serves until `shutdown` completes, drains in-flight requests, then tells the
    /// cluster this node is leaving (so peers see "left", not wait to declare it dead).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Running {
            gateway,
            listeners,
            cluster,
            providers,
            ..
        } = self;
        crate::run(listeners, gateway.clone(), shutdown).await?;
        drop(providers);
        if let (Some(view), Some(mut task)) = (gateway.cluster.get(), cluster) {
            view.leave();
            if tokio::time::timeout(LEAVE_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Tasks that end when this is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The TLS listener: bound, its certificates in a store the handshakes read, the
/// certificate files watched, the ACME task started (with `[tls.acme]`).
fn start_tls(
    gateway: &Arc<Gateway>,
    plan: &TlsPlan,
    listener: Option<TcpListener>,
) -> Result<TlsListener, StartError> {
    let listener = match listener {
        Some(listener) => listener,
        None => bind(plan.listen).map_err(|source| StartError::Listen {
            addr: plan.listen,
            source,
        })?,
    };
    let store = Arc::new(CertStore::new(plan.loaded.clone()));
    let acme_tls_alpn = plan
        .acme
        .as_ref()
        .is_some_and(|acme| acme.challenge == AcmeChallenge::TlsAlpn01);
    let terminator = Terminator::new(
        store.clone(),
        TerminatorSettings {
            http2: plan.http2,
            acme_tls_alpn,
            handshake_timeout: plan.handshake_timeout,
        },
    )
    .map_err(StartError::Tls)?;
    let port = listener
        .local_addr()
        .map_or(plan.listen.port(), |a| a.port());
    gateway
        .start_tls(store, plan, port)
        .map_err(|e| StartError::Tls(format!("watching the certificate files: {e}")))?;
    Ok(TlsListener {
        listener,
        terminator,
    })
}

/// A listener with a deep accept backlog, and SO_REUSEPORT when more workers will
/// bind their own beside it.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let reuse_port = crate::worker::count() > 1;
    TcpListener::from_std(sockets::listen_tcp(
        addr,
        sockets::ACCEPT_BACKLOG,
        reuse_port,
    )?)
}
