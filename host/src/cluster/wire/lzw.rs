//! Compress messages: util.go's `compress{Algo, Buf}`, inflated as Go's compress/lzw wrote it.

use std::borrow::Cow;

use super::error::{Result, WireError};
use super::msgpack::Dec;

// ---------------------------------------------------------------------------------------------
// Compression (util.go compressPayload / decompressBuffer: msgpack `compress{Algo, Buf}` with
// Go's compress/lzw, LSB order, 8-bit literals).
// ---------------------------------------------------------------------------------------------

/// util.go `lzwAlgo`, the only compressionType.
const LZW_ALGO: u8 = 0;

/// Decodes a compress message body (after its type byte) and inflates it.
pub(super) fn decompress_payload(body: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut d = Dec::new(body);
    let (mut algo, mut buf) = (0u8, Cow::Borrowed(&[][..]));
    d.fields(&["Algo", "Buf"], |d, i| {
        match i {
            0 => algo = d.uint("Algo")?,
            _ => buf = d.raw("Buf")?,
        }
        Ok(())
    })?;
    if algo != LZW_ALGO {
        return Err(WireError::Unsupported("compression algorithm"));
    }
    lzw_decode(&buf, limit)
}

/// Steps without input or output after which [`lzw_decode`] gives up (weezl buffers at most a
/// few codes, so a handful is the most a valid stream needs).
const MAX_IDLE_STEPS: u32 = 64;

