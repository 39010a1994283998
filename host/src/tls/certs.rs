//! A certificate and its key read from PEM files: checked (the key matches, not
//! expired), with the names it answers for (its DNS SANs) and when it expires.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate this close to expiry loads with a warning.
const EXPIRES_SOON: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("the key in {path} cannot be used: {reason}")]
    BadKey { path: String, reason: String },
    #[error("the certificate in {path} cannot be parsed: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("the certificate in {path} expired {ago} ago")]
    Expired { path: String, ago: String },
    #[error("the certificate in {path} names no DNS name (subjectAltName)")]
    NoNames { path: String },
}

/// A usable certificate.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the subjectAltName extension, lower-cased (`*.example.com` kept).
    pub names: Vec<String>,
    /// The end of its validity, seconds since the Unix epoch.
    pub not_after: u64,
}

impl LoadedCert {
    /// Seconds until it expires (negative once expired).
    pub fn expires_in(&self) -> i64 {
        self.not_after as i64 - now_secs() as i64
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, CertError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    from_pem(
        &cert_pem,
        &key_pem,
        &cert_path.display().to_string(),
        &key_path.display().to_string(),
    )
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Checks a certificate chain and key given as PEM text (`cert`/`key` name them in
/// errors).
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &str,
    key: &str,
) -> Result<LoadedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_owned(),
        });
    };
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey {
        path: key.to_owned(),
    })?;
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::BadCertificate {
        path: cert.to_owned(),
        reason: format!("{e:?}"),
    })?;
    let names: Vec<String> = parsed
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        return Err(CertError::NoNames {
            path: cert.to_owned(),
        });
    }
    let not_after = not_after(leaf.as_ref()).ok_or_else(|| CertError::BadCertificate {
        path: cert.to_owned(),
        reason: "no readable validity period".to_owned(),
    })?;
    let now = now_secs();
    if not_after <= now {
        return Err(CertError::Expired {
            path: cert.to_owned(),
            ago: human(Duration::from_secs(now - not_after)),
        });
    }
    if not_after - now < EXPIRES_SOON.as_secs() {
        tracing::warn!(
            cert = %cert,
            expires_in = %human(Duration::from_secs(not_after - now)),
            "TLS certificate expires soon"
        );
    }
    let certified =
        CertifiedKey::from_der(chain, private, &default_provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            other => CertError::BadKey {
                path: key.to_owned(),
                reason: other.to_string(),
            },
        })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// The end of a certificate's validity (seconds since the epoch), read from its DER.
///
/// Written by hand: rustls and webpki check validity but do not expose it, and an X.509
/// parser crate would add more to the build than these few lines of DER walking do.
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } }
pub fn not_after(der: &[u8]) -> Option<u64> {
    let (cert, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_skip(rest)?;
    }
    for _ in 0..3 {
        rest = der_skip(rest)?; // serialNumber, signature, issuer
    }
    let (validity, _) = der_element(rest, 0x30)?;
    let after = der_skip(validity)?;
    let tag = *after.first()?;
    let (time, _) = der_element(after, tag)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        0x17 => der_time(text, true),
        0x18 => der_time(text, false),
        _ => None,
    }
}

/// The contents of the DER element at the start of `der` (which must have `tag`), and
/// what follows it.
fn der_element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *der.first()? != tag {
        return None;
    }
    let first = *der.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let count = first & 0x7f;
        if count == 0 || count > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..count {
            len = (len << 8) | *der.get(2 + i)? as usize;
        }
        (len, 2 + count)
    };
    let body = der.get(header..header.checked_add(len)?)?;
    Some((body, &der[header + len..]))
}

fn der_skip(der: &[u8]) -> Option<&[u8]> {
    der_element(der, *der.first()?).map(|(_, rest)| rest)
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as epoch seconds.
fn der_time(text: &str, utc_time: bool) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (year, rest) = if utc_time {
        let yy: u64 = text.get(0..2)?.parse().ok()?;
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
    } else {
        (text.get(0..4)?.parse().ok()?, text.get(4..)?)
    };
    let field = |i: usize| -> Option<u64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), then seconds.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    let days_since_epoch = days.checked_sub(719_468)?;
    Some(days_since_epoch * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times_are_read() {
        assert_eq!(der_time("700101000000Z", true), Some(0));
        assert_eq!(der_time("20261201134303Z", false), Some(1_796_132_583));
        assert_eq!(der_time("491231235959Z", true), Some(2_524_607_999));
        assert_eq!(der_time("261301000000Z", true), None);
    }
}
