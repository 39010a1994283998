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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::Gateway;
use crate::pipeline;

/// Fixed bytes of the answer to a client that did not finish its request head in time.
/// hyper closes such connections silently; we say why first.
const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 89\r\n\r\n\
{\"error\":\"request_timeout\",\"message\":\"request head not received in time\",\"status\":408}";

/// Serves `listener` until `shutdown` completes, then stops accepting and waits up to
/// `server.shutdown_grace_ms` for in-flight requests before returning.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection = connection(stream, peer, gateway.clone());
                    let watched = graceful.watch(connection.conn);
                    let spare = connection.spare;
                    let partial = connection.partial;
                    tokio::spawn(async move {
                        if let Err(e) = watched.await {
                            finish_failed(e, spare, &partial, peer);
                        }
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
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    Ok(())
}

/// The per-connection service: hands each request to the pipeline with the peer address.
#[derive(Clone)]
struct GatewayService {
    gateway: Arc<Gateway>,
    peer: pipeline::Peer,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for GatewayService {
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

struct Connection {
    conn: http1::Connection<TokioIo<TrackedStream>, GatewayService>,
    /// A second handle on the socket, to answer 408 after hyper gave up on it.
    spare: Option<socket2::Socket>,
    /// True while request bytes have arrived that no response has followed yet.
    partial: Arc<AtomicBool>,
}

fn connection(stream: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>) -> Connection {
    let _ = stream.set_nodelay(true);
    let spare = socket2::SockRef::from(&stream).try_clone().ok();
    let partial = Arc::new(AtomicBool::new(false));
    let server = gateway.snapshot().config.server.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(server.header_read_timeout_ms))
        // hyper answers 431 itself past these; the finer limits are checked per request.
        .max_headers(server.max_headers.max(1))
        .max_buf_size((server.max_header_bytes + server.max_uri_bytes + 4096).max(8192))
        .keep_alive(true)
        // Responses are mostly small: one flattened write beats a writev of the parts.
        .writev(false);
    let io = TokioIo::new(TrackedStream {
        inner: stream,
        partial: partial.clone(),
    });
    Connection {
        conn: builder.serve_connection(
            io,
            GatewayService {
                gateway,
                peer: pipeline::Peer::new(peer),
            },
        ),
        spare,
        partial,
    }
}

fn finish_failed(
    error: hyper::Error,
    spare: Option<socket2::Socket>,
    partial: &AtomicBool,
    peer: SocketAddr,
) {
    if error.is_timeout() {
        // Only a client caught mid-request gets a 408: an idle keep-alive connection is
        // closed quietly, as a client reusing it could take a 408 for its next request.
        if partial.load(Ordering::Relaxed)
            && let Some(socket) = spare
        {
            tracing::info!(%peer, "request head not received in time: 408");
            let _ = socket.send(REQUEST_TIMEOUT_RESPONSE);
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    } else {
        tracing::debug!(%peer, error = %error, "connection ended with an error");
    }
}

/// The client socket, noting whether a request is partly read (for the 408 decision).
struct TrackedStream {
    inner: TcpStream,
    partial: Arc<AtomicBool>,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.partial.store(true, Ordering::Relaxed);
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
            self.partial.store(false, Ordering::Relaxed);
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
            self.partial.store(false, Ordering::Relaxed);
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
