//! What `[tls.acme]` keeps on disk, under `storage`, per CA directory:
//!
//! ```text
//! <storage>/<directory>/account.json          account id + key (0600)
//! <storage>/<directory>/<domains>/cert.pem    the chain, leaf first (0644)
//! <storage>/<directory>/<domains>/key.pem     its private key (0600)
//! ```
//!
//! `<directory>` is the directory URL made into a file name, `<domains>` the sorted
//! domains joined with `+` (hashed when long). Every file is written to a temporary
//! name, synced and renamed, so a crash leaves the old file or the new one; folders
//! are 0700.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;

use super::error::AcmeError;
use crate::tls::certs::{self, LoadedCert};

/// Longest `<domains>` folder name before it is shortened with a hash.
const MAX_SET_NAME: usize = 120;

/// The files of one CA directory and one domain set.
#[derive(Debug, Clone)]
pub struct Storage {
    /// `<storage>/<directory>`.
    ca_dir: PathBuf,
    /// `<storage>/<directory>/<domains>`.
    cert_dir: PathBuf,
}

/// A certificate and key as PEM text.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub chain: String,
    pub key: String,
}

impl Storage {
    pub fn new(storage: &Path, directory: &str, domains: &[String]) -> Self {
        let ca_dir = storage.join(file_name(directory));
        let cert_dir = ca_dir.join(set_name(domains));
        Self { ca_dir, cert_dir }
    }

    pub fn account_path(&self) -> PathBuf {
        self.ca_dir.join("account.json")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.cert_dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.cert_dir.join("key.pem")
    }

    /// The stored account credentials, if any.
    pub fn load_account(&self) -> Result<Option<AccountCredentials>, AcmeError> {
        let path = self.account_path();
        let Some(bytes) = read_if_present(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| storage_error(&path, format!("not account credentials: {e}")))
    }

    pub fn save_account(&self, credentials: &AccountCredentials) -> Result<(), AcmeError> {
        let path = self.account_path();
        let json = serde_json::to_vec_pretty(credentials)
            .map_err(|e| storage_error(&path, e.to_string()))?;
        write_atomically(&path, &json, 0o600)
    }

    /// Forgets the account (the CA no longer knows it); the next order creates one.
    pub fn forget_account(&self) -> Result<(), AcmeError> {
        let path = self.account_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage_error(&path, e.to_string())),
        }
    }

    /// The stored certificate, if there is one that is still valid and names exactly
    /// `domains`; an unusable one is an error (the caller orders a new one).
    pub fn load_certificate(&self, domains: &[String]) -> Result<Option<LoadedCert>, AcmeError> {
        let (cert_path, key_path) = (self.cert_path(), self.key_path());
        let Some(chain) = read_if_present(&cert_path)? else {
            return Ok(None);
        };
        let Some(key) = read_if_present(&key_path)? else {
            return Ok(None);
        };
        let cert = certs::from_pem(
            &chain,
            &key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
        .map_err(|e| storage_error(&cert_path, e.to_string()))?;
        if !names_match(&cert.names, domains) {
            return Err(storage_error(
                &cert_path,
                format!("names {:?}, not {:?}", cert.names, domains),
            ));
        }
        Ok(Some(cert))
    }

    /// Stores a certificate and its key: the key first, so a crash in between leaves
    /// a pair that does not match (found at load, and ordered again), never a
    /// certificate with a stale key that looks fine.
    pub fn save_certificate(&self, pem: &PemPair) -> Result<(), AcmeError> {
        write_atomically(&self.key_path(), pem.key.as_bytes(), 0o600)?;
        write_atomically(&self.cert_path(), pem.chain.as_bytes(), 0o644)
    }
}

/// Whether a certificate's names are exactly the requested domains (any order).
pub fn names_match(names: &[String], domains: &[String]) -> bool {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    domains.sort_unstable();
    domains.dedup();
    names == domains
}

fn storage_error(path: &Path, reason: impl Into<String>) -> AcmeError {
    AcmeError::Storage {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(storage_error(path, e.to_string())),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder (created
/// 0700 if missing) with permissions `mode`, synced, then renamed over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
    let folder = path
        .parent()
        .ok_or_else(|| storage_error(path, "has no folder"))?;
    create_folder(folder)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&temp)?;
        // `mode` applies to new files only; a leftover temporary file gets it too.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        // The rename itself is made durable by syncing the folder.
        if let Ok(dir) = fs::File::open(folder) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&temp);
        storage_error(path, format!("cannot write: {e}"))
    })
}

