//! TLS: terminating it for clients (SNI over many certificates, ALPN for HTTP/2,
//! session resumption, certificates reloaded when their files change) and speaking it to
//! upstreams.
//!
//! - `certs`   a certificate and key read from PEM files and checked
//! - `store`   the certificates served, chosen by SNI; ACME challenge certificates
//! - `watch`   certificate files watched and reloaded without dropping connections
//! - `client`  the rustls client config of an upstream group

pub mod certs;
pub mod client;
pub mod store;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::ring::default_provider;
use rustls::server::ServerSessionMemoryCache;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Metrics;
pub use store::{ACME_TLS_ALPN, CertStore};

/// TLS sessions remembered for resumption (server-side cache; tickets are used too).
const SESSION_CACHE: usize = 4096;

/// The TLS listener: the socket and what turns its connections into TLS streams.
pub struct TlsListener {
    pub listener: TcpListener,
    pub terminator: Terminator,
}

/// Runs TLS handshakes for the listener.
#[derive(Clone)]
pub struct Terminator {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

/// How the TLS listener is set up.
#[derive(Debug, Clone, Copy)]
pub struct TerminatorSettings {
    /// Offer h2 by ALPN.
    pub http2: bool,
    /// Answer ACME tls-alpn-01 validations.
    pub acme_tls_alpn: bool,
    pub handshake_timeout: Duration,
}

impl Terminator {
    /// TLS 1.2 and 1.3 with the ring provider, certificates from `store` by SNI, ALPN
    /// h2 and http/1.1, session resumption on (a cache and tickets), 0-RTT off.
    pub fn new(store: Arc<CertStore>, settings: TerminatorSettings) -> Result<Self, String> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(store);
        let mut alpn: Vec<Vec<u8>> = Vec::new();
        if settings.http2 {
            alpn.push(b"h2".to_vec());
        }
        alpn.push(b"http/1.1".to_vec());
        if settings.acme_tls_alpn {
            alpn.push(ACME_TLS_ALPN.to_vec());
        }
        config.alpn_protocols = alpn;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
        // 0-RTT stays off: early data can be replayed.
        config.max_early_data_size = 0;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: settings.handshake_timeout,
        })
    }

    /// The handshake of one connection, bounded in time; counted by version and ALPN
    /// (or as failed). `None`: no TLS stream came of it (logged at debug).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> Option<TlsStream<TcpStream>> {
        let accepted =
            tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await;
        match accepted {
            Ok(Ok(stream)) => {
                let conn = stream.get_ref().1;
                let version = match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                    _ => "other",
                };
                let alpn = conn
                    .alpn_protocol()
                    .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
                metrics
                    .tls_handshakes
                    .with_label_values(&[version, &alpn])
                    .inc();
                Some(stream)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                metrics
                    .tls_handshake_errors
                    .with_label_values(&["error"])
                    .inc();
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished in time");
                metrics
                    .tls_handshake_errors
                    .with_label_values(&["timeout"])
                    .inc();
                None
            }
        }
    }
}

/// Publishes each certificate's expiry (`fluxgate_tls_certificate_expiry_seconds{name}`,
/// seconds since the Unix epoch) for the set in force.
pub fn publish_expiry(metrics: &Metrics, store: &CertStore) {
    metrics.tls_certificate_expiry.reset();
    for cert in &store.current().certs {
        for name in &cert.names {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[name])
                .set(cert.not_after as i64);
        }
    }
}
