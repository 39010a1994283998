//! TLS and HTTP/2 keys: `[tls]` (the TLS listener, its certificates, ACME),
//! `[server.http2]` (HTTP/2 abuse limits), and an upstream's `tls` and `protocol`.

use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]`: a TLS listener (HTTP/1.1 and HTTP/2 by ALPN) in front of the same routes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsConfig {
    /// Address of the TLS listener; `--tls-port` replaces the port.
    pub listen: String,
    /// Certificates served; the SNI name picks one (exact names, then `*.` wildcards),
    /// the first answers clients that send no SNI or an unknown name. Relative paths
    /// are relative to the config file.
    pub certificates: Vec<CertificateConfig>,
    /// The plain listener answers 308 → https (except ACME http-01 challenges).
    pub redirect_http: bool,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub http2: bool,
    /// A client must finish the TLS handshake within this time.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".to_owned(),
            certificates: Vec::new(),
            redirect_http: false,
            http2: true,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// One `{ cert = "...", key = "..." }`: a PEM certificate chain (leaf first) and its
/// PEM private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[server.http2]`: limits on HTTP/2 clients (over TLS, and h2c when `server.h2c`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Http2Config {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest header list (names + values + 32 bytes each) of one request.
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server accepts them (the rapid
    /// reset attack, CVE-2023-44487); past it the connection gets GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before it closes
    /// the connection (GOAWAY).
    pub max_local_error_reset_streams: usize,
    /// Streams a client may cancel (RST_STREAM) after the gateway started on them and
    /// before their answer, per second on one connection (a burst of as many allowed);
    /// past it the connection gets GOAWAY and is closed. This is the rapid reset that
    /// `max_pending_accept_reset_streams` does not see: each stream reset only once
    /// accepted. 0 = no limit.
    pub max_cancelled_streams_per_s: u32,
    /// A PING every this often on an idle connection...
    pub keep_alive_interval_ms: u64,
    /// ...which must be answered within this time, else the connection is closed.
    pub keep_alive_timeout_ms: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_bytes: 64 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 200,
            max_cancelled_streams_per_s: 100,
            keep_alive_interval_ms: 60_000,
            keep_alive_timeout_ms: 20_000,
        }
    }
}

/// An upstream group's `protocol`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (pooled keep-alive connections).
    #[default]
    Http1,
    /// HTTP/2: ALPN h2 for https:// targets, h2c with prior knowledge for http://;
    /// one multiplexed connection per target.
    Http2,
}

/// An upstream group's `tls = { ... }`, for `https://` targets.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates trusted besides the built-in web roots.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and checked against the certificate (default: the
    /// target's host).
    pub server_name: Option<String>,
    /// A PEM client certificate chain and key, for upstreams that require mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Accept any certificate. Never the default; logged at every load.
    pub insecure_skip_verify: bool,
}
