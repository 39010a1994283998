//! The certificates the TLS listener serves, chosen by SNI: exact names first, then a
//! `*.` wildcard one label up, else the first certificate. Swapped whole on reload, so a
//! handshake sees one consistent set.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

/// The ALPN protocol of ACME's tls-alpn-01 validation (RFC 8737), defined where the
/// challenge certificate is chosen by it.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One set of certificates, indexed by name.
#[derive(Debug, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// What was loaded, for metrics and the admin API.
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// Indexes `certs`; for a name two certificates share, the earlier one wins.
    pub fn new(certs: Vec<LoadedCert>) -> Self {
        let mut set = CertSet {
            default: certs.first().map(|c| c.key.clone()),
            ..CertSet::default()
        };
        for cert in &certs {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut set.wildcard, parent.to_owned()),
                    None => (&mut set.exact, name.clone()),
                };
                map.entry(key).or_insert_with(|| cert.key.clone());
            }
        }
        set.certs = certs;
        set
    }

    /// The certificate for an SNI name (any case), or the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(key.clone());
            }
        }
        self.default.clone()
    }
}

/// The resolver rustls asks on every handshake.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
    /// ACME tls-alpn-01 challenge certificates by name, answered only to handshakes that
    /// offer the `acme-tls/1` protocol.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new(certs: Vec<LoadedCert>) -> Self {
        Self {
            current: ArcSwap::from_pointee(CertSet::new(certs)),
            challenges: ArcSwap::default(),
        }
    }

    /// Serves `certs` to new handshakes from now on.
    pub fn replace(&self, certs: Vec<LoadedCert>) {
        self.current.store(Arc::new(CertSet::new(certs)));
    }

    /// The set in force.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Adds or removes (`None`) the tls-alpn-01 challenge certificate for `name`.
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let name = name.to_ascii_lowercase();
        self.challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            match &key {
                Some(key) => next.insert(name.clone(), key.clone()),
                None => next.remove(&name),
            };
            next
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.load().get(&name).cloned();
        }
        self.current.load().pick(hello.server_name())
    }
}
