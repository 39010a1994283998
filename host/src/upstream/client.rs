//! The pooled client targets are reached with: HTTP/1.1 keep-alive or multiplexed
//! HTTP/2, over plain TCP or TLS (rustls, ALPN) as the group's targets and settings say.

use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::GatewayBody;
use crate::config::UpstreamProtocol;
use crate::tls::client::ClientTls;

/// The pooled client used to reach targets (https:// ones over TLS).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, GatewayBody>;

/// Settings that shape a client; groups with equal settings share one pool.
#[derive(Debug, Clone)]
pub(super) struct ClientSettings {
    pub connect_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle: usize,
    pub protocol: UpstreamProtocol,
    pub tls: ClientTls,
}

/// What makes two settings the same pool (TLS by its identity: paths, file digests,
/// switches).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    connect_timeout_ms: u64,
    pool_idle_timeout_ms: u64,
    pool_max_idle: usize,
    protocol: UpstreamProtocol,
    tls: String,
}

impl ClientSettings {
    pub fn key(&self) -> ClientKey {
        ClientKey {
            connect_timeout_ms: self.connect_timeout_ms,
            pool_idle_timeout_ms: self.pool_idle_timeout_ms,
            pool_max_idle: self.pool_max_idle,
            protocol: self.protocol,
            tls: self.tls.identity.clone(),
        }
    }
}

pub(super) fn new_client(settings: &ClientSettings) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The TLS connector wraps this one for https:// targets: without this the plain
    // connector refuses every URL that is not http:// ("scheme is not http").
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    // https:// URIs reach this connector too; the TLS layer around it handles them.
    http.enforce_http(false);
    // The TLS half is only used for https:// targets.
    let tls = &settings.tls;
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    let connector = match settings.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        // Requests are small: one flattened write beats a writev of head + body parts.
        .http1_writev(false)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(settings.pool_idle_timeout_ms))
        .pool_max_idle_per_host(settings.pool_max_idle);
    if settings.protocol == UpstreamProtocol::Http2 {
        // h2 over TLS by ALPN; h2c with prior knowledge for http:// targets.
        client.http2_only(true);
    }
    client.build(connector)
}
