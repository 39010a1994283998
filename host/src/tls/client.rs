//! TLS to upstreams: the rustls client config of an upstream group, compiled once from
//! its `tls` table: the built-in web roots plus `ca_file`, an optional client
//! certificate (mTLS), and the explicit, logged `insecure_skip_verify` opt-out.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::UpstreamTlsConfig;

/// What an upstream group's targets are reached with over TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// `server_name`: sent as SNI and checked instead of the target's host.
    pub server_name: Option<ServerName<'static>>,
    /// Identifies the settings (paths and switches), so groups with equal settings can
    /// share a connection pool and a changed file starts a new one.
    pub identity: String,
}

/// Equal settings are equal clients (the compiled config has no equality of its own).
impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

/// Why a `tls` table cannot be used; the key path is the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsProblem {
    /// The key under `tls` (`ca_file`, `client_cert`, ...).
    pub key: &'static str,
    pub message: String,
}

fn problem(key: &'static str, message: impl Into<String>) -> ClientTlsProblem {
    ClientTlsProblem {
        key,
        message: message.into(),
    }
}

/// Compiles an upstream's `tls` table (`None`: the defaults, verified against the web
/// roots). The ALPN protocols are the connector's to set (from the group's protocol).
pub fn compile(settings: Option<&UpstreamTlsConfig>) -> Result<ClientTls, Vec<ClientTlsProblem>> {
    let defaults = UpstreamTlsConfig::default();
    let settings = settings.unwrap_or(&defaults);
    let mut problems = Vec::new();
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut identity = String::new();
    if let Some(path) = &settings.ca_file {
        match read_certs(path) {
            Ok(certs) => {
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    problems.push(problem(
                        "ca_file",
                        format!("{} holds no usable CA certificate", path.display()),
                    ));
                }
                identity.push_str(&format!("ca={};", fingerprint(path)));
            }
            Err(e) => problems.push(problem("ca_file", e)),
        }
    }
    let server_name = match &settings.server_name {
        Some(name) => match ServerName::try_from(name.clone()) {
            Ok(name) => {
                identity.push_str(&format!("sni={};", name.to_str()));
                Some(name)
            }
            Err(_) => {
                problems.push(problem(
                    "server_name",
                    format!("\"{name}\" is not a DNS name or IP address"),
                ));
                None
            }
        },
        None => None,
    };
    let provider = Arc::new(default_provider());
    let builder = match ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder,
        Err(e) => return Err(vec![problem("tls", e.to_string())]),
    };
    let builder = if settings.insecure_skip_verify {
        identity.push_str("insecure;");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert).map_err(|e| problem("client_cert", e));
            let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                problem(
                    "client_key",
                    format!("{}: no PEM private key ({e})", key.display()),
                )
            });
            match (chain, private) {
                (Ok(chain), Ok(private)) => {
                    identity.push_str(&format!(
                        "client={},{};",
                        fingerprint(cert),
                        fingerprint(key)
                    ));
                    builder
                        .with_client_auth_cert(chain, private)
                        .map_err(|e| problem("client_key", format!("{}: {e}", key.display())))
                }
                (chain, private) => {
                    problems.extend(chain.err());
                    problems.extend(private.err());
                    return Err(problems);
                }
            }
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(problem("client_key", "is required with client_cert")),
        (None, Some(_)) => Err(problem("client_cert", "is required with client_key")),
    };
    let config = match config {
        Ok(config) => config,
        Err(p) => {
            problems.push(p);
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
        identity,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A file's path and content digest: equal settings with equal files share a pool.
fn fingerprint(path: &Path) -> String {
    let digest = std::fs::read(path)
        .map(|b| crate::balancer::stable_hash(&b))
        .unwrap_or(0);
    format!("{}#{digest:016x}", path.display())
}

/// `insecure_skip_verify = true`: every certificate is accepted (signatures are still
/// checked, so the handshake is real; the peer is just not authenticated).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a connection failed in its TLS handshake, if it did: the rustls error found in
/// the error's chain ("invalid peer certificate: UnknownIssuer", ...). io::Errors are
/// opened with `get_ref` (their `source` skips the error they wrap); the depth is
/// bounded.
pub fn failure_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    for _ in 0..16 {
        let e = current?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}
