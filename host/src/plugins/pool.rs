//! Warm instances of one plugin version with one config: checked out per hook call,
//! returned after a clean call, dropped after a trap (so a broken instance never serves
//! again).

use std::sync::{Arc, Mutex};

use wasmtime::{Store, Trap};

use super::bindings::{PluginInfo, PluginPre, Request, RequestAction, Response, ResponseEdits};
use super::runtime::{EPOCH_TICK, PluginShared, Runtime, StoreState};

/// Limits every call of a pool's instances runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    pub max_idle: usize,
}

impl Limits {
    fn deadline_ticks(&self) -> u64 {
        // +1: the current tick may be about to end.
        self.timeout_ms
            .div_ceil(EPOCH_TICK.as_millis().max(1) as u64)
            + 1
    }
}

/// Why a plugin call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin is not loaded")]
    NotLoaded,
    #[error("plugin init failed: {0}")]
    Init(String),
    #[error("plugin exceeded its time limit")]
    Timeout,
    #[error("plugin exceeded its memory limit")]
    Memory,
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl CallError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NotLoaded => "not_loaded",
            CallError::Init(_) => "init",
            CallError::Timeout => "timeout",
            CallError::Memory => "memory",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
        }
    }
}

struct Warm {
    store: Store<StoreState>,
    plugin: super::bindings::Plugin,
}

/// Instances of one plugin version for one chain-entry config.
pub struct InstancePool {
    pre: PluginPre<StoreState>,
    shared: Arc<PluginShared>,
    config_json: Arc<str>,
    limits: Limits,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Warm>>,
    /// What `init` answered (the same for every instance of this version and config).
    info: Mutex<Option<PluginInfo>>,
}

impl InstancePool {
    pub fn new(
        runtime: Arc<Runtime>,
        pre: PluginPre<StoreState>,
        shared: Arc<PluginShared>,
        config_json: Arc<str>,
        limits: Limits,
    ) -> Self {
        Self {
            pre,
            shared,
            config_json,
            limits,
            runtime,
            idle: Mutex::new(Vec::new()),
            info: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The hooks and bodies the plugin asked for (runs `init` on a fresh instance the
    /// first time).
    pub fn info(&self) -> Result<PluginInfo, CallError> {
        if let Some(info) = *self.info.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(info);
        }
        let warm = self.checkout()?;
        self.checkin(warm);
        self.info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| CallError::Init("no plugin info".into()))
    }

    pub fn on_request(&self, req: &Request) -> Result<RequestAction, CallError> {
        self.call(|plugin, store| plugin.call_on_request(store, req))
    }

    pub fn on_response(&self, req: &Request, resp: &Response) -> Result<ResponseEdits, CallError> {
        self.call(|plugin, store| plugin.call_on_response(store, req, resp))
    }

    fn call<R>(
        &self,
        f: impl FnOnce(&super::bindings::Plugin, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut warm = self.checkout()?;
        warm.store.set_epoch_deadline(self.limits.deadline_ticks());
        match f(&warm.plugin, &mut warm.store) {
            Ok(result) => {
                self.checkin(warm);
                Ok(result)
            }
            // The instance is dropped here: after a trap its state cannot be trusted.
            Err(e) => Err(classify(&e, &warm.store)),
        }
    }

    fn checkout(&self) -> Result<Warm, CallError> {
        if let Some(warm) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(warm);
        }
        let state = StoreState::new(self.shared.clone(), self.limits.memory_bytes);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| match classify(&e, &store) {
                CallError::Trap(msg) => CallError::Instantiate(msg),
                other => other,
            })?;
        store.set_epoch_deadline(self.limits.deadline_ticks());
        let info = match plugin.call_init(&mut store, &self.config_json) {
            Ok(Ok(info)) => info,
            Ok(Err(refusal)) => return Err(CallError::Init(refusal)),
            Err(e) => {
                return Err(match classify(&e, &store) {
                    CallError::Trap(msg) => CallError::Init(format!("trapped: {msg}")),
                    other => other,
                });
            }
        };
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
        Ok(Warm { store, plugin })
    }

    fn checkin(&self, warm: Warm) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.limits.max_idle {
            idle.push(warm);
        }
    }
}

fn classify(error: &wasmtime::Error, store: &Store<StoreState>) -> CallError {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Timeout;
    }
    if store.data().memory_denied {
        return CallError::Memory;
    }
    let text = format!("{error:#}");
    CallError::Trap(
        text.lines()
            .next()
            .unwrap_or("trap")
            .chars()
            .take(300)
            .collect(),
    )
}
