//! The pooled keep-alive HTTP/1.1 client targets are reached with.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::GatewayBody;

/// The pooled keep-alive HTTP/1.1 client used to reach targets.
pub type HttpClient = Client<HttpConnector, GatewayBody>;

/// Settings that shape a client; groups with equal settings share one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientSettings {
    pub connect_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle: usize,
}

pub(super) fn new_client(settings: &ClientSettings) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        // Requests are small: one flattened write beats a writev of head + body parts.
        .http1_writev(false)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(settings.pool_idle_timeout_ms))
        .pool_max_idle_per_host(settings.pool_max_idle)
        .build(connector)
}
