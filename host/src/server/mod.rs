//! Accepting connections: the plain listener (HTTP/1.1, and HTTP/2 with prior knowledge
//! when `server.h2c` is on) and the TLS listener (HTTP/1.1 or HTTP/2 chosen by ALPN),
//! and a graceful drain on shutdown.
//!
//! - `fast`: one HTTP/1.1 connection (plain or TLS) on our codec: limits, framing
//!   rules, the slowloris 408, pipelining, 100-continue, upgrades
//! - `http2`: one HTTP/2 connection: stream and header limits, reset-flood guards
//! - `workers`: workers 1..N: a thread, a current-thread runtime and a listener each

mod fast;
mod http2;
mod workers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::h1::stream::Stream;
use crate::peer::Peer;
use crate::tls::{Terminator, TlsListener};

/// The HTTP/2 client preface: what a prior-knowledge (h2c) client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the gateway accepts connections on.
pub struct Listeners {
    /// Worker 0's.
    pub plain: TcpListener,
    pub tls: Option<TlsListener>,
    /// Workers 1..N's (bound or inherited at launch, so an upgrade hands them over).
    pub workers: Vec<WorkerListeners>,
}

/// The listening sockets of one extra worker: its runtime registers them.
pub struct WorkerListeners {
    pub plain: std::net::TcpListener,
    pub tls: Option<std::net::TcpListener>,
}

/// Serves the listeners until `shutdown` completes, then stops accepting and waits up
/// to `server.shutdown_grace_ms` for in-flight requests before returning. This loop is
/// worker 0; with `server.workers` > 1 the others start beside it and drain with it.
pub async fn serve(
    listeners: Listeners,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let Listeners {
        plain,
        tls,
        workers,
    } = listeners;
    let terminator = tls.as_ref().map(|tls| tls.terminator.clone());
    let extra = workers::spawn(workers, terminator, &gateway, &stopping)?;
    let listeners = Listeners {
        plain,
        tls,
        workers: Vec::new(),
    };
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let served = serve_loop(listeners, gateway, shutdown).await;
    extra.finished().await;
    served
}

/// One worker's accept loop, then its drain.
async fn serve_loop(
    listeners: Listeners,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Every connection task holds a receiver: `send` asks them to finish their current
    // request and close, and `closed` resolves once the last one has. (hyper-util's
    // GracefulShutdown cannot watch connections that allow upgrades.)
    let (drain, draining) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let accepted_here = gateway
        .metrics
        .worker_connections
        .with_label_values(&[&crate::worker::index().to_string()]);
    let Listeners { plain, tls, .. } = listeners;
    loop {
        tokio::select! {
            accepted = plain.accept() => match accepted {
                Ok((stream, peer)) => {
                    accepted_here.inc();
                    tokio::spawn(plain_connection(stream, peer, gateway.clone(), draining.clone()));
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_tls(tls.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    accepted_here.inc();
                    if let Some(tls) = &tls {
                        tokio::spawn(tls_connection(tls.terminator.clone(), stream, peer, gateway.clone(), draining.clone()));
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            () = &mut shutdown => break,
        }
    }
    drop(plain);
    drop(tls);
    let grace = Duration::from_millis(gateway.snapshot().config().server.shutdown_grace_ms);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    drop(draining);
    let _ = drain.send(true);
    // WebSocket tunnels outlive their connection task: they are waited for too.
    let drained = async {
        drain.closed().await;
        if gateway.tunnels.count() > 0 {
            tracing::info!(
                tunnels = gateway.tunnels.count(),
                "waiting for open WebSocket tunnels to close"
            );
        }
        gateway.tunnels.all_closed().await;
    };
    tokio::select! {
        () = drained => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Out of file descriptors and the like: back off instead of spinning.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The next TLS connection, or never when there is no TLS listener.
async fn accept_tls(tls: Option<&TlsListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match tls {
        Some(tls) => tls.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A plain connection: HTTP/1.1, or HTTP/2 when the client opens with the h2 preface
/// and `server.h2c` is on.
async fn plain_connection(
    stream: TcpStream,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    draining: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer = Peer::new(addr, false);
    let snapshot = gateway.snapshot();
    let server = &snapshot.config().server;
    let (h2c, wait) = (
        server.h2c,
        Duration::from_millis(server.header_read_timeout_ms),
    );
    if h2c && starts_with_h2_preface(&stream, wait).await {
        return http2::serve(stream, peer, gateway, draining).await;
    }
    fast::serve(Stream::Tcp(stream), peer, gateway, draining).await;
}

/// Peeks (without consuming) whether the client's first bytes are the HTTP/2 preface.
/// Decided on the first 4 bytes: no HTTP/1 method is "PRI ". A client that sends
/// nothing within `wait` goes to HTTP/1.1, whose header timeout answers it.
async fn starts_with_h2_preface(stream: &TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4];
    for _ in 0..50 {
        match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n >= 4 => return buf == H2_PREFACE[..4],
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            // Fewer than 4 bytes so far: wait a little for the rest.
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    false
}

/// A TLS connection: the handshake (bounded in time), then the protocol ALPN chose.
async fn tls_connection(
    tls: Terminator,
    stream: TcpStream,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    draining: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(stream) = tls.handshake(stream, addr, &gateway.metrics).await else {
        return;
    };
    let peer = Peer::new(addr, true);
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => http2::serve(stream, peer, gateway, draining).await,
        // The ACME tls-alpn-01 validation only needs the handshake.
        Some(crate::tls::ACME_TLS_ALPN) => {
            tracing::debug!(%addr, "ACME tls-alpn-01 validation answered");
            gateway
                .metrics
                .acme_challenges_answered
                .with_label_values(&["tls-alpn-01"])
                .inc();
        }
        _ => fast::serve(Stream::ServerTls(Box::new(stream)), peer, gateway, draining).await,
    }
}
