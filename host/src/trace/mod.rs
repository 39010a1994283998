//! Request ids and W3C trace context for every request; spans recorded for sampled
//! requests and exported over OTLP.
//!
//! - `request_id` a client's id kept when valid, else a random one
//! - `context`    `traceparent` parsing and writing, the ratio sampler (pure)
//! - `span`       one request's trace: ids, and the recorded request span + children
//! - `export`     the bounded queue and the OTLP/HTTP export task (drops are counted)

pub mod context;
pub mod export;
pub mod request_id;
pub mod span;

pub use export::Tracer;
pub use span::{ChildKind, ChildStart, RequestEnd, RequestTrace};
