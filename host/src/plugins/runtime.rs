//! The WebAssembly engine: one per process, epoch-based deadlines, and the store state
//! each plugin instance runs with (limits, WASI with nothing granted, the call it is
//! working on).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Plugin, PluginPre};
use super::kv::KvStore;
use super::message::{RequestEdits, RequestState, ResponseEdits, ResponseState, Violation};

/// The engine's epoch advances this often; a call's running time is counted in ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The contract this gateway loads (`fluxgate:plugin@0.2.x`).
pub const CONTRACT: &str = "fluxgate:plugin@0.2";
const CONTRACT_PACKAGE: &str = "fluxgate:plugin";
const CONTRACT_MAJOR_MINOR: &str = "0.2";

/// The process-wide engine and linker, created on first use.
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
        let mut config = wasmtime::Config::new();
        // For bench/run.sh's profiles: names plugin code in /tmp/perf-PID.map so `perf`
        // can attribute samples inside plugins.
        if std::env::var_os("FLUXGATE_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Instances come from the on-demand allocator: memory is mapped per instance
        // as it is used, so a gateway pays for the instances its plugins keep, not for
        // fixed slot maxima; each plugin's instances are budgeted by `pool`.
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
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

    /// Compiles a component and checks it against the plugin world: the contract
    /// version it was built for, its exports, and that every import is one we provide.
    /// Returns the contract version it imports (e.g. "0.2.0"), if any.
    pub fn compile(
        &self,
        bytes: &[u8],
    ) -> Result<(PluginPre<StoreState>, Option<String>), CompileError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| CompileError::NotAComponent(one_line(&format!("{e:#}"))))?;
        let contract = check_contract(&self.engine, &component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| CompileError::WrongWorld(one_line(&format!("{e:#}"))))?;
        let pre = PluginPre::new(pre)
            .map_err(|e| CompileError::WrongWorld(one_line(&format!("{e:#}"))))?;
        Ok((pre, contract))
    }
}

/// Why a file cannot be a plugin of this gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Not a WebAssembly component (a core module, a truncated file, ...).
    #[error("not a valid component: {0}")]
    NotAComponent(String),
    /// Built for another version of the contract.
    #[error(
        "built for {CONTRACT_PACKAGE}@{found}; this gateway loads {CONTRACT_MAJOR_MINOR}.x: rebuild with fluxgate-sdk {CONTRACT_MAJOR_MINOR}"
    )]
    Contract { found: String },
    /// A component, but not of the plugin world (missing exports, unknown imports).
    #[error("does not fit the fluxgate:plugin world: {0}")]
    WrongWorld(String),
}

impl CompileError {
    /// Label for `plugin check` and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CompileError::NotAComponent(_) => "not_a_component",
            CompileError::Contract { .. } => "contract_version",
            CompileError::WrongWorld(_) => "wrong_world",
        }
    }
}

/// Refuses a component built for another version of the contract, naming both; else
/// the version it was built for, if it names one.
fn check_contract(engine: &Engine, component: &Component) -> Result<Option<String>, CompileError> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name));
    let mut found = None;
    for name in names {
        let Some(rest) = name.strip_prefix(CONTRACT_PACKAGE) else {
            continue;
        };
        let Some((_, version)) = rest.split_once('@') else {
            continue;
        };
        let major_minor: String = version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        if major_minor != CONTRACT_MAJOR_MINOR {
            return Err(CompileError::Contract {
                found: version.to_owned(),
            });
        }
        found = Some(version.to_owned());
    }
    Ok(found)
}

/// A wasmtime error (often several lines of backtrace) as one log line.
pub fn one_line(text: &str) -> String {
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    line.join(" | ").chars().take(400).collect()
}

/// What a plugin's instances share: its name (for logs), its key-value store, its
/// counters.
#[derive(Debug)]
pub struct PluginShared {
    pub name: Arc<str>,
    pub kv: Arc<KvStore>,
    /// Log lines dropped over the per-call bound.
    pub log_dropped: prometheus::IntCounter,
}

/// Most log lines one hook call may write (more are dropped and counted).
pub const MAX_LOG_LINES: u32 = 16;
/// Longest log message (longer ones are cut).
pub const MAX_LOG_BYTES: usize = 4 * 1024;
/// Most key-value writes one hook call may make.
pub const MAX_KV_WRITES: u32 = 64;

/// The hook call an instance is running: the request and response lent to it, the
/// edits it made so far, and its budgets.
#[derive(Debug, Default)]
pub struct Call {
    /// Which chain step the plugin is (its stash slot).
    pub step: usize,
    pub request: RequestState,
    pub request_edits: RequestEdits,
    /// Present in on-response, and for the direct answer of an earlier plugin.
    pub response: Option<ResponseState>,
    pub response_edits: ResponseEdits,
    /// The plugin declared the request / response body.
    pub request_body: bool,
    pub response_body: bool,
    pub max_body: usize,
    /// The first rule the plugin broke (the call then traps).
    pub violation: Option<Violation>,
    pub log_lines: u32,
    pub log_dropped: u32,
    pub kv_writes: u32,
    /// Epoch ticks seen while the plugin ran (its running time, not time spent
    /// waiting for the CPU) and the most it may use.
    pub ticks: u64,
    pub tick_limit: u64,
    /// A safety net: no call lasts longer than this, running or not.
    pub wall_deadline: Option<Instant>,
}

/// The data of one instance's store.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub shared: Arc<PluginShared>,
    memory_limit: usize,
    /// Set when the limiter refused to grow memory (so a trap can be reported as
    /// "memory" rather than a plain trap).
    pub memory_denied: bool,
    /// Bytes of linear memory the instance has grown to.
    pub memory_size: usize,
    pub call: Call,
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
            memory_size: 0,
            call: Call::default(),
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
        self.memory_size = self.memory_size.max(desired);
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
