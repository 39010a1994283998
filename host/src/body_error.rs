//! Why a body could not be read to its end (a leaf: body.rs and the HTTP/1 codec's
//! bodies both use it, and neither may import the other's file back).

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("chunked body: {0}")]
    Chunked(#[from] crate::h1::chunked::ChunkError),
    #[error("the connection closed before the body ended")]
    Incomplete,
}
