//! The WebAssembly engine: one per process, pooling allocator, epoch-based deadlines, and
//! the store state each plugin instance runs with (limits, WASI with nothing granted,
//! the host imports).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{LogLevel, Plugin, PluginPre, fluxgate};
use super::kv::KvStore;

/// The engine's epoch advances this often; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Most instances alive at once across all plugins (pooling allocator slots).
const MAX_INSTANCES: u32 = 512;

/// The process-wide engine and linker. The pooling allocator reserves address space
/// for all its slots up front, so there is exactly one, created on first use.
pub struct Runtime {
    pub engine: Engine,
    linker: Linker<StoreState>,
}

static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();

impl Runtime {
    /// The shared runtime, created (with its epoch ticker thread) on first call.
    pub fn get() -> Result<Arc<Runtime>, String> {
        RUNTIME.get_or_init(|| Runtime::new().map(Arc::new)).clone()
    }

    fn new() -> Result<Self, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 2)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES * 2)
            // Per-plugin limits are enforced by each store's limiter; this is the ceiling.
            .max_memory_size(4096 << 20);
        let mut config = wasmtime::Config::new();
        // For bench/run.sh's profiles: names plugin code in /tmp/perf-PID.map so `perf`
        // can attribute samples inside plugins.
        if std::env::var_os("FLUXGATE_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("wasm engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("wasi linker: {e:#}"))?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| format!("plugin linker: {e:#}"))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("fluxgate-epoch".into())
            .spawn(move || {
                // Ends when the engine is gone (never, for the process-wide one).
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| format!("epoch thread: {e}"))?;
        Ok(Self { engine, linker })
    }

    /// Compiles a component and checks it against the plugin world (its exports, and
    /// that every import is one we provide).
    pub fn compile(&self, bytes: &[u8]) -> Result<PluginPre<StoreState>, String> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("does not fit the fluxgate:plugin world: {e:#}"))?;
        PluginPre::new(pre).map_err(|e| format!("does not fit the fluxgate:plugin world: {e:#}"))
    }
}

/// What a plugin's instances share: its name (for logs) and its key-value store.
#[derive(Debug)]
pub struct PluginShared {
    pub name: Arc<str>,
    pub kv: Arc<KvStore>,
}

/// The data of one instance's store.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    shared: Arc<PluginShared>,
    memory_limit: usize,
    /// Set when the limiter refused to grow memory (so a trap can be reported as
    /// "memory" rather than a plain trap).
    pub memory_denied: bool,
    /// When the running call must stop (checked at every epoch tick).
    pub call_deadline: tokio::time::Instant,
}

impl StoreState {
    pub fn new(shared: Arc<PluginShared>, memory_limit: usize) -> Self {
        Self {
            // Nothing granted: no preopened folders, no environment, no arguments,
            // stdio discarded, sockets and name lookup disabled (wasmtime-wasi defaults).
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            shared,
            memory_limit,
            memory_denied: false,
            call_deadline: tokio::time::Instant::now(),
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl fluxgate::plugin::types::Host for StoreState {}

impl fluxgate::plugin::host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        let plugin = &*self.shared.name;
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.shared.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        if let Err(e) = self
            .shared
            .kv
            .set(&key, value, ttl_ms.map(Duration::from_millis))
        {
            tracing::warn!(target: "plugin", plugin = &*self.shared.name, "kv-set refused: {e}");
        }
    }

    fn kv_delete(&mut self, key: String) -> bool {
        self.shared.kv.delete(&key)
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        match self
            .shared
            .kv
            .incr(&key, delta, ttl_ms.map(Duration::from_millis))
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(target: "plugin", plugin = &*self.shared.name, "kv-incr refused: {e}");
                0
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
