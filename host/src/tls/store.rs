//! The certificates the TLS listener serves, chosen by SNI: exact names first, then a
//! `*.` wildcard one label up, else the default certificate. Swapped whole on reload, so
//! a handshake sees one consistent set.
//!
//! The set merges two sources: the certificate files of `tls.certificates` and the
//! certificates obtained by ACME (`[tls.acme]`). An ACME certificate answers for its
//! own names, ahead of any file certificate (even an exact one); the files answer for
//! every other name; the default (no SNI, unknown name) is the first file certificate,
//! else the ACME one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
        Self::merged(&[], &certs)
    }

    /// Indexes the ACME certificates, then the file certificates (so an ACME certificate
    /// wins the names it holds); the default is the first file certificate, else the
    /// first ACME one.
    pub fn merged(acme: &[LoadedCert], files: &[LoadedCert]) -> Self {
        let certs: Vec<LoadedCert> = acme.iter().chain(files).cloned().collect();
        let mut set = CertSet {
            default: files.first().or(acme.first()).map(|c| c.key.clone()),
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
    /// What `current` is built from; writers (the file watcher, the ACME task) hold
    /// the lock while they rebuild it, so neither undoes the other's change.
    sources: Mutex<Sources>,
    /// ACME tls-alpn-01 challenge certificates by name, answered only to handshakes that
    /// offer the `acme-tls/1` protocol.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

/// The certificates of each source.
#[derive(Debug, Default)]
struct Sources {
    files: Vec<LoadedCert>,
    acme: Vec<LoadedCert>,
}

impl CertStore {
    /// A store serving the file certificates `certs` (and no ACME certificate yet).
    pub fn new(certs: Vec<LoadedCert>) -> Self {
        Self {
            current: ArcSwap::from_pointee(CertSet::new(certs.clone())),
            sources: Mutex::new(Sources {
                files: certs,
                acme: Vec::new(),
            }),
            challenges: ArcSwap::default(),
        }
    }

    /// Serves the file certificates `certs` to new handshakes from now on (the ACME
    /// certificates stay).
    pub fn replace(&self, certs: Vec<LoadedCert>) {
        let mut sources = self.sources();
        sources.files = certs;
        self.current
            .store(Arc::new(CertSet::merged(&sources.acme, &sources.files)));
    }

    /// Serves `certs` as the ACME certificates from now on (the files stay).
    pub fn set_acme(&self, certs: Vec<LoadedCert>) {
        let mut sources = self.sources();
        sources.acme = certs;
        self.current
            .store(Arc::new(CertSet::merged(&sources.acme, &sources.files)));
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a handshake without a challenge gets any certificate at all.
    pub fn has_certificate(&self) -> bool {
        self.current.load().default.is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> LoadedCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        super::super::certs::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            "cert",
            "key",
        )
        .unwrap()
    }

    fn picks(store: &CertStore, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        store.current().pick(sni)
    }

    fn same(a: Option<Arc<CertifiedKey>>, b: &LoadedCert) -> bool {
        a.is_some_and(|a| Arc::ptr_eq(&a, &b.key))
    }

    #[test]
    fn acme_certificates_win_their_names_and_files_keep_the_rest_and_the_default() {
        let first = cert(&["first.test"]);
        let wild = cert(&["*.example.com"]);
        let exact = cert(&["api.example.com"]);
        let store = CertStore::new(vec![first.clone(), wild.clone(), exact.clone()]);
        let acme = cert(&["api.example.com", "www.example.com"]);
        store.set_acme(vec![acme.clone()]);
        assert!(same(picks(&store, Some("api.example.com")), &acme));
        assert!(same(picks(&store, Some("www.example.com")), &acme));
        assert!(same(picks(&store, Some("other.example.com")), &wild));
        assert!(same(picks(&store, None), &first));
        assert!(same(picks(&store, Some("unknown.test")), &first));
        // Files replaced (a reload): the ACME certificate stays.
        store.replace(vec![wild.clone()]);
        assert!(same(picks(&store, Some("api.example.com")), &acme));
        assert!(same(picks(&store, None), &wild));
        assert_eq!(store.current().certs.len(), 2);
    }

    #[test]
    fn without_files_the_acme_certificate_is_the_default_and_before_it_there_is_none() {
        let store = CertStore::new(Vec::new());
        assert!(!store.has_certificate());
        assert!(picks(&store, Some("a.example.com")).is_none());
        let acme = cert(&["a.example.com"]);
        store.set_acme(vec![acme.clone()]);
        assert!(store.has_certificate());
        assert!(same(picks(&store, None), &acme));
        assert!(same(picks(&store, Some("other.test")), &acme));
    }
}
