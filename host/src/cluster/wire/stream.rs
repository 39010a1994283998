//! TCP stream framing: the label header and the encrypted `[10][u32 len][payload]` frame.

use super::crypto::{ENC_VERSION, Keyring, decrypt_payload, encrypt_payload, encrypted_len};
use super::error::{Result, WireError};
use super::label::{check_label, push_label_header};
use super::limits::{LABEL_MAX, MAX_STREAM_BYTES};
use super::lzw::decompress_payload;
use super::msgpack::{Dec, len_u32};
use crate::cluster::messages::MessageType;

// ---------------------------------------------------------------------------------------------
// Streams (net.go rawSendMsgStream / readStream / encryptLocalState / decryptRemoteState).
// ---------------------------------------------------------------------------------------------

/// Stream framing helpers: seal a stream message (label + optional encryption per net.go), and
/// open one from a complete buffer.
///
/// This is what the *dialing* side writes: the label header (`labelWrappedTransport`
/// `DialAddressTimeout` writes it once at the start of the connection), then the message,
/// encrypted as `[10][u32 BE length][version 1 payload]` with additional data = those 5 header
/// bytes followed by the label (`encryptLocalState`). The accepting side answers with
/// [`seal_stream_reply`], which omits the label header.
pub fn seal_stream(
    payload: Vec<u8>,
    label: &[u8],
    keys: &Keyring,
) -> std::result::Result<Vec<u8>, WireError> {
    let body = seal_stream_reply(payload, label, keys)?;
    let mut out = Vec::with_capacity(2 + label.len() + body.len());
    push_label_header(&mut out, label)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Seals a stream message without the label header: the reply on an accepted connection
/// (`handleConn` → `sendLocalState`/`rawSendMsgStream`, which never write a label), still
/// authenticated with the label as `encryptLocalState` does.
pub fn seal_stream_reply(
    payload: Vec<u8>,
    label: &[u8],
    keys: &Keyring,
) -> std::result::Result<Vec<u8>, WireError> {
    if label.len() > LABEL_MAX {
        return Err(WireError::LabelTooLong(label.len()));
    }
    if !keys.is_enabled() {
        return Ok(payload);
    }
    let enc_len = encrypted_len(ENC_VERSION, payload.len());
    if enc_len > MAX_STREAM_BYTES {
        return Err(WireError::TooLarge);
    }
    let mut out = Vec::with_capacity(5 + enc_len);
    out.push(MessageType::Encrypt.into());
    out.extend_from_slice(&len_u32(enc_len).to_be_bytes());
    let aad = stream_aad(&out, label);
    out.extend_from_slice(&encrypt_payload(keys, &payload, &aad)?);
    Ok(out)
}

/// Additional data of an encrypted stream frame: `[type][u32 length]` then the label.
fn stream_aad(header: &[u8], label: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + label.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(label);
    aad
}

/// Opens what a dialer sent (label header first, checked against ours); see [`seal_stream`].
///
/// Returns the inner message bytes (type byte first), decrypted and decompressed. `Truncated`
/// means the buffer ends early, so a reader can retry with more bytes.
pub fn open_stream(
    buf: &[u8],
    label: &[u8],
    keys: &Keyring,
) -> std::result::Result<Vec<u8>, WireError> {
    let rest = check_label(buf, label)?;
    open_stream_reply(rest, label, keys)
}

/// Opens a reply read on a connection we dialed (no label header, label still authenticated);
/// see [`seal_stream_reply`]. Returns the inner message bytes, type byte first.
pub fn open_stream_reply(
    buf: &[u8],
    label: &[u8],
    keys: &Keyring,
) -> std::result::Result<Vec<u8>, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    let inner = if MessageType::try_from(first) == Ok(MessageType::Encrypt) {
        if !keys.is_enabled() {
            return Err(WireError::EncryptionNotConfigured);
        }
        open_encrypted_frame(buf, label, keys)?
    } else if keys.is_enabled() {
        // readStream with GossipVerifyIncoming (the default).
        return Err(WireError::NotEncrypted);
    } else {
        buf.to_vec()
    };
    let t = *inner.first().ok_or(WireError::Empty)?;
    if MessageType::try_from(t) != Ok(MessageType::Compress) {
        return Ok(inner);
    }
    // readStream: a compress message is inflated once and must not be empty.
    let plain = decompress_payload(&inner[1..], MAX_STREAM_BYTES)?;
    if plain.is_empty() {
        return Err(WireError::Empty);
    }
    Ok(plain)
}

