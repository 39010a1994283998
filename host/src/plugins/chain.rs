//! Running a request through its plugin chain: on-request in chain order, on-response
//! in reverse, each failure handled by `plugins.on_error`.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use std::time::Duration;

use tokio::time::Instant;

use super::bindings::PluginInfo;
use super::call::CallError;
use super::message::{RequestState, ResponseState};
use super::pool::InstancePool;
use super::registry::{ChainEntry, PluginHost};
use crate::config::OnError;
use crate::error::GatewayError;
use crate::metrics::Hook;

/// A plugin failure the request must answer for (`on_error = "deny"`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin \"{plugin}\": {error}")]
pub struct PluginFailure {
    pub plugin: Arc<str>,
    pub error: CallError,
}

impl From<PluginFailure> for GatewayError {
    fn from(f: PluginFailure) -> Self {
        match f.error {
            CallError::NotLoaded => GatewayError::PluginNotLoaded {
                plugin: f.plugin.to_string(),
            },
            error => GatewayError::Plugin {
                plugin: f.plugin.to_string(),
                kind: error.kind(),
            },
        }
    }
}

/// A route's chain entries: the global chain, then the route's own.
#[derive(Debug, Clone, Copy)]
pub struct Entries<'a> {
    pub global: &'a [ChainEntry],
    pub route: &'a [ChainEntry],
}

impl<'a> Entries<'a> {
    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.route.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &'a ChainEntry> {
        self.global.iter().chain(self.route)
    }

    /// The entry at `index` in chain order (an index `iter` produced).
    fn get(&self, index: usize) -> &'a ChainEntry {
        match index.checked_sub(self.global.len()) {
            None => &self.global[index],
            Some(i) => &self.route[i],
        }
    }
}

struct Step {
    /// The entry's position in `Entries` order.
    index: usize,
    pool: Arc<InstancePool>,
    info: PluginInfo,
}

/// A route's resolved chain (global entries first, then the route's). It refers to its
/// entries by position, so it does not borrow the snapshot it was resolved from.
pub struct Chain {
    steps: Vec<Step>,
    on_error: OnError,
}

/// What the on-request pass decided.
pub enum OnRequest {
    /// Forward the (edited) request.
    Continue,
    /// A plugin answered; `ran` plugins before it get their on-response.
    Respond { response: ResponseState, ran: usize },
}

/// A route's resolved chain, kept while the plugins in force do not change, so a
/// request on a plugin route does not look every entry up again.
#[derive(Default)]
pub struct ChainCache(ArcSwapOption<(u64, Arc<Chain>)>);

impl std::fmt::Debug for ChainCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainCache")
    }
}

impl ChainCache {
    /// The cached chain, if the plugins in force are still those it was resolved with.
    pub fn cached(&self, host: &PluginHost) -> Option<Arc<Chain>> {
        let cached = self.0.load();
        let (generation, chain) = cached.as_deref()?;
        (*generation == host.generation()).then(|| chain.clone())
    }

    /// The chain of `entries` now: the cached one while the plugin generation is the
    /// one it was resolved at, else resolved (and cached when every entry resolved).
    pub async fn resolve(
        &self,
        host: &PluginHost,
        entries: Entries<'_>,
        on_error: OnError,
    ) -> Result<Arc<Chain>, PluginFailure> {
        let generation = host.generation();
        if let Some(chain) = self.cached(host) {
            return Ok(chain);
        }
        let (chain, complete) = Chain::resolve(host, entries, on_error).await?;
        let chain = Arc::new(chain);
        if complete {
            self.0.store(Some(Arc::new((generation, chain.clone()))));
        }
        Ok(chain)
    }
}

impl Chain {
    /// Looks up each entry's plugin and what it wants. A plugin that is not loaded or
    /// fails `init` is skipped (`allow`) or fails the request (`deny`). The flag says
    /// whether every entry resolved (only such a chain may be reused).
    pub async fn resolve(
        host: &PluginHost,
        entries: Entries<'_>,
        on_error: OnError,
    ) -> Result<(Self, bool), PluginFailure> {
        let mut steps = Vec::new();
        let mut complete = true;
        for (index, entry) in entries.iter().enumerate() {
            let resolved = match host.resolve(entry) {
                Ok(pool) => pool.info().await.map(|info| (pool, info)),
                Err(e) => Err(e),
            };
            match resolved {
                Ok((pool, info)) => steps.push(Step { index, pool, info }),
                Err(error) => {
                    complete = false;
                    failed(entry, error, on_error)?;
                }
            }
        }
        Ok((Self { steps, on_error }, complete))
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn wants_request_body(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.info.on_request && s.info.request_body)
    }

