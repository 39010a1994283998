//! Requests to HTTP/1.1 targets on our codec, over connections the request owns: a
//! connection is taken from the target's per-worker pool (or opened: TCP, then TLS for
//! https://), the request head is written once into the connection's reused buffer
//! (with a small body behind it: one write), the answer's head is parsed in place, and
//! the answer's body returns the connection to the pool when it ends cleanly. No
//! channel, no connection task, no wake-up of another task per request.
//!
//! A pooled connection the target closed while idle is noticed from the readiness the
//! runtime already tracks (no system call per request); one that fails before any byte
//! of an answer is retried once on a new connection when the request is idempotent
//! and its body can be sent again.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::addr::TargetAddr;
use crate::body::{BodyError, GatewayBody};
use crate::h1::chunked;
use crate::h1::encode::{self, Framing};
use crate::h1::head::{self, HeadError, HeadLimits};
use crate::h1::inbound::READ_CHUNK;
use crate::h1::outbound::{Outbound, TargetPool, UpstreamBody};
use crate::h1::stream::{Stream, poll_fill, poll_write_all};
use crate::tls::client::ClientTls;

/// Bounds on a target's answer head (targets are not clients, but a broken one must
/// not make the gateway buffer without end).
const RESPONSE_LIMITS: HeadLimits = HeadLimits {
    max_headers: 256,
    max_head_bytes: 128 * 1024,
    max_uri_bytes: 0,
};

/// A request body up to this size is sent in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// Why an exchange with a target failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Io(io::Error),
    #[error("request body: {0}")]
    Body(BodyError),
    #[error("answer head: {0}")]
    BadHead(HeadError),
    #[error("the target closed the connection without answering")]
    Closed,
}

