//! Loaded plugins: one current version per name behind ArcSwap, replaced whole when a
//! new file compiles and initialises; KV stores that outlive versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::bindings::PluginPre;
use super::call::{CallError, Limits, LimitsByLanguage};
use super::gate::{BreakerLimits, PluginGate};
use super::kv::KvStore;
use super::language::Language;
use super::pool::InstancePool;
use super::runtime::{CompileError, PluginShared, Runtime, StoreState};
use crate::balancer::stable_hash;
use crate::metrics::{Metrics, PluginMetrics};
use crate::policy::breaker::BreakerState;

/// Identifies a plugin file's content (FNV-1a, hex).
pub fn digest(bytes: &[u8]) -> String {
    format!("{:016x}", stable_hash(bytes))
}

/// Instances differ by the config `init` saw and the limits they run under.
type PoolKey = (Arc<str>, Limits);

/// One compiled version of a plugin file.
pub struct PluginVersion {
    pub name: Arc<str>,
    /// Increases with every load in this process.
    pub version: u64,
    /// FNV-1a of the file, hex: tells which file is in force.
    pub digest: String,
    /// The language runtime the file carries: which of an entry's limits apply.
    pub language: Language,
    pre: PluginPre<StoreState>,
    shared: Arc<PluginShared>,
    gate: Arc<PluginGate>,
    runtime: Arc<Runtime>,
    pools: Mutex<HashMap<PoolKey, Arc<InstancePool>>>,
}

impl PluginVersion {
    /// The pool for one config (created on first use).
    pub fn pool(&self, config_json: &Arc<str>, limits: Limits) -> Arc<InstancePool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((config_json.clone(), limits))
            .or_insert_with(|| {
                Arc::new(InstancePool::new(
                    self.runtime.clone(),
                    self.pre.clone(),
                    self.shared.clone(),
                    self.gate.clone(),
                    config_json.clone(),
                    limits,
                ))
            })
            .clone()
    }
}

/// A chain entry of a config snapshot: which plugin, with what config, under which
/// limits (per language: the file loaded decides). It remembers the pool it resolved to for the version it saw, so the request
/// path needs no lookup until a new version is loaded.
pub struct ChainEntry {
    pub name: Arc<str>,
    pub config_json: Arc<str>,
    pub limits: LimitsByLanguage,
    pub metrics: PluginMetrics,
    resolved: ArcSwapOption<(Arc<PluginVersion>, Arc<InstancePool>)>,
}

impl std::fmt::Debug for ChainEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainEntry")
            .field("name", &self.name)
            .field("config_json", &self.config_json)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ChainEntry {
    pub fn new(
        name: &str,
        config_json: String,
        limits: LimitsByLanguage,
        metrics: PluginMetrics,
    ) -> Self {
        Self {
            metrics,
            name: Arc::from(name),
            config_json: Arc::from(config_json),
            limits,
            resolved: ArcSwapOption::empty(),
        }
    }
}

/// Why a plugin file was not taken into service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Runtime(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The compile task itself failed (panicked or was cancelled).
    #[error("compile task failed: {0}")]
    Task(String),
    #[error("init failed for every config it is used with, e.g. {config}: {error}")]
    Init { config: String, error: CallError },
    #[error("init fails for config {config}, which the loaded version accepts: {error}")]
    Regression { config: String, error: CallError },
    #[error("{0}")]
    Read(String),
}

impl LoadError {
    /// A rejection that may not happen again (no instance free right now): the file is
    /// tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LoadError::Init { error, .. } | LoadError::Regression { error, .. }
                if error.is_transient()
        )
    }
}

/// A plugin file compiled and checked against the world, not yet in service.
pub struct Compiled {
    name: Arc<str>,
    digest: String,
    /// The language runtime the file carries.
    pub language: Language,
    /// How long compiling took.
    pub compile_time: std::time::Duration,
    /// The contract version it was built for (e.g. "0.2.0"), if it names one.
    pub contract: Option<String>,
    pre: PluginPre<StoreState>,
    runtime: Arc<Runtime>,
}

impl Compiled {
    /// Compiles `bytes` as plugin `name`. CPU-heavy: run it on the blocking pool.
    pub fn new(name: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        let runtime = Runtime::get().map_err(LoadError::Runtime)?;
        let started = std::time::Instant::now();
        let (pre, contract) = runtime.compile(bytes)?;
        Ok(Self {
            contract,
            name: Arc::from(name),
            digest: digest(bytes),
            language: Language::detect(bytes),
            compile_time: started.elapsed(),
            pre,
            runtime,
        })
    }
}

/// Settings that apply to each plugin as a whole (from `[plugins]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSettings {
    /// Bytes one plugin's key-value store may hold.
    pub kv_max_bytes: u64,
    pub breaker: BreakerLimits,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            kv_max_bytes: 16 << 20,
            breaker: BreakerLimits {
                failures: 5,
                window: std::time::Duration::from_secs(10),
                open_for: std::time::Duration::from_secs(5),
            },
        }
    }
}

/// What each plugin name keeps across its versions.
struct PerPlugin {
    kv: Arc<KvStore>,
    gate: Arc<PluginGate>,
}

