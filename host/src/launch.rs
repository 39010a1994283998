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
use crate::handoff::{self, Handoff, Inherited};
use crate::plan::TlsPlan;
use crate::plan::{Overrides, Plan};
use crate::plugins::watch::PluginWatcher;
use crate::reload::ConfigWatcher;
use crate::server::{Listeners, WorkerListeners};
use crate::tls::{CertStore, Terminator, TerminatorSettings, TlsListener};
use crate::{cluster, discovery, plugins, reload, sockets};

/// How long a stopping gateway waits for its last spans to be exported.
const EXPORT_GRACE: Duration = Duration::from_secs(2);
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
    /// Sockets handed over by the process this one replaces (binary upgrade): taken
    /// by label and address before anything is bound.
    pub inherited: Inherited,
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
    #[error("keeping the listening sockets for an upgrade: {0}")]
    Handoff(std::io::Error),
}

/// A started gateway, not yet serving.
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// The address actually bound.
    pub addr: SocketAddr,
    /// The TLS listener's address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    /// Duplicates of every listening socket, for a binary upgrade.
    pub handoff: Handoff,
    /// The config watcher's handle for forced reloads (SIGHUP); `None` without a file.
    pub reloader: Option<reload::Reloader>,
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
        mut inherited,
    } = launch;
    // Before the gateway is built: per-worker state (connection pools) is sized by it.
    crate::worker::set_count(crate::worker::resolve(plan.config.server.workers));
    let listener = match listener {
        Some(listener) => listener,
        None => take_or_bind(&mut inherited, handoff::HTTP, plan.listen)?,
    };
    let tls_listener = match (tls_listener, &plan.tls) {
        (Some(listener), _) => Some(listener),
        (None, Some(tls)) => Some(take_or_bind(&mut inherited, handoff::TLS, tls.listen)?),
        (None, None) => None,
    };
    let workers = worker_listeners(&mut inherited, &listener, tls_listener.as_ref())?;
    let gossip = match plan.cluster.as_ref().filter(|c| c.gossip) {
        Some(settings) => Some(take_or_bind_gossip(&mut inherited, settings.gossip_listen)?),
        None => None,
    };
    if !inherited.leftover().is_empty() {
        tracing::warn!(labels = ?inherited.leftover(), "inherited sockets the config no longer listens on are closed");
    }
    drop(inherited);
    let mut handoff = Handoff::default();
    handoff
        .add(handoff::HTTP, &listener)
        .map_err(StartError::Handoff)?;
    if let Some(tls) = &tls_listener {
        handoff
            .add(handoff::TLS, tls)
            .map_err(StartError::Handoff)?;
    }
    for worker in &workers {
        handoff
            .add(handoff::HTTP, &worker.plain)
            .map_err(StartError::Handoff)?;
        if let Some(tls) = &worker.tls {
            handoff
                .add(handoff::TLS, tls)
                .map_err(StartError::Handoff)?;
        }
    }
    if let Some((tcp, udp)) = &gossip {
        handoff
            .add(handoff::GOSSIP_TCP, tcp)
            .map_err(StartError::Handoff)?;
        handoff
            .add(handoff::GOSSIP_UDP, udp)
            .map_err(StartError::Handoff)?;
    }
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: plan.listen,
        source,
    })?;
    let plugin_dir = plan.config.plugins.dir.clone();
    let cluster_settings = plan.cluster.clone().filter(|c| c.gossip);
    let discovery_plans = plan.discovery.clone();
    let tls_plan = plan.tls.clone();
    let gateway = Gateway::new(plan, addr);
    gateway.configure_export(&gateway.snapshot().plan);
    let tls = match (tls_plan, tls_listener) {
        (Some(tls_plan), Some(listener)) => Some(start_tls(&gateway, &tls_plan, listener)?),
        _ => None,
    };
    let tls_addr = tls.as_ref().and_then(|t| t.listener.local_addr().ok());
    let cluster = match (cluster_settings, gossip) {
        (Some(settings), Some(sockets)) => {
            if settings.advertise.is_none() && settings.gossip_listen.ip().is_unspecified() {
                tracing::warn!(
                    "cluster.advertise not set: other nodes are told 127.0.0.1 (single-host clusters only)"
                );
            }
            let gossip = settings.gossip_listen;
            let (view, task) = cluster::start(gateway.clone(), settings, sockets)
                .await
                .map_err(|source| StartError::Gossip {
                    addr: gossip,
                    source,
                })?;
            let _ = gateway.cluster.set(view);
            Some(task)
        }
        _ => None,
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
    let reloader = config_watcher.as_ref().map(ConfigWatcher::reloader);
    tracing::info!(listen = %addr, tls = ?tls_addr, config = ?config_path, "fluxgate listening");
    Ok(Running {
        gateway,
        addr,
        tls_addr,
        handoff,
        reloader,
        listeners: Listeners {
            plain: listener,
            tls,
            workers,
        },
        cluster,
        providers,
        _plugin_watcher: plugin_watcher,
        _config_watcher: config_watcher,
    })
}

