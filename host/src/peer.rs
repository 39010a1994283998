//! The client end of a connection, as the request path needs it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::HeaderValue;

/// The client end of a connection, with its address rendered once for X-Forwarded-For.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: IpAddr,
    /// The connection came over TLS (X-Forwarded-Proto: https).
    pub secure: bool,
    pub forwarded_for: HeaderValue,
    /// Set once a 101 answer turns the connection into a tunnel: its bytes are no
    /// longer HTTP (the server must not answer a stalled "head" with a 408).
    pub upgraded: Arc<AtomicBool>,
}

impl Peer {
    pub fn new(addr: SocketAddr, secure: bool) -> Self {
        let ip = addr.ip();
        Self {
            addr,
            ip,
            secure,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            upgraded: Arc::default(),
        }
    }
}
