//! One HTTP/1.1 connection on our own codec (`h1`), plain or over TLS: the connection's
//! life as one loop (head → request → answer → next), with no dispatcher task and no
//! channel. Request heads are parsed in place and their field values stay slices of
//! the read buffer; the request body is read by the request itself, straight off the
//! connection; each answer's head (and a small body) goes out in one write.
//!
//! Per request the loop: waits for a complete head (the slowloris guard: a head begun
//! and not finished within `server.header_read_timeout_ms` gets 408, an idle
//! connection is closed quietly), refuses a head that breaks the framing rules with
//! the status `h1::HeadError` names and closes, runs the pipeline, writes the answer
//! (HEAD, 1xx, 204 and 304 without a body; our framing, never the upstream's), reads
//! what the handler left of the request body (bounded) so the next pipelined request
//! starts at the right byte, and hands the connection to the tunnel after a 101.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::body::{GatewayBody, ObservedBody};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::h1::chunked;
use crate::h1::encode::{self, Framing};
use crate::h1::head::{self, HeadLimits, RequestHead};
use crate::h1::inbound::{ClientBody, Inbound, READ_CHUNK, SharedInbound, lock};
use crate::h1::stream::{Stream, poll_fill, poll_write_all};
use crate::http_upgrade::{ClientUpgrade, Upgraded};
use crate::peer::Peer;
use crate::pipeline;

/// A body chunk up to this size is copied behind its head and sent in the same write.
const COALESCE: usize = 16 * 1024;

/// What the handler left unread of a request body is read and dropped, up to this
/// much within `DRAIN_TIME`, to keep the connection; past it the connection closes.
const DRAIN_BYTES: u64 = 256 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// What waiting for a head gave.
enum HeadOutcome {
    Head(RequestHead),
    /// The client went away, stayed idle past the timeout, or the gateway drains.
    Closed,
    /// A refusal to write before closing.
    Refuse(GatewayError),
}

/// Serves one HTTP/1.1 connection until it ends, finishing its current request and
/// closing when the gateway drains.
pub(super) async fn serve(
    stream: Stream,
    peer: Peer,
    gateway: Arc<Gateway>,
    mut draining: watch::Receiver<bool>,
) {
    let (limits, header_timeout) = {
        let snapshot = gateway.snapshot();
        let server = &snapshot.config().server;
        let limits = HeadLimits {
            max_headers: server.max_headers.max(1),
            max_head_bytes: server.max_header_bytes + server.max_uri_bytes + 4096,
            max_uri_bytes: server.max_uri_bytes,
        };
        (limits, Duration::from_millis(server.header_read_timeout_ms))
    };
    let conn: SharedInbound = Arc::new(Mutex::new(Inbound::new(stream)));
    let mut out = BytesMut::with_capacity(4096);
    loop {
        let head = match read_head(&conn, &limits, header_timeout, &mut draining).await {
            HeadOutcome::Head(head) => head,
            HeadOutcome::Closed => break,
            HeadOutcome::Refuse(error) => {
                tracing::debug!(peer = %peer.addr, %error, "request refused before routing");
                let _ = write_refusal(&conn, &mut out, error).await;
                break;
            }
        };
        let method_is_head = head.method == Method::HEAD;
        let client_version = head.version;
        let wants_upgrade = head::tokens(&head.headers, header::CONNECTION).upgrade
            && head.headers.contains_key(header::UPGRADE);
        let mut keep_alive = head.keep_alive;
        lock(&conn).begin_body(head.body, head.expect_continue);
        let (req, upgrade_to) = request(head, &conn, wants_upgrade);
        let handled = pipeline::handle_request(gateway.clone(), req, peer.clone());
        let response = tokio::select! {
            biased;
            response = handled => response,
            // The request's future is dropped: its log records 499, its upstream
            // connection closes.
            () = client_gone(&conn) => break,
        };
        let status = response.status();
        // Draining, or a body the client was never told to send (100-continue refused):
        // the answer says the connection closes, and it does.
        if *draining.borrow() || lock(&conn).continue_unsent() {
            keep_alive = false;
        }
        // A 101 on a connection that asked for an upgrade hands it to the tunnel (its
        // answer keeps the connection open, draining or not); any other 101 closes it.
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let tunnel = upgrade_to.filter(|_| switching);
        if switching && tunnel.is_none() {
            keep_alive = false;
        }
        let written = write_response(
            &conn,
            &mut out,
            response,
            method_is_head,
            client_version,
            tunnel.is_some() || keep_alive,
        )
        .await;
        if let Some(upgrade_to) = tunnel {
            if written.is_ok() {
                hand_over(conn, upgrade_to);
            }
            return;
        }
        match written {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        if !keep_alive || !finish_body(&conn).await {
            break;
        }
    }
    let _ = poll_fn(|cx| Pin::new(&mut lock(&conn).stream).poll_shutdown(cx)).await;
}

/// How long a connection with nothing on its way must stay quiet, once the gateway
/// drains, before it is closed.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Waits for the next complete request head. When the gateway drains, a request may
/// already be on its way (a keep-alive client's next one, or the first one of a
/// connection accepted just before the drain): what arrives within `DRAIN_QUIET` is
/// still served (its answer says `Connection: close`); a connection quiet that long is
/// closed.
async fn read_head(
    conn: &SharedInbound,
    limits: &HeadLimits,
    timeout: Duration,
    draining: &mut watch::Receiver<bool>,
) -> HeadOutcome {
    let deadline = Instant::now() + timeout;
    let mut quiet_until: Option<Instant> = None;
    loop {
        let buffered = {
            let mut io = lock(conn);
            if !io.buf.is_empty() {
                match head::parse_request(&mut io.buf, limits) {
                    Ok(Some(head)) => return HeadOutcome::Head(head),
                    Ok(None) => {}
                    Err(e) => return HeadOutcome::Refuse(GatewayError::MalformedHead(e)),
                }
            }
            !io.buf.is_empty()
        };
        if quiet_until.is_none() && *draining.borrow_and_update() {
            quiet_until = Some(Instant::now() + DRAIN_QUIET);
        }
        // Bytes of a head are here: only the header timeout ends the wait.
        let until = match quiet_until {
            Some(quiet) if !buffered => quiet.min(deadline),
            _ => deadline,
        };
        let read = poll_fn(|cx| {
            let mut io = lock(conn);
            let io = &mut *io;
            poll_fill(&mut io.stream, &mut io.buf, READ_CHUNK, cx)
        });
        tokio::select! {
            read = tokio::time::timeout_at(until, read) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => return HeadOutcome::Closed,
                Ok(Ok(_)) => {}
                // Bytes of a head arrived but not all of it: 408. Nothing at all: an
                // idle keep-alive connection (or a quiet one while draining), closed
                // quietly (a client reusing it could take a 408 as the answer to its
                // next request).
                Err(_) if lock(conn).buf.is_empty() => return HeadOutcome::Closed,
                Err(_) => return HeadOutcome::Refuse(GatewayError::RequestTimeout),
            },
            changed = draining.changed(), if quiet_until.is_none() => {
                if changed.is_err() {
                    return HeadOutcome::Closed;
                }
            }
        }
    }
}