impl Running {
    /// Serves until `shutdown` completes, drains in-flight requests, then tells the
    /// cluster this node is leaving (so peers see "left", not wait to declare it dead)
    /// — unless `shutdown` said the process was replaced by an upgrade: the new
    /// process goes on under the same node name on the same gossip socket.
    pub async fn serve(self, shutdown: impl Future<Output = Stop>) -> std::io::Result<()> {
        let Running {
            gateway,
            listeners,
            cluster,
            providers,
            ..
        } = self;
        let stop = std::sync::Arc::new(std::sync::Mutex::new(Stop::Shutdown));
        let seen = stop.clone();
        let shutdown = async move {
            let why = shutdown.await;
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = why;
        };
        crate::run(listeners, gateway.clone(), shutdown).await?;
        drop(providers);
        gateway.tracer.shutdown(EXPORT_GRACE).await;
        let why = *stop.lock().unwrap_or_else(|e| e.into_inner());
        match (gateway.cluster.get(), cluster) {
            (Some(view), Some(mut task)) if why == Stop::Shutdown => {
                view.leave();
                if tokio::time::timeout(LEAVE_GRACE, &mut task).await.is_err() {
                    task.abort();
                }
            }
            (_, Some(task)) => task.abort(),
            _ => {}
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Why a gateway stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, Ctrl-C, a test: drain and leave the cluster.
    Shutdown,
    /// A new process took the listening sockets over: drain, do not leave.
    Upgraded,
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
    listener: TcpListener,
) -> Result<TlsListener, StartError> {
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

/// The listeners of workers 1..N (`server.workers`): inherited from the process this
/// one replaces when it handed them over, else SO_REUSEPORT siblings of worker 0's
/// (or worker 0's own socket shared, when it was bound without SO_REUSEPORT by
/// someone else, as tests do).
fn worker_listeners(
    inherited: &mut Inherited,
    plain: &TcpListener,
    tls: Option<&TcpListener>,
) -> Result<Vec<WorkerListeners>, StartError> {
    let extra = crate::worker::count().saturating_sub(1);
    let mut workers = Vec::with_capacity(extra);
    for _ in 0..extra {
        workers.push(WorkerListeners {
            plain: inherited_or_sibling(inherited, handoff::HTTP, plain)?,
            tls: match tls {
                Some(tls) => Some(inherited_or_sibling(inherited, handoff::TLS, tls)?),
                None => None,
            },
        });
    }
    Ok(workers)
}

fn inherited_or_sibling(
    inherited: &mut Inherited,
    label: &str,
    first: &TcpListener,
) -> Result<std::net::TcpListener, StartError> {
    let addr = first.local_addr().map_err(|source| StartError::Listen {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let listen_error = |source| StartError::Listen { addr, source };
    if let Some(socket) = inherited.take(label, addr) {
        return Ok(socket.into());
    }
    let first = std::net::TcpListener::from(
        std::os::fd::AsFd::as_fd(first)
            .try_clone_to_owned()
            .map_err(listen_error)?,
    );
    sockets::sibling(&first, sockets::ACCEPT_BACKLOG).map_err(listen_error)
}

/// The inherited listener labelled `label` for `addr`, else a new one.
fn take_or_bind(
    inherited: &mut Inherited,
    label: &str,
    addr: SocketAddr,
) -> Result<TcpListener, StartError> {
    let listen_error = |source| StartError::Listen { addr, source };
    match inherited.take(label, addr) {
        Some(socket) => {
            tracing::info!(%addr, label, "listening on an inherited socket");
            TcpListener::from_std(socket.into()).map_err(listen_error)
        }
        None => bind(addr).map_err(listen_error),
    }
}

/// The inherited gossip sockets for `addr`, else new ones.
fn take_or_bind_gossip(
    inherited: &mut Inherited,
    addr: SocketAddr,
) -> Result<cluster::GossipSockets, StartError> {
    let gossip_error = |source| StartError::Gossip { addr, source };
    match (
        inherited.take(handoff::GOSSIP_TCP, addr),
        inherited.take(handoff::GOSSIP_UDP, addr),
    ) {
        (Some(tcp), Some(udp)) => Ok((tcp.into(), udp.into())),
        _ => cluster::bind(addr).map_err(gossip_error),
    }
}
