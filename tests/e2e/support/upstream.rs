//! A real HTTP upstream on 127.0.0.1:0 that reports what it received.
//!
//! Paths:
//! - `/slow/MS/...`   answers after MS milliseconds
//! - `/status/N/...`  answers with status N
//! - `/hop`           answers with hop-by-hop headers that must not reach the client
//! - `/stream`        sends "first", waits for `release_stream`, then sends "second"
//! - `/upload`        reports the request body's first chunk on `first_chunks`, then
//!   echoes the whole body
//! - `/fail/N/...`    the first N requests to any `/fail` path get 503, later ones the echo
//! - `/health`        200 while `healthy` is set, else 503
//! - `/ws`            WebSocket-style upgrade: 101 (with `x-upstream-saw-consumer` set to
//!   the handshake's `x-consumer-id`, if any), then echoes every byte back
//! - anything else    JSON echo: name, method, path, query, headers, body, `n`, the
//!   request number (counted on arrival), and `arrived_by_answer`, how many requests
//!   had arrived when the answer was made (after a `/slow` wait: a request numbered
//!   up to it arrived while this one was waiting); `?cc=VALUE` / `?vary=NAME` set
//!   Cache-Control / Vary on it
//!
//! While `failing` is set, every request except `/health` gets 503.
//!
//! `Upstream::start_with` serves it over TLS (a rustls server config) and/or HTTP/2
//! (h2c with prior knowledge without TLS, h2 by ALPN with it); the echo then reports
//! the `version` the request arrived with.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::ChannelBody;

pub struct Upstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests answered so far.
    pub requests: Arc<AtomicUsize>,
    pub release_stream: Arc<Notify>,
    pub first_chunks: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    /// `/health` answers 200 while set.
    pub healthy: Arc<AtomicBool>,
    /// Every request (but `/health`) gets 503 while set.
    pub failing: Arc<AtomicBool>,
    task: JoinHandle<()>,
    /// Connection tasks, aborted with the upstream so a dropped upstream is really
    /// gone (pooled keep-alive connections included).
    connection_tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
        for task in self.connection_tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

struct Shared {
    name: String,
    delay: Duration,
    requests: Arc<AtomicUsize>,
    release_stream: Arc<Notify>,
    first_chunks: mpsc::UnboundedSender<Bytes>,
    healthy: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
    fail_seen: AtomicUsize,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        Self::start_with_delay(name, Duration::ZERO).await
    }

    /// An upstream that waits `delay` before answering every request.
    pub async fn start_with_delay(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener, delay)
    }

    /// Starts an upstream on a given address (to bring a stopped one back).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Self {
        let deadline = tokio::time::Instant::now() + super::PATIENCE;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(name, listener, Duration::ZERO),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        }
    }

    /// An upstream speaking `serving` (TLS, HTTP/2 or both).
    pub async fn start_with(name: &str, serving: Serving) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve_with(name, listener, Duration::ZERO, serving)
    }

    fn serve(name: &str, listener: TcpListener, delay: Duration) -> Self {
        Self::serve_with(name, listener, delay, Serving::default())
    }

    fn serve_with(name: &str, listener: TcpListener, delay: Duration, serving: Serving) -> Self {
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let release_stream = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let failing = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            delay,
            requests: requests.clone(),
            release_stream: release_stream.clone(),
            first_chunks: tx,
            healthy: healthy.clone(),
            failing: failing.clone(),
            fail_seen: AtomicUsize::new(0),
        });
        let conns = connections.clone();
        let connection_tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = connection_tasks.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let serving = serving.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(shared.clone(), req));
                    match serving.tls {
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_stream(stream, h2 || serving.http2, svc).await;
                        }
                        None => serve_stream(stream, serving.http2, svc).await,
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self {
            addr,
            connections,
            requests,
            release_stream,
            first_chunks: tokio::sync::Mutex::new(rx),
            healthy,
            failing,
            task,
            connection_tasks,
        }
    }
}