/// How a group reaches its HTTP/1.1 targets (shared by groups with equal settings,
/// kept across reloads like the pools it holds).
pub struct H1Client {
    connect_timeout: Duration,
    tls: Option<Tls>,
    workers: usize,
    max_idle: usize,
    idle_timeout: Duration,
    pools: Mutex<HashMap<TargetAddr, Weak<TargetPool>>>,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for H1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Client")
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl H1Client {
    pub fn new(
        connect_timeout: Duration,
        tls: &ClientTls,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        let mut config = (*tls.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            connect_timeout,
            tls: Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name: tls.server_name.clone(),
            }),
            workers: crate::worker::count(),
            max_idle,
            idle_timeout,
            pools: Mutex::default(),
        }
    }

    /// The idle-connection pool of one target (the same one while any holder lives).
    pub fn pool(&self, addr: &TargetAddr) -> Arc<TargetPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|_, pool| pool.strong_count() > 0);
        if let Some(pool) = pools.get(addr).and_then(Weak::upgrade) {
            return pool;
        }
        let pool = Arc::new(TargetPool::new(
            self.workers,
            self.max_idle,
            self.idle_timeout,
        ));
        pools.insert(addr.clone(), Arc::downgrade(&pool));
        pool
    }

    /// One exchange with the target: the answer's head, its body streaming behind.
    pub async fn send(
        &self,
        pool: &Arc<TargetPool>,
        addr: &TargetAddr,
        req: Request<GatewayBody>,
    ) -> Result<Response<GatewayBody>, SendError> {
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // A body known in full can be sent again on a new connection.
        let replay: Option<Bytes> = match &body {
            GatewayBody::Full { data } => Some(data.clone().unwrap_or_default()),
            // A GET off the client's connection has a body that has already ended.
            body if body.is_end_stream() => Some(Bytes::new()),
            _ => None,
        };
        let idempotent = crate::policy::retry::is_idempotent(&parts.method);
        let mut body = Some(body);
        let mut fresh_only = false;
        loop {
            let (mut conn, reused) = match pool.take().filter(|_| !fresh_only) {
                Some(conn) => (conn, true),
                // Boxed: connecting is the rare path, and inline its future (TCP + TLS
                // handshake) would grow every request's future by kilobytes.
                None => (Box::pin(self.connect(addr)).await?, false),
            };
            let attempt_body = match (&replay, body.take()) {
                (Some(bytes), _) if reused || fresh_only => GatewayBody::full(bytes.clone()),
                (_, Some(body)) => body,
                (Some(bytes), None) => GatewayBody::full(bytes.clone()),
                (None, None) => GatewayBody::empty(),
            };
            let exchanged = exchange(&mut conn, &parts, target, attempt_body).await;
            match exchanged {
                Ok(head) => {
                    conn.uses += 1;
                    let body = if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        UpstreamBody::switching(conn)
                    } else {
                        UpstreamBody::new(conn, head.body, head.keep_alive, pool.clone())
                    };
                    let mut response = Response::new(GatewayBody::Upstream { body });
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    return Ok(response);
                }
                // A pooled connection the target had closed: once more on a new one.
                Err(Failure::BeforeAnswer(_)) if reused && idempotent && replay.is_some() => {
                    fresh_only = true;
                }
                Err(Failure::BeforeAnswer(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// A new connection to the target: TCP, then TLS for https://.
    async fn connect(&self, addr: &TargetAddr) -> Result<Box<Outbound>, SendError> {
        let port = addr
            .authority
            .port_u16()
            .unwrap_or(if addr.is_https() { 443 } else { 80 });
        let host = addr.authority.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        if !addr.is_https() {
            return Ok(Outbound::new(Stream::Tcp(tcp)));
        }
        let Some(tls) = &self.tls else {
            return Err(SendError::Tls(
                "no TLS settings for an https:// target".into(),
            ));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| SendError::Tls(format!("\"{host}\" is not a valid TLS name")))?,
        };
        let stream = tokio::time::timeout(self.connect_timeout, tls.connector.connect(name, tcp))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(|e| match crate::tls::client::failure_reason(&e) {
                Some(reason) => SendError::Tls(reason),
                None => SendError::Connect(e),
            })?;
        Ok(Outbound::new(Stream::ClientTls(Box::new(stream))))
    }
}

/// How an exchange failed: before any byte of an answer (a retry on a new connection
/// may help), or otherwise.
enum Failure {
    BeforeAnswer(SendError),
    Other(SendError),
}

/// Writes the request on `conn` and reads the answer's head (informational answers
/// but 101 skipped).
async fn exchange(
    conn: &mut Outbound,
    parts: &http::request::Parts,
    target: &str,
    body: GatewayBody,
) -> Result<head::ResponseHead, Failure> {
    let framing = match body.size_hint().exact() {
        Some(0) if !method_sends_length(&parts.method) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    conn.out.clear();
    let host: Option<&[u8]> = parts.uri.authority().map(|a| a.as_str().as_bytes());
    encode::request_head(
        &parts.method,
        target,
        host,
        &parts.headers,
        framing,
        &mut conn.out,
    );
    send_body(conn, body, framing).await?;
    read_answer_head(conn, &parts.method).await
}

/// Methods whose requests say `content-length: 0` when empty (as browsers and hyper do).
fn method_sends_length(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The head in `conn.out`, then the body: small ones in the same write.
async fn send_body(
    conn: &mut Outbound,
    body: GatewayBody,
    framing: Framing,
) -> Result<(), Failure> {
    let io_err = |e: io::Error| Failure::BeforeAnswer(SendError::Io(e));
    let mut body = std::pin::pin!(body);
    let chunked = framing == Framing::Chunked;
    loop {
        let frame = if framing == Framing::None {
            None
        } else {
            poll_fn(|cx| body.as_mut().poll_frame(cx)).await
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if chunked {
                        chunked::encode_size(data.len(), &mut conn.out);
                    }
                    if data.len() <= COALESCE {
                        conn.out.extend_from_slice(&data);
                        if chunked {
                            conn.out.extend_from_slice(b"\r\n");
                        }
                        write_out(conn).await.map_err(io_err)?;
                    } else {
                        write_out(conn).await.map_err(io_err)?;
                        write(conn, &data).await.map_err(io_err)?;
                        if chunked {
                            write(conn, b"\r\n").await.map_err(io_err)?;
                        }
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                        chunked::encode_end(Some(&trailers), &mut conn.out);
                        write_out(conn).await.map_err(io_err)?;
                        return Ok(());
                    }
                }
            },
            // The client's body broke off: the target must not take a cut request.
            Some(Err(e)) => return Err(Failure::Other(SendError::Body(e))),
            None => {
                if chunked {
                    chunked::encode_end(None, &mut conn.out);
                }
                write_out(conn).await.map_err(io_err)?;
                return Ok(());
            }
        }
    }
}

/// Reads until an answer head is complete.
async fn read_answer_head(
    conn: &mut Outbound,
    method: &Method,
) -> Result<head::ResponseHead, Failure> {
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match head::parse_response(&mut conn.buf, method, &RESPONSE_LIMITS) {
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    continue;
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Failure::Other(SendError::BadHead(e))),
            }
        }
        let read = poll_fn(|cx| poll_fill(&mut conn.stream, &mut conn.buf, READ_CHUNK, cx)).await;
        match read {
            Ok(0) if answered => return Err(Failure::Other(SendError::Closed)),
            Ok(0) => return Err(Failure::BeforeAnswer(SendError::Closed)),
            Ok(_) => {}
            Err(e) if answered => return Err(Failure::Other(SendError::Io(e))),
            Err(e) => return Err(Failure::BeforeAnswer(SendError::Io(e))),
        }
    }
}

async fn write_out(conn: &mut Outbound) -> io::Result<()> {
    let Outbound { stream, out, .. } = conn;
    let mut written = 0;
    if !out.is_empty() {
        poll_fn(|cx| poll_write_all(stream, out, &mut written, cx)).await?;
    }
    out.clear();
    poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_flush(cx)).await
}

async fn write(conn: &mut Outbound, data: &[u8]) -> io::Result<()> {
    let mut written = 0;
    poll_fn(|cx| poll_write_all(&mut conn.stream, data, &mut written, cx)).await
}
