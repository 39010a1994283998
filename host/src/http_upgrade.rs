//! A connection taken over after a `101 Switching Protocols`: the stream plus the bytes
//! that arrived behind the head, read first. The client's side reaches the WebSocket
//! tunnel through the request's `ClientUpgrade` extension once the 101 is written.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::h1::stream::Stream;

/// A stream after an upgrade, with bytes already read from it.
pub struct Upgraded {
    stream: Stream,
    leftover: Bytes,
}

impl Upgraded {
    pub fn new(stream: Stream, leftover: Bytes) -> Self {
        Self { stream, leftover }
    }
}

/// Where the client's side of an upgrade will arrive (a request extension, set by the
/// connection loop on requests that ask to upgrade). Extensions must be `Clone`: the
/// receiver sits in a shared slot and is taken once.
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl ClientUpgrade {
    pub fn new(receiver: oneshot::Receiver<Upgraded>) -> Self {
        Self(Arc::new(Mutex::new(Some(receiver))))
    }

    /// The receiver (once).
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.leftover.has_remaining() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
