//! One HTTP/2 connection (over TLS after ALPN, or h2c with prior knowledge): hyper's
//! HTTP/2 server with the abuse limits from `[server.http2]`: concurrent streams,
//! header list size, and the guards against reset floods (CVE-2023-44487: streams a
//! client opens and cancels at once) and error-reset floods. CONTINUATION floods
//! (CVE-2024-27316 class) are cut by the header list limit: h2 stops reading a header
//! block past it and answers with GOAWAY.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::peer::Peer;
use crate::pipeline;

/// Hands each stream's request to the pipeline.
#[derive(Clone)]
struct Http2Service {
    gateway: Arc<Gateway>,
    peer: Peer,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Http2Service {
    type Response = http::Response<crate::body::ObservedBody>;
    type Error = std::convert::Infallible;
    type Future = pipeline::HandleFuture;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(pipeline::handle(
            self.gateway.clone(),
            req,
            self.peer.clone(),
        ))
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
    let conn = builder.serve_connection(TokioIo::new(stream), Http2Service { gateway, peer });
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = draining.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "HTTP/2 connection ended with an error");
    }
}