/// How an upstream speaks: plain HTTP/1.1 by default.
#[derive(Clone, Default)]
pub struct Serving {
    /// Terminate TLS with this config (its ALPN list decides h2 vs http/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak HTTP/2 (h2c with prior knowledge when there is no TLS).
    pub http2: bool,
}

async fn serve_stream<S, F>(stream: S, http2: bool, svc: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<Request<Incoming>, Response = Reply, Error = Infallible>
        + Send
        + 'static,
    F::Future: Send + 'static,
{
    if http2 {
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    } else {
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    }
}

type Reply = Response<UpstreamBody>;

fn plain(status: StatusCode, text: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .body(UpstreamBody::full(text))
        .expect("response")
}

async fn answer(shared: Arc<Shared>, mut req: Request<Incoming>) -> Result<Reply, Infallible> {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return Ok(if shared.healthy.load(Ordering::SeqCst) {
            plain(StatusCode::OK, "ok")
        } else {
            plain(StatusCode::SERVICE_UNAVAILABLE, "down")
        });
    }
    if shared.failing.load(Ordering::SeqCst) {
        let mut reply = plain(StatusCode::SERVICE_UNAVAILABLE, "failing");
        reply
            .headers_mut()
            .insert("x-upstream", shared.name.parse().expect("name"));
        return Ok(reply);
    }
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut status = StatusCode::OK;
    match parts.as_slice() {
        ["fail", count, ..] => {
            let count: usize = count.parse().unwrap_or(0);
            if shared.fail_seen.fetch_add(1, Ordering::SeqCst) < count {
                return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "not yet"));
            }
        }
        ["ws"] => {
            let wants_upgrade = req
                .headers()
                .get("upgrade")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !wants_upgrade {
                return Ok(plain(StatusCode::BAD_REQUEST, "no upgrade header"));
            }
            let consumer = req.headers().get("x-consumer-id").cloned();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
            let mut reply = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("x-upstream", &shared.name);
            if let Some(consumer) = consumer {
                reply = reply.header("x-upstream-saw-consumer", consumer);
            }
            return Ok(reply.body(UpstreamBody::full("")).expect("response"));
        }
        ["slow", ms, ..] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["status", code, ..] => {
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        }
        ["hop"] => {
            return Ok(Response::builder()
                .header("connection", "x-upstream-secret")
                .header("x-upstream-secret", "hidden")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-upstream", &shared.name)
                .body(UpstreamBody::full("hop"))
                .expect("response"));
        }
        ["stream"] => {
            let (tx, rx) = mpsc::channel(2);
            let release = shared.release_stream.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            return Ok(Response::new(UpstreamBody::Channel(ChannelBody(rx))));
        }
        ["upload"] => {
            let mut body = req.into_body();
            let mut all = Vec::new();
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    if first {
                        let _ = shared.first_chunks.send(data.clone());
                        first = false;
                    }
                    all.extend_from_slice(data);
                }
            }
            return Ok(Response::new(UpstreamBody::full(all)));
        }
        _ => {}
    }
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "upstream": shared.name,
        "method": method,
        "version": version,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "n": n,
        "arrived_by_answer": shared.requests.load(Ordering::SeqCst),
    });
    let mut reply = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", &shared.name);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "cc" => reply = reply.header("cache-control", &*value),
            "vary" => reply = reply.header("vary", &*value),
            _ => {}
        }
    }
    Ok(reply
        .body(UpstreamBody::full(echo.to_string()))
        .expect("response"))
}

/// Fixed or channel-fed response body.
pub enum UpstreamBody {
    Full(Option<Bytes>),
    Channel(ChannelBody),
}

impl UpstreamBody {
    fn full(data: impl Into<Bytes>) -> Self {
        UpstreamBody::Full(Some(data.into()))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Channel(body) => Pin::new(body).poll_frame(cx),
        }
    }
}
