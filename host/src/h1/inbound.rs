//! A client's connection as its loop and the request in progress share it: the stream
//! and read buffer behind a mutex held only inside poll calls, so the request body
//! reads its bytes straight off the connection (no channel, no task) and the loop
//! finds the next pipelined request right behind it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use super::chunked::{ChunkedDecoder, Decoded};
use super::head::BodyFraming;
use super::stream::{Stream, poll_fill, poll_write_all};
use crate::body_error::BodyError;

/// Read size for bodies and heads.
pub const READ_CHUNK: usize = 16 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One client connection.
pub struct Inbound {
    pub stream: Stream,
    /// Bytes read and not yet used: the rest of a body, or the next request.
    pub buf: BytesMut,
    body: BodyRead,
    /// `Expect: 100-continue` not answered yet: the answer goes out when the body is
    /// first read (a refusal before that means the body never comes).
    continue_owed: bool,
    continue_written: usize,
    continue_sent: bool,
}

/// What is left of the current request body.
#[derive(Debug, Clone)]
pub enum BodyRead {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// The body was malformed or the connection broke: nothing more comes.
    Failed,
}

/// The connection shared by its loop and its request's body.
pub type SharedInbound = Arc<Mutex<Inbound>>;

pub fn lock(conn: &Mutex<Inbound>) -> MutexGuard<'_, Inbound> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inbound {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            body: BodyRead::Done,
            continue_owed: false,
            continue_written: 0,
            continue_sent: false,
        }
    }

    /// A new request's body begins.
    pub fn begin_body(&mut self, framing: BodyFraming, expect_continue: bool) {
        self.body = match framing {
            BodyFraming::Empty => BodyRead::Done,
            BodyFraming::Length(n) => BodyRead::Length(n),
            BodyFraming::Chunked => BodyRead::Chunked(ChunkedDecoder::default()),
        };
        self.continue_owed = expect_continue && !matches!(self.body, BodyRead::Done);
        self.continue_written = 0;
        self.continue_sent = false;
    }

    /// The body was read to its end (the next request can be parsed).
    pub fn body_done(&self) -> bool {
        matches!(self.body, BodyRead::Done)
    }

    /// A `100 Continue` was owed and never sent: the client may not send the body.
    pub fn continue_unsent(&self) -> bool {
        self.continue_owed && !self.continue_sent
    }

    /// The next frame of the request body.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if matches!(self.body, BodyRead::Done) {
            return Poll::Ready(None);
        }
        if matches!(self.body, BodyRead::Failed) {
            return Poll::Ready(Some(Err(BodyError::Incomplete)));
        }
        if self.continue_owed && !self.continue_sent {
            let written = &mut self.continue_written;
            match poll_write_all(&mut self.stream, CONTINUE, written, cx) {
                Poll::Ready(Ok(())) => self.continue_sent = true,
                Poll::Ready(Err(e)) => {
                    self.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match self.take_buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if self.body_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    self.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match poll_fill(&mut self.stream, &mut self.buf, READ_CHUNK, cx) {
                Poll::Ready(Ok(0)) => {
                    self.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.body = BodyRead::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// A frame from bytes already read, if they hold one.
    fn take_buffered(&mut self) -> Result<Option<Frame<Bytes>>, BodyError> {
        match &mut self.body {
            BodyRead::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = (self.buf.len() as u64).min(*left) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.body = BodyRead::Done;
                }
                Ok(Some(Frame::data(self.buf.split_to(n).freeze())))
            }
            BodyRead::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                Decoded::Data(data) => Ok(Some(Frame::data(data))),
                Decoded::End(trailers) => {
                    self.body = BodyRead::Done;
                    Ok(trailers.map(Frame::trailers))
                }
                Decoded::NeedMore => Ok(None),
            },
            BodyRead::Done | BodyRead::Failed => Ok(None),
        }
    }

    /// The stream and the bytes read past the last request (after an upgrade).
    pub fn into_parts(self) -> (Stream, Bytes) {
        (self.stream, self.buf.freeze())
    }

    /// Bytes of the body still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match &self.body {
            BodyRead::Length(n) => Some(*n),
            BodyRead::Done => Some(0),
            _ => None,
        }
    }
}

/// A request body read from its client's connection.
pub struct ClientBody {
    conn: SharedInbound,
    /// The whole body's length, when the client declared it.
    length: Option<u64>,
    ended: bool,
}

impl ClientBody {
    pub fn new(conn: SharedInbound, framing: BodyFraming) -> Self {
        let length = match framing {
            BodyFraming::Empty => Some(0),
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked => None,
        };
        Self {
            conn,
            length,
            ended: framing == BodyFraming::Empty,
        }
    }

    /// The rest of the current body, whoever read its start (the loop drains it).
    pub fn continuing(conn: SharedInbound) -> Self {
        Self {
            conn,
            length: None,
            ended: false,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = lock(&self.conn).poll_body(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        match self.length {
            // The exact length while nothing was read; a bound after.
            Some(n) => match lock(&self.conn).remaining() {
                Some(left) if left == n => SizeHint::with_exact(n),
                Some(left) => {
                    let mut hint = SizeHint::new();
                    hint.set_upper(left);
                    hint
                }
                None => SizeHint::new(),
            },
            None => SizeHint::new(),
        }
    }
}
