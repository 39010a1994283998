//! Body types: one enum for everything the gateway sends (streamed bodies or its own
//! small answers), the one bounded reader, and a wrapper that runs a hook when a
//! response body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::h1::inbound::ClientBody;
use crate::h1::outbound::UpstreamBody;

pin_project! {
    /// A request or response body: streamed from a peer, or produced by the gateway.
    /// An enum rather than a boxed trait object: no allocation per request.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Empty,
        Full { data: Option<Bytes> },
        Streamed { #[pin] body: Incoming },
        /// A body whose first bytes were already read (a form read, or a cache fill
        /// that gave up storing): those bytes, then the rest. Boxed: rare.
        Prefixed { head: Option<Bytes>, rest: Box<GatewayBody> },
        /// A request body read off a client's HTTP/1.1 connection (our codec).
        Client { body: ClientBody },
        /// A response body read off a target's HTTP/1.1 connection (our client).
        Upstream { body: UpstreamBody },
    }
}

pub use crate::body_error::BodyError;

/// What [`read_up_to`] got.
pub enum Collected {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// The body is longer than the limit: the bytes read so far and the rest.
    Partial { read: Bytes, rest: GatewayBody },
}

impl Collected {
    /// The whole body, or `too_large` when it did not fit.
    pub fn whole<E>(self, too_large: impl FnOnce() -> E) -> Result<Bytes, E> {
        match self {
            Collected::Whole(bytes) => Ok(bytes),
            Collected::Partial { .. } => Err(too_large()),
        }
    }

    /// A body that sends everything again: what was read, then the rest.
    pub fn into_body(self) -> GatewayBody {
        match self {
            Collected::Whole(bytes) => GatewayBody::full(bytes),
            Collected::Partial { read, rest } => GatewayBody::Prefixed {
                head: Some(read),
                rest: Box::new(rest),
            },
        }
    }
}

/// Reads a body while it fits in `limit` bytes: the one bounded reader (plugin
/// bodies, forms, retry bodies, the management API, cache fills). Stops at the first
/// frame past the limit, so at most `limit` plus one frame is held.
pub async fn read_up_to(mut body: GatewayBody, limit: usize) -> Result<Collected, BodyError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                return Ok(Collected::Partial {
                    read: buffer.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(Collected::Whole(buffer.freeze()))
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            GatewayBodyProj::Empty => Poll::Ready(None),
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Streamed { body } => body.poll_frame(cx).map_err(BodyError::from),
            GatewayBodyProj::Prefixed { head, rest } => match head.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            GatewayBodyProj::Client { body } => body.poll_frame(cx),
            GatewayBodyProj::Upstream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Empty => true,
            GatewayBody::Full { data } => data.is_none(),
            GatewayBody::Streamed { body } => body.is_end_stream(),
            GatewayBody::Prefixed { head, rest } => head.is_none() && rest.is_end_stream(),
            GatewayBody::Client { body } => body.is_end_stream(),
            GatewayBody::Upstream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Empty => SizeHint::with_exact(0),
            GatewayBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Streamed { body } => body.size_hint(),
            GatewayBody::Prefixed { head, rest } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + extra);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            GatewayBody::Client { body } => body.size_hint(),
            GatewayBody::Upstream { body } => body.size_hint(),
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
