//! Encryption: the keyring (AES-GCM 128/192/256) and security.go's payload versions 0 and 1.
//!
//! Also [`decode_key`], which turns `cluster.secret_key` into key bytes for the keyring.

use std::fmt;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine;
use rand::RngCore;

use super::error::{Result, WireError};

// security.go constants.
const ENC_VERSION_PADDED: u8 = 0;
pub(super) const ENC_VERSION: u8 = 1;
const VERSION_SIZE: usize = 1;
const NONCE_SIZE: usize = 12;
const TAG_SIZE: usize = 16;
const BLOCK_SIZE: usize = 16;

// ---------------------------------------------------------------------------------------------
// Keyring (keyring.go: primary key encrypts, every key is tried to decrypt).
// ---------------------------------------------------------------------------------------------

type Aes192Gcm = AesGcm<Aes192, U12>;

/// One installed key, with its AES key schedule prepared once.
#[derive(Clone)]
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<Aes192Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    /// keyring.go `ValidateKey`: AES-128, AES-192 or AES-256.
    fn new(key: &[u8]) -> Result<Self> {
        let bad = |_| WireError::KeySize(key.len());
        Ok(match key.len() {
            16 => Cipher::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?)),
            24 => Cipher::Aes192(Box::new(Aes192Gcm::new_from_slice(key).map_err(bad)?)),
            32 => Cipher::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?)),
            n => return Err(WireError::KeySize(n)),
        })
    }

    fn seal(&self, nonce: &[u8; NONCE_SIZE], msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        match self {
            Cipher::Aes128(c) => gcm_seal(c.as_ref(), nonce, msg, aad),
            Cipher::Aes192(c) => gcm_seal(c.as_ref(), nonce, msg, aad),
            Cipher::Aes256(c) => gcm_seal(c.as_ref(), nonce, msg, aad),
        }
    }

    fn open(&self, nonce: &[u8; NONCE_SIZE], ct: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        match self {
            Cipher::Aes128(c) => gcm_open(c.as_ref(), nonce, ct, aad),
            Cipher::Aes192(c) => gcm_open(c.as_ref(), nonce, ct, aad),
            Cipher::Aes256(c) => gcm_open(c.as_ref(), nonce, ct, aad),
        }
    }
}

