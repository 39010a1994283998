//! `[tls]`: the listener address and the certificates, read and checked here (a key
//! that does not match, an expired or unreadable file is a `validate` error), and
//! `[tls.acme]`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::{
    AcmeChallenge, AcmeConfig, CertificateConfig, Problem, TlsConfig, UpstreamTlsConfig,
};
use crate::tls::certs::{self, LoadedCert};
use crate::tls::client;

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
    /// `[tls.acme]`: a certificate the gateway obtains and renews itself.
    pub acme: Option<AcmePlan>,
}

/// `[tls.acme]`, compiled.
#[derive(Debug, Clone)]
pub struct AcmePlan {
    /// The table as written (a change to it needs a restart).
    pub config: AcmeConfig,
    /// The directory URL (https).
    pub directory: String,
    /// Lower-cased, in config order, no duplicates.
    pub domains: Vec<String>,
    /// `mailto:` contact, when `email` is set.
    pub contact: Option<String>,
    pub challenge: AcmeChallenge,
    pub storage: PathBuf,
    pub renew_before: Duration,
    /// How the directory is reached: the web roots plus `directory_ca_file`.
    pub directory_tls: Arc<rustls::ClientConfig>,
    pub retry_min: Duration,
    pub retry_max: Duration,
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
    if tls.certificates.is_empty() && tls.acme.is_none() {
        out.push(Problem::new(
            "tls.certificates",
            "needs at least one { cert = \"...\", key = \"...\" } (or a [tls.acme] section)",
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
    let acme = tls.acme.as_ref().and_then(|a| compile_acme(a, out));
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
        acme,
    })
}

fn compile_acme(acme: &AcmeConfig, out: &mut Vec<Problem>) -> Option<AcmePlan> {
    let before = out.len();
    match acme.directory.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
        _ => out.push(Problem::new(
            "tls.acme.directory",
            format!(
                "\"{}\" is not an https:// URL (ACME directories are served over HTTPS)",
                acme.directory
            ),
        )),
    }
    let contact = match acme.email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(email) => {
            let valid = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !host.ends_with('.')
            }) && !email.contains(|c: char| c.is_whitespace() || c == ',');
            if !valid {
                out.push(Problem::new(
                    "tls.acme.email",
                    format!("\"{email}\" is not an e-mail address"),
                ));
            }
            Some(format!("mailto:{email}"))
        }
    };
    if acme.domains.is_empty() {
        out.push(Problem::new(
            "tls.acme.domains",
            "needs at least one name, like [\"example.com\"]",
        ));
    }
    let mut domains = Vec::with_capacity(acme.domains.len());
    let mut seen = HashSet::new();
    for (i, domain) in acme.domains.iter().enumerate() {
        let at = format!("tls.acme.domains[{i}]");
        let name = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Some(message) = domain_problem(&name) {
            out.push(Problem::new(at, format!("\"{domain}\" {message}")));
        } else if !seen.insert(name.clone()) {
            out.push(Problem::new(at, format!("\"{domain}\" is listed twice")));
        } else {
            domains.push(name);
        }
    }
    if acme.storage.as_os_str().is_empty() {
        out.push(Problem::new("tls.acme.storage", "needs a folder"));
    } else if acme.storage.exists() && !acme.storage.is_dir() {
        out.push(Problem::new(
            "tls.acme.storage",
            format!("{} exists and is not a folder", acme.storage.display()),
        ));
    }
    if !(1..=365).contains(&acme.renew_before_days) {
        out.push(Problem::new(
            "tls.acme.renew_before_days",
            "must be between 1 and 365",
        ));
    }
    if acme.retry_min_s == 0 {
        out.push(Problem::new("tls.acme.retry_min_s", "must be at least 1"));
    }
    if acme.retry_max_s < acme.retry_min_s {
        out.push(Problem::new(
            "tls.acme.retry_max_s",
            "must be at least retry_min_s",
        ));
    }
    let directory_tls = client::compile(Some(&UpstreamTlsConfig {
        ca_file: acme.directory_ca_file.clone(),
        ..UpstreamTlsConfig::default()
    }));
    let directory_tls = match directory_tls {
        Ok(tls) => Some(tls.config),
        Err(problems) => {
            for p in problems {
                let at = match p.key {
                    "ca_file" => "tls.acme.directory_ca_file".to_owned(),
                    other => format!("tls.acme.{other}"),
                };
                out.push(Problem::new(at, p.message));
            }
            None
        }
    };
    if out.len() > before {
        return None;
    }
    Some(AcmePlan {
        config: acme.clone(),
        directory: acme.directory.clone(),
        domains,
        contact,
        challenge: acme.challenge,
        storage: acme.storage.clone(),
        renew_before: Duration::from_secs(u64::from(acme.renew_before_days) * 86_400),
        directory_tls: directory_tls?,
        retry_min: Duration::from_secs(acme.retry_min_s),
        retry_max: Duration::from_secs(acme.retry_max_s),
    })
}

