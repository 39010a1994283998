//! Accepting connections: HTTP/1.1 with parser limits, the slowloris guard, and a
//! graceful drain on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::gateway::Gateway;
use crate::pipeline;

/// Fixed bytes of the answer to a client that did not finish its request head in time.
/// hyper closes such connections silently; we say why first.
const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 89\r\n\r\n\
{\"error\":\"request_timeout\",\"message\":\"request head not received in time\",\"status\":408}";

/// A non-blocking TCP listener with SO_REUSEADDR (restart without waiting for
/// TIME_WAIT) and the given accept backlog.
pub fn listen_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Serves `listener` until `shutdown` completes, then stops accepting and waits up to
/// `server.shutdown_grace_ms` for in-flight requests before returning.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Every connection task holds a receiver: `send` asks them to finish their current
    // request and close, and `closed` resolves once the last one has. (hyper-util's
    // GracefulShutdown cannot watch connections that allow upgrades.)
    let (drain, draining) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = connection(stream, peer, gateway.clone());
                    let mut draining = draining.clone();
                    tokio::spawn(async move {
                        let mut conn = pin!(conn);
                        let result = tokio::select! {
                            result = conn.as_mut() => result,
                            _ = draining.changed() => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        drop(draining);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = Duration::from_millis(gateway.snapshot().config.server.shutdown_grace_ms);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    drop(draining);
    let _ = drain.send(true);
    tokio::select! {
        () = drain.closed() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    Ok(())
}

/// The per-connection service: hands each request to the pipeline with the peer address.
#[derive(Clone)]
struct GatewayService {
    gateway: Arc<Gateway>,
    peer: pipeline::Peer,
    state: Arc<ConnState>,
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
        Box::pin(handled)
    }
}

type Connection = http1::UpgradeableConnection<TokioIo<TrackedStream>, GatewayService>;

fn connection(stream: TcpStream, peer_addr: SocketAddr, gateway: Arc<Gateway>) -> Connection {
    let _ = stream.set_nodelay(true);
    let server = gateway.snapshot().config.server.clone();
    let header_timeout = Duration::from_millis(server.header_read_timeout_ms);
    let peer = pipeline::Peer::new(peer_addr);
    let state = Arc::new(ConnState {
        busy: AtomicBool::new(false),
        upgraded: peer.upgraded.clone(),
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
    builder
        .serve_connection(
            io,
            GatewayService {
                gateway,
                peer,
                state,
            },
        )
        // WebSocket routes take the connection over after a 101.
        .with_upgrades()
}

/// Shared between a connection's socket and its service.
#[derive(Debug)]
struct ConnState {
    /// A request head was parsed and its response is not written yet.
    busy: AtomicBool,
    /// The connection became a WebSocket tunnel (`Peer::upgraded`).
    upgraded: Arc<AtomicBool>,
}

/// The client socket. It notes when a request head has started arriving, so that when
/// hyper drops a connection whose head did not complete within the header read timeout,
/// the client is told why (408) instead of seeing a bare close. hyper itself closes such
/// connections silently. An idle keep-alive connection is closed quietly: a client
/// reusing it could take a 408 as the answer to its next request.
struct TrackedStream {
    inner: TcpStream,
    peer: SocketAddr,
    state: Arc<ConnState>,
    /// Bytes of a new request head have arrived since the last response.
    head_started: bool,
    /// When the last response was written (hyper's header timer starts about then).
    idle_since: Instant,
    header_timeout: Duration,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if self.head_started
            && !self.state.busy.load(Ordering::Relaxed)
            && !self.state.upgraded.load(Ordering::Relaxed)
            && self.idle_since.elapsed() >= self.header_timeout
        {
            tracing::info!(peer = %self.peer, "request head not received in time: 408");
            // Best effort on a non-blocking socket: a tiny write into an empty buffer.
            let _ = self.inner.try_write(REQUEST_TIMEOUT_RESPONSE);
        }
    }
}

impl TrackedStream {
    /// Response bytes went out: the connection is (about to be) idle again.
    fn wrote(&mut self) {
        self.head_started = false;
        self.state.busy.store(false, Ordering::Relaxed);
        self.idle_since = Instant::now();
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && !self.state.busy.load(Ordering::Relaxed)
        {
            self.head_started = true;
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
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
