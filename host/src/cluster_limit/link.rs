//! The thin I/O side of cluster limits: one multiplexed Redis connection, the two Lua
//! scripts (a token bucket, and fixed/sliding windows), each call bounded by
//! `cluster.redis.timeout_ms`, and the up/down tracking that decides when limiters fall
//! back (see `policy::outage`).
//!
//! Every decision about tokens is one script call: Redis's own clock (`TIME`) is used,
//! so the nodes' clocks never need to agree, and every key expires by itself once the
//! limit it holds is back to full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::plan::RedisSettings;
use crate::policy::lease::Grant;
use crate::policy::outage::{Outage, Transition};

/// First retry after Redis went away, doubled up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Token bucket (also the admission rule of a leaky bucket). ARGV: capacity, refill
/// per second, want (negative = give back). Returns {granted, remaining, next_ms,
/// reset_ms, epoch}.
const BUCKET: &str = r"
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local s = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(s[1])
local at = tonumber(s[2])
if tokens == nil or at == nil then
  tokens = cap
  at = now
end
if now > at then
  tokens = math.min(cap, tokens + (now - at) * rate / 1000)
  at = now
end
local granted = 0
if want < 0 then
  tokens = math.min(cap, tokens - want)
else
  granted = math.max(0, math.min(want, math.floor(tokens + 1e-9)))
  tokens = tokens - granted
end
local full_ms = math.ceil((cap - tokens) * 1000 / rate)
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], full_ms + 1000)
local next_ms = 0
if tokens < 1 then
  next_ms = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, math.floor(tokens + 1e-9), next_ms, full_ms, 0}
";

/// Fixed or sliding window (the weighted two-window estimate, as the node-scoped
/// limiter uses). Windows are aligned to Redis's clock. ARGV: capacity, window ms,
/// sliding (0/1), want (negative = give back), epoch (the window given-back tokens
/// were taken in; they only go back while it is current).
const WINDOW: &str = r"
local cap = tonumber(ARGV[1])
local win = tonumber(ARGV[2])
local sliding = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local epoch = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / win)
local into = now - idx * win
local left = win - into
local cur_key = KEYS[1] .. ':' .. string.format('%d', idx)
local cur = tonumber(redis.call('GET', cur_key) or '0')
if want < 0 then
  if epoch == idx and cur > 0 then
    local back = math.min(cur, -want)
    redis.call('DECRBY', cur_key, back)
    cur = cur - back
  end
  want = 0
end
local prev = 0
local weight = 0
if sliding == 1 then
  prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%d', idx - 1)) or '0')
  weight = left / win
end
local free = math.floor(cap - prev * weight - cur + 1e-9)
local granted = math.max(0, math.min(want, free))
if granted > 0 then
  redis.call('INCRBY', cur_key, granted)
  redis.call('PEXPIRE', cur_key, 2 * win + 1000)
  cur = cur + granted
end
local remaining = math.max(0, free - granted)
local next_ms = 0
if remaining < 1 then
  next_ms = left
  if sliding == 1 then
    if prev > 0 and cur + 1 <= cap then
      local keep = (cap - cur - 1) * win / prev
      if keep < left then next_ms = math.ceil(left - keep) end
    elseif cur > 0 then
      local s2 = win - (cap - 1) * win / cur
      if s2 > 0 then next_ms = left + math.ceil(s2) end
    end
  end
end
local reset_ms = left
if sliding == 1 and cur > 0 then reset_ms = left + win end
return {granted, remaining, next_ms, reset_ms, idx}
";

/// One script call.
#[derive(Debug, Clone)]
pub enum Call {
    Bucket {
        key: String,
        capacity: u32,
        refill_per_s: f64,
        /// Tokens wanted; negative = tokens given back.
        want: i64,
    },
    Window {
        key: String,
        capacity: u32,
        window_ms: u64,
        sliding: bool,
        want: i64,
        epoch: i64,
    },
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected script reply {0:?}")]
    BadReply(Vec<i64>),
}

impl LinkError {
    fn kind(&self) -> &'static str {
        match self {
            LinkError::Timeout(_) => "timeout",
            // The client's own response timeout fires at the same bound.
            LinkError::Redis(e) if e.is_timeout() => "timeout",
            LinkError::Redis(_) | LinkError::BadReply(_) => "error",
        }
    }
}

/// The gateway's link to `[cluster.redis]`.
pub struct RedisLink {
    client: redis::Client,
    /// Where logs say we connect (the URL without its password).
    shown: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
    up: AtomicBool,
    probing: AtomicBool,
    outage: Mutex<Outage>,
    metrics: Metrics,
    bucket: redis::Script,
    window: redis::Script,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("url", &self.shown)
            .field("up", &self.is_up())
            .finish()
    }
}

