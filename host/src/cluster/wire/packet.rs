//! The UDP packet: compound messages, the CRC header, and the whole seal/open path.

use super::codec::decode_message;
use super::crypto::{Keyring, decrypt_payload, encrypt_payload};
use super::error::{Result, WireError};
use super::label::{check_label, push_label_header};
use super::limits::{
    LABEL_MAX, MAX_COMPOUND_PARTS, MAX_NESTING, MAX_PACKET_BYTES, MAX_PACKET_DECOMPRESSED,
    MAX_PACKET_MESSAGES,
};
use super::lzw::decompress_payload;
use super::msgpack::Dec;
use crate::cluster::messages::{Message, MessageType};

// ---------------------------------------------------------------------------------------------
// Compound messages (util.go makeCompoundMessage / decodeCompoundMessage).
// ---------------------------------------------------------------------------------------------

/// Packs several encoded messages into one compound message (if >1), as memberlist does (max
/// 255 per compound).
///
/// One message is returned as is; zero gives an empty compound (`[7, 0]`). Above 255 messages
/// memberlist (`makeCompoundMessages`) sends several compounds; since this returns one buffer
/// it nests them instead (a compound of compounds), which memberlist's `handleCompound`
/// unpacks recursively. Use [`compounds`] for memberlist's exact split. A message longer than
/// 65535 bytes cannot be described by a compound's u16 length: its length is saturated, and the
/// result is necessarily too large for [`seal_packet`], which rejects it with `TooLarge`.
pub fn compound(msgs: &[Vec<u8>]) -> Vec<u8> {
    match msgs {
        [one] => one.clone(),
        _ if msgs.len() <= MAX_COMPOUND_PARTS => make_compound(msgs),
        _ => compound(&compounds(msgs)),
    }
}

/// Splits messages into compounds of at most 255 messages each (util.go
/// `makeCompoundMessages`); each is meant to be sent as its own packet.
pub fn compounds(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    msgs.chunks(MAX_COMPOUND_PARTS).map(make_compound).collect()
}

