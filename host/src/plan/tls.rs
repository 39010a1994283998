//! `[tls]`: the listener address and the certificates, read and checked here (a key
//! that does not match, an expired or unreadable file is a `validate` error).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{CertificateConfig, Problem, TlsConfig};
use crate::tls::certs::{self, LoadedCert};

/// `[tls]`, compiled.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub listen: SocketAddr,
    pub certificates: Vec<CertificateConfig>,
    /// The certificates as read now, in config order (the first is the default).
    pub loaded: Vec<LoadedCert>,
    pub redirect_http: bool,
    pub http2: bool,
    pub handshake_timeout: Duration,
}

pub(super) fn compile_tls(tls: &TlsConfig, out: &mut Vec<Problem>) -> Option<TlsPlan> {
    let before = out.len();
    let listen = tls.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
        out.push(Problem::new(
            "tls.listen",
            format!("\"{}\" is not an address like 0.0.0.0:8443", tls.listen),
        ));
    }
    if tls.certificates.is_empty() {
        out.push(Problem::new(
            "tls.certificates",
            "needs at least one { cert = \"...\", key = \"...\" }",
        ));
    }
    let mut loaded = Vec::with_capacity(tls.certificates.len());
    for (i, c) in tls.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        if c.cert.as_os_str().is_empty() || c.key.as_os_str().is_empty() {
            out.push(Problem::new(at, "needs both cert and key"));
            continue;
        }
        match certs::load(&c.cert, &c.key) {
            Ok(cert) => loaded.push(cert),
            Err(e) => out.push(Problem::new(at, e.to_string())),
        }
    }
    if tls.handshake_timeout_ms == 0 || tls.handshake_timeout_ms > 600_000 {
        out.push(Problem::new(
            "tls.handshake_timeout_ms",
            "must be between 1 and 600000",
        ));
    }
    if out.len() > before {
        return None;
    }
    Some(TlsPlan {
        listen: listen?,
        certificates: tls.certificates.clone(),
        loaded,
        redirect_http: tls.redirect_http,
        http2: tls.http2,
        handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms),
    })
}
