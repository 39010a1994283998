//! Connections to targets, owned by the request using them: the idle ones wait in a
//! per-worker pool (a short mutex, no channel and no connection task), a request takes
//! one, writes its head and body, reads the answer, and the answer's body puts the
//! connection back when it ends cleanly.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::ReadBuf;
use tokio::time::Instant;

use super::chunked::{ChunkedDecoder, Decoded};
use super::head::ResponseFraming;
use super::inbound::READ_CHUNK;
use super::stream::{Stream, poll_fill};
use crate::body_error::BodyError;

/// One connection to a target, with its buffers (reused for every request on it).
pub struct Outbound {
    pub stream: Stream,
    /// Bytes read and not yet used.
    pub buf: BytesMut,
    /// Where request heads are written.
    pub out: BytesMut,
    /// Requests this connection has carried.
    pub uses: u32,
    idle_since: Instant,
}

impl Outbound {
    pub fn new(stream: Stream) -> Box<Self> {
        Box::new(Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::with_capacity(1024),
            uses: 0,
            idle_since: Instant::now(),
        })
    }

    /// Whether the target closed (or wrote to) this idle connection. Answered from the
    /// readiness the runtime already tracks: no system call unless the socket became
    /// readable since it was last drained.
    fn closed_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        // Readable while idle: end of stream, a TLS close_notify, or stray bytes; the
        // connection cannot carry a request either way.
        !matches!(
            self.stream.tcp().poll_peek(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

/// The idle connections to one target, one list per worker thread (no contention
/// between workers; a connection returned on another worker joins that worker's list).
pub struct TargetPool {
    // Boxed connections: checked out and back per request, moved as a pointer.
    #[allow(clippy::vec_box)]
    lists: Box<[Mutex<Vec<Box<Outbound>>>]>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for TargetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPool")
            .field("idle", &self.idle())
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl TargetPool {
    pub fn new(workers: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            lists: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    #[allow(clippy::vec_box)]
    fn list(&self) -> &Mutex<Vec<Box<Outbound>>> {
        &self.lists[crate::worker::index() % self.lists.len()]
    }

    /// The most recently used live idle connection, if any (older or dead ones are
    /// dropped on the way).
    pub fn take(&self) -> Option<Box<Outbound>> {
        let mut list = self.list().lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout && !conn.closed_while_idle() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for a later request (unless the pool is full).
    pub fn put(&self, mut conn: Box<Outbound>) {
        conn.idle_since = Instant::now();
        let mut list = self.list().lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < self.max_idle {
            list.push(conn);
        }
    }

    /// Idle connections across workers (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.lists
            .iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// What is left of a response body.
#[derive(Debug, Clone)]
enum Left {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the target closes.
    UntilClose,
}

/// A response body read from a target's connection. When it ends cleanly on a
/// reusable connection, the connection goes back to its pool.
pub struct UpstreamBody {
    conn: Option<Box<Outbound>>,
    left: Left,
    reusable: bool,
    pool: Option<Arc<TargetPool>>,
    length: Option<u64>,
}

impl UpstreamBody {
    pub fn new(
        conn: Box<Outbound>,
        framing: ResponseFraming,
        keep_alive: bool,
        pool: Arc<TargetPool>,
    ) -> Self {
        let (left, length) = match framing {
            ResponseFraming::Empty => (Left::Done, Some(0)),
            ResponseFraming::Length(n) => (Left::Length(n), Some(n)),
            ResponseFraming::Chunked => (Left::Chunked(ChunkedDecoder::default()), None),
            ResponseFraming::UntilClose => (Left::UntilClose, None),
        };
        let mut body = Self {
            conn: Some(conn),
            left,
            reusable: keep_alive && framing != ResponseFraming::UntilClose,
            pool: Some(pool),
            length,
        };
        if matches!(body.left, Left::Done) {
            body.finish();
        }
        body
    }

    /// The body of a 101 answer: none, and the connection kept for the tunnel (never
    /// pooled, whatever the answer's head says about keep-alive).
    pub fn switching(conn: Box<Outbound>) -> Self {
        Self {
            conn: Some(conn),
            left: Left::Done,
            reusable: false,
            pool: None,
            length: Some(0),
        }
    }

    /// The connection, for a 101 answer: the tunnel takes it over (with any bytes the
    /// target already sent after its head).
    pub fn into_upgraded(mut self) -> Option<(Stream, Bytes)> {
        self.pool = None;
        self.conn.take().map(|c| {
            let c = *c;
            (c.stream, c.buf.freeze())
        })
    }

    /// The body ended: a reusable connection with nothing extra buffered is returned.
    fn finish(&mut self) {
        self.left = Left::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take())
            && self.reusable
            && conn.buf.is_empty()
        {
            pool.put(conn);
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.left {
                Left::Done => return Poll::Ready(None),
                Left::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(*left) as usize;
                        *left -= n as u64;
                        let data = conn.buf.split_to(n).freeze();
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Left::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        self.finish();
                        match trailers {
                            Some(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            None => return Poll::Ready(None),
                        }
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Left::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match poll_fill(&mut conn.stream, &mut conn.buf, READ_CHUNK, cx) {
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return if matches!(self.left, Left::UntilClose) {
                        self.left = Left::Done;
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(BodyError::Incomplete)))
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match (&self.left, self.length) {
            (Left::Done, _) => SizeHint::with_exact(0),
            (Left::Length(left), Some(n)) if *left == n => SizeHint::with_exact(n),
            (Left::Length(left), _) => {
                let mut hint = SizeHint::new();
                hint.set_upper(*left);
                hint
            }
            _ => SizeHint::new(),
        }
    }
}
