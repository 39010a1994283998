//! Warm instances of one plugin version with one config: checked out per hook call,
//! returned after a clean call, dropped after a failure (so a broken instance never
//! serves again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{
    Plugin, PluginInfo, PluginPre, Request, RequestAction, Response, ResponseEdits,
};
use super::runtime::{PluginShared, Runtime, StoreState};

/// Limits every call of a pool's instances runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_bytes: usize,
    pub max_idle: usize,
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
    plugin: Plugin,
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

    /// The hooks and bodies the plugin asked for (runs `init` on a fresh instance the
    /// first time).
    pub async fn info(&self) -> Result<PluginInfo, CallError> {
        if let Some(info) = *self.info.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(info);
        }
        let warm = self.checkout().await?;
        self.checkin(warm);
        self.info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| CallError::Init("no plugin info".into()))
    }

    pub async fn on_request(&self, req: &Request) -> Result<RequestAction, CallError> {
        let mut warm = self.checkout().await?;
        self.arm(&mut warm.store);
        let result = warm.plugin.call_on_request(&mut warm.store, req).await;
        self.finish(warm, result)
    }

    pub async fn on_response(
        &self,
        req: &Request,
        resp: &Response,
    ) -> Result<ResponseEdits, CallError> {
        let mut warm = self.checkout().await?;
        self.arm(&mut warm.store);
        let result = warm
            .plugin
            .call_on_response(&mut warm.store, req, resp)
            .await;
        self.finish(warm, result)
    }

    /// Starts the clock for one hook call.
    fn arm(&self, store: &mut Store<StoreState>) {
        arm_for(store, self.limits.timeout_ms);
    }

    /// Starts the clock for instantiation plus `init`, which may do more work than a
    /// hook (parse config, build tables): ten hook budgets, at least 500 ms.
    fn arm_init(&self, store: &mut Store<StoreState>) {
        arm_for(store, self.limits.timeout_ms.saturating_mul(10).max(500));
    }

    fn finish<R>(&self, warm: Warm, result: wasmtime::Result<R>) -> Result<R, CallError> {
        match result {
            Ok(r) => {
                self.checkin(warm);
                Ok(r)
            }
            // The instance is dropped here: after a trap its state cannot be trusted.
            Err(e) => Err(classify(&e, &warm.store)),
        }
    }

    async fn checkout(&self) -> Result<Warm, CallError> {
        if let Some(warm) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(warm);
        }
        let state = StoreState::new(self.shared.clone(), self.limits.memory_bytes);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        // At every epoch tick: past the call's deadline, trap; otherwise yield to the
        // runtime so a long call does not hold the worker thread, and check again next
        // tick.
        store.epoch_deadline_callback(|store| {
            if tokio::time::Instant::now() >= store.data().call_deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        self.arm_init(&mut store);
        let plugin = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            match classify(&e, &store) {
                CallError::Trap(msg) => CallError::Instantiate(msg),
                other => other,
            }
        })?;
        let info = match plugin.call_init(&mut store, &self.config_json).await {
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

fn arm_for(store: &mut Store<StoreState>, millis: u64) {
    store.data_mut().call_deadline = tokio::time::Instant::now() + Duration::from_millis(millis);
    store.set_epoch_deadline(1);
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