/// `decryptRemoteState`: length-checked frame, AAD = 5 header bytes + label.
fn open_encrypted_frame(buf: &[u8], label: &[u8], keys: &Keyring) -> Result<Vec<u8>> {
    let mut d = Dec::new(buf);
    let header = d.take(5)?;
    let len = usize::try_from(u32::from_be_bytes([
        header[1], header[2], header[3], header[4],
    ]))
    .map_err(|_| WireError::TooLarge)?;
    if len > MAX_STREAM_BYTES {
        return Err(WireError::TooLarge);
    }
    let payload = d.take(len)?;
    if d.remaining() > 0 {
        return Err(WireError::TrailingBytes);
    }
    decrypt_payload(keys, payload, &stream_aad(header, label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::Message;
    use crate::cluster::wire::encode_message;
    use crate::cluster::wire::test_support::*;

    #[test]
    fn streams() {
        let none = Keyring::default();
        let keys = keyring(&[KEY16]);
        let ping = encode_message(&Message::Ping(ping_a()));
        // Plain, no label: the message itself.
        assert_eq!(seal_stream(ping.clone(), b"", &none), Ok(ping.clone()));
        assert_eq!(open_stream(&ping, b"", &none), Ok(ping.clone()));
        // Plain with label.
        let s = seal_stream(ping.clone(), b"x", &none).expect("seal");
        assert_eq!(open_stream(&s, b"x", &none), Ok(ping.clone()));
        assert_eq!(open_stream(&s, b"y", &none), Err(WireError::LabelMismatch));
        assert_eq!(
            open_stream(&ping, b"x", &none),
            Err(WireError::LabelMismatch)
        );
        // Encryption expectations (readStream).
        assert_eq!(open_stream(&ping, b"", &keys), Err(WireError::NotEncrypted));
        let enc = seal_stream(ping.clone(), b"", &keys).expect("seal");
        assert_eq!(
            open_stream(&enc, b"", &none),
            Err(WireError::EncryptionNotConfigured)
        );
        assert_eq!(open_stream(&enc, b"", &keys), Ok(ping.clone()));
        // Frame length = encryptedLength(1, len), and it is authenticated with the label.
        assert_eq!(
            u32::from_be_bytes([enc[1], enc[2], enc[3], enc[4]]) as usize,
            encrypted_len(1, ping.len())
        );
        let labelled = seal_stream_reply(ping.clone(), b"a", &keys).expect("seal");
        assert_eq!(
            open_stream_reply(&labelled, b"b", &keys),
            Err(WireError::Decrypt)
        );
        // Truncated / trailing frames.
        assert_eq!(
            open_stream(&enc[..enc.len() - 1], b"", &keys),
            Err(WireError::Truncated)
        );
        assert_eq!(
            open_stream(&enc[..3], b"", &keys),
            Err(WireError::Truncated)
        );
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(
            open_stream(&long, b"", &keys),
            Err(WireError::TrailingBytes)
        );
        let mut huge = vec![10, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(open_stream(&huge, b"", &keys), Err(WireError::TooLarge));
        // Go's encryptLocalState output (key KEY16, nonce 0x42.., label "lbl").
        let go = hex(
            "0a0000002d01424242424242424242424242b17134709082e9a183fb96ef4450f99a791281f170deb3272da07880a4d420c6",
        );
        assert_eq!(open_stream_reply(&go, b"lbl", &keys), Ok(ping));
    }
}
