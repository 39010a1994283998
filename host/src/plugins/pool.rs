//! Warm instances of one plugin version with one config: checked out per hook call,
//! returned after a clean call, dropped after a failure (so a broken instance never
//! serves again). Every call runs under the plugin's gate, a running-time deadline and
//! a memory limit.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Plugin, PluginInfo, PluginPre, RequestAction};
use super::call::{CallError, Limits};
use super::gate::PluginGate;
use super::host_api::{REQUEST_REP, RESPONSE_REP};
use super::message::{self, RequestState, ResponseState, Violation};
use super::runtime::{Call, EPOCH_TICK, PluginShared, Runtime, StoreState, one_line};

/// One instance of the plugin's budget, given back when dropped.
struct Slot(Arc<PluginGate>);

impl Slot {
    fn take(gate: &Arc<PluginGate>, limits: &Limits) -> Result<Self, CallError> {
        gate.reserve_instance(limits)?;
        Ok(Self(gate.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct Warm {
    store: Store<StoreState>,
    plugin: Plugin,
    _slot: Slot,
}

impl Warm {
    /// Linear memory the instance has grown to.
    fn memory_bytes(&self) -> usize {
        self.store.data().memory_size
    }
}

/// Instances made by [`InstancePool::fresh_instances`], released when dropped.
pub struct Instances(Vec<Warm>);

impl Instances {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Linear memory the instances have grown to, in all.
    pub fn memory_bytes(&self) -> usize {
        self.0.iter().map(Warm::memory_bytes).sum()
    }
}

/// Instances of one plugin version for one chain-entry config.
pub struct InstancePool {
    pre: PluginPre<StoreState>,
    shared: Arc<PluginShared>,
    gate: Arc<PluginGate>,
    config_json: Arc<str>,
    limits: Limits,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Warm>>,
    /// What `init` answered (the same for every instance of this version and config).
    info: OnceLock<PluginInfo>,
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        let bytes: usize = idle.iter().map(Warm::memory_bytes).sum();
        self.gate
            .idle_bytes
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Which hook a call runs.
#[derive(Debug, Clone, Copy)]
enum Hook {
    OnRequest,
    OnResponse,
}

impl InstancePool {
    pub fn new(
        runtime: Arc<Runtime>,
        pre: PluginPre<StoreState>,
        shared: Arc<PluginShared>,
        gate: Arc<PluginGate>,
        config_json: Arc<str>,
        limits: Limits,
    ) -> Self {
        Self {
            pre,
            shared,
            gate,
            config_json,
            limits,
            runtime,
            idle: Mutex::new(Vec::new()),
            info: OnceLock::new(),
        }
    }

    /// The limits this pool's calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The hooks and bodies the plugin asked for (runs `init` on a fresh instance the
    /// first time).
    pub async fn info(&self) -> Result<PluginInfo, CallError> {
        if let Some(info) = self.info.get() {
            return Ok(*info);
        }
        let warm = self.checkout().await?;
        self.checkin(warm);
        self.info
            .get()
            .copied()
            .ok_or_else(|| CallError::Init("no plugin info".into()))
    }

    /// Runs on-request with `request` lent to the plugin. `Ok(Some(answer))` is the
    /// plugin's (checked) direct answer; with `Ok(None)` the plugin's edits are in
    /// `request`. On any error `request` is as it was.
    pub async fn on_request(
        &self,
        step: usize,
        request: &mut RequestState,
    ) -> Result<Option<ResponseState>, CallError> {
        let permit = self.gate.admit(&self.limits).await?;
        let result = self
            .run(Hook::OnRequest, step, request, None)
            .await
            .and_then(|(action, call)| match action {
                Some(RequestAction::Continue) | None => {
                    call.request_edits.apply(request, step);
                    Ok(None)
                }
                Some(RequestAction::Respond(answer)) => message::direct_response(
                    answer.status,
                    answer.headers,
                    answer.body,
                    self.limits.max_body,
                )
                .map(Some)
                .map_err(|v| CallError::Invalid(v.to_string())),
            });
        permit.done(&result);
        result
    }

    /// Runs on-response with the request and the answer lent to the plugin; its edits
    /// end up in `response` (and nothing changes on error).
    pub async fn on_response(
        &self,
        step: usize,
        request: &mut RequestState,
        response: &mut ResponseState,
    ) -> Result<(), CallError> {
        let permit = self.gate.admit(&self.limits).await?;
        let result = self
            .run(Hook::OnResponse, step, request, Some(&mut *response))
            .await
            .map(|(_, call)| call.response_edits.apply(response));
        permit.done(&result);
        result
    }

    /// One hook call: an instance, the message moved into its store, the clock armed;
    /// afterwards the message moved back (unedited) and the call's record returned
    /// with the hook's result for the caller to apply.
    async fn run(
        &self,
        hook: Hook,
        step: usize,
        request: &mut RequestState,
        mut response: Option<&mut ResponseState>,
    ) -> Result<(Option<RequestAction>, Call), CallError> {
        let mut warm = self.checkout().await?;
        let info = self.info.get().copied().unwrap_or(PluginInfo {
            on_request: false,
            on_response: false,
            request_body: false,
            response_body: false,
        });
        {
            let call = &mut warm.store.data_mut().call;
            call.step = step;
            call.request = std::mem::take(request);
            call.response = response.as_deref_mut().map(std::mem::take);
            call.request_body = info.request_body;
            call.response_body = info.response_body;
            call.max_body = self.limits.max_body;
        }
        arm(&mut warm.store, self.limits.timeout_ms);
        let request_handle = Resource::new_borrow(REQUEST_REP);
        let outcome = match hook {
            Hook::OnRequest => warm
                .plugin
                .call_on_request(&mut warm.store, request_handle)
                .await
                .map(Some),
            Hook::OnResponse => warm
                .plugin
                .call_on_response(
                    &mut warm.store,
                    request_handle,
                    Resource::new_borrow(RESPONSE_REP),
                )
                .await
                .map(|()| None),
        };
        let mut call = std::mem::take(&mut warm.store.data_mut().call);
        *request = std::mem::take(&mut call.request);
        if let (Some(response), Some(lent)) = (response, call.response.take()) {
            *response = lent;
        }
        if call.log_dropped > 0 {
            self.shared.log_dropped.inc_by(u64::from(call.log_dropped));
        }
        match outcome {
            Ok(action) => {
                self.checkin(warm);
                Ok((action, call))
            }
            // The instance is dropped here: after a trap its state cannot be trusted.
            Err(e) => Err(classify(&e, &warm.store, call.violation.take())),
        }
    }

    async fn checkout(&self) -> Result<Warm, CallError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(warm) = reused {
            self.gate
                .idle_bytes
                .fetch_sub(warm.memory_bytes(), std::sync::atomic::Ordering::AcqRel);
            return Ok(warm);
        }
        self.fresh().await
    }

    /// Makes `n` new instances (instantiated and initialised, as for a call) and holds
    /// them until the result is dropped: what `plugin check --instances` measures.
    pub async fn fresh_instances(&self, n: usize) -> Result<Instances, CallError> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(self.fresh().await?);
        }
        Ok(Instances(held))
    }

    /// A new instance: instantiated, initialised, counted against the plugin's budget.
    async fn fresh(&self) -> Result<Warm, CallError> {
        let slot = Slot::take(&self.gate, &self.limits)?;
        let state = StoreState::new(self.shared.clone(), self.limits.memory_bytes);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| state);
        // At every epoch tick the running call is charged one tick of running time:
        // past its budget (or the wall-clock safety net) it traps; otherwise it yields
        // to the runtime, so other requests run, and is checked again next tick.
        store.epoch_deadline_callback(|mut store| {
            let call = &mut store.data_mut().call;
            call.ticks += 1;
            let late = call
                .wall_deadline
                .is_some_and(|deadline| Instant::now() >= deadline);
            if call.ticks > call.tick_limit || late {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        // Instantiation plus `init` may do more work than a hook (parse config, build
        // tables): ten hook budgets, at least 500 ms.
        arm(
            &mut store,
            self.limits.timeout_ms.saturating_mul(10).max(500),
        );
        let plugin = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            match classify(&e, &store, None) {
                CallError::Trap(msg) => CallError::Instantiate(msg),
                other => other,
            }
        })?;
        let warm = Warm {
            store,
            plugin,
            _slot: slot,
        };
        self.initialise(warm).await
    }

    async fn initialise(&self, mut warm: Warm) -> Result<Warm, CallError> {
        let info = match warm
            .plugin
            .call_init(&mut warm.store, &self.config_json)
            .await
        {
            Ok(Ok(info)) => info,
            Ok(Err(refusal)) => return Err(CallError::Init(one_line(&refusal))),
            Err(e) => {
                return Err(match classify(&e, &warm.store, None) {
                    CallError::Trap(msg) => CallError::Init(format!("trapped: {msg}")),
                    other => other,
                });
            }
        };
        let _ = self.info.set(info);
        Ok(warm)
    }

    fn checkin(&self, warm: Warm) {
        let bytes = warm.memory_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.limits.max_idle {
            return;
        }
        let kept = self
            .gate
            .idle_bytes
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |held| (held + bytes <= self.limits.max_idle_bytes).then_some(held + bytes),
            )
            .is_ok();
        if kept {
            idle.push(warm);
        }
    }
}

/// Starts the clock for one call of `millis` of running time.
fn arm(store: &mut Store<StoreState>, millis: u64) {
    let ticks = (millis / EPOCH_TICK.as_millis().max(1) as u64).max(1);
    let call = &mut store.data_mut().call;
    call.ticks = 0;
    // One tick more: the first tick may come right after the call starts.
    call.tick_limit = ticks + 1;
    call.wall_deadline =
        Some(Instant::now() + Duration::from_millis(millis.saturating_mul(10).max(1_000)));
    store.set_epoch_deadline(1);
}

fn classify(
    error: &wasmtime::Error,
    store: &Store<StoreState>,
    violation: Option<Violation>,
) -> CallError {
    if let Some(violation) = violation.or_else(|| error.downcast_ref::<Violation>().cloned()) {
        return CallError::Invalid(violation.to_string());
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Timeout;
    }
    if store.data().memory_denied {
        return CallError::Memory;
    }
    CallError::Trap(one_line(&format!("{error:#}")))
}
