//! Byte-exact codec for HashiCorp memberlist's gossip wire format (protocol versions 2-5).
//!
//! Everything here is pure: bytes in, bytes or messages out, no I/O. The layering follows
//! memberlist exactly (file and function names below refer to github.com/hashicorp/memberlist):
//!
//! * UDP packet, outermost first: label header (`label.go` `AddLabelHeaderToPacket`, added by
//!   `transport.go` `labelWrappedTransport`), then AES-GCM encryption with the label as
//!   additional data (`net.go` `rawSendMsgPacket`, `security.go` `encryptPayload`), then an
//!   optional CRC header (`rawSendMsgPacket`: only when the peer speaks protocol >= 5), then a
//!   message, a compound of messages (`util.go` `makeCompoundMessage`) or an LZW-compressed
//!   message (`util.go` `compressPayload`).
//! * TCP stream: the dialer writes a label header once (`AddLabelHeaderToStream`), then each
//!   message is either plain (type byte + body) or an encrypted frame `[10][u32 BE len][payload]`
//!   whose additional data is the 5 frame-header bytes followed by the label
//!   (`net.go` `encryptLocalState` / `decryptRemoteState`). Replies carry no label header.
//! * Bodies are msgpack as go-codec's default `MsgpackHandle` writes them (`util.go` `encode`).
//!
//! One file per layer: `label.rs` (label header), `crypto.rs` (keyring, AES-GCM payloads),
//! `packet.rs` (CRC, compound, the UDP packet), `stream.rs` (TCP framing), `lzw.rs`
//! (compress messages), `codec.rs` and `push_pull.rs` (message bodies) over `msgpack.rs`
//! (go-codec's msgpack); `limits.rs` holds our caps on what a peer can make us allocate and
//! `error.rs` the one error type.

mod codec;
mod crypto;
mod error;
mod label;
mod limits;
mod lzw;
mod msgpack;
mod packet;
mod push_pull;
mod stream;
#[cfg(test)]
mod test_support;

pub use codec::{decode_message, encode_message};
pub use crypto::{Keyring, decode_key};
pub use error::WireError;
pub use packet::{compound, compounds, open_packet, seal_packet};
pub use push_pull::{decode_push_pull, decode_user_stream, encode_push_pull};
pub use stream::{open_stream, open_stream_reply, seal_stream, seal_stream_reply};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wire::test_support::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Random and mutated inputs must only ever produce errors or values, never panics.
    #[test]
    fn random_inputs_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let none = Keyring::default();
        let keys = keyring(&[KEY16]);
        let mut valid: Vec<Vec<u8>> = all_messages().iter().map(encode_message).collect();
        valid.push(encode_push_pull(&sample_push_pull()));
        valid.push(compound(&valid[..3]));
        valid.push(compress_message(&valid[valid.len() - 1]));
        for i in 0..10_000 {
            let input: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            } else {
                // Mutate a valid encoding so the fuzz gets past the first byte.
                let mut v = valid[rng.random_range(0..valid.len())].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..v.len());
                    v[at] = rng.random();
                }
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            let _ = open_packet(&input, b"", &none);
            let _ = open_packet(&input, b"lbl", &keys);
            let _ = decode_push_pull(&input);
            let _ = decode_message(&input);
            let _ = decode_user_stream(&input);
            let _ = open_stream(&input, b"", &none);
            let _ = open_stream(&input, b"", &keys);
            let _ = open_stream_reply(&input, b"lbl", &keys);
        }
    }
}