impl RedisLink {
    /// A link to the Redis of `settings` (its URL was checked by the plan). Not
    /// connected yet: [`RedisLink::start`] connects in the background.
    pub fn new(settings: &RedisSettings, metrics: Metrics) -> Result<Arc<Self>, LinkError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let info = client.get_connection_info();
        let shown = info.addr().to_string();
        metrics.redis_up.set(0);
        Ok(Arc::new(Self {
            client,
            shown,
            conn: tokio::sync::Mutex::new(None),
            timeout: settings.timeout,
            up: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            outage: Mutex::new(Outage::new(FIRST_RETRY, MAX_RETRY)),
            metrics,
            bucket: redis::Script::new(BUCKET),
            window: redis::Script::new(WINDOW),
        }))
    }

    /// Connects in the background (limiters use their fallback until then).
    pub fn start(self: &Arc<Self>) {
        self.probe();
    }

    /// Whether Redis answered the last call in time.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs one script call.
    pub async fn call(self: &Arc<Self>, call: &Call) -> Result<Grant, LinkError> {
        let op = match call {
            Call::Bucket { want, .. } | Call::Window { want, .. } if *want < 0 => "give_back",
            _ => "take",
        };
        self.metrics.redis_calls.with_label_values(&[op]).inc();
        let result = tokio::time::timeout(self.timeout, self.invoke(call))
            .await
            .unwrap_or(Err(LinkError::Timeout(self.timeout)));
        match result {
            Ok(reply) => {
                self.succeeded();
                Ok(reply)
            }
            Err(e) => {
                self.failed(&e).await;
                Err(e)
            }
        }
    }

    async fn invoke(&self, call: &Call) -> Result<Grant, LinkError> {
        let mut conn = self.connection().await?;
        let reply: Vec<i64> = match call {
            Call::Bucket {
                key,
                capacity,
                refill_per_s,
                want,
            } => {
                self.bucket
                    .key(key)
                    .arg(capacity)
                    .arg(refill_per_s)
                    .arg(want)
                    .invoke_async(&mut conn)
                    .await?
            }
            Call::Window {
                key,
                capacity,
                window_ms,
                sliding,
                want,
                epoch,
            } => {
                self.window
                    .key(key)
                    .arg(capacity)
                    .arg(window_ms)
                    .arg(u8::from(*sliding))
                    .arg(want)
                    .arg(epoch)
                    .invoke_async(&mut conn)
                    .await?
            }
        };
        let &[granted, remaining, next_ms, reset_ms, epoch] = reply.as_slice() else {
            return Err(LinkError::BadReply(reply));
        };
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let ms = |n: i64| Duration::from_millis(u64::try_from(n.max(0)).unwrap_or(0));
        Ok(Grant {
            granted: count(granted),
            remaining: count(remaining),
            next_token: ms(next_ms),
            reset: ms(reset_ms),
            epoch,
        })
    }

    /// The shared connection, (re)connecting when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, LinkError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn succeeded(&self) {
        if self.is_up() {
            return;
        }
        let transition = self
            .outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .success(Instant::now());
        self.up.store(true, Ordering::Relaxed);
        self.metrics.redis_up.set(1);
        if let Some(Transition::Up { was_down_for }) = transition {
            self.metrics
                .redis_transitions
                .with_label_values(&["up"])
                .inc();
            match was_down_for {
                Some(d) => {
                    tracing::info!(redis = %self.shown, down_for = ?d, "Redis is back: cluster rate limits are shared again")
                }
                None => {
                    tracing::info!(redis = %self.shown, "connected to Redis for cluster rate limits")
                }
            }
        }
    }

    async fn failed(self: &Arc<Self>, e: &LinkError) {
        self.metrics
            .redis_errors
            .with_label_values(&[e.kind()])
            .inc();
        // A broken connection is not reused; the next call connects anew.
        *self.conn.lock().await = None;
        let transition = self
            .outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failure(Instant::now());
        self.up.store(false, Ordering::Relaxed);
        self.metrics.redis_up.set(0);
        if transition == Some(Transition::Down) {
            self.metrics
                .redis_transitions
                .with_label_values(&["down"])
                .inc();
            tracing::warn!(redis = %self.shown, error = %e, "Redis unreachable: cluster rate limits fall back to their on_redis_error behaviour until it answers again");
        }
        self.probe();
    }

    /// Pings with back-off until Redis answers (one prober at a time).
    fn probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(probe_loop(weak));
    }
}

async fn probe_loop(weak: Weak<RedisLink>) {
    loop {
        let Some(link) = weak.upgrade() else { return };
        let wait = link
            .outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retry_in();
        drop(link);
        tokio::time::sleep(wait).await;
        let Some(link) = weak.upgrade() else { return };
        if link.is_up() {
            link.probing.store(false, Ordering::Release);
            return;
        }
        let ping = async {
            let mut conn = link.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(LinkError::from)
        };
        let result = tokio::time::timeout(link.timeout, ping)
            .await
            .unwrap_or(Err(LinkError::Timeout(link.timeout)));
        match result {
            Ok(_) => {
                link.succeeded();
                link.probing.store(false, Ordering::Release);
                return;
            }
            Err(e) => {
                link.metrics
                    .redis_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                *link.conn.lock().await = None;
                let transition = link
                    .outage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failure(Instant::now());
                if transition == Some(Transition::Down) {
                    link.metrics
                        .redis_transitions
                        .with_label_values(&["down"])
                        .inc();
                    tracing::warn!(redis = %link.shown, error = %e, "Redis unreachable: cluster rate limits fall back to their on_redis_error behaviour until it answers again");
                }
            }
        }
    }
}