/// Inflates Go `compress/lzw` output (LSB order, literal width 8: the GIF flavour, which is
/// weezl's default as opposed to its TIFF size switch). Input that ends before the EOF code is
/// an error, as in util.go `decompressBuffer`; more than `limit` bytes is `TooLarge`.
///
/// weezl (image-rs, the `gif` crate's decoder) replaced a hand port of Go's `Reader.decode`:
/// it follows the same rules (code-width growth, a full table without a clear code, "KwKwK"),
/// decodes Go's vectors in the tests below, and gave the port's exact results, bytes or
/// error, on ~49 000 valid, truncated, mutated and random inputs.
fn lzw_decode(mut input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut decoder = weezl::decode::Decoder::new(weezl::BitOrder::Lsb, 8);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    // weezl may advance its state (a clear code from its bit buffer) without reading or
    // writing a byte; a few such steps in a row are normal, endless ones would be a bug.
    let mut idle_steps = 0;
    loop {
        // Never ask for more than one byte past the limit, so a bomb stops right there.
        let room = (limit.saturating_add(1) - out.len()).min(chunk.len());
        let step = decoder.decode_bytes(input, &mut chunk[..room]);
        input = input.get(step.consumed_in..).unwrap_or_default();
        out.extend_from_slice(chunk.get(..step.consumed_out).unwrap_or_default());
        if out.len() > limit {
            return Err(WireError::TooLarge);
        }
        idle_steps = if step.consumed_in + step.consumed_out == 0 {
            idle_steps + 1
        } else {
            0
        };
        match step.status {
            Ok(weezl::LzwStatus::Done) => return Ok(out),
            Ok(weezl::LzwStatus::Ok) if idle_steps < MAX_IDLE_STEPS => {}
            Ok(weezl::LzwStatus::Ok) => return Err(WireError::Decompress("decoder stalled")),
            Ok(weezl::LzwStatus::NoProgress) => {
                return Err(WireError::Decompress("unexpected end of data"));
            }
            Err(weezl::LzwError::InvalidCode) => {
                return Err(WireError::Decompress("invalid code"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::{Message, MessageType};
    use crate::cluster::wire::limits::{MAX_PACKET_BYTES, MAX_PACKET_DECOMPRESSED};
    use crate::cluster::wire::msgpack::Enc;
    use crate::cluster::wire::test_support::*;
    use crate::cluster::wire::{
        Keyring, compound, decode_push_pull, encode_message, encode_push_pull, open_packet,
        open_stream, seal_stream,
    };

    /// xorshift32 text over "abcdefgh", the same generator the Go side used.
    fn det_input(n: usize) -> Vec<u8> {
        let mut s: u32 = 0x9e37_79b9;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                b"abcdefgh"[(s % 8) as usize]
            })
            .collect()
    }

    #[test]
    fn lzw_matches_go() {
        // Go: lzw.NewWriter(LSB, 8) of "TOBEORNOTTOBEORTOBEORNOT".
        let small = hex("00a93c1152e48914274fa80824687061c183090302");
        assert_eq!(lzw_encode(b"TOBEORNOTTOBEORTOBEORNOT"), small);
        assert_eq!(
            lzw_decode(&small, 1 << 20),
            Ok(b"TOBEORNOTTOBEORTOBEORNOT".to_vec())
        );
        // 200 000 bytes: widths 9..12, table resets. Go's output was 90723 bytes, CRC 79c5eda1.
        let big = det_input(200_000);
        let z = lzw_encode(&big);
        assert_eq!(z.len(), 90_723);
        assert_eq!(crc32fast::hash(&z), 0x79c5_eda1);
        assert_eq!(lzw_decode(&z, 1 << 20).as_deref(), Ok(&big[..]));
        assert_eq!(lzw_decode(&z, 1000), Err(WireError::TooLarge));
        // Missing EOF code / invalid code.
        assert!(matches!(
            lzw_decode(&z[..z.len() / 2], 1 << 20),
            Err(WireError::Decompress(_))
        ));
        assert_eq!(
            lzw_decode(&[0xff, 0xff, 0xff], 1 << 20),
            Err(WireError::Decompress("invalid code"))
        );
        assert_eq!(lzw_decode(&lzw_encode(b""), 10), Ok(vec![]));
    }

    #[test]
    fn compressed_packets_and_streams() {
        // Go's compressPayload(makeCompoundMessage(ping, suspect, user)).
        let go = hex(concat!(
            "0982a4416c676f00a3427566da003f000f0c00000140070005000822e5e40d9932a1c2949a5226",
            "4ec3000306913222e74d9b506256257133268c1c3761e8a479e34600438710c320a833a78c9c80"
        ));
        let want = vec![
            Message::Ping(ping_a()),
            all_messages()[7].clone(),
            Message::User(b"user".to_vec()),
        ];
        assert_eq!(open_packet(&go, b"", &Keyring::default()), Ok(want.clone()));
        let compound_bytes = compound(&[
            encode_message(&want[0]),
            encode_message(&want[1]),
            encode_message(&want[2]),
        ]);
        assert_eq!(compress_message(&compound_bytes), go);
        // Compressed push/pull on an encrypted stream (rawSendMsgStream compresses, then
        // encrypts).
        let keys = keyring(&[KEY16]);
        let pp = sample_push_pull();
        let z = compress_message(&encode_push_pull(&pp));
        let s = seal_stream(z, b"", &keys).expect("seal");
        let inner = open_stream(&s, b"", &keys).expect("open");
        assert_eq!(decode_push_pull(&inner), Ok(pp));
        // Unknown algorithm.
        let mut e = Enc::new(u8::from(MessageType::Compress));
        e.map(1);
        e.key("Algo");
        e.uint(1);
        assert_eq!(
            open_packet(&e.out, b"", &Keyring::default()),
            Err(WireError::Unsupported("compression algorithm"))
        );
        // A packet that would inflate past the packet limit.
        let bomb = compress_message(&vec![b'a'; MAX_PACKET_DECOMPRESSED + 10]);
        assert!(bomb.len() < MAX_PACKET_BYTES);
        assert_eq!(
            open_packet(&bomb, b"", &Keyring::default()),
            Err(WireError::TooLarge)
        );
        // The limit is per packet, not per compressed part.
        let part = compress_message(&encode_message(&Message::User(vec![b'b'; 400_000])));
        let three = compound(&[part.clone(), part.clone(), part]);
        assert_eq!(
            open_packet(&three, b"", &Keyring::default()),
            Err(WireError::TooLarge)
        );
    }
}
