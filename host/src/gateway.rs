//! The gateway's state: the current config snapshot (swapped atomically on reload) and
//! what outlives snapshots (connection pools, target counters, metrics).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method};
use tokio::time::Instant;

use crate::config::{Config, DEFAULT_USER_ID_KEY, PluginRef, PluginsConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::plugins::registry::{Compiled, LoadError};
use crate::plugins::{ChainEntry, Limits, PluginHost};
use crate::policy::health::HealthCheckers;
use crate::policy::{PolicyBuild, PolicyState, RoutePolicies};
use crate::registry::store::HeartbeatError;
use crate::registry::{self, Delta, Registration, Registry};
use crate::rewrite::{HeaderEdits, PathRewrite};
use crate::router::{Pattern, RouteSpec, Router};
use crate::upstream::{UpstreamGroup, UpstreamState};
use crate::user_id::KeySource;

/// A route as the request path uses it.
#[derive(Debug)]
pub struct Route {
    /// Label in logs and metrics, with the metric handles for it.
    pub metrics: Arc<RouteMetrics>,
    pub upstream: Arc<UpstreamGroup>,
    pub rewrite: PathRewrite,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub preserve_host: bool,
    pub host_rewrite: Option<HeaderValue>,
    /// The route's own plugin chain (runs after the global one).
    pub plugins: Vec<ChainEntry>,
    /// Rate limits, cache, CORS, WebSocket permission.
    pub policies: RoutePolicies,
}

/// One consistent view of the config: a request loads it once and uses it throughout.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub router: Router,
    /// Indexed by `RouteMatch::index` (config order).
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    /// `[plugins] global`: runs first on every routed request.
    pub global_plugins: Vec<ChainEntry>,
    /// Some per-user route or user rate limit reads a form field.
    pub reads_forms: bool,
    /// Probes of this snapshot's upstream targets; they stop when the snapshot goes.
    pub health_checkers: HealthCheckers,
}

impl Snapshot {
    /// Every (config, limits) plugin `name` is used with, so a new version can be
    /// initialised with each before it goes into service.
    pub fn plugin_uses(&self, name: &str) -> Vec<(Arc<str>, Limits)> {
        let mut uses: Vec<(Arc<str>, Limits)> = Vec::new();
        let entries = self
            .global_plugins
            .iter()
            .chain(self.routes.iter().flat_map(|r| r.plugins.iter()));
        for entry in entries.filter(|e| &*e.name == name) {
            if !uses
                .iter()
                .any(|(c, l)| *c == entry.config_json && *l == entry.limits)
            {
                uses.push((entry.config_json.clone(), entry.limits));
            }
        }
        uses
    }
}

/// Shared by every connection and the reload watcher.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    upstream_state: UpstreamState,
    policy_state: PolicyState,
    generation: AtomicU64,
    pub metrics: Metrics,
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
    pub cluster: OnceLock<Arc<crate::cluster::ClusterView>>,
}

impl Gateway {
    /// Builds a gateway from a validated config.
    pub fn new(config: Config, local_addr: SocketAddr) -> Arc<Self> {
        Self::with_node_name(config, local_addr, default_node_name(local_addr))
    }

    /// Builds a gateway whose registry and cluster identity is `node_name`.
    pub fn with_node_name(config: Config, local_addr: SocketAddr, node_name: String) -> Arc<Self> {
        let upstream_state = UpstreamState::default();
        let policy_state = PolicyState::default();
        let metrics = Metrics::new();
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let registry = Registry::new(node_name.clone(), start_ms, registry::TOMBSTONE_GRACE);
        let snapshot = build_snapshot(
            config,
            1,
            &upstream_state,
            &policy_state,
            &metrics,
            &BTreeMap::new(),
        );
        metrics.config_generation.set(1);
        Arc::new(Self {
            plugins: PluginHost::default(),
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
        })
    }

    /// The snapshot in force now. Hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in a new validated config; requests already running keep their snapshot.
    /// Returns the new generation.
    pub fn apply(&self, config: Config) -> u64 {
        warn_on_restart_only_changes(&self.snapshot.load().config, &config);
        self.rebuild(config)
    }

