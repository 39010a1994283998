//! One HTTP/2 connection (over TLS after ALPN, or h2c with prior knowledge): hyper's
//! HTTP/2 server with the abuse limits from `[server.http2]`: concurrent streams,
//! header list size, and the guards against reset floods (CVE-2023-44487) and
//! error-reset floods. CONTINUATION floods (CVE-2024-27316 class) are cut by the header
//! list limit: h2 counts a header block's CONTINUATION frames against it and answers
//! GOAWAY (ENHANCE_YOUR_CALM) past it.
//!
//! h2 only counts the streams a client resets before the server accepted them
//! (`max_pending_accept_reset_streams`). A client that waits until each stream is
//! accepted, and so started on, before resetting it escapes that count and keeps the
//! gateway starting work it throws away; `CancelGuard` counts those
//! (`max_cancelled_streams_per_s`) and closes the connection past the limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::gateway::Gateway;
use crate::peer::Peer;
use crate::pipeline;
use crate::policy::rate_limit::{Algorithm, LimitSpec, Limiter};

/// How long a connection closed for abuse may take to finish its open streams after
/// its GOAWAY before it is dropped (the client cannot be trusted to finish them).
const ABUSE_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Hands each stream's request to the pipeline.
#[derive(Clone)]
struct Http2Service {
    gateway: Arc<Gateway>,
    peer: Peer,
    guard: Arc<CancelGuard>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Http2Service {
    type Response = http::Response<crate::body::ObservedBody>;
    type Error = std::convert::Infallible;
    type Future = Watched;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        Watched {
            inner: Box::pin(pipeline::handle(
                self.gateway.clone(),
                req,
                self.peer.clone(),
            )),
            guard: self.guard.clone(),
            answered: false,
        }
    }
}

/// A connection's count of streams cancelled by the client before their answer: a
/// token bucket (`max_cancelled_streams_per_s`, a burst of as many), and the signal
/// that it ran dry.
struct CancelGuard {
    /// `None`: no limit.
    budget: Option<Limiter>,
    tripped: AtomicBool,
    notify: Notify,
}

impl CancelGuard {
    fn new(per_s: u32) -> Self {
        let budget = (per_s > 0).then(|| {
            let spec = LimitSpec {
                algorithm: Algorithm::TokenBucket,
                capacity: per_s,
                refill_per_s: f64::from(per_s),
                window: Duration::from_secs(1),
            };
            Limiter::new(spec, Instant::now())
        });
        Self {
            budget,
            tripped: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// A stream's answer was dropped before it was ready: hyper saw the client reset
    /// the stream (or the connection end, when the count no longer matters).
    fn cancelled(&self) {
        let Some(budget) = &self.budget else {
            return;
        };
        if !budget.check(Instant::now()).allowed && !self.tripped.swap(true, Ordering::AcqRel) {
            // A stored permit: the connection task sees it even if it is not waiting yet.
            self.notify.notify_one();
        }
    }
}

/// A stream's pipeline future, noting in the connection's guard if it is dropped
/// before it produced the response head.
struct Watched {
    inner: pipeline::HandleFuture,
    guard: Arc<CancelGuard>,
    answered: bool,
}

impl Future for Watched {
    type Output = <pipeline::HandleFuture as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = self.inner.as_mut().poll(cx);
        if polled.is_ready() {
            self.answered = true;
        }
        polled
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.answered {
            self.guard.cancelled();
        }
    }
}

/// Serves one HTTP/2 connection until it ends; on drain it sends GOAWAY, lets open
/// streams finish, and closes.
pub(super) async fn serve<S>(
    stream: S,
    peer: Peer,
    gateway: Arc<Gateway>,
    mut draining: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gateway.snapshot().config().server.http2.clone();
    let addr = peer.addr;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams)
        .keep_alive_interval(Duration::from_millis(limits.keep_alive_interval_ms))
        .keep_alive_timeout(Duration::from_millis(limits.keep_alive_timeout_ms));
    let guard = Arc::new(CancelGuard::new(limits.max_cancelled_streams_per_s));
    let service = Http2Service {
        gateway,
        peer,
        guard: guard.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = draining.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = guard.notify.notified() => {
            tracing::warn!(
                peer = %addr,
                limit_per_s = limits.max_cancelled_streams_per_s,
                "HTTP/2 client cancels too many streams (rapid reset): GOAWAY and close"
            );
            // GOAWAY (hyper sends NO_ERROR: it has no abrupt shutdown with a reason),
            // a short grace for streams already answered, then the socket is dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(ABUSE_CLOSE_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_elapsed) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "HTTP/2 connection ended with an error");
    }
}
