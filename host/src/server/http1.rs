//! One HTTP/1.1 connection (plain or over TLS): hyper's parser with our limits, the
//! slowloris guard (408 for a head not received in time), upgrades for WebSockets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::peer::Peer;
use crate::pipeline;

/// The per-connection service: hands each request to the pipeline with the peer address.
#[derive(Clone)]
pub(super) struct GatewayService {
    pub(super) gateway: Arc<Gateway>,
    pub(super) peer: Peer,
    pub(super) state: Arc<ConnState>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for GatewayService {
    type Response = http::Response<crate::body::ObservedBody>;
    type Error = std::convert::Infallible;
    type Future = pipeline::HandleFuture;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        // hyper calls us once a whole head is parsed: from here on this is no longer a
        // slow head.
        self.state.busy.store(true, Ordering::Relaxed);
        let handled = pipeline::handle(self.gateway.clone(), req, self.peer.clone());
        let state = self.state.clone();
        Box::pin(async move {
            let mut response = handled.await?;
            // Draining: this is the connection's last response (hyper closes after a
            // `Connection: close`), so the client opens its next one elsewhere.
            if state.draining.load(Ordering::Relaxed)
                && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(response)
        })
    }
}

/// How long a draining connection must stay quiet before it is closed.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Serves one HTTP/1.1 connection until it ends, finishing its current request and
/// closing when the gateway drains.
pub(super) async fn serve<S: Stream>(
    stream: S,
    peer: Peer,
    gateway: Arc<Gateway>,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let addr = peer.addr;
    let (conn, state) = connection(stream, peer, gateway);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = draining.changed() => {
            state.draining.store(true, Ordering::Relaxed);
            // hyper's graceful shutdown closes an idle connection at once, cutting off
            // a request already on its way (a keep-alive client's next one, or the
            // first one of a connection accepted just before the drain). So requests
            // keep being served (each answer says `Connection: close`), and the
            // connection is closed only once it has been quiet for DRAIN_QUIET. The
            // server's shutdown grace bounds the whole wait.
            loop {
                let seen = state.activity.load(Ordering::Relaxed);
                tokio::select! {
                    result = conn.as_mut() => break result,
                    () = tokio::time::sleep(DRAIN_QUIET) => {
                        if !state.busy.load(Ordering::Relaxed)
                            && state.activity.load(Ordering::Relaxed) == seen
                        {
                            conn.as_mut().graceful_shutdown();
                            break conn.await;
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
    }
}

/// An HTTP/1.1 connection over `S`.
type Connection<S> = http1::UpgradeableConnection<TokioIo<TrackedStream<S>>, GatewayService>;

/// Serves HTTP/1.1 on `stream` (a TCP stream, or a TLS stream over one); the state
/// its service and socket share.
fn connection<S: Stream>(
    stream: S,
    peer: Peer,
    gateway: Arc<Gateway>,
) -> (Connection<S>, Arc<ConnState>) {
    let server = gateway.snapshot().config().server.clone();
    let header_timeout = Duration::from_millis(server.header_read_timeout_ms);
    let peer_addr = peer.addr;
    let state = Arc::new(ConnState {
        busy: AtomicBool::new(false),
        upgraded: peer.upgraded.clone(),
        draining: AtomicBool::new(false),
        activity: AtomicU64::new(0),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper answers 431 itself past these; the finer limits are checked per request.
        .max_headers(server.max_headers.max(1))
        .max_buf_size((server.max_header_bytes + server.max_uri_bytes + 4096).max(8192))
        .keep_alive(true)
        // Responses are mostly small: one flattened write beats a writev of the parts.
        .writev(false);
    let io = TokioIo::new(TrackedStream {
        inner: stream,
        peer: peer_addr,
        state: state.clone(),
        head_started: false,
        idle_since: Instant::now(),
        header_timeout,
    });
    let conn = builder
        .serve_connection(
            io,
            GatewayService {
                gateway,
                peer,
                state: state.clone(),
            },
        )
        // WebSocket routes take the connection over after a 101.
        .with_upgrades();
    (conn, state)
}

/// A connection's byte stream, and how (if at all) it can be told "408" on its way
/// out without the HTTP layer.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes `bytes` now, best effort, without blocking (the stream is being dropped).
    fn last_words(&self, bytes: &[u8]);
}

impl Stream for TcpStream {
    fn last_words(&self, bytes: &[u8]) {
        // A tiny write into an empty socket buffer.
        let _ = self.try_write(bytes);
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn last_words(&self, _bytes: &[u8]) {
        // Plain bytes would be garbage inside TLS, and a record cannot be written
        // synchronously here: a slow head over TLS is closed without the 408.
    }
}

/// Shared between a connection's socket and its service.
#[derive(Debug)]
pub(super) struct ConnState {
    /// A request head was parsed and its response is not written yet.
    busy: AtomicBool,
    /// The connection became a WebSocket tunnel (`Peer::upgraded`).
    upgraded: Arc<AtomicBool>,
    /// The gateway drains: responses close the connection.
    draining: AtomicBool,
    /// Counts reads that brought bytes (a draining connection closes once this stops).
    activity: AtomicU64,
}

/// The client socket. It notes when a request head has started arriving, so that when
/// hyper drops a connection whose head did not complete within the header read timeout,
/// the client is told why (408) instead of seeing a bare close. hyper itself closes such
/// connections silently. An idle keep-alive connection is closed quietly: a client
/// reusing it could take a 408 as the answer to its next request.
pub(super) struct TrackedStream<S: Stream> {
    inner: S,
    peer: SocketAddr,
    state: Arc<ConnState>,
    /// Bytes of a new request head have arrived since the last response.
    head_started: bool,
    /// When the last response was written (hyper's header timer starts about then).
    idle_since: Instant,
    header_timeout: Duration,
}

impl<S: Stream> Drop for TrackedStream<S> {
    fn drop(&mut self) {
        if self.head_started
            && !self.state.busy.load(Ordering::Relaxed)
            && !self.state.upgraded.load(Ordering::Relaxed)
            && self.idle_since.elapsed() >= self.header_timeout
        {
            tracing::info!(peer = %self.peer, "request head not received in time: 408");
            self.inner
                .last_words(&closing_answer(GatewayError::RequestTimeout));
        }
    }
}

/// The HTTP/1.1 bytes of an error answer written outside hyper (the connection closes
/// after it): the response comes from the one error → response conversion, its
/// Content-Length from the body's real length.
fn closing_answer(error: GatewayError) -> Vec<u8> {
    let response = error.into_response();
    let (parts, body) = response.into_parts();
    let body = match body {
        GatewayBody::Full { data } => data.unwrap_or_default(),
        _ => bytes::Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

impl<S: Stream> TrackedStream<S> {
    /// Response bytes went out: the connection is (about to be) idle again.
    fn wrote(&mut self) {
        self.head_started = false;
        self.state.busy.store(false, Ordering::Relaxed);
        self.idle_since = Instant::now();
    }
}

impl<S: Stream> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.activity.fetch_add(1, Ordering::Relaxed);
            if !self.state.busy.load(Ordering::Relaxed) {
                self.head_started = true;
            }
        }
        polled
    }
}

impl<S: Stream> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_408_declares_the_length_of_the_body_it_sends() {
        let bytes = closing_answer(GatewayError::RequestTimeout);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len(), "{text}");
        assert!(head.contains("connection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "request_timeout");
        assert_eq!(json["status"], 408);
    }
}