/// Read ahead of the current request at most this much (pipelined requests).
const READ_AHEAD: usize = 64 * 1024;

/// Resolves when the client closes its connection (or it breaks) while its request is
/// handled, as hyper's server does without half-close support. Watched only once the
/// request body was read: until then the body's reader owns the read side. Bytes that
/// arrive meanwhile (pipelined requests) stay in the buffer for the next head.
async fn client_gone(conn: &SharedInbound) {
    poll_fn(|cx| {
        let mut io = lock(conn);
        loop {
            if !io.body_done() || io.buf.len() >= READ_AHEAD {
                return Poll::Pending;
            }
            let io = &mut *io;
            match poll_fill(&mut io.stream, &mut io.buf, READ_CHUNK, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// The request the pipeline gets: the head as parsed, the body read off this
/// connection, and (for an upgrade) where the connection goes after a 101.
fn request(
    head: RequestHead,
    conn: &SharedInbound,
    wants_upgrade: bool,
) -> (Request<GatewayBody>, Option<oneshot::Sender<Upgraded>>) {
    let body = GatewayBody::Client {
        body: ClientBody::new(conn.clone(), head.body),
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let mut upgrade_to = None;
    if wants_upgrade {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut().insert(ClientUpgrade::new(rx));
        upgrade_to = Some(tx);
    }
    (req, upgrade_to)
}

/// After a 101: the stream and the bytes already read behind the head go to the tunnel.
fn hand_over(conn: SharedInbound, upgrade_to: oneshot::Sender<Upgraded>) {
    let Ok(conn) = Arc::try_unwrap(conn) else {
        // The request body is still alive somewhere: the connection cannot be given.
        return;
    };
    let inbound = conn.into_inner().unwrap_or_else(|e| e.into_inner());
    let (stream, leftover) = inbound.into_parts();
    let _ = upgrade_to.send(Upgraded::new(stream, leftover));
}

/// Reads (and drops) what the handler left of the request body, so the next request
/// starts at the right byte. `false`: the connection cannot be kept.
async fn finish_body(conn: &SharedInbound) -> bool {
    {
        let io = lock(conn);
        if io.body_done() {
            return true;
        }
        // The client was never told to send it: it may or may not, so the next bytes
        // cannot be trusted to be a request.
        if io.continue_unsent() {
            return false;
        }
    }
    let mut body = ClientBody::continuing(conn.clone());
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut dropped = 0u64;
        while let Some(frame) = poll_fn(|cx| body.poll_frame(cx)).await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                dropped += data.len() as u64;
                if dropped > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    })
    .await;
    matches!(drained, Ok(true))
}

/// Writes a refusal made before any routing (a malformed head, a slow one) with
/// `connection: close`.
async fn write_refusal(
    conn: &SharedInbound,
    out: &mut BytesMut,
    error: GatewayError,
) -> io::Result<()> {
    let response = error.into_response();
    let (parts, body) = response.into_parts();
    let data = match body {
        GatewayBody::Full { data } => data.unwrap_or_default(),
        _ => Bytes::new(),
    };
    out.clear();
    crate::worker::http_date(|date| {
        encode::response_head(
            parts.status,
            &parts.headers,
            Framing::Length(data.len() as u64),
            Some("close"),
            date,
            out,
        )
    });
    out.extend_from_slice(&data);
    write_all(conn, out).await?;
    flush(conn).await
}

/// Writes an answer: its head with our framing fields, then its body. `Ok(false)`:
/// the body broke off (or said more than its length): the connection must close.
async fn write_response(
    conn: &SharedInbound,
    out: &mut BytesMut,
    response: Response<ObservedBody>,
    method_is_head: bool,
    client_version: Version,
    keep_alive: bool,
) -> io::Result<bool> {
    let (mut parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    let status = parts.status;
    let bodiless = method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
    }
    let mut keep_alive = keep_alive;
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if client_version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        // An HTTP/1.0 client without a length: the body ends when the connection does.
        keep_alive = false;
        Framing::None
    };
    let connection = match (keep_alive, client_version) {
        (false, _) => Some("close"),
        (true, Version::HTTP_10) => Some("keep-alive"),
        (true, _) => None,
    };
    out.clear();
    crate::worker::http_date(|date| {
        encode::response_head(status, &parts.headers, framing, connection, date, out)
    });
    if bodiless {
        // The handler's body (if any) is dropped unsent; its end is still recorded (by
        // the hook inside it, which does implement Drop).
        #[allow(clippy::drop_non_drop)]
        drop(body);
        write_all(conn, out).await?;
        flush(conn).await?;
        return Ok(keep_alive);
    }
    let mut sent = 0u64;
    let mut head_pending = true;
    loop {
        // The head waits for the first chunk only if it is ready now, so a slow body
        // does not hold the head back.
        let frame = if head_pending {
            match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all(conn, out).await?;
                    flush(conn).await?;
                    out.clear();
                    head_pending = false;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            }
        } else {
            poll_fn(|cx| body.as_mut().poll_frame(cx)).await
        };
        match frame {
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        sent += data.len() as u64;
                        if let Framing::Length(n) = framing
                            && sent > n
                        {
                            // More than the length it declared: cut it off.
                            return Ok(false);
                        }
                        write_data(conn, out, framing, &data).await?;
                        head_pending = false;
                        continue;
                    }
                    Err(frame) => frame,
                };
                if let Ok(trailers) = frame.into_trailers()
                    && framing == Framing::Chunked
                {
                    chunked::encode_end(Some(&trailers), out);
                    write_all(conn, out).await?;
                    flush(conn).await?;
                    return Ok(keep_alive);
                }
            }
            Some(Err(_)) => {
                // The body broke (upstream gone): what was sent cannot be completed.
                if head_pending {
                    write_all(conn, out).await?;
                }
                flush(conn).await?;
                return Ok(false);
            }
            None => break,
        }
    }
    match framing {
        Framing::Chunked => chunked::encode_end(None, out),
        Framing::Length(n) if sent != n => {
            write_all(conn, out).await?;
            flush(conn).await?;
            return Ok(false);
        }
        _ => {}
    }
    write_all(conn, out).await?;
    flush(conn).await?;
    Ok(keep_alive)
}

/// Writes one data chunk (framed as the answer is) after whatever `out` holds (the
/// head, for the first chunk): small chunks are copied behind it and go out in the
/// same write.
async fn write_data(
    conn: &SharedInbound,
    out: &mut BytesMut,
    framing: Framing,
    data: &Bytes,
) -> io::Result<()> {
    let chunked = framing == Framing::Chunked;
    if chunked {
        chunked::encode_size(data.len(), out);
    }
    if data.len() <= COALESCE {
        out.extend_from_slice(data);
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        write_all(conn, out).await?;
    } else {
        write_all(conn, out).await?;
        write_all(conn, data).await?;
        if chunked {
            write_all(conn, b"\r\n").await?;
        }
    }
    out.clear();
    flush(conn).await
}

async fn write_all(conn: &SharedInbound, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut written = 0;
    poll_fn(|cx| poll_write_all(&mut lock(conn).stream, data, &mut written, cx)).await
}

async fn flush(conn: &SharedInbound) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_flush(cx)).await
}
