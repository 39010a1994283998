//! The gateway's state: the current config snapshot (swapped atomically on reload) and
//! what outlives snapshots (connection pools, target counters, plugins, the registry,
//! metrics).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::cluster::view::ClusterView;
use crate::cluster_limit::ClusterLimits;
use crate::config::{Config, DiscoveryKind};
use crate::discovery::store::{self as discovered, Discovered, Part};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RouteMetrics};
use crate::plan::{Plan, TlsPlan};
use crate::plugins::PluginHost;
use crate::plugins::registry::{Compiled, LoadError};
use crate::registry::store::HeartbeatError;
use crate::registry::{self, Delta, Registration, Registry};
use crate::snapshot::{self as build, Inputs, PolicyState};
pub use crate::snapshot::{Route, Snapshot};
use crate::tls::CertStore;
use crate::tls::acme::http01::Http01Tokens;
use crate::tls::acme::task::{self as acme, AcmeContext, AcmeTask};
use crate::tls::watch::CertWatcher;
use crate::upstream::UpstreamState;

/// What became of a plugin file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLoad {
    Loaded,
    /// The same file as the version in force.
    Unchanged,
    Rejected,
    /// Rejected for a reason that may pass (no instance free): worth another try.
    RejectedForNow,
}

impl PluginLoad {
    pub fn is_transient(self) -> bool {
        self == PluginLoad::RejectedForNow
    }
}

/// Shared by every connection and the reload watcher.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    upstream_state: UpstreamState,
    policy_state: PolicyState,
    generation: AtomicU64,
    pub metrics: Metrics,
    /// Where sampled requests' spans go (the OTLP export queue in force).
    pub tracer: crate::trace::Tracer,
    /// The plugins in force (outlive config snapshots).
    pub plugins: PluginHost,
    /// Metrics of requests that matched no route, and of management requests.
    pub unrouted_metrics: Arc<RouteMetrics>,
    pub admin_metrics: Arc<RouteMetrics>,
    pub started: Instant,
    /// The address actually bound (after `--port` and port 0 resolution).
    pub local_addr: SocketAddr,
    /// This node's name in the registry and the cluster.
    pub node_name: String,
    registry: Mutex<Registry>,
    /// Where local registry changes go to be gossiped (set when a cluster runs).
    gossip: OnceLock<tokio::sync::mpsc::UnboundedSender<Delta>>,
    /// The cluster's members, when this node gossips.
    pub cluster: OnceLock<Arc<ClusterView>>,
    /// `[cluster.redis]` and the alive-member count cluster-scoped limits use.
    pub cluster_limits: ClusterLimits,
    /// What the `[[discovery]]` providers found (merged with the registry's services
    /// in each snapshot).
    discovered: Mutex<Discovered>,
    /// The TLS listener's certificates and their file watcher (with `[tls]`).
    tls: Mutex<Option<TlsServing>>,
    /// The TLS listener's bound port (redirects point at it).
    tls_port: OnceLock<u16>,
    /// ACME http-01 answers under way (the plain listener serves them).
    pub acme_tokens: Arc<Http01Tokens>,
    /// The last config reload's outcome (for the dashboard).
    last_reload: Mutex<Option<ReloadOutcome>>,
    /// Open WebSocket tunnels (a drain waits for them).
    pub tunnels: Arc<crate::tunnels::Tunnels>,
    /// Per-route rates and latencies of the last minutes (the dashboard's charts).
    pub history: crate::dashboard::history::History,
}

/// What the last config reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// When it happened (Unix milliseconds).
    pub at_ms: u64,
    /// The generation put in force, or every problem found.
    pub result: Result<u64, String>,
}

/// What the TLS listener serves: the store its handshakes read, the files behind it,
/// and the ACME task that keeps its automatic certificate.
struct TlsServing {
    store: Arc<CertStore>,
    plan: TlsPlan,
    _watcher: CertWatcher,
    _acme: Option<AcmeTask>,
}

impl Gateway {
    /// Builds a gateway from a compiled config. Its registry and cluster identity is
    /// `cluster.node_name`, else `hostname:port`.
    pub fn new(plan: Plan, local_addr: SocketAddr) -> Arc<Self> {
        let node_name = plan
            .cluster
            .as_ref()
            .and_then(|c| c.node_name.clone())
            .unwrap_or_else(|| default_node_name(local_addr));
        Self::with_node_name(plan, local_addr, node_name)
    }