/// Why `name` (lower-cased) cannot be in an ACME order done by http-01 or tls-alpn-01.
fn domain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.starts_with("*.") {
        return Some(
            "is a wildcard: wildcard names need the dns-01 challenge, which the gateway does not do",
        );
    }
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) if name.contains('.') => None,
        Ok(ServerName::DnsName(_)) => Some("is not a fully qualified DNS name"),
        Ok(_) => Some("is an IP address: only DNS names can be ordered"),
        Err(_) => Some("is not a valid DNS name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(acme_toml: &str) -> Vec<String> {
        let text = format!("[tls]\nlisten = \"127.0.0.1:0\"\n[tls.acme]\n{acme_toml}");
        match crate::plan::parse(&text, &crate::plan::Overrides::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn acme_alone_is_a_valid_tls_section() {
        let text = "[tls]\nlisten = \"127.0.0.1:0\"\n[tls.acme]\ndomains = [\"A.example.com\"]\n";
        let plan = crate::plan::parse(text, &crate::plan::Overrides::default()).unwrap();
        let tls = plan.tls.unwrap();
        assert!(tls.certificates.is_empty());
        let acme = tls.acme.unwrap();
        assert_eq!(acme.domains, ["a.example.com"]);
        assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(acme.directory, crate::config::LETS_ENCRYPT_DIRECTORY);
        assert_eq!(acme.contact, None);
    }

    #[test]
    fn acme_problems_name_their_keys() {
        let found = problems(
            "email = \"nobody\"\ndirectory = \"http://ca.test/dir\"\nchallenge = \"http-01\"\n\
             domains = [\"ok.example.com\", \"*.example.com\", \"127.0.0.1\", \"OK.example.com\", \"bad name.com\"]\n\
             renew_before_days = 0\nretry_min_s = 10\nretry_max_s = 5\n\
             directory_ca_file = \"/nonexistent/ca.pem\"\n",
        );
        let has = |key: &str, text: &str| {
            assert!(
                found.iter().any(|p| p.contains(key) && p.contains(text)),
                "no problem at {key} saying {text}: {found:?}"
            )
        };
        has("tls.acme.email", "not an e-mail address");
        has("tls.acme.directory", "https://");
        has("tls.acme.domains[1]", "wildcard");
        has("tls.acme.domains[2]", "IP address");
        has("tls.acme.domains[3]", "listed twice");
        has("tls.acme.domains[4]", "not a valid DNS name");
        has("tls.acme.renew_before_days", "between 1 and 365");
        has("tls.acme.retry_max_s", "at least retry_min_s");
        has("tls.acme.directory_ca_file", "/nonexistent/ca.pem");
        assert!(
            problems("domains = []")
                .iter()
                .any(|p| p.contains("tls.acme.domains"))
        );
        assert!(
            problems("domains = [\"a.example.com\"]\nchallenge = \"dns-01\"")
                .iter()
                .any(|p| p.contains("tls.acme.challenge"))
        );
    }

    #[test]
    fn tls_without_certificates_or_acme_is_refused() {
        let text = "[tls]\nlisten = \"127.0.0.1:0\"\n";
        let e = crate::plan::parse(text, &crate::plan::Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("tls.certificates"), "{e}");
    }
}
