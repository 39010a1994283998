//! Our HTTP/1.1 codec: message heads parsed by httparse under the gateway's framing
//! rules, chunked bodies decoded by a small state machine, heads and chunks written.
//! The codec is pure (bytes in, values or bytes out); `stream`, `inbound` and
//! `outbound` hold the connections it runs on. The loops live in `server/fast.rs`
//! (clients) and `upstream/h1_client.rs` (targets).
//!
//! - `head`     request and response heads: parse, framing decision, errors
//! - `chunked`  the chunked transfer coding: decoder (strict) and encoder
//! - `encode`   request and response heads written into a reused buffer
//! - `stream`   TCP or TLS (either side) as one stream type; read/write helpers
//! - `inbound`  a client connection shared by its loop and its request's body
//! - `outbound` a connection to a target, its per-worker pool, the response body

pub mod chunked;
pub mod encode;
pub mod head;
pub mod inbound;
pub mod outbound;
pub mod stream;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use head::{
    BodyFraming, HeadError, HeadLimits, RequestHead, ResponseFraming, ResponseHead, parse_request,
    parse_response,
};