    /// Builds a gateway whose registry and cluster identity is `node_name`.
    pub fn with_node_name(plan: Plan, local_addr: SocketAddr, node_name: String) -> Arc<Self> {
        let upstream_state = UpstreamState::default();
        let policy_state = PolicyState::default();
        let metrics = Metrics::new();
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let registry = Registry::new(node_name.clone(), start_ms, registry::TOMBSTONE_GRACE);
        let cluster_limits = ClusterLimits::new(plan.redis.as_ref(), &metrics);
        let snapshot = build::build(
            Arc::new(plan),
            1,
            &Inputs {
                upstream_state: &upstream_state,
                policy_state: &policy_state,
                cluster_limits: &cluster_limits,
                metrics: &metrics,
                services: &BTreeMap::new(),
            },
        );
        metrics.config_generation.set(1);
        let plugins = PluginHost::default();
        plugins.configure(build::host_settings(&snapshot.config().plugins));
        Arc::new(Self {
            tracer: crate::trace::Tracer::new(&metrics),
            plugins,
            unrouted_metrics: metrics.for_route("(none)"),
            admin_metrics: metrics.for_route("(admin)"),
            snapshot: ArcSwap::from_pointee(snapshot),
            upstream_state,
            policy_state,
            generation: AtomicU64::new(1),
            metrics,
            started: Instant::now(),
            local_addr,
            node_name,
            registry: Mutex::new(registry),
            gossip: OnceLock::new(),
            cluster: OnceLock::new(),
            cluster_limits,
            discovered: Mutex::new(Discovered::default()),
            tls: Mutex::new(None),
            tls_port: OnceLock::new(),
            acme_tokens: Arc::default(),
            last_reload: Mutex::new(None),
            tunnels: Arc::default(),
            history: Default::default(),
        })
    }