    pub fn wants_response_body(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.info.on_response && s.info.response_body)
    }

    pub fn has_on_request(&self) -> bool {
        self.steps.iter().any(|s| s.info.on_request)
    }

    pub fn has_on_response(&self) -> bool {
        self.steps.iter().any(|s| s.info.on_response)
    }

    /// Runs on-request hooks in order; each plugin sees the edits of those before it,
    /// and a plugin's edits apply only if its call ends normally.
    pub async fn on_request(
        &self,
        entries: Entries<'_>,
        req: &mut RequestState,
    ) -> Result<OnRequest, PluginFailure> {
        for (i, step) in self.steps.iter().enumerate() {
            if !step.info.on_request {
                continue;
            }
            let entry = entries.get(step.index);
            let started = Instant::now();
            let result = step.pool.on_request(i, req).await;
            let answer = self.called(entry, Hook::OnRequest, started, result);
            if let Some(Some(response)) = held(step, answer).await? {
                return Ok(OnRequest::Respond { response, ran: i });
            }
        }
        Ok(OnRequest::Continue)
    }

    /// Runs on-response hooks of the first `ran` plugins in reverse order.
    pub async fn on_response(
        &self,
        entries: Entries<'_>,
        ran: usize,
        req: &mut RequestState,
        resp: &mut ResponseState,
    ) -> Result<(), PluginFailure> {
        let ran = ran.min(self.steps.len());
        for (i, step) in self.steps[..ran].iter().enumerate().rev() {
            if !step.info.on_response {
                continue;
            }
            let entry = entries.get(step.index);
            let started = Instant::now();
            let result = step.pool.on_response(i, req, resp).await;
            held(step, self.called(entry, Hook::OnResponse, started, result)).await?;
        }
        Ok(())
    }

    /// Records one hook call; `Ok(None)` when it failed and `on_error = allow`.
    fn called<R>(
        &self,
        entry: &ChainEntry,
        hook: Hook,
        started: Instant,
        result: Result<R, CallError>,
    ) -> Result<Option<R>, PluginFailure> {
        entry.metrics.call(hook, started.elapsed().as_secs_f64());
        match result {
            Ok(r) => Ok(Some(r)),
            Err(error) => failed(entry, error, self.on_error).map(|()| None),
        }
    }
}

/// A refusal because the plugin is short-circuited is answered only after the
/// plugin's time limit: held, not computed, so a flood at a broken plugin's route
/// cannot turn into a free stream of errors that takes the worker from other routes.
/// The time limit is the pool's: the one of the loaded file's language.
async fn held<R>(step: &Step, outcome: Result<R, PluginFailure>) -> Result<R, PluginFailure> {
    if let Err(failure) = &outcome
        && failure.error == CallError::CircuitOpen
    {
        tokio::time::sleep(Duration::from_millis(step.pool.limits().timeout_ms)).await;
    }
    outcome
}

/// Counts and logs a failure; `Err` when it must fail the request.
fn failed(entry: &ChainEntry, error: CallError, on_error: OnError) -> Result<(), PluginFailure> {
    entry.metrics.error(error.kind());
    // Refusals at the door come in floods when a plugin is broken or overloaded: the
    // breaker logs its transitions and the metric counts them; a line each is noise.
    let quiet = matches!(error, CallError::Busy | CallError::CircuitOpen);
    match on_error {
        OnError::Allow if quiet => Ok(()),
        OnError::Deny if quiet => Err(PluginFailure {
            plugin: entry.name.clone(),
            error,
        }),
        OnError::Allow => {
            tracing::warn!(
                plugin = &*entry.name,
                kind = error.kind(),
                "{error}; skipping the plugin (on_error = allow)"
            );
            Ok(())
        }
        OnError::Deny => {
            tracing::warn!(
                plugin = &*entry.name,
                kind = error.kind(),
                "{error}; refusing the request (on_error = deny)"
            );
            Err(PluginFailure {
                plugin: entry.name.clone(),
                error,
            })
        }
    }
}