    /// Builds and swaps in a snapshot of `config` plus the registry's services.
    fn rebuild(&self, config: Config) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let services: BTreeMap<String, Vec<Registration>> = self
            .registry()
            .services()
            .into_iter()
            .map(|(s, list)| (s, list.into_iter().map(|(r, _)| r.clone()).collect()))
            .collect();
        let snapshot = build_snapshot(
            config,
            generation,
            &self.upstream_state,
            &self.policy_state,
            &self.metrics,
            &services,
        );
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.config_generation.set(generation as i64);
        generation
    }

    /// The registry (lock held briefly: never across an await).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes to the registry's services as they are now.
    pub fn refresh_services(&self) {
        self.rebuild(self.snapshot.load().config.clone());
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
    pub fn heartbeat(&self, id: &str) -> Result<(), crate::error::GatewayError> {
        self.registry()
            .heartbeat(id, Instant::now())
            .map_err(|e| match e {
                HeartbeatError::Unknown => {
                    crate::error::GatewayError::UnknownInstance(id.to_owned())
                }
                HeartbeatError::OwnedElsewhere(node) => {
                    crate::error::GatewayError::OwnedElsewhere {
                        id: id.to_owned(),
                        node,
                    }
                }
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
    pub async fn load_plugin(&self, name: &str, bytes: Vec<u8>) {
        if self
            .plugins
            .get(name)
            .is_some_and(|v| v.digest == crate::plugins::registry::digest(&bytes))
        {
            return;
        }
        let size = bytes.len();
        let owned = name.to_owned();
        let compiled = tokio::task::spawn_blocking(move || Compiled::new(&owned, &bytes))
            .await
            .unwrap_or_else(|e| Err(LoadError::Compile(format!("compile task failed: {e}"))));
        let uses = self.snapshot().plugin_uses(name);
        let installed = match compiled {
            Ok(compiled) => self.plugins.install(compiled, &uses).await,
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
                tracing::info!(plugin = name, version = version.version, digest = %version.digest, bytes = size, "plugin loaded");
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

fn chain(refs: &[PluginRef], settings: &PluginsConfig, metrics: &Metrics) -> Vec<ChainEntry> {
    let limits = Limits {
        timeout_ms: settings.timeout_ms,
        memory_bytes: (settings.memory_limit_mb as usize) << 20,
        max_idle: settings.max_idle_instances,
    };
    refs.iter()
        .map(|r| {
            // A TOML table always serialises to JSON.
            let json = serde_json::to_string(&r.config).unwrap_or_else(|_| "{}".to_owned());
            ChainEntry::new(&r.name, json, limits, metrics.for_plugin(&r.name))
        })
        .collect()
}

fn warn_on_restart_only_changes(old: &Config, new: &Config) {
    if old.plugins.dir != new.plugins.dir {
        tracing::warn!("plugins.dir changed: takes effect after a restart");
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fluxgate".to_owned());
    format!("{host}:{}", local_addr.port())
}

fn build_snapshot(
    config: Config,
    generation: u64,
    state: &UpstreamState,
    policy_state: &PolicyState,
    metrics: &Metrics,
    services: &BTreeMap<String, Vec<Registration>>,
) -> Snapshot {
    let (service_groups, service_routes) = registry::service_routes(services, &config.routes);
    let mut all_upstreams = config.upstreams.clone();
    all_upstreams.extend(service_groups);
    let built = state.build(&all_upstreams, metrics);
    let upstreams = built.groups;
    let mut policies = PolicyBuild::default();
    let default_keys: Arc<[KeySource]> = Arc::from(vec![
        KeySource::parse(DEFAULT_USER_ID_KEY).unwrap_or(KeySource::Ip),
    ]);
    let mut specs = Vec::new();
    let mut routes = Vec::new();
    for route in config.routes.iter().chain(&service_routes) {
        // Validation guarantees the pattern and upstream; a route failing either is
        // skipped rather than trusted.
        let (Ok(pattern), Some(upstream)) =
            (Pattern::parse(&route.path), upstreams.get(&route.upstream))
        else {
            continue;
        };
        let keys: Vec<KeySource> = route
            .user_id_key
            .iter()
            .filter_map(|k| KeySource::parse(k).ok())
            .collect();
        specs.push(RouteSpec {
            pattern,
            methods: route
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            users: route.users.clone(),
            user_id_key: if keys.is_empty() {
                default_keys.clone()
            } else {
                Arc::from(keys)
            },
        });
        let label = route.name.as_deref().unwrap_or(&route.path);
        routes.push(Route {
            policies: policy_state.route(label, route, &mut policies),
            metrics: metrics.for_route(label),
            upstream: upstream.clone(),
            rewrite: PathRewrite::from_route(route),
            request_headers: HeaderEdits::compile(&route.request_headers),
            response_headers: HeaderEdits::compile(&route.response_headers),
            preserve_host: route.preserve_host,
            host_rewrite: route
                .host_rewrite
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            plugins: chain(&route.plugins, &config.plugins, metrics),
        });
    }
    policy_state.commit(policies);
    let router = Router::new(specs);
    Snapshot {
        generation,
        global_plugins: chain(&config.plugins.global, &config.plugins, metrics),
        reads_forms: router.uses_form_keys() || routes.iter().any(|r| r.policies.reads_form()),
        health_checkers: built.checkers,
        router,
        routes,
        upstreams,
        config,
    }
}