    /// Records a reload's outcome.
    pub fn note_reload(&self, result: Result<u64, String>) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(ReloadOutcome { at_ms, result });
    }

    /// The last reload's outcome (`None`: no reload since start).
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The snapshot in force now. Hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new compiled config; requests already running keep their snapshot.
    /// Returns the new generation.
    pub fn apply(&self, plan: Plan) -> u64 {
        warn_on_restart_only_changes(self.snapshot.load().config(), &plan.config);
        if let Some(tls) = &plan.tls {
            self.apply_tls(tls);
        }
        self.plugins
            .configure(build::host_settings(&plan.config.plugins));
        self.configure_export(&plan);
        self.rebuild(Arc::new(plan))
    }

    /// Starts, changes or stops the span export for `plan` (a failure is logged: the
    /// gateway serves without exporting).
    pub fn configure_export(&self, plan: &Plan) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if let Err(e) = self
            .tracer
            .configure(plan.telemetry.export.as_ref(), &self.node_name)
        {
            tracing::error!("{e}; spans are not exported");
        }
    }

    /// Serves `store` on the TLS listener: its expiry published, its files watched,
    /// and with `[tls.acme]` the task that obtains and renews the ACME certificate.
    pub fn start_tls(
        &self,
        store: Arc<CertStore>,
        plan: &TlsPlan,
        port: u16,
    ) -> Result<(), notify::Error> {
        let _ = self.tls_port.set(port);
        crate::tls::publish_expiry(&self.metrics, &store);
        let watcher = crate::tls::watch::watch(
            plan.certificates.clone(),
            store.clone(),
            self.metrics.clone(),
        )?;
        let acme = plan.acme.as_ref().map(|acme| {
            acme::spawn(AcmeContext {
                plan: acme.clone(),
                store: store.clone(),
                tokens: self.acme_tokens.clone(),
                metrics: self.metrics.clone(),
            })
        });
        *self.tls_serving() = Some(TlsServing {
            store,
            plan: plan.clone(),
            _watcher: watcher,
            _acme: acme,
        });
        Ok(())
    }

    /// A reloaded `[tls]`: a changed certificate list is served (and watched) from now
    /// on; the listener's own settings need a restart.
    fn apply_tls(&self, new: &TlsPlan) {
        let mut serving = self.tls_serving();
        let Some(current) = serving.as_mut() else {
            tracing::warn!("[tls] added: takes effect after a restart");
            return;
        };
        let old = &current.plan;
        if (old.listen, old.http2, old.handshake_timeout)
            != (new.listen, new.http2, new.handshake_timeout)
        {
            tracing::warn!(
                "tls.listen, tls.http2 or tls.handshake_timeout_ms changed: takes effect after a restart"
            );
        }
        if old.acme.as_ref().map(|a| &a.config) != new.acme.as_ref().map(|a| &a.config) {
            tracing::warn!("[tls.acme] changed: takes effect after a restart");
        }
        if old.certificates == new.certificates {
            current.plan.redirect_http = new.redirect_http;
            return;
        }
        match crate::tls::watch::watch(
            new.certificates.clone(),
            current.store.clone(),
            self.metrics.clone(),
        ) {
            Ok(watcher) => {
                current.store.replace(new.loaded.clone());
                crate::tls::publish_expiry(&self.metrics, &current.store);
                // The ACME task keeps the settings it started with (restart to change).
                current.plan = TlsPlan {
                    acme: current.plan.acme.take(),
                    ..new.clone()
                };
                current._watcher = watcher;
                tracing::info!(
                    certificates = new.loaded.len(),
                    "tls.certificates changed: serving the new list"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "tls.certificates changed but their folders cannot be watched; the certificates in force keep serving")
            }
        }
    }

    /// The TLS listener's port, once it listens.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port.get().copied()
    }

    fn tls_serving(&self) -> MutexGuard<'_, Option<TlsServing>> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The certificates the TLS listener serves now (for the admin API).
    pub fn tls_certificates(&self) -> Option<Arc<crate::tls::store::CertSet>> {
        self.tls_serving().as_ref().map(|t| t.store.current())
    }

    /// Builds and swaps in a snapshot of `plan` plus the registry's and the discovery
    /// providers' services.
    fn rebuild(&self, plan: Arc<Plan>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let registered: BTreeMap<String, Vec<Registration>> = self
            .registry()
            .services()
            .into_iter()
            .map(|(s, list)| (s, list.into_iter().map(|(r, _)| r.clone()).collect()))
            .collect();
        let services = discovered::merge(registered, &self.discovered());
        let snapshot = build::build(
            plan,
            generation,
            &Inputs {
                upstream_state: &self.upstream_state,
                policy_state: &self.policy_state,
                cluster_limits: &self.cluster_limits,
                metrics: &self.metrics,
                services: &services,
            },
        );
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.config_generation.set(generation as i64);
        generation
    }

    /// The registry (lock held briefly: never across an await).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the discovery providers found (lock held briefly: never across an await).
    pub fn discovered(&self) -> MutexGuard<'_, Discovered> {
        self.discovered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A provider's fresh answer; routes are rebuilt when its instances changed.
    pub fn set_discovered(
        &self,
        part: Part,
        kind: DiscoveryKind,
        label: &str,
        instances: Vec<Registration>,
    ) {
        let changed = self.discovered().set(part, kind, label, instances);
        if changed {
            self.refresh_services();
        }
    }

    /// A provider could not be reached: its last instances stay, marked stale.
    pub fn mark_discovery_stale(&self, part: &Part) {
        self.discovered().mark_stale(part);
    }

    /// Routes to the registry's services as they are now.
    pub fn refresh_services(&self) {
        self.rebuild(self.snapshot.load().plan.clone());
    }

    /// Sends local registry changes to the cluster from now on.
    pub fn set_gossip(&self, sender: tokio::sync::mpsc::UnboundedSender<Delta>) {
        let _ = self.gossip.set(sender);
    }

    fn publish(&self, delta: Delta) {
        if let Some(gossip) = self.gossip.get() {
            let _ = gossip.send(delta);
        }
    }

    /// Registers an instance on this node and routes to it.
    pub fn register(&self, reg: Registration) {
        tracing::info!(id = %reg.id, service = %reg.service, url = %reg.url(), "service registered");
        let delta = self.registry().register(reg, Instant::now());
        self.publish(delta);
        self.refresh_services();
    }

    /// Deregisters an instance; false if it was not registered.
    pub fn deregister(&self, id: &str) -> bool {
        let delta = self.registry().deregister(id, Instant::now());
        let Some(delta) = delta else {
            return false;
        };
        tracing::info!(id, "service deregistered");
        self.publish(delta);
        self.refresh_services();
        true
    }

    /// Renews an instance's TTL.
    pub fn heartbeat(&self, id: &str) -> Result<(), GatewayError> {
        self.registry()
            .heartbeat(id, Instant::now())
            .map_err(|e| match e {
                HeartbeatError::Unknown => GatewayError::UnknownInstance(id.to_owned()),
                HeartbeatError::OwnedElsewhere(node) => GatewayError::OwnedElsewhere {
                    id: id.to_owned(),
                    node,
                },
            })
    }

    /// Expires instances whose TTL passed and forgets old tombstones; run every second.
    pub fn expire_registrations(&self) {
        let expired = self.registry().expire(Instant::now());
        if expired.is_empty() {
            return;
        }
        for delta in expired {
            tracing::info!(id = %delta.id, "service instance expired (no heartbeat within ttl_s)");
            self.publish(delta);
        }
        self.refresh_services();
    }

    /// Compiles (on the blocking pool) and initialises `bytes` as plugin `name` and puts
    /// it in force; on any error the previous version keeps serving.
    pub async fn load_plugin(&self, name: &str, bytes: Vec<u8>) -> PluginLoad {
        if self
            .plugins
            .get(name)
            .is_some_and(|v| v.digest == crate::plugins::registry::digest(&bytes))
        {
            return PluginLoad::Unchanged;
        }
        let size = bytes.len();
        let owned = name.to_owned();
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled = Compiled::new(&owned, &bytes);
            // Compiling leaves megabytes of freed scratch memory with the allocator.
            crate::memory::release_freed_memory();
            compiled
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::Task(e.to_string())));
        let uses = self.snapshot().plugin_uses(name);
        let compile_ms = compiled
            .as_ref()
            .map_or(0, |c| c.compile_time.as_millis() as u64);
        let installed = match compiled {
            Ok(compiled) => self.plugins.install(compiled, &uses, &self.metrics).await,
            Err(e) => Err(e),
        };
        match installed {
            Ok(version) => {
                self.metrics
                    .plugin_loads
                    .with_label_values(&[name, "ok"])
                    .inc();
                self.metrics
                    .plugin_version
                    .with_label_values(&[name])
                    .set(version.version as i64);
                tracing::info!(plugin = name, version = version.version, digest = %version.digest, bytes = size, language = version.language.as_str(), compile_ms, "plugin loaded");
                PluginLoad::Loaded
            }
            Err(e) => {
                self.metrics
                    .plugin_loads
                    .with_label_values(&[name, "error"])
                    .inc();
                let keeping = if self.plugins.get(name).is_some() {
                    "the previous version keeps serving"
                } else {
                    "the plugin stays unloaded"
                };
                tracing::error!(plugin = name, "plugin rejected: {e}; {keeping}");
                if e.is_transient() {
                    PluginLoad::RejectedForNow
                } else {
                    PluginLoad::Rejected
                }
            }
        }
    }

    /// Takes plugin `name` out of service (its file was deleted).
    pub fn unload_plugin(&self, name: &str) {
        if self.plugins.unload(name) {
            self.metrics
                .plugin_version
                .with_label_values(&[name])
                .set(0);
            tracing::info!(plugin = name, "plugin unloaded (file removed)");
        }
    }
}

fn warn_on_restart_only_changes(old: &Config, new: &Config) {
    if old.plugins.dir != new.plugins.dir {
        tracing::warn!("plugins.dir changed: takes effect after a restart");
    }
    if old.discovery != new.discovery {
        tracing::warn!("[[discovery]] changed: takes effect after a restart");
    }
    let redis = |c: &Config| c.cluster.as_ref().and_then(|c| c.redis.clone());
    if redis(old) != redis(new) {
        tracing::warn!("[cluster.redis] changed: takes effect after a restart");
    }
    let (old, new) = (&old.server, &new.server);
    if old.listen != new.listen {
        tracing::warn!(old = %old.listen, new = %new.listen, "server.listen changed: takes effect after a restart");
    }
    if old.workers != new.workers {
        tracing::warn!("server.workers changed: takes effect after a restart");
    }
}

/// `host:port` of this machine, unique per gateway process on one host.
fn default_node_name(local_addr: SocketAddr) -> String {
    let host = hostname().unwrap_or_else(|| "fluxgate".to_owned());
    format!("{host}:{}", local_addr.port())
}

/// gethostname(2): works under systemd's `ProcSubset=pid`, which hides /proc/sys.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    (!host.is_empty()).then_some(host)
}