/// `makeCompoundMessage`: type 7, u8 count, u16 BE lengths, then the bodies.
fn make_compound(msgs: &[Vec<u8>]) -> Vec<u8> {
    let total: usize = msgs.iter().map(|m| m.len() + 2).sum();
    let mut out = Vec::with_capacity(2 + total);
    out.push(MessageType::Compound.into());
    out.push(u8::try_from(msgs.len()).unwrap_or(u8::MAX));
    for m in msgs {
        let len = u16::try_from(m.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
    }
    for m in msgs {
        out.extend_from_slice(m);
    }
    out
}

/// `decodeCompoundMessage` (after the type byte): the complete parts, and how many parts were
/// cut off by the end of the buffer (memberlist keeps the complete ones and logs the rest).
fn split_compound(buf: &[u8]) -> Result<(Vec<&[u8]>, usize)> {
    let mut d = Dec::new(buf);
    let count = usize::from(d.u8()?);
    let lengths = d.take(count * 2)?;
    let mut parts = Vec::with_capacity(count);
    for (idx, len) in lengths.chunks_exact(2).enumerate() {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        match d.take(len) {
            Ok(part) => parts.push(part),
            Err(_) => return Ok((parts, count - idx)),
        }
    }
    Ok((parts, 0))
}

// ---------------------------------------------------------------------------------------------
// UDP packets (net.go rawSendMsgPacket / ingestPacket / handleCommand).
// ---------------------------------------------------------------------------------------------

/// Full outgoing UDP packet: label header (if label non-empty), CRC (if `crc`), encryption (if
/// keyring enabled).
///
/// memberlist adds the CRC only when the recipient's protocol max is >= 5 (`rawSendMsgPacket`:
/// `node.PMax >= 5`), so pass `crc = peer_pmax >= 5`. The CRC goes inside the encryption and
/// the label outside it; the label is the encryption's additional data. Encryption uses
/// version 1 (no padding), as memberlist does for every protocol version above 1.
pub fn seal_packet(
    payload: Vec<u8>,
    label: &[u8],
    crc: bool,
    keys: &Keyring,
) -> std::result::Result<Vec<u8>, WireError> {
    if label.len() > LABEL_MAX {
        return Err(WireError::LabelTooLong(label.len()));
    }
    let mut msg = if crc { add_crc(&payload) } else { payload };
    if keys.is_enabled() {
        msg = encrypt_payload(keys, &msg, label)?;
    }
    let mut out = Vec::with_capacity(2 + label.len() + msg.len());
    push_label_header(&mut out, label)?;
    out.extend_from_slice(&msg);
    if out.len() > MAX_PACKET_BYTES {
        return Err(WireError::TooLarge);
    }
    Ok(out)
}

/// `rawSendMsgPacket`: type 12, CRC32-IEEE (big-endian) of the payload, then the payload.
fn add_crc(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(MessageType::HasCrc.into());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `ingestPacket`: a CRC header is only recognised with at least 5 bytes; shorter buffers
/// fall through to message handling (where type 12 is not a message).
fn check_crc(buf: &[u8]) -> Result<&[u8]> {
    match buf {
        [t, c0, c1, c2, c3, rest @ ..] if MessageType::try_from(*t) == Ok(MessageType::HasCrc) => {
            if crc32fast::hash(rest) == u32::from_be_bytes([*c0, *c1, *c2, *c3]) {
                Ok(rest)
            } else {
                Err(WireError::Crc)
            }
        }
        _ => Ok(buf),
    }
}

/// Full incoming UDP packet → the messages it carries (unwrapping label, decryption, CRC,
/// compound, compress). With an enabled keyring, unencrypted packets are rejected (memberlist
/// GossipVerifyIncoming=true default).
///
/// Inside a compound, memberlist handles each part on its own (`handleCompound` →
/// `handleCommand`), so a part that fails to decode is skipped and the others are returned; an
/// error is returned only when nothing at all could be decoded. Limit errors (`TooLarge`,
/// `TooDeep`) always fail the whole packet.
pub fn open_packet(
    packet: &[u8],
    label: &[u8],
    keys: &Keyring,
) -> std::result::Result<Vec<Message>, WireError> {
    if packet.len() > MAX_PACKET_BYTES {
        return Err(WireError::TooLarge);
    }
    let buf = check_label(packet, label)?;
    let plain;
    let buf = if keys.is_enabled() {
        plain = decrypt_payload(keys, buf, label)?;
        &plain[..]
    } else {
        buf
    };
    let buf = check_crc(buf)?;
    let mut walk = PacketWalk {
        out: Vec::new(),
        inflate_budget: MAX_PACKET_DECOMPRESSED,
    };
    walk.command(buf, 0)?;
    Ok(walk.out)
}

/// State shared while unpacking one packet: the messages so far and how many more bytes
/// compressed parts may still inflate to.
struct PacketWalk {
    out: Vec<Message>,
    inflate_budget: usize,
}

impl PacketWalk {
    /// `handleCommand`: one message, a compound or a compressed payload.
    fn command(&mut self, buf: &[u8], depth: usize) -> Result<()> {
        if depth > MAX_NESTING {
            return Err(WireError::TooDeep);
        }
        let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
        match MessageType::try_from(t) {
            Ok(MessageType::Compound) => self.compound(body, depth),
            Ok(MessageType::Compress) => {
                let inner = decompress_payload(body, self.inflate_budget)?;
                self.inflate_budget = self.inflate_budget.saturating_sub(inner.len());
                self.command(&inner, depth + 1)
            }
            // errResp only travels on streams; handleCommand rejects it like push/pull.
            Ok(MessageType::Err) => Err(WireError::UnexpectedType(t)),
            _ => {
                let msg = decode_message(buf)?;
                if self.out.len() >= MAX_PACKET_MESSAGES {
                    return Err(WireError::TooLarge);
                }
                self.out.push(msg);
                Ok(())
            }
        }
    }

    /// `handleCompound`: every complete part is handled; truncated trailing parts are dropped.
    fn compound(&mut self, body: &[u8], depth: usize) -> Result<()> {
        let (parts, truncated) = split_compound(body)?;
        let before = self.out.len();
        let mut first_err = None;
        for part in parts {
            match self.command(part, depth + 1) {
                Ok(()) => {}
                Err(e @ (WireError::TooLarge | WireError::TooDeep)) => return Err(e),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.out.len() == before {
            if let Some(e) = first_err {
                return Err(e);
            }
            if truncated > 0 {
                return Err(WireError::Truncated);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::NackResp;
    use crate::cluster::wire::encode_message;
    use crate::cluster::wire::test_support::*;

    #[test]
    fn compound_of_three_matches_go() {
        let msgs = [
            encode_message(&Message::Ping(ping_a())),
            encode_message(&all_messages()[7]),
            encode_message(&Message::User(b"user".to_vec())),
        ];
        let c = compound(&msgs);
        // util.go makeCompoundMessage output from Go for the same three messages.
        let go = hex(
            "07030010001d00050082a44e6f6465a161a55365714e6f010383a446726f6da162ab496e6361726e6174696f6e02a44e6f6465a1610875736572",
        );
        assert_eq!(c, go);
        let got = open_packet(&c, b"", &Keyring::default()).expect("open");
        assert_eq!(
            got,
            vec![
                Message::Ping(ping_a()),
                all_messages()[7].clone(),
                Message::User(b"user".to_vec())
            ]
        );
        // A single message is not wrapped; none gives an empty compound.
        assert_eq!(compound(&msgs[..1]), msgs[0]);
        assert_eq!(compound(&[]), vec![7, 0]);
        assert_eq!(open_packet(&[7, 0], b"", &Keyring::default()), Ok(vec![]));
    }

    #[test]
    fn compound_truncation_and_bad_parts() {
        let msgs = [
            encode_message(&Message::Ping(ping_a())),
            encode_message(&Message::User(b"x".to_vec())),
        ];
        let c = compound(&msgs);
        // Cut into the last part: memberlist keeps the complete first part.
        let cut = &c[..c.len() - 1];
        assert_eq!(
            open_packet(cut, b"", &Keyring::default()),
            Ok(vec![Message::Ping(ping_a())])
        );
        // Nothing complete: an error.
        assert_eq!(
            open_packet(&c[..7], b"", &Keyring::default()),
            Err(WireError::Truncated)
        );
        // Length table cut short ("truncated len slice").
        assert_eq!(
            open_packet(&[7, 3, 0, 1], b"", &Keyring::default()),
            Err(WireError::Truncated)
        );
        // A garbage part is skipped, the good one kept.
        let mixed = compound(&[vec![99], msgs[1].clone()]);
        assert_eq!(
            open_packet(&mixed, b"", &Keyring::default()),
            Ok(vec![Message::User(b"x".to_vec())])
        );
        // Only garbage: the part's error.
        let bad = compound(&[vec![99], vec![98]]);
        assert_eq!(
            open_packet(&bad, b"", &Keyring::default()),
            Err(WireError::UnknownType(99))
        );
    }

    #[test]
    fn more_than_255_messages() {
        let msgs: Vec<Vec<u8>> = (0..600u32)
            .map(|i| encode_message(&Message::Nack(NackResp { seq_no: i })))
            .collect();
        let split = compounds(&msgs);
        assert_eq!(split.len(), 3);
        assert_eq!(split[0][1], 255);
        assert_eq!(split[2][1], 90);
        let nested = compound(&msgs);
        let got = open_packet(&nested, b"", &Keyring::default()).expect("nested");
        let want: Vec<Message> = (0..600)
            .map(|i| Message::Nack(NackResp { seq_no: i }))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut m = encode_message(&Message::Ping(ping_a()));
        for _ in 0..20 {
            m = make_compound(&[m]);
        }
        assert_eq!(
            open_packet(&m, b"", &Keyring::default()),
            Err(WireError::TooDeep)
        );
    }

    #[test]
    fn crc_good_and_bad() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let sealed = seal_packet(ping.clone(), b"", true, &Keyring::default()).expect("seal");
        // rawSendMsgPacket's layout, as Go produced it.
        assert_eq!(sealed, hex("0c8a4f3e580082a44e6f6465a161a55365714e6f01"));
        assert_eq!(
            open_packet(&sealed, b"", &Keyring::default()),
            Ok(vec![Message::Ping(ping_a())])
        );
        let mut bad = sealed.clone();
        *bad.last_mut().expect("non-empty") ^= 1;
        assert_eq!(
            open_packet(&bad, b"", &Keyring::default()),
            Err(WireError::Crc)
        );
        let mut bad_sum = sealed;
        bad_sum[1] ^= 0x80;
        assert_eq!(
            open_packet(&bad_sum, b"", &Keyring::default()),
            Err(WireError::Crc)
        );
        // CRC inside encryption still checked.
        let keys = keyring(&[KEY16]);
        let enc = seal_packet(ping, b"", true, &keys).expect("seal");
        assert_eq!(
            open_packet(&enc, b"", &keys),
            Ok(vec![Message::Ping(ping_a())])
        );
    }

    #[test]
    fn packet_size_limit() {
        let big = encode_message(&Message::User(vec![0; MAX_PACKET_BYTES]));
        assert_eq!(
            seal_packet(big, b"", false, &Keyring::default()),
            Err(WireError::TooLarge)
        );
        let huge = vec![8u8; MAX_PACKET_BYTES + 1];
        assert_eq!(
            open_packet(&huge, b"", &Keyring::default()),
            Err(WireError::TooLarge)
        );
    }
}