fn gcm_seal<C: Aead + AeadCore<NonceSize = U12>>(
    c: &C,
    nonce: &[u8; NONCE_SIZE],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>> {
    // Only fails for plaintexts beyond GCM's 64 GiB limit.
    c.encrypt(Nonce::<U12>::from_slice(nonce), Payload { msg, aad })
        .map_err(|_| WireError::TooLarge)
}

fn gcm_open<C: Aead + AeadCore<NonceSize = U12>>(
    c: &C,
    nonce: &[u8; NONCE_SIZE],
    ct: &[u8],
    aad: &[u8],
) -> Option<Vec<u8>> {
    c.decrypt(Nonce::<U12>::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// A keyring: the first key encrypts, all keys are tried to decrypt. Empty = no encryption.
#[derive(Clone, Default)]
pub struct Keyring {
    ciphers: Vec<Cipher>,
}

impl Keyring {
    /// Builds a keyring; the first key is the primary. Each key must be 16, 24 or 32 bytes.
    pub fn new(keys: Vec<Vec<u8>>) -> std::result::Result<Self, WireError> {
        let ciphers = keys
            .iter()
            .map(|k| Cipher::new(k))
            .collect::<Result<Vec<_>>>()?;
        Ok(Keyring { ciphers })
    }

    /// Whether any key is installed (memberlist's `EncryptionEnabled`).
    pub fn is_enabled(&self) -> bool {
        !self.ciphers.is_empty()
    }
}

impl fmt::Debug for Keyring {
    // Never print key material: only how many keys there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

/// Decodes `cluster.secret_key` (base64 of 16, 24 or 32 bytes).
pub fn decode_key(text: &str) -> std::result::Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64".to_owned())?;
    if matches!(key.len(), 16 | 24 | 32) {
        Ok(key)
    } else {
        Err(format!(
            "decodes to {} bytes; AES keys are 16, 24 or 32 bytes",
            key.len()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Encryption (security.go).
// ---------------------------------------------------------------------------------------------

/// security.go `encryptedLength`.
pub(super) fn encrypted_len(vsn: u8, plain: usize) -> usize {
    let padding = if vsn >= ENC_VERSION {
        0
    } else {
        BLOCK_SIZE - plain % BLOCK_SIZE
    };
    VERSION_SIZE + NONCE_SIZE + plain + padding + TAG_SIZE
}

/// security.go `encryptPayload` with version 1 (what memberlist uses for protocol >= 2):
/// version byte, random 12-byte nonce, ciphertext and 16-byte tag, under the primary key.
pub(super) fn encrypt_payload(keys: &Keyring, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let primary = keys.ciphers.first().ok_or(WireError::Decrypt)?;
    let mut nonce = [0u8; NONCE_SIZE];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = primary.seal(&nonce, msg, aad)?;
    let mut out = Vec::with_capacity(encrypted_len(ENC_VERSION, msg.len()));
    out.push(ENC_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// security.go `decryptPayload`: checks the version and minimum length, then tries every key
/// in keyring order; version 0 payloads have their PKCS7 padding removed.
pub(super) fn decrypt_payload(keys: &Keyring, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    let vsn = *msg.first().ok_or(WireError::Decrypt)?;
    if vsn > ENC_VERSION || msg.len() < encrypted_len(vsn, 0) {
        return Err(WireError::Decrypt);
    }
    let nonce: [u8; NONCE_SIZE] = msg
        .get(VERSION_SIZE..VERSION_SIZE + NONCE_SIZE)
        .and_then(|n| n.try_into().ok())
        .ok_or(WireError::Decrypt)?;
    let ct = &msg[VERSION_SIZE + NONCE_SIZE..];
    let plain = keys
        .ciphers
        .iter()
        .find_map(|c| c.open(&nonce, ct, aad))
        .ok_or(WireError::Decrypt)?;
    if vsn == ENC_VERSION_PADDED {
        pkcs7_strip(plain)
    } else {
        Ok(plain)
    }
}

/// security.go `pkcs7decode`: drop as many bytes as the last byte says. Go would panic on a
/// pad longer than the buffer; we refuse it.
fn pkcs7_strip(mut plain: Vec<u8>) -> Result<Vec<u8>> {
    let pad = usize::from(*plain.last().ok_or(WireError::Decrypt)?);
    let keep = plain.len().checked_sub(pad).ok_or(WireError::Decrypt)?;
    plain.truncate(keep);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::Message;
    use crate::cluster::wire::test_support::*;
    use crate::cluster::wire::{compound, encode_message, open_packet, seal_packet};

    #[test]
    fn encryption_round_trip_all_key_sizes() {
        let ping = encode_message(&Message::Ping(ping_a()));
        for key in [&[1u8; 16][..], &[2u8; 24][..], &[3u8; 32][..]] {
            let keys = keyring(&[key]);
            for label in [&b""[..], b"lbl"] {
                let p = seal_packet(ping.clone(), label, false, &keys).expect("seal");
                let body = &p[if label.is_empty() { 0 } else { 2 + label.len() }..];
                assert_eq!(body[0], ENC_VERSION);
                assert_eq!(body.len(), encrypted_len(ENC_VERSION, ping.len()));
                assert_eq!(
                    open_packet(&p, label, &keys),
                    Ok(vec![Message::Ping(ping_a())])
                );
            }
        }
        // Fresh nonce per packet.
        let keys = keyring(&[KEY16]);
        let a = seal_packet(ping.clone(), b"", false, &keys).expect("seal");
        let b = seal_packet(ping, b"", false, &keys).expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_key_and_keyring_order() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let p = seal_packet(ping, b"", false, &keyring(&[&[9u8; 32]])).expect("seal");
        assert_eq!(
            open_packet(&p, b"", &keyring(&[&[8u8; 32]])),
            Err(WireError::Decrypt)
        );
        // A secondary key still decrypts (keyring rotation).
        assert_eq!(
            open_packet(&p, b"", &keyring(&[&[8u8; 32], &[9u8; 32]])),
            Ok(vec![Message::Ping(ping_a())])
        );
        // The label is authenticated: same bytes, different AAD, no plaintext.
        let keys = keyring(&[KEY16]);
        let body = encrypt_payload(&keys, b"\x08hi", b"dc1").expect("enc");
        assert_eq!(
            decrypt_payload(&keys, &body, b"dc2"),
            Err(WireError::Decrypt)
        );
        assert_eq!(
            decrypt_payload(&keys, &body, b"dc1"),
            Ok(b"\x08hi".to_vec())
        );
    }

    #[test]
    fn unencrypted_packet_rejected_with_keyring() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let keys = keyring(&[KEY16]);
        assert_eq!(open_packet(&ping, b"", &keys), Err(WireError::Decrypt));
        let c = compound(&[ping.clone(), ping]);
        assert_eq!(open_packet(&c, b"", &keys), Err(WireError::Decrypt));
    }

    /// Builds a version-0 payload exactly as security.go `encryptPayload` does: version byte,
    /// nonce, then the message plus PKCS7 padding to 16 bytes, sealed in place.
    fn encrypt_v0(key: &[u8], nonce: [u8; 12], msg: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut padded = msg.to_vec();
        let more = BLOCK_SIZE - padded.len() % BLOCK_SIZE;
        padded.extend(std::iter::repeat_n(more as u8, more));
        let sealed = Cipher::new(key)
            .expect("key")
            .seal(&nonce, &padded, aad)
            .expect("seal");
        let mut out = vec![ENC_VERSION_PADDED];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    #[test]
    fn decrypts_pkcs7_version_0() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let v0 = encrypt_v0(KEY16, [0x42; 12], &ping, b"lbl");
        // Identical to Go's encryptPayload(0, ...) with the same key and nonce.
        let go = hex(
            "00424242424242424242424242b17134709082e9a183fb96ef4450f99a71ca85a1b5acdab2058b82ac88da856efef5b4d615ae8120be2d64d112be5114",
        );
        assert_eq!(v0, go);
        assert_eq!(v0.len(), encrypted_len(0, ping.len()));
        let mut packet = b"\xf4\x03lbl".to_vec();
        packet.extend_from_slice(&v0);
        assert_eq!(
            open_packet(&packet, b"lbl", &keyring(&[KEY16])),
            Ok(vec![Message::Ping(ping_a())])
        );
        // Go's version-1 output (no label) decrypts too.
        let v1 = hex(
            "01424242424242424242424242b17134709082e9a183fb96ef4450f99a094ec8056690d790516c1fee398a0db1",
        );
        assert_eq!(
            open_packet(&v1, b"", &keyring(&[KEY16])),
            Ok(vec![Message::Ping(ping_a())])
        );
        // Version 0 whose padding claims more than the plaintext: refused, not a panic.
        let evil = encrypt_v0(KEY16, [1; 12], &[], b"");
        let mut bad = evil.clone();
        bad.truncate(13);
        let sealed = Cipher::new(KEY16)
            .expect("key")
            .seal(&[1; 12], &[200u8; 16], b"")
            .expect("seal");
        bad.extend_from_slice(&sealed);
        assert_eq!(
            decrypt_payload(&keyring(&[KEY16]), &bad, b""),
            Err(WireError::Decrypt)
        );
        assert_eq!(decrypt_payload(&keyring(&[KEY16]), &evil, b""), Ok(vec![]));
    }

    #[test]
    fn keyring_validation_and_debug() {
        assert_eq!(
            Keyring::new(vec![vec![0; 15]]).map(|_| ()),
            Err(WireError::KeySize(15))
        );
        assert_eq!(
            Keyring::new(vec![vec![0; 16], vec![0; 33]]).map(|_| ()),
            Err(WireError::KeySize(33))
        );
        assert!(!Keyring::new(vec![]).expect("empty").is_enabled());
        assert!(!Keyring::default().is_enabled());
        let k = keyring(&[b"SECRETSECRETSECR"]);
        assert!(k.is_enabled());
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "Keyring { keys: 1 }");
    }
}
