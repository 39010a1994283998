//! The tls-alpn-01 challenge certificate (RFC 8737): self-signed, for the one name
//! being validated, carrying the critical acmeIdentifier extension with the SHA-256
//! digest of the key authorization. The `CertStore` hands it only to handshakes that
//! offer ALPN `acme-tls/1`.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The challenge certificate for `domain`, given the SHA-256 digest of the key
/// authorization.
pub fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err(format!(
            "the key authorization digest has {} bytes, not 32",
            digest.len()
        ));
    }
    let mut params = CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| format!("certificate parameters: {e}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(|e| format!("key pair: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("signing: {e}"))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension; the key is ours anyway.
    let signing = default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The acmeIdentifier OID, 1.3.6.1.5.5.7.1.31, DER-encoded.
    const ACME_IDENTIFIER_OID: &[u8] =
        &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let key = challenge_certificate("a.example.com", &digest).unwrap();
        let der = key.cert[0].as_ref();
        let at = der
            .windows(ACME_IDENTIFIER_OID.len())
            .position(|w| w == ACME_IDENTIFIER_OID)
            .expect("acmeIdentifier extension");
        // OID, critical = TRUE, OCTET STRING { OCTET STRING (32) digest }.
        let rest = &der[at + ACME_IDENTIFIER_OID.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff]);
        assert_eq!(&rest[3..7], &[0x04, 34, 0x04, 32]);
        assert_eq!(&rest[7..39], &digest);
        // The name is in the certificate (webpki cannot be asked: it refuses the
        // critical extension it does not know, as it should for ordinary certificates).
        let name = b"a.example.com";
        assert!(der.windows(name.len()).any(|w| w == name));
        assert!(challenge_certificate("a.example.com", &[1, 2]).is_err());
    }
}