fn create_folder(folder: &Path) -> Result<(), AcmeError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(folder)
        .map_err(|e| storage_error(folder, format!("cannot create the folder: {e}")))
}

/// A URL as one file name: letters, digits, `.` and `-` kept, runs of anything else
/// one `_`, the scheme dropped.
fn file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let mut name = String::with_capacity(rest.len());
    for c in rest.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
            name.push(c);
        } else if !name.ends_with('_') {
            name.push('_');
        }
    }
    let name = name.trim_matches('_');
    if name.is_empty() || name.starts_with('.') {
        format!("ca_{name}")
    } else {
        name.to_owned()
    }
}

/// The folder name of a domain set: sorted names joined with `+`; a long one is cut
/// and given a hash of the whole.
fn set_name(domains: &[String]) -> String {
    let mut sorted: Vec<&str> = domains.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let joined = sorted.join("+");
    if joined.len() <= MAX_SET_NAME {
        return joined;
    }
    let hash = crate::balancer::stable_hash(joined.as_bytes());
    let head: String = joined.chars().take(MAX_SET_NAME - 17).collect();
    format!("{head}+{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn folder_names_come_from_the_directory_and_the_sorted_domains() {
        assert_eq!(
            file_name("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            file_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(file_name("https://../x"), "ca_.._x");
        assert_eq!(set_name(&domains(&["b.test", "a.test"])), "a.test+b.test");
        let many: Vec<String> = (0..40).map(|i| format!("host{i}.example.com")).collect();
        let long = set_name(&many);
        assert!(long.len() <= MAX_SET_NAME, "{long}");
        assert_ne!(long, set_name(&many[1..]));
    }

    #[test]
    fn names_match_ignores_order_only() {
        assert!(names_match(
            &domains(&["b.test", "a.test"]),
            &domains(&["a.test", "b.test"])
        ));
        assert!(!names_match(
            &domains(&["a.test"]),
            &domains(&["a.test", "b.test"])
        ));
    }

    #[test]
    fn account_and_certificate_round_trip_with_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().unwrap();
        let names = domains(&["a.example.com", "b.example.com"]);
        let storage = Storage::new(&temp.path().join("acme"), "https://ca.test/dir", &names);
        assert!(storage.load_account().unwrap().is_none());
        assert!(storage.load_certificate(&names).unwrap().is_none());

        let credentials: AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": "https://ca.test/acct/1",
            "key_pkcs8": "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVWC_QzOTCS5vtsJp2IG-UDc8cdDfeoKtxSZxaznM-mhRANCAAQenCPoGgPFTdPJ7VLLKt56RxPlYT1wNXnHc54PEyBg3LxKaH0-sJkX0mL8LyPEdsfL_Oz4TxHkWLJGrXVtNhfH",
            "directory": "https://ca.test/dir",
        }))
        .unwrap();
        storage.save_account(&credentials).unwrap();
        let back = storage.load_account().unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&credentials).unwrap()
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = PemPair {
            chain: cert.pem(),
            key: key.serialize_pem(),
        };
        storage.save_certificate(&pem).unwrap();
        let loaded = storage.load_certificate(&names).unwrap().unwrap();
        assert_eq!(loaded.leaf.as_ref(), cert.der().as_ref());
        // Another domain set is another folder; the same names in another order are not.
        assert!(
            Storage::new(
                &temp.path().join("acme"),
                "https://ca.test/dir",
                &names[..1]
            )
            .load_certificate(&names[..1])
            .unwrap()
            .is_none()
        );
        let mut reversed = names.clone();
        reversed.reverse();
        let same = Storage::new(&temp.path().join("acme"), "https://ca.test/dir", &reversed);
        assert!(same.load_certificate(&reversed).unwrap().is_some());

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&storage.key_path()), 0o600);
        assert_eq!(mode(&storage.account_path()), 0o600);
        assert_eq!(mode(&storage.cert_path()), 0o644);
        assert_eq!(mode(&temp.path().join("acme")), 0o700);
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(storage.cert_path().parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // A key that does not match the certificate is an error, not a certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        fs::write(storage.key_path(), other.serialize_pem()).unwrap();
        let e = storage.load_certificate(&names).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");

        storage.forget_account().unwrap();
        assert!(storage.load_account().unwrap().is_none());
        storage.forget_account().unwrap();
    }
}
