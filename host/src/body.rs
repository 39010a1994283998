//! Body types: one enum for everything the gateway sends (streamed upstream bodies or
//! its own small answers), and a wrapper that runs a hook when a response body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// A request or response body: streamed from a peer, or produced by the gateway.
    /// An enum rather than a boxed trait object: no allocation per request.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Empty,
        Full { data: Option<Bytes> },
        Streamed { #[pin] body: Incoming },
        /// A streamed body whose first bytes were already read (by the cache, which
        /// gave up storing it): those bytes, then the rest of the stream.
        Resumed { head: Option<Bytes>, #[pin] body: Incoming },
    }
}

// Written out: pin_project_lite does not pass `#[default]` through to the enum.
#[allow(clippy::derivable_impls)]
impl Default for GatewayBody {
    fn default() -> Self {
        GatewayBody::Empty
    }
}

impl GatewayBody {
    pub fn empty() -> Self {
        GatewayBody::Empty
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            GatewayBody::Empty
        } else {
            GatewayBody::Full { data: Some(data) }
        }
    }

    pub fn streamed(body: Incoming) -> Self {
        GatewayBody::Streamed { body }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            GatewayBodyProj::Empty => Poll::Ready(None),
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Streamed { body } => body.poll_frame(cx),
            GatewayBodyProj::Resumed { head, body } => match head.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => body.poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Empty => true,
            GatewayBody::Full { data } => data.is_none(),
            GatewayBody::Streamed { body } => body.is_end_stream(),
            GatewayBody::Resumed { head, body } => head.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Empty => SizeHint::with_exact(0),
            GatewayBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Streamed { body } => body.size_hint(),
            GatewayBody::Resumed { head, body } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + extra);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// Called once when a response body is finished or abandoned.
pub trait OnBodyEnd: Send + 'static {
    /// `bytes` sent; `complete` is false when the body errored or the client went away.
    fn on_end(self: Box<Self>, bytes: u64, complete: bool);
}

pin_project! {
    /// A response body that reports its end (for the access log and latency metrics),
    /// so a streamed response is measured to its last byte, not to its head.
    pub struct ObservedBody {
        #[pin]
        inner: GatewayBody,
        bytes: u64,
        done: bool,
        hook: Option<Box<dyn OnBodyEnd>>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(hook) = this.hook.take() {
                // hyper stops polling once the body says it has ended.
                let complete = *this.done || this.inner.is_end_stream();
                hook.on_end(*this.bytes, complete);
            }
        }
    }
}

impl ObservedBody {
    pub fn new(inner: GatewayBody, hook: Option<Box<dyn OnBodyEnd>>) -> Self {
        Self {
            inner,
            bytes: 0,
            done: false,
            hook,
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => *this.done = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