/// The plugins in force.
pub struct PluginHost {
    loaded: ArcSwap<HashMap<Arc<str>, Arc<PluginVersion>>>,
    per_plugin: Mutex<HashMap<Arc<str>, PerPlugin>>,
    settings: Mutex<HostSettings>,
    next_version: AtomicU64,
    /// Bumped whenever the plugins in force change, so chains resolved earlier know
    /// they are stale.
    generation: AtomicU64,
}

impl Default for PluginHost {
    fn default() -> Self {
        Self {
            loaded: ArcSwap::from_pointee(HashMap::new()),
            per_plugin: Mutex::new(HashMap::new()),
            settings: Mutex::new(HostSettings::default()),
            next_version: AtomicU64::new(1),
            generation: AtomicU64::new(0),
        }
    }
}

impl PluginHost {
    /// The current version of `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.loaded.load().get(name).cloned()
    }

    /// Changes whenever a plugin is loaded, replaced or unloaded.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Names and versions loaded now.
    pub fn loaded(&self) -> Vec<Arc<PluginVersion>> {
        self.loaded.load().values().cloned().collect()
    }

    /// Applies `[plugins]` settings (at start and on every reload): breakers keep
    /// their state, key-value stores their bound (a new bound applies to stores made
    /// from now on).
    pub fn configure(&self, settings: HostSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        for per in self
            .per_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            per.gate.configure(settings.breaker);
        }
    }

    /// The breaker state of plugin `name`, once it has been loaded.
    pub fn breaker_state(&self, name: &str) -> Option<BreakerState> {
        self.per_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|p| p.gate.breaker_state())
    }

    /// Bytes plugin `name`'s key-value store holds.
    pub fn kv_bytes(&self, name: &str) -> Option<u64> {
        let kv = self
            .per_plugin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|p| p.kv.clone())?;
        Some(kv.bytes())
    }

    /// The store and gate of plugin `name`, made on its first load.
    fn per_plugin(&self, name: &Arc<str>) -> (Arc<KvStore>, Arc<PluginGate>) {
        let settings = *self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = self.per_plugin.lock().unwrap_or_else(|e| e.into_inner());
        let per = all.entry(name.clone()).or_insert_with(|| PerPlugin {
            kv: Arc::new(KvStore::new(settings.kv_max_bytes)),
            gate: Arc::new(PluginGate::new(name, settings.breaker)),
        });
        (per.kv.clone(), per.gate.clone())
    }

    /// The pool serving `entry` now: its cached one while the version is unchanged.
    pub fn resolve(&self, entry: &ChainEntry) -> Result<Arc<InstancePool>, CallError> {
        let current = self.get(&entry.name).ok_or(CallError::NotLoaded)?;
        if let Some(cached) = &*entry.resolved.load()
            && Arc::ptr_eq(&cached.0, &current)
        {
            return Ok(cached.1.clone());
        }
        let pool = current.pool(&entry.config_json, entry.limits.get(current.language));
        entry
            .resolved
            .store(Some(Arc::new((current, pool.clone()))));
        Ok(pool)
    }

    /// Initialises a compiled file with every config it is used with (`in_use`) and
    /// then puts it in force. It is rejected (the previous version stays) when `init`
    /// fails for every config in use, or for a config the previous version accepts. A
    /// config that fails on its own is reported by the routes using it.
    pub async fn install(
        &self,
        compiled: Compiled,
        in_use: &[(Arc<str>, LimitsByLanguage)],
        metrics: &Metrics,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let name = compiled.name.clone();
        let language = compiled.language;
        let (kv, gate) = self.per_plugin(&name);
        let version = Arc::new(PluginVersion {
            name: name.clone(),
            version: self.next_version.fetch_add(1, Ordering::Relaxed),
            digest: compiled.digest,
            language,
            pre: compiled.pre,
            shared: Arc::new(PluginShared {
                name: name.clone(),
                kv,
                log_dropped: metrics.plugin_log_dropped.with_label_values(&[&*name]),
            }),
            gate,
            runtime: compiled.runtime,
            pools: Mutex::new(HashMap::new()),
        });
        let previous = self.get(&name);
        let mut failures = Vec::new();
        for (config, limits) in in_use {
            let Err(error) = version.pool(config, limits.get(language)).info().await else {
                continue;
            };
            if let Some(previous) = &previous
                && previous
                    .pool(config, limits.get(previous.language))
                    .info()
                    .await
                    .is_ok()
            {
                return Err(LoadError::Regression {
                    config: config.to_string(),
                    error,
                });
            }
            failures.push((config.clone(), error));
        }
        if !in_use.is_empty() && failures.len() == in_use.len() {
            let (config, error) = failures.swap_remove(0);
            return Err(LoadError::Init {
                config: config.to_string(),
                error,
            });
        }
        for (config, error) in failures {
            tracing::warn!(plugin = &*name, %config, "{error}; routes using this config answer per plugins.on_error");
        }
        self.loaded.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.clone(), version.clone());
            next
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(version)
    }

    /// Takes `name` out of service; true if it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        let mut found = false;
        self.loaded.rcu(|current| {
            let mut next = HashMap::clone(current);
            found = next.remove(name).is_some();
            next
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
        found
    }
}
