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
//! The msgpack layer is written by hand over [`rmp::Marker`] rather than with `rmp::encode` /
//! `rmp-serde`: go-codec's default handle (`WriteExt == false`, go-msgpack v2.1.5 `msgpack.go`)
//! uses the *old* msgpack spec: strings and `[]byte` are both "raw" (fixstr / str16 / str32,
//! never str8 nor bin), nil slices are `nil`, Go `int` values above 127 use the *signed* int16/32/64
//! markers, and struct fields are written as a map sorted by field name (`encode.go` `kStruct`
//! uses `sfiSort`). rmp's helpers pick str8/bin8 and unsigned markers, which would not be
//! byte-identical.

use std::borrow::Cow;
use std::fmt;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use rand::RngCore;
use rmp::Marker;

use super::messages::{
    AckResp, Alive, Dead, ErrResp, IndirectPingReq, Message, MessageType, NackResp, NodeState,
    Ping, PushNodeState, PushPull, Suspect,
};

// ---------------------------------------------------------------------------------------------
// Limits. memberlist's own are in net.go (maxPushStateBytes, maxPushStateNodes, ...); ours are
// the gateway's caps on what a peer can make us allocate.
// ---------------------------------------------------------------------------------------------

/// Largest datagram we produce or accept (largest IPv4 UDP payload).
const MAX_PACKET_BYTES: usize = 65_507;
/// Most members accepted in one push/pull (memberlist allows 1Mi; we cap lower).
const MAX_PUSH_NODES: i64 = 100_000;
/// Largest delegate state accepted in one push/pull.
const MAX_USER_STATE: i64 = 64 * 1024 * 1024;
/// Largest stream user message (net.go `maxUserMsgBytes`).
const MAX_USER_MSG: i64 = 20 * 1024 * 1024;
/// Largest encrypted stream frame or decompressed stream message: user state plus an equal
/// budget for nodes, the same reasoning as net.go `maxDecompressedBytes`.
const MAX_STREAM_BYTES: usize = 2 * MAX_USER_STATE as usize;
/// Most bytes one UDP packet may inflate to, summed over all its compressed parts. memberlist
/// only compresses packets that were at most `UDPBufferSize` (1400 bytes by default) before
/// compression, so 1 MiB is generous and keeps a 64 KiB datagram from inflating into a large
/// allocation.
const MAX_PACKET_DECOMPRESSED: usize = 1024 * 1024;
/// Most messages one packet may yield (255 per compound, nesting allowed).
const MAX_PACKET_MESSAGES: usize = 65_536;
/// Deepest compound/compress nesting we follow (memberlist recurses without a limit, relying on
/// Go's growable stacks; ours are fixed).
const MAX_NESTING: usize = 8;
/// Most messages in one compound (its count is a u8; util.go `makeCompoundMessages`).
const MAX_COMPOUND_PARTS: usize = 255;
/// label.go `LabelMaxSize`.
const LABEL_MAX: usize = 255;

// security.go constants.
const ENC_VERSION_PADDED: u8 = 0;
const ENC_VERSION: u8 = 1;
const VERSION_SIZE: usize = 1;
const NONCE_SIZE: usize = 12;
const TAG_SIZE: usize = 16;
const BLOCK_SIZE: usize = 16;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The input ended early; on a stream, more bytes may complete it.
    #[error("message truncated")]
    Truncated,
    /// The type byte is not one memberlist defines.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A known type byte where it is not allowed (e.g. push/pull inside a UDP packet).
    #[error("message type {0} not allowed here")]
    UnexpectedType(u8),
    /// The msgpack body is malformed or has a value of the wrong type.
    #[error("msgpack: {0}")]
    Msgpack(String),
    /// The packet's CRC32 does not match its contents.
    #[error("checksum mismatch")]
    Crc,
    /// No key of the keyring could decrypt (or the packet was not encrypted at all).
    #[error("decryption failed")]
    Decrypt,
    /// A feature of the protocol this codec does not implement.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A length or count is above our limits.
    #[error("message too large")]
    TooLarge,
    /// A key is not 16, 24 or 32 bytes long.
    #[error("invalid key size {0} (want 16, 24 or 32)")]
    KeySize(usize),
    /// A label longer than 255 bytes cannot be sent.
    #[error("label of {0} bytes is longer than 255")]
    LabelTooLong(usize),
    /// A label header with an empty label (label.go rejects these).
    #[error("label header cannot be empty when present")]
    EmptyLabel,
    /// The packet or stream carries a different label than ours (or none when we have one).
    #[error("label mismatch")]
    LabelMismatch,
    /// Encryption is configured but the stream is not encrypted.
    #[error("encryption is configured but remote state is not encrypted")]
    NotEncrypted,
    /// The stream is encrypted but we have no keys.
    #[error("remote state is encrypted and encryption is not configured")]
    EncryptionNotConfigured,
    /// Bytes left over after an encrypted stream frame.
    #[error("trailing bytes after stream frame")]
    TrailingBytes,
    /// A message decoded to nothing where a type byte was required.
    #[error("empty message")]
    Empty,
    /// Compound/compress nesting deeper than we follow.
    #[error("messages nested too deeply")]
    TooDeep,
    /// The LZW stream is corrupt.
    #[error("decompress: {0}")]
    Decompress(&'static str),
    /// The peer answered a push/pull with an `errResp`.
    #[error("remote error: {0}")]
    Remote(String),
}

type Result<T> = std::result::Result<T, WireError>;

fn mp_err(field: &str, what: &str) -> WireError {
    WireError::Msgpack(format!("{field}: {what}"))
}

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

// ---------------------------------------------------------------------------------------------
// msgpack encoder: go-codec MsgpackHandle{} defaults (go-msgpack v2.1.5 codec/msgpack.go).
// ---------------------------------------------------------------------------------------------

struct Enc {
    out: Vec<u8>,
}

impl Enc {
    fn new(type_byte: u8) -> Self {
        Enc {
            out: vec![type_byte],
        }
    }

    fn marker(&mut self, m: Marker) {
        self.out.push(m.to_u8());
    }

    /// `writeContainerLen(msgpackContainerMap, n)`: fixmap below 16, then map16, map32.
    fn map(&mut self, n: usize) {
        if n < 16 {
            self.marker(Marker::FixMap(n as u8));
        } else if let Ok(n) = u16::try_from(n) {
            self.marker(Marker::Map16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.marker(Marker::Map32);
            self.out.extend_from_slice(&len_u32(n).to_be_bytes());
        }
    }

    /// `writeContainerLen(msgpackContainerRawLegacy, n)`: with `WriteExt == false` both Go
    /// strings and `[]byte` are old-spec raw: fixstr below 32, then str16, str32 (no str8).
    fn raw(&mut self, b: &[u8]) {
        if b.len() < 32 {
            self.marker(Marker::FixStr(b.len() as u8));
        } else if let Ok(n) = u16::try_from(b.len()) {
            self.marker(Marker::Str16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.marker(Marker::Str32);
            self.out.extend_from_slice(&len_u32(b.len()).to_be_bytes());
        }
        self.out.extend_from_slice(b);
    }

    /// A struct field name (`encStructFieldKey` → `EncodeStringEnc`, raw legacy).
    fn key(&mut self, k: &str) {
        self.raw(k.as_bytes());
    }

    /// A Go `[]byte`: `EncodeStringBytesRaw` writes nil for a nil slice. Rust cannot tell nil
    /// from empty, so empty is written as nil, which is what memberlist sends in practice
    /// (`ackResp{seq, nil}`, `Meta` without a delegate).
    fn bytes(&mut self, b: &[u8]) {
        if b.is_empty() {
            self.marker(Marker::Null);
        } else {
            self.raw(b);
        }
    }

    /// `EncodeUint`: positive fixint up to 127, then uint8/16/32/64.
    fn uint(&mut self, v: u64) {
        if v <= 127 {
            self.marker(Marker::FixPos(v as u8));
        } else if let Ok(v) = u8::try_from(v) {
            self.marker(Marker::U8);
            self.out.push(v);
        } else if let Ok(v) = u16::try_from(v) {
            self.marker(Marker::U16);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = u32::try_from(v) {
            self.marker(Marker::U32);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else {
            self.marker(Marker::U64);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// `EncodeInt` (PositiveIntUnsigned=false): 0..=127 fixint, larger positives use the
    /// *signed* int16/int32/int64 markers (never int8), negatives fixneg/int8/16/32/64.
    fn int(&mut self, v: i64) {
        if (-32..=127).contains(&v) {
            // Positive and negative fixint share the one-byte two's-complement form.
            self.out.push(v as i8 as u8);
        } else if let Ok(v) = i8::try_from(v) {
            // Only -128..=-33 get here: positives past 127 never fit int8.
            self.marker(Marker::I8);
            self.out.push(v as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.marker(Marker::I16);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.marker(Marker::I32);
            self.out.extend_from_slice(&v.to_be_bytes());
        } else {
            self.marker(Marker::I64);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn bool(&mut self, b: bool) {
        self.marker(if b { Marker::True } else { Marker::False });
    }
}

/// Lengths we encode come from our own buffers, which never approach 4 GiB (packets are
/// capped at 64 KiB, streams at [`MAX_STREAM_BYTES`]); saturate rather than wrap just in case.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// msgpack decoder: accepts what go-codec's decoder accepts (msgpack.go `DecodeBytes`,
// `DecodeUint64`, `DecodeInt64`, `DecodeBool`; decode.go `kStruct`).
// ---------------------------------------------------------------------------------------------

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(WireError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn be16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn be32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn be64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn marker(&mut self) -> Result<Marker> {
        Ok(Marker::from_u8(self.u8()?))
    }

    /// Any integer marker as i128 (wide enough for both u64 and i64); `nil` reads as 0, since
    /// go-codec sets a field to its zero value on nil.
    fn integer(&mut self, field: &str) -> Result<i128> {
        Ok(match self.marker()? {
            Marker::Null => 0,
            Marker::FixPos(v) => v.into(),
            Marker::FixNeg(v) => v.into(),
            Marker::U8 => self.u8()?.into(),
            Marker::U16 => self.be16()?.into(),
            Marker::U32 => self.be32()?.into(),
            Marker::U64 => self.be64()?.into(),
            Marker::I8 => (self.u8()? as i8).into(),
            Marker::I16 => (self.be16()? as i16).into(),
            Marker::I32 => (self.be32()? as i32).into(),
            Marker::I64 => (self.be64()? as i64).into(),
            m => return Err(mp_err(field, &format!("expected integer, got {m:?}"))),
        })
    }

    fn uint<T: TryFrom<i128>>(&mut self, field: &str) -> Result<T> {
        let v = self.integer(field)?;
        T::try_from(v).map_err(|_| mp_err(field, &format!("value {v} out of range")))
    }

    /// A Go `int` (push/pull header counts).
    fn int(&mut self, field: &str) -> Result<i64> {
        self.uint(field)
    }

    /// `DecodeBool`: true/false, or fixint 0/1.
    fn bool(&mut self, field: &str) -> Result<bool> {
        match self.marker()? {
            Marker::Null | Marker::False | Marker::FixPos(0) => Ok(false),
            Marker::True | Marker::FixPos(1) => Ok(true),
            m => Err(mp_err(field, &format!("expected bool, got {m:?}"))),
        }
    }

    /// `DecodeBytes`: raw str (any of fixstr/str8/16/32, no UTF-8 check), bin8/16/32, an array
    /// of small integers, or nil (empty).
    fn raw(&mut self, field: &str) -> Result<Cow<'a, [u8]>> {
        let len = match self.marker()? {
            Marker::Null => return Ok(Cow::Borrowed(&[])),
            Marker::FixStr(n) => n.into(),
            Marker::Str8 | Marker::Bin8 => self.u8()?.into(),
            Marker::Str16 | Marker::Bin16 => self.be16()?.into(),
            Marker::Str32 | Marker::Bin32 => self.be32()?,
            Marker::FixArray(n) => return self.byte_array(n.into(), field).map(Cow::Owned),
            Marker::Array16 => {
                let n = self.be16()?.into();
                return self.byte_array(n, field).map(Cow::Owned);
            }
            Marker::Array32 => {
                let n = self.be32()?;
                return self.byte_array(n, field).map(Cow::Owned);
            }
            m => return Err(mp_err(field, &format!("expected bytes, got {m:?}"))),
        };
        let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
        self.take(len).map(Cow::Borrowed)
    }

    /// go-codec also decodes `[]byte` from an array of uint8 (`DecSliceUint8V`).
    fn byte_array(&mut self, n: u32, field: &str) -> Result<Vec<u8>> {
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        // Each element takes at least one byte, so never reserve more than what is left.
        let mut v = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            v.push(self.uint::<u8>(field)?);
        }
        Ok(v)
    }

    fn bytes(&mut self, field: &str) -> Result<Vec<u8>> {
        self.raw(field).map(Cow::into_owned)
    }

    /// A Go string. Go strings may hold any bytes; Rust's must be UTF-8, so invalid names are
    /// rejected rather than silently altered (a lossy rewrite could make two members collide).
    fn string(&mut self, field: &str) -> Result<String> {
        let raw = self.bytes(field)?;
        String::from_utf8(raw).map_err(|_| mp_err(field, "invalid UTF-8"))
    }

    /// Skips one value of any type (unknown struct fields; decode.go `structFieldNotFound`).
    /// Iterative, so deeply nested garbage cannot overflow the stack.
    fn skip(&mut self) -> Result<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let extra: u64 = match self.marker()? {
                Marker::FixArray(n) => n.into(),
                Marker::Array16 => self.be16()?.into(),
                Marker::Array32 => self.be32()?.into(),
                Marker::FixMap(n) => u64::from(n) * 2,
                Marker::Map16 => u64::from(self.be16()?) * 2,
                Marker::Map32 => u64::from(self.be32()?) * 2,
                m => {
                    let n = self.scalar_len(m)?;
                    self.take(n)?;
                    0
                }
            };
            pending += extra;
            // Every pending value needs at least one more byte.
            if pending > self.remaining() as u64 {
                return Err(WireError::Truncated);
            }
        }
        Ok(())
    }

    /// How many bytes follow a non-container marker.
    fn scalar_len(&mut self, m: Marker) -> Result<usize> {
        let n: u64 = match m {
            Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => n.into(),
            Marker::Str8 | Marker::Bin8 => self.u8()?.into(),
            Marker::Str16 | Marker::Bin16 => self.be16()?.into(),
            Marker::Str32 | Marker::Bin32 => self.be32()?.into(),
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            Marker::Ext8 => u64::from(self.u8()?) + 1,
            Marker::Ext16 => u64::from(self.be16()?) + 1,
            Marker::Ext32 => u64::from(self.be32()?) + 1,
            m => return Err(mp_err("value", &format!("invalid marker {m:?}"))),
        };
        usize::try_from(n).map_err(|_| WireError::Truncated)
    }

    /// Decodes a Go struct (decode.go `kStruct`): a map keyed by field name (any order,
    /// unknown keys skipped), an array in Go declaration order (`names` must be in that
    /// order), or nil (all zero values). `visit` reads the value of field `names[i]`.
    fn fields(
        &mut self,
        names: &[&str],
        mut visit: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        let (is_map, n) = match self.marker()? {
            Marker::Null => return Ok(()),
            Marker::FixMap(n) => (true, n.into()),
            Marker::Map16 => (true, self.be16()?.into()),
            Marker::Map32 => (true, self.be32()?),
            Marker::FixArray(n) => (false, n.into()),
            Marker::Array16 => (false, self.be16()?.into()),
            Marker::Array32 => (false, self.be32()?),
            m => return Err(mp_err("struct", &format!("expected map, got {m:?}"))),
        };
        for i in 0..n as usize {
            let idx = if is_map {
                let key = self.raw("field name")?;
                names.iter().position(|f| f.as_bytes() == key.as_ref())
            } else {
                (i < names.len()).then_some(i)
            };
            match idx {
                Some(idx) => visit(self, idx)?,
                None => self.skip()?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Message bodies (net.go structs). Encoders write fields sorted by name, as go-codec does for
// map-encoded structs; decoders list fields in Go declaration order for the array form.
// ---------------------------------------------------------------------------------------------

/// Encodes one message body with its type byte (no compound/crc/encryption).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Ping(p) => encode_ping(p),
        Message::IndirectPing(p) => encode_indirect(p),
        Message::Ack(a) => encode_ack(a),
        Message::Nack(n) => encode_nack(n),
        Message::Err(e) => encode_err(e),
        Message::Suspect(s) => encode_suspect(s),
        Message::Alive(a) => encode_alive(a),
        Message::Dead(d) => encode_dead(d),
        Message::User(u) => {
            // net.go `SendBestEffort`: the type byte followed by the raw user bytes.
            let mut out = Vec::with_capacity(1 + u.len());
            out.push(MessageType::User as u8);
            out.extend_from_slice(u);
            out
        }
    }
}

/// Appends the `codec:",omitempty"` source fields of ping/indirectPingReq, in sorted order
/// (SourceAddr < SourceNode < SourcePort), skipping empty ones.
fn encode_source(e: &mut Enc, addr: &[u8], port: u16, node: &str) {
    if !addr.is_empty() {
        e.key("SourceAddr");
        e.raw(addr);
    }
    if !node.is_empty() {
        e.key("SourceNode");
        e.raw(node.as_bytes());
    }
    if port != 0 {
        e.key("SourcePort");
        e.uint(port.into());
    }
}

fn source_count(addr: &[u8], port: u16, node: &str) -> usize {
    usize::from(!addr.is_empty()) + usize::from(port != 0) + usize::from(!node.is_empty())
}

fn encode_ping(p: &Ping) -> Vec<u8> {
    let mut e = Enc::new(MessageType::Ping as u8);
    e.map(2 + source_count(&p.source_addr, p.source_port, &p.source_node));
    e.key("Node");
    e.raw(p.node.as_bytes());
    e.key("SeqNo");
    e.uint(p.seq_no.into());
    encode_source(&mut e, &p.source_addr, p.source_port, &p.source_node);
    e.out
}

fn encode_indirect(p: &IndirectPingReq) -> Vec<u8> {
    let mut e = Enc::new(MessageType::IndirectPing as u8);
    e.map(5 + source_count(&p.source_addr, p.source_port, &p.source_node));
    e.key("Nack");
    e.bool(p.nack);
    e.key("Node");
    e.raw(p.node.as_bytes());
    e.key("Port");
    e.uint(p.port.into());
    e.key("SeqNo");
    e.uint(p.seq_no.into());
    encode_source(&mut e, &p.source_addr, p.source_port, &p.source_node);
    e.key("Target");
    e.bytes(&p.target);
    e.out
}

fn encode_ack(a: &AckResp) -> Vec<u8> {
    let mut e = Enc::new(MessageType::AckResp as u8);
    e.map(2);
    e.key("Payload");
    e.bytes(&a.payload);
    e.key("SeqNo");
    e.uint(a.seq_no.into());
    e.out
}

fn encode_nack(n: &NackResp) -> Vec<u8> {
    let mut e = Enc::new(MessageType::NackResp as u8);
    e.map(1);
    e.key("SeqNo");
    e.uint(n.seq_no.into());
    e.out
}

fn encode_err(r: &ErrResp) -> Vec<u8> {
    let mut e = Enc::new(MessageType::Err as u8);
    e.map(1);
    e.key("Error");
    e.raw(r.error.as_bytes());
    e.out
}

/// suspect and dead share a layout: From, Incarnation, Node.
fn encode_accusation(t: MessageType, incarnation: u32, node: &str, from: &str) -> Vec<u8> {
    let mut e = Enc::new(t as u8);
    e.map(3);
    e.key("From");
    e.raw(from.as_bytes());
    e.key("Incarnation");
    e.uint(incarnation.into());
    e.key("Node");
    e.raw(node.as_bytes());
    e.out
}

fn encode_suspect(s: &Suspect) -> Vec<u8> {
    encode_accusation(MessageType::Suspect, s.incarnation, &s.node, &s.from)
}

fn encode_dead(d: &Dead) -> Vec<u8> {
    encode_accusation(MessageType::Dead, d.incarnation, &d.node, &d.from)
}

fn encode_alive(a: &Alive) -> Vec<u8> {
    let mut e = Enc::new(MessageType::Alive as u8);
    e.map(6);
    e.key("Addr");
    e.bytes(&a.addr);
    e.key("Incarnation");
    e.uint(a.incarnation.into());
    e.key("Meta");
    e.bytes(&a.meta);
    e.key("Node");
    e.raw(a.node.as_bytes());
    e.key("Port");
    e.uint(a.port.into());
    e.key("Vsn");
    e.bytes(&a.vsn);
    e.out
}

/// Decodes one message body starting with its type byte.
///
/// Bytes after the msgpack body are ignored, as go-codec's `Decode` ignores them.
pub fn decode_message(buf: &[u8]) -> std::result::Result<Message, WireError> {
    let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
    let mut d = Dec::new(body);
    let d = &mut d;
    Ok(match t {
        x if x == MessageType::Ping as u8 => Message::Ping(decode_ping(d)?),
        x if x == MessageType::IndirectPing as u8 => Message::IndirectPing(decode_indirect(d)?),
        x if x == MessageType::AckResp as u8 => Message::Ack(decode_ack(d)?),
        x if x == MessageType::NackResp as u8 => Message::Nack(decode_nack(d)?),
        x if x == MessageType::Err as u8 => Message::Err(decode_err(d)?),
        x if x == MessageType::Suspect as u8 => Message::Suspect(decode_suspect(d)?),
        x if x == MessageType::Alive as u8 => Message::Alive(decode_alive(d)?),
        x if x == MessageType::Dead as u8 => Message::Dead(decode_dead(d)?),
        x if x == MessageType::User as u8 => Message::User(body.to_vec()),
        x if is_known_type(x) => return Err(WireError::UnexpectedType(x)),
        x => return Err(WireError::UnknownType(x)),
    })
}

/// net.go's messageType list plus `hasLabelMsg`.
fn is_known_type(t: u8) -> bool {
    t <= MessageType::Err as u8 || t == MessageType::HasLabel as u8
}

fn decode_ping(d: &mut Dec<'_>) -> Result<Ping> {
    const FIELDS: &[&str] = &["SeqNo", "Node", "SourceAddr", "SourcePort", "SourceNode"];
    let mut p = Ping::default();
    d.fields(FIELDS, |d, i| {
        match i {
            0 => p.seq_no = d.uint("SeqNo")?,
            1 => p.node = d.string("Node")?,
            2 => p.source_addr = d.bytes("SourceAddr")?,
            3 => p.source_port = d.uint("SourcePort")?,
            _ => p.source_node = d.string("SourceNode")?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn decode_indirect(d: &mut Dec<'_>) -> Result<IndirectPingReq> {
    const FIELDS: &[&str] = &[
        "SeqNo",
        "Target",
        "Port",
        "Node",
        "Nack",
        "SourceAddr",
        "SourcePort",
        "SourceNode",
    ];
    let mut p = IndirectPingReq::default();
    d.fields(FIELDS, |d, i| {
        match i {
            0 => p.seq_no = d.uint("SeqNo")?,
            1 => p.target = d.bytes("Target")?,
            2 => p.port = d.uint("Port")?,
            3 => p.node = d.string("Node")?,
            4 => p.nack = d.bool("Nack")?,
            5 => p.source_addr = d.bytes("SourceAddr")?,
            6 => p.source_port = d.uint("SourcePort")?,
            _ => p.source_node = d.string("SourceNode")?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn decode_ack(d: &mut Dec<'_>) -> Result<AckResp> {
    let mut a = AckResp::default();
    d.fields(&["SeqNo", "Payload"], |d, i| {
        match i {
            0 => a.seq_no = d.uint("SeqNo")?,
            _ => a.payload = d.bytes("Payload")?,
        }
        Ok(())
    })?;
    Ok(a)
}

fn decode_nack(d: &mut Dec<'_>) -> Result<NackResp> {
    let mut n = NackResp::default();
    d.fields(&["SeqNo"], |d, _| {
        n.seq_no = d.uint("SeqNo")?;
        Ok(())
    })?;
    Ok(n)
}

fn decode_err(d: &mut Dec<'_>) -> Result<ErrResp> {
    let mut r = ErrResp::default();
    d.fields(&["Error"], |d, _| {
        // Only a diagnostic: keep what we can of a non-UTF-8 error text.
        r.error = String::from_utf8_lossy(&d.raw("Error")?).into_owned();
        Ok(())
    })?;
    Ok(r)
}

/// suspect and dead: (Incarnation, Node, From).
fn decode_accusation(d: &mut Dec<'_>) -> Result<(u32, String, String)> {
    let (mut inc, mut node, mut from) = (0, String::new(), String::new());
    d.fields(&["Incarnation", "Node", "From"], |d, i| {
        match i {
            0 => inc = d.uint("Incarnation")?,
            1 => node = d.string("Node")?,
            _ => from = d.string("From")?,
        }
        Ok(())
    })?;
    Ok((inc, node, from))
}

fn decode_suspect(d: &mut Dec<'_>) -> Result<Suspect> {
    let (incarnation, node, from) = decode_accusation(d)?;
    Ok(Suspect {
        incarnation,
        node,
        from,
    })
}

fn decode_dead(d: &mut Dec<'_>) -> Result<Dead> {
    let (incarnation, node, from) = decode_accusation(d)?;
    Ok(Dead {
        incarnation,
        node,
        from,
    })
}

fn decode_alive(d: &mut Dec<'_>) -> Result<Alive> {
    const FIELDS: &[&str] = &["Incarnation", "Node", "Addr", "Port", "Meta", "Vsn"];
    let mut a = Alive::default();
    d.fields(FIELDS, |d, i| {
        match i {
            0 => a.incarnation = d.uint("Incarnation")?,
            1 => a.node = d.string("Node")?,
            2 => a.addr = d.bytes("Addr")?,
            3 => a.port = d.uint("Port")?,
            4 => a.meta = d.bytes("Meta")?,
            _ => a.vsn = d.bytes("Vsn")?,
        }
        Ok(())
    })?;
    Ok(a)
}

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
    out.push(MessageType::Compound as u8);
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
// Label header (label.go).
// ---------------------------------------------------------------------------------------------

/// `makeLabelHeader`: 244, u8 length, label bytes (nothing for an empty label).
fn push_label_header(out: &mut Vec<u8>, label: &[u8]) -> Result<()> {
    if label.is_empty() {
        return Ok(());
    }
    let len = u8::try_from(label.len()).map_err(|_| WireError::LabelTooLong(label.len()))?;
    out.push(MessageType::HasLabel as u8);
    out.push(len);
    out.extend_from_slice(label);
    Ok(())
}

/// `RemoveLabelHeaderFromPacket` / `...FromStream`: (label, rest); no header = empty label.
fn strip_label(buf: &[u8]) -> Result<(&[u8], &[u8])> {
    if buf.first() != Some(&(MessageType::HasLabel as u8)) {
        return Ok((&[], buf));
    }
    let mut d = Dec::new(&buf[1..]);
    let size = usize::from(d.u8()?);
    if size == 0 {
        return Err(WireError::EmptyLabel);
    }
    let label = d.take(size)?;
    Ok((label, d.rest()))
}

/// memberlist drops packets and streams whose label differs from its own
/// (net.go `ingestPacket`, `handleConn`); an absent header counts as the empty label.
fn check_label<'a>(buf: &'a [u8], expected: &[u8]) -> Result<&'a [u8]> {
    let (label, rest) = strip_label(buf)?;
    if label != expected {
        return Err(WireError::LabelMismatch);
    }
    Ok(rest)
}

// ---------------------------------------------------------------------------------------------
// Encryption (security.go).
// ---------------------------------------------------------------------------------------------

/// security.go `encryptedLength`.
fn encrypted_len(vsn: u8, plain: usize) -> usize {
    let padding = if vsn >= ENC_VERSION {
        0
    } else {
        BLOCK_SIZE - plain % BLOCK_SIZE
    };
    VERSION_SIZE + NONCE_SIZE + plain + padding + TAG_SIZE
}

/// security.go `encryptPayload` with version 1 (what memberlist uses for protocol >= 2):
/// version byte, random 12-byte nonce, ciphertext and 16-byte tag, under the primary key.
fn encrypt_payload(keys: &Keyring, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
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
fn decrypt_payload(keys: &Keyring, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
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

// ---------------------------------------------------------------------------------------------
// Compression (util.go compressPayload / decompressBuffer: msgpack `compress{Algo, Buf}` with
// Go's compress/lzw, LSB order, 8-bit literals).
// ---------------------------------------------------------------------------------------------

/// util.go `lzwAlgo`, the only compressionType.
const LZW_ALGO: u8 = 0;

/// Decodes a compress message body (after its type byte) and inflates it.
fn decompress_payload(body: &[u8], limit: usize) -> Result<Vec<u8>> {
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

/// Go compress/lzw constants for litWidth 8.
const LZW_CLEAR: u16 = 256;
const LZW_EOF: u16 = 257;
const LZW_MAX_WIDTH: u32 = 12;
const LZW_INVALID: u16 = 0xffff;

/// A port of Go's `compress/lzw` `Reader.decode` (LSB, litWidth 8), including its code-width
/// growth, table-full and "KwKwK" rules, so it accepts exactly what Go's writer produces.
/// Input that ends before the EOF code is an error, as in util.go `decompressBuffer`.
fn lzw_decode(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut suffix = [0u8; 1 << LZW_MAX_WIDTH];
    let mut prefix = [0u16; 1 << LZW_MAX_WIDTH];
    let (mut width, mut hi, mut overflow, mut last) = (9u32, LZW_EOF, 512u16, LZW_INVALID);
    let mut bits = LzwBits::new(input);
    let mut out = Vec::new();
    let mut chain = Vec::with_capacity(1 << LZW_MAX_WIDTH);
    loop {
        let code = bits
            .read(width)
            .ok_or(WireError::Decompress("unexpected end of data"))?;
        if code == LZW_CLEAR {
            (width, hi, overflow, last) = (9, LZW_EOF, 512, LZW_INVALID);
            continue;
        }
        if code == LZW_EOF {
            return Ok(out);
        }
        if code > hi {
            return Err(WireError::Decompress("invalid code"));
        }
        // Expand `code` into `chain` (reversed); literals expand to themselves.
        chain.clear();
        let mut c = code;
        if code == hi && last != LZW_INVALID {
            // KwKwK: the last expansion followed by its own first byte.
            chain.push(first_byte(&prefix, last));
            c = last;
        }
        while c >= LZW_CLEAR {
            chain.push(suffix[usize::from(c)]);
            c = prefix[usize::from(c)];
        }
        chain.push(c as u8);
        out.extend(chain.iter().rev());
        if out.len() > limit {
            return Err(WireError::TooLarge);
        }
        if last != LZW_INVALID {
            suffix[usize::from(hi)] = c as u8;
            prefix[usize::from(hi)] = last;
        }
        last = code;
        hi += 1;
        if hi >= overflow {
            if width == LZW_MAX_WIDTH {
                // Table full: stop adding entries until the next clear code.
                last = LZW_INVALID;
                hi -= 1;
            } else {
                width += 1;
                overflow = 1 << width;
            }
        }
    }
}

/// The first byte of a table entry's expansion. Every stored prefix is smaller than its entry's
/// index (it was an earlier code), so this walk always ends.
fn first_byte(prefix: &[u16; 1 << LZW_MAX_WIDTH], mut c: u16) -> u8 {
    while c >= LZW_CLEAR {
        c = prefix[usize::from(c)];
    }
    c as u8
}

/// LSB-first variable-width code reader (Go `Reader.readLSB`).
struct LzwBits<'a> {
    input: &'a [u8],
    pos: usize,
    bits: u32,
    n_bits: u32,
}

impl<'a> LzwBits<'a> {
    fn new(input: &'a [u8]) -> Self {
        LzwBits {
            input,
            pos: 0,
            bits: 0,
            n_bits: 0,
        }
    }

    fn read(&mut self, width: u32) -> Option<u16> {
        while self.n_bits < width {
            let x = *self.input.get(self.pos)?;
            self.pos += 1;
            self.bits |= u32::from(x) << self.n_bits;
            self.n_bits += 8;
        }
        let code = (self.bits & ((1 << width) - 1)) as u16;
        self.bits >>= width;
        self.n_bits -= width;
        Some(code)
    }
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
    out.push(MessageType::HasCrc as u8);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `ingestPacket`: a CRC header is only recognised with at least 5 bytes; shorter buffers
/// fall through to message handling (where type 12 is not a message).
fn check_crc(buf: &[u8]) -> Result<&[u8]> {
    match buf {
        [t, c0, c1, c2, c3, rest @ ..] if *t == MessageType::HasCrc as u8 => {
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
        match t {
            x if x == MessageType::Compound as u8 => self.compound(body, depth),
            x if x == MessageType::Compress as u8 => {
                let inner = decompress_payload(body, self.inflate_budget)?;
                self.inflate_budget = self.inflate_budget.saturating_sub(inner.len());
                self.command(&inner, depth + 1)
            }
            // errResp only travels on streams; handleCommand rejects it like push/pull.
            x if x == MessageType::Err as u8 => Err(WireError::UnexpectedType(x)),
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
    out.push(MessageType::Encrypt as u8);
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
    let inner = if first == MessageType::Encrypt as u8 {
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
    if t != MessageType::Compress as u8 {
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

/// Encodes a stream user message (net.go `sendUserMsg`): type 8, `userMsgHeader{UserMsgLen}`,
/// then the bytes. Packets carry user messages as `Message::User` instead.
pub fn encode_user_stream(msg: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(MessageType::User as u8);
    e.map(1);
    e.key("UserMsgLen");
    e.int(i64::try_from(msg.len()).unwrap_or(i64::MAX));
    e.out.extend_from_slice(msg);
    e.out
}

/// Decodes a stream user message (net.go `readUserMsg`), type byte first.
pub fn decode_user_stream(buf: &[u8]) -> std::result::Result<Vec<u8>, WireError> {
    let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
    if t != MessageType::User as u8 {
        return Err(type_error(t, body));
    }
    let mut d = Dec::new(body);
    let mut len = 0i64;
    d.fields(&["UserMsgLen"], |d, _| {
        len = d.int("UserMsgLen")?;
        Ok(())
    })?;
    let len = checked_len(len, MAX_USER_MSG)?;
    Ok(d.take(len)?.to_vec())
}

/// The error for an unexpected stream message: a remote `errResp` is surfaced as its text.
fn type_error(t: u8, body: &[u8]) -> WireError {
    if t != MessageType::Err as u8 {
        return if is_known_type(t) {
            WireError::UnexpectedType(t)
        } else {
            WireError::UnknownType(t)
        };
    }
    match decode_err(&mut Dec::new(body)) {
        Ok(e) => WireError::Remote(e.error),
        Err(e) => e,
    }
}

/// A Go `int` length from a header: negative or above `max` is refused (net.go checks both).
fn checked_len(v: i64, max: i64) -> Result<usize> {
    if !(0..=max).contains(&v) {
        return Err(WireError::TooLarge);
    }
    usize::try_from(v).map_err(|_| WireError::TooLarge)
}

// ---------------------------------------------------------------------------------------------
// Push/pull (net.go sendLocalState / readRemoteState).
// ---------------------------------------------------------------------------------------------

/// Push/pull encoding for a TCP stream (type byte included), and decoding.
///
/// Layout (`sendLocalState`): type 6, `pushPullHeader{Nodes, UserStateLen, Join}`, one
/// `pushNodeState` map per node, then the user state bytes.
pub fn encode_push_pull(pp: &PushPull) -> Vec<u8> {
    let mut e = Enc::new(MessageType::PushPull as u8);
    // Header fields sorted: Join < Nodes < UserStateLen. Go `int`s use EncodeInt.
    e.map(3);
    e.key("Join");
    e.bool(pp.join);
    e.key("Nodes");
    e.int(i64::try_from(pp.nodes.len()).unwrap_or(i64::MAX));
    e.key("UserStateLen");
    e.int(i64::try_from(pp.user_state.len()).unwrap_or(i64::MAX));
    for n in &pp.nodes {
        encode_node(&mut e, n);
    }
    e.out.extend_from_slice(&pp.user_state);
    e.out
}

/// One `pushNodeState`, fields sorted: Addr, Incarnation, Meta, Name, Port, State, Vsn.
fn encode_node(e: &mut Enc, n: &PushNodeState) {
    e.map(7);
    e.key("Addr");
    e.bytes(&n.addr);
    e.key("Incarnation");
    e.uint(n.incarnation.into());
    e.key("Meta");
    e.bytes(&n.meta);
    e.key("Name");
    e.raw(n.name.as_bytes());
    e.key("Port");
    e.uint(n.port.into());
    e.key("State");
    // NodeStateType is a Go int.
    e.int(n.state as i64);
    e.key("Vsn");
    e.bytes(&n.vsn);
}

/// Decodes a push/pull message, type byte first (as returned by [`open_stream`]).
///
/// An `errResp` in its place (net.go `sendAndReceiveState`) becomes [`WireError::Remote`].
/// More than 100 000 nodes or more than 64 MiB of user state is refused. Bytes after the user
/// state are ignored, as `readRemoteState` reads exactly `UserStateLen` bytes.
pub fn decode_push_pull(buf: &[u8]) -> std::result::Result<PushPull, WireError> {
    let (&t, body) = buf.split_first().ok_or(WireError::Truncated)?;
    if t != MessageType::PushPull as u8 {
        return Err(type_error(t, body));
    }
    let mut d = Dec::new(body);
    let (count, user_len, join) = decode_push_pull_header(&mut d)?;
    // Each node takes at least one byte: never reserve more than the buffer could hold.
    let mut nodes = Vec::with_capacity(count.min(d.remaining()));
    for _ in 0..count {
        nodes.push(decode_node(&mut d)?);
    }
    let user_state = d.take(user_len)?.to_vec();
    Ok(PushPull {
        join,
        nodes,
        user_state,
    })
}

/// `pushPullHeader` with memberlist's sanity checks on both counts.
fn decode_push_pull_header(d: &mut Dec<'_>) -> Result<(usize, usize, bool)> {
    let (mut nodes, mut user_len, mut join) = (0i64, 0i64, false);
    d.fields(&["Nodes", "UserStateLen", "Join"], |d, i| {
        match i {
            0 => nodes = d.int("Nodes")?,
            1 => user_len = d.int("UserStateLen")?,
            _ => join = d.bool("Join")?,
        }
        Ok(())
    })?;
    Ok((
        checked_len(nodes, MAX_PUSH_NODES)?,
        checked_len(user_len, MAX_USER_STATE)?,
        join,
    ))
}

fn decode_node(d: &mut Dec<'_>) -> Result<PushNodeState> {
    const FIELDS: &[&str] = &[
        "Name",
        "Addr",
        "Port",
        "Meta",
        "Incarnation",
        "State",
        "Vsn",
    ];
    let mut n = PushNodeState {
        name: String::new(),
        addr: Vec::new(),
        port: 0,
        meta: Vec::new(),
        incarnation: 0,
        // Go's zero value for NodeStateType is StateAlive.
        state: NodeState::Alive,
        vsn: Vec::new(),
    };
    d.fields(FIELDS, |d, i| {
        match i {
            0 => n.name = d.string("Name")?,
            1 => n.addr = d.bytes("Addr")?,
            2 => n.port = d.uint("Port")?,
            3 => n.meta = d.bytes("Meta")?,
            4 => n.incarnation = d.uint("Incarnation")?,
            5 => n.state = node_state(d.int("State")?)?,
            _ => n.vsn = d.bytes("Vsn")?,
        }
        Ok(())
    })?;
    Ok(n)
}

/// state.go's four states; memberlist never sends others.
fn node_state(v: i64) -> Result<NodeState> {
    Ok(match v {
        0 => NodeState::Alive,
        1 => NodeState::Suspect,
        2 => NodeState::Dead,
        3 => NodeState::Left,
        _ => return Err(mp_err("State", &format!("unknown node state {v}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn keyring(keys: &[&[u8]]) -> Keyring {
        Keyring::new(keys.iter().map(|k| k.to_vec()).collect()).expect("valid test keys")
    }

    const KEY16: &[u8] = b"0123456789abcdef";

    fn ping_a() -> Ping {
        Ping {
            seq_no: 1,
            node: "a".into(),
            ..Ping::default()
        }
    }

    fn alive_a() -> Alive {
        Alive {
            incarnation: 1,
            node: "a".into(),
            addr: vec![127, 0, 0, 1],
            port: 7946,
            meta: Vec::new(),
            vsn: vec![1, 5, 2, 2, 5, 4],
        }
    }

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Ping(Ping {
                seq_no: 300,
                node: "node-1".into(),
                source_addr: vec![10, 0, 0, 1],
                source_port: 7946,
                source_node: "me".into(),
            }),
            Message::Ping(ping_a()),
            Message::IndirectPing(IndirectPingReq {
                seq_no: u32::MAX,
                target: vec![0; 16],
                port: 65535,
                node: "b".into(),
                nack: true,
                source_addr: vec![10, 0, 0, 3],
                source_port: 1,
                source_node: "c".into(),
            }),
            Message::Ack(AckResp {
                seq_no: 9,
                payload: b"hi".to_vec(),
            }),
            Message::Ack(AckResp {
                seq_no: 70_000,
                payload: Vec::new(),
            }),
            Message::Nack(NackResp { seq_no: 200 }),
            Message::Err(ErrResp {
                error: "boom".into(),
            }),
            Message::Suspect(Suspect {
                incarnation: 2,
                node: "a".into(),
                from: "b".into(),
            }),
            Message::Alive(alive_a()),
            Message::Alive(Alive {
                meta: vec![7; 600],
                node: "x".repeat(40),
                ..alive_a()
            }),
            Message::Dead(Dead {
                incarnation: 3,
                node: "a".into(),
                from: "a".into(),
            }),
            Message::User(b"registry delta".to_vec()),
            Message::User(Vec::new()),
        ]
    }

    /// Golden: `ping{SeqNo: 1, Node: "a"}` as memberlist's `encode(pingMsg, &p)` writes it.
    ///
    /// * `00`: pingMsg, the first constant of net.go's messageType iota list.
    /// * `82`: fixmap of 2 entries. go-codec writes a struct as a map (StructToArray=false)
    ///   with only the non-omitted fields: SourceAddr (nil), SourcePort (0) and SourceNode ("")
    ///   are `codec:",omitempty"` and empty, leaving Node and SeqNo.
    /// * Keys come sorted by name (encode.go `kStruct` iterates `sfiSort`): "Node" < "SeqNo".
    /// * `a4 4e6f6465`: key "Node" as fixstr (0xa0|4); with WriteExt=false strings are raw.
    /// * `a1 61`: value "a", fixstr of 1.
    /// * `a5 5365714e6f`: key "SeqNo", fixstr of 5.
    /// * `01`: SeqNo uint32 1 via EncodeUint: values <= 127 are a positive fixint.
    ///
    /// Cross-checked against go-msgpack v2.1.5 (memberlist's codec) run with Go 1.19.
    #[test]
    fn golden_ping() {
        let want = hex("0082a44e6f6465a161a55365714e6f01");
        assert_eq!(encode_message(&Message::Ping(ping_a())), want);
        assert_eq!(decode_message(&want), Ok(Message::Ping(ping_a())));
    }

    /// Golden: `alive{Incarnation: 1, Node: "a", Addr: 127.0.0.1, Port: 7946, Meta: nil,
    /// Vsn: [1 5 2 2 5 4]}`.
    ///
    /// * `04`: aliveMsg. `86`: fixmap of 6 (alive has no omitempty fields).
    /// * Sorted keys: Addr, Incarnation, Meta, Node, Port, Vsn.
    /// * `a4 41646472` "Addr", `a4 7f000001`: the 4-byte []byte as *raw str* (fixstr 4), not
    ///   bin, because WriteExt=false (`EncodeStringBytesRaw` → msgpackContainerRawLegacy).
    /// * `ab 496e6361726e6174696f6e` "Incarnation" (fixstr 11), `01` fixint.
    /// * `a4 4d657461` "Meta", `c0`: a nil []byte encodes as msgpack nil.
    /// * `a4 4e6f6465` "Node", `a1 61` "a".
    /// * `a4 506f7274` "Port", `cd 1f0a`: 7946 > 255 so EncodeUint picks uint16 (0xcd) BE.
    /// * `a3 56736e` "Vsn", `a6 010502020504`: []uint8 is []byte, so again a 6-byte fixstr.
    #[test]
    fn golden_alive() {
        let want = hex(concat!(
            "0486",
            "a441646472a47f000001",
            "ab496e6361726e6174696f6e01",
            "a44d657461c0",
            "a44e6f6465a161",
            "a4506f7274cd1f0a",
            "a356736ea6010502020504"
        ));
        assert_eq!(encode_message(&Message::Alive(alive_a())), want);
        assert_eq!(decode_message(&want), Ok(Message::Alive(alive_a())));
    }

    /// More bodies as go-msgpack v2.1.5 encoded them (generated once with Go; see module doc).
    #[test]
    fn go_codec_vectors() {
        let cases: Vec<(Message, &str)> = vec![
            (
                all_messages()[0].clone(),
                "0085a44e6f6465a66e6f64652d31a55365714e6fcd012caa536f7572636541646472a40a000001aa536f757263654e6f6465a26d65aa536f75726365506f7274cd1f0a",
            ),
            (
                Message::IndirectPing(IndirectPingReq {
                    seq_no: 5,
                    target: vec![10, 0, 0, 2],
                    port: 7946,
                    node: "b".into(),
                    nack: true,
                    ..IndirectPingReq::default()
                }),
                "0185a44e61636bc3a44e6f6465a162a4506f7274cd1f0aa55365714e6f05a6546172676574a40a000002",
            ),
            (
                Message::Ack(AckResp {
                    seq_no: 9,
                    payload: Vec::new(),
                }),
                "0282a75061796c6f6164c0a55365714e6f09",
            ),
            (
                all_messages()[3].clone(),
                "0282a75061796c6f6164a26869a55365714e6f09",
            ),
            (all_messages()[5].clone(), "0b81a55365714e6fccc8"),
            (all_messages()[6].clone(), "0d81a54572726f72a4626f6f6d"),
            (
                all_messages()[7].clone(),
                "0383a446726f6da162ab496e6361726e6174696f6e02a44e6f6465a161",
            ),
            (
                all_messages()[10].clone(),
                "0583a446726f6da161ab496e6361726e6174696f6e03a44e6f6465a161",
            ),
            (
                // A 40-byte string skips str8 (0xd9) and uses str16 (0xda) in legacy mode.
                Message::Suspect(Suspect {
                    incarnation: 2,
                    node: "0123456789012345678901234567890123456789".into(),
                    from: "b".into(),
                }),
                "0383a446726f6da162ab496e6361726e6174696f6e02a44e6f6465da002830313233343536373839303132333435363738393031323334353637383930313233343536373839",
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(encode_message(&msg), hex(want), "{msg:?}");
            assert_eq!(decode_message(&hex(want)).as_ref(), Ok(&msg));
        }
        // Go sent Meta as an empty (non-nil) slice here: a0 instead of c0; both decode.
        let go = hex(
            "0486a441646472a47f000001ab496e6361726e6174696f6ece00011170a44d657461a0a44e6f6465a161a4506f727450a356736ea6010502020504",
        );
        let want = Alive {
            incarnation: 70_000,
            port: 80,
            ..alive_a()
        };
        assert_eq!(decode_message(&go), Ok(Message::Alive(want)));
    }

    /// Reads the map keys of an encoded body (test helper for the sort-order check).
    fn map_keys(body: &[u8]) -> Vec<Vec<u8>> {
        let mut d = Dec::new(body);
        let n = match d.marker().expect("marker") {
            Marker::FixMap(n) => n,
            m => panic!("not a fixmap: {m:?}"),
        };
        (0..n)
            .map(|_| {
                let k = d.bytes("key").expect("key");
                d.skip().expect("value");
                k
            })
            .collect()
    }

    #[test]
    fn keys_are_sorted_like_go_codec() {
        let mut bodies: Vec<Vec<u8>> = all_messages()
            .iter()
            .filter(|m| !matches!(m, Message::User(_)))
            .map(|m| encode_message(m)[1..].to_vec())
            .collect();
        let mut e = Enc::new(0);
        encode_node(&mut e, &sample_push_pull().nodes[0]);
        bodies.push(e.out[1..].to_vec());
        bodies.push(encode_push_pull(&sample_push_pull())[1..].to_vec());
        for body in bodies {
            let keys = map_keys(&body);
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        }
    }

    #[test]
    fn round_trip_every_message_type() {
        for msg in all_messages() {
            let bytes = encode_message(&msg);
            assert_eq!(decode_message(&bytes).as_ref(), Ok(&msg));
            // And through a plain packet.
            let packet = seal_packet(bytes, b"", false, &Keyring::default()).expect("seal");
            let got = open_packet(&packet, b"", &Keyring::default());
            if matches!(msg, Message::Err(_)) {
                // errResp is stream-only: handleCommand does not accept it.
                assert_eq!(got, Err(WireError::UnexpectedType(13)));
            } else {
                assert_eq!(got, Ok(vec![msg]));
            }
        }
    }

    #[test]
    fn decoder_accepts_go_codec_variants() {
        // Bytes as bin8, strings as str8, invalid UTF-8 inside a byte field, fields in another
        // order, an unknown field with a nested value, and nil for a string (zero value).
        let mut b = vec![MessageType::Ping as u8, 0x86];
        b.extend_from_slice(b"\xaaSourceAddr\xc4\x04\xff\xfe\x00\x01");
        b.extend_from_slice(
            b"\xa5Extra\x92\x81\xa1k\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xd6\x01abcd",
        );
        b.extend_from_slice(b"\xa4Node\xd9\x02ab");
        b.extend_from_slice(b"\xa5SeqNo\xd2\x00\x00\x00\x07");
        b.extend_from_slice(b"\xaaSourceNode\xc0");
        b.extend_from_slice(b"\xaaSourcePort\xcf\x00\x00\x00\x00\x00\x00\x00\x50");
        let want = Ping {
            seq_no: 7,
            node: "ab".into(),
            source_addr: vec![0xff, 0xfe, 0, 1],
            source_port: 80,
            source_node: String::new(),
        };
        assert_eq!(decode_message(&b), Ok(Message::Ping(want)));

        // Invalid UTF-8 in a raw str for a byte field is fine.
        let mut b = vec![MessageType::AckResp as u8, 0x82];
        b.extend_from_slice(b"\xa7Payload\xa2\xc3\x28\xa5SeqNo\x01");
        assert_eq!(
            decode_message(&b),
            Ok(Message::Ack(AckResp {
                seq_no: 1,
                payload: vec![0xc3, 0x28]
            }))
        );

        // A struct as an array (Go declaration order) and []byte as an array of ints.
        let mut b = vec![
            MessageType::Suspect as u8,
            0x93,
            0x05,
            0xa1,
            b'n',
            0xa1,
            b'f',
        ];
        assert_eq!(
            decode_message(&b),
            Ok(Message::Suspect(Suspect {
                incarnation: 5,
                node: "n".into(),
                from: "f".into()
            }))
        );
        b = vec![
            MessageType::AckResp as u8,
            0x92,
            0x01,
            0x93,
            0x01,
            0x02,
            0xcc,
            0xff,
        ];
        assert_eq!(
            decode_message(&b),
            Ok(Message::Ack(AckResp {
                seq_no: 1,
                payload: vec![1, 2, 255]
            }))
        );

        // Bool from fixint 1 (DecodeBool); fields as a nested array inside a map.
        let mut b = vec![MessageType::IndirectPing as u8, 0x82];
        b.extend_from_slice(b"\xa4Nack\x01\xa6Target\x92\x0a\x0b");
        assert_eq!(
            decode_message(&b),
            Ok(Message::IndirectPing(IndirectPingReq {
                nack: true,
                target: vec![10, 11],
                ..IndirectPingReq::default()
            }))
        );

        // A nil body is the zero struct.
        let b = [MessageType::NackResp as u8, 0xc0];
        assert_eq!(
            decode_message(&b),
            Ok(Message::Nack(NackResp { seq_no: 0 }))
        );
    }

    #[test]
    fn decoder_rejects_bad_values() {
        // Negative SeqNo, overflowing port, non-UTF-8 node name, wrong type for a struct.
        let neg = [0, 0x81, 0xa5, b'S', b'e', b'q', b'N', b'o', 0xff];
        assert!(matches!(decode_message(&neg), Err(WireError::Msgpack(_))));
        let mut port = vec![MessageType::Alive as u8, 0x81];
        port.extend_from_slice(b"\xa4Port\xce\x00\x01\x00\x00");
        assert!(matches!(decode_message(&port), Err(WireError::Msgpack(_))));
        let mut utf = vec![MessageType::Dead as u8, 0x81];
        utf.extend_from_slice(b"\xa4Node\xa1\xff");
        assert!(matches!(decode_message(&utf), Err(WireError::Msgpack(_))));
        assert!(matches!(
            decode_message(&[0, 0x01]),
            Err(WireError::Msgpack(_))
        ));
        assert_eq!(decode_message(&[]), Err(WireError::Truncated));
        assert_eq!(decode_message(&[0, 0x82, 0xa4]), Err(WireError::Truncated));
        assert_eq!(decode_message(&[99]), Err(WireError::UnknownType(99)));
        assert_eq!(
            decode_message(&[MessageType::PushPull as u8]),
            Err(WireError::UnexpectedType(6))
        );
    }

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
    fn labels() {
        let ping = encode_message(&Message::Ping(ping_a()));
        let none = Keyring::default();
        let p = seal_packet(ping.clone(), b"dc1", false, &none).expect("seal");
        assert_eq!(&p[..5], b"\xf4\x03dc1");
        assert_eq!(&p[5..], &ping[..]);
        assert_eq!(
            open_packet(&p, b"dc1", &none),
            Ok(vec![Message::Ping(ping_a())])
        );
        // Different label, label missing, label unexpected: all dropped, as ingestPacket does.
        assert_eq!(
            open_packet(&p, b"dc2", &none),
            Err(WireError::LabelMismatch)
        );
        assert_eq!(
            open_packet(&ping, b"dc1", &none),
            Err(WireError::LabelMismatch)
        );
        assert_eq!(open_packet(&p, b"", &none), Err(WireError::LabelMismatch));
        // Empty or truncated label headers.
        assert_eq!(
            open_packet(&[244, 0, 0], b"", &none),
            Err(WireError::EmptyLabel)
        );
        assert_eq!(open_packet(&[244], b"a", &none), Err(WireError::Truncated));
        assert_eq!(
            open_packet(&[244, 5, b'a'], b"a", &none),
            Err(WireError::Truncated)
        );
        // Too long to send.
        assert_eq!(
            seal_packet(ping, &[b'x'; 256], false, &none),
            Err(WireError::LabelTooLong(256))
        );
    }

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

    fn sample_push_pull() -> PushPull {
        let vsn = vec![1, 5, 2, 2, 5, 4];
        PushPull {
            join: true,
            nodes: vec![
                PushNodeState {
                    name: "a".into(),
                    addr: vec![127, 0, 0, 1],
                    port: 7946,
                    meta: Vec::new(),
                    incarnation: 1,
                    state: NodeState::Alive,
                    vsn: vsn.clone(),
                },
                PushNodeState {
                    name: "b".into(),
                    addr: vec![127, 0, 0, 2],
                    port: 7947,
                    meta: b"m".to_vec(),
                    incarnation: 2,
                    state: NodeState::Suspect,
                    vsn: vsn.clone(),
                },
                PushNodeState {
                    name: "c".into(),
                    addr: [0; 15].iter().copied().chain([1]).collect(),
                    port: 7948,
                    meta: Vec::new(),
                    incarnation: 3,
                    state: NodeState::Left,
                    vsn,
                },
            ],
            user_state: b"state".to_vec(),
        }
    }

    #[test]
    fn push_pull_round_trip_matches_go() {
        let pp = sample_push_pull();
        let bytes = encode_push_pull(&pp);
        // sendLocalState's buffer from Go for the same state.
        let go = hex(concat!(
            "0683a44a6f696ec3a54e6f64657303ac5573657253746174654c656e05",
            "87a441646472a47f000001ab496e6361726e6174696f6e01a44d657461c0a44e616d65a161",
            "a4506f7274cd1f0aa5537461746500a356736ea6010502020504",
            "87a441646472a47f000002ab496e6361726e6174696f6e02a44d657461a16da44e616d65a162",
            "a4506f7274cd1f0ba5537461746501a356736ea6010502020504",
            "87a441646472b000000000000000000000000000000001ab496e6361726e6174696f6e03a44d657461c0",
            "a44e616d65a163a4506f7274cd1f0ca5537461746503a356736ea6010502020504",
            "7374617465"
        ));
        assert_eq!(bytes, go);
        assert_eq!(decode_push_pull(&bytes), Ok(pp.clone()));
        // Through an encrypted, labelled stream both ways.
        let keys = keyring(&[&[5u8; 24]]);
        let s = seal_stream(bytes.clone(), b"dc1", &keys).expect("seal");
        assert_eq!(&s[..5], b"\xf4\x03dc1");
        assert_eq!(s[5], MessageType::Encrypt as u8);
        let inner = open_stream(&s, b"dc1", &keys).expect("open");
        assert_eq!(decode_push_pull(&inner), Ok(pp.clone()));
        let r = seal_stream_reply(bytes, b"dc1", &keys).expect("reply");
        assert_eq!(r[0], MessageType::Encrypt as u8);
        let inner = open_stream_reply(&r, b"dc1", &keys).expect("open reply");
        assert_eq!(decode_push_pull(&inner), Ok(pp));
    }

    #[test]
    fn push_pull_header_int_encoding_and_limits() {
        // Go `int` 200 and 70000 use signed int16/int32 markers (EncodeInt), from Go output.
        let mut e = Enc::new(6);
        e.map(3);
        e.key("Join");
        e.bool(false);
        e.key("Nodes");
        e.int(200);
        e.key("UserStateLen");
        e.int(70_000);
        assert_eq!(
            e.out,
            hex("0683a44a6f696ec2a54e6f646573d100c8ac5573657253746174654c656ed200011170")
        );
        // That header promises 200 nodes that are not there.
        assert_eq!(decode_push_pull(&e.out), Err(WireError::Truncated));

        let header = |nodes: i64, user: i64| {
            let mut e = Enc::new(6);
            e.map(2);
            e.key("Nodes");
            e.int(nodes);
            e.key("UserStateLen");
            e.int(user);
            e.out
        };
        assert_eq!(
            decode_push_pull(&header(100_001, 0)),
            Err(WireError::TooLarge)
        );
        assert_eq!(decode_push_pull(&header(-1, 0)), Err(WireError::TooLarge));
        assert_eq!(
            decode_push_pull(&header(0, 64 * 1024 * 1024 + 1)),
            Err(WireError::TooLarge)
        );
        assert_eq!(decode_push_pull(&header(0, 10)), Err(WireError::Truncated));
        let empty = PushPull::default();
        assert_eq!(decode_push_pull(&header(0, 0)), Ok(empty));
        // Unknown node state.
        let mut pp = encode_push_pull(&PushPull {
            nodes: sample_push_pull().nodes[..1].to_vec(),
            ..PushPull::default()
        });
        let at = pp
            .windows(6)
            .position(|w| w == b"\xa5State")
            .expect("State key")
            + 6;
        pp[at] = 9;
        assert!(matches!(decode_push_pull(&pp), Err(WireError::Msgpack(_))));
        // An errResp in place of the push/pull.
        let err = encode_message(&Message::Err(ErrResp { error: "no".into() }));
        assert_eq!(decode_push_pull(&err), Err(WireError::Remote("no".into())));
        assert_eq!(decode_push_pull(&[7]), Err(WireError::UnexpectedType(7)));
    }

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

    #[test]
    fn user_messages_on_streams() {
        let b = encode_user_stream(b"hello");
        assert_eq!(b, b"\x08\x81\xaaUserMsgLen\x05hello");
        assert_eq!(decode_user_stream(&b), Ok(b"hello".to_vec()));
        assert_eq!(
            decode_user_stream(&b[..b.len() - 1]),
            Err(WireError::Truncated)
        );
        assert_eq!(decode_user_stream(&[0]), Err(WireError::UnexpectedType(0)));
    }

    /// A port of Go's compress/lzw Writer (LSB, litWidth 8), to produce test input. A map
    /// stands in for Go's hash table: same dictionary, same codes.
    fn lzw_encode(input: &[u8]) -> Vec<u8> {
        struct W {
            out: Vec<u8>,
            bits: u32,
            n_bits: u32,
            width: u32,
        }
        impl W {
            fn write(&mut self, c: u32) {
                self.bits |= c << self.n_bits;
                self.n_bits += self.width;
                while self.n_bits >= 8 {
                    self.out.push(self.bits as u8);
                    self.bits >>= 8;
                    self.n_bits -= 8;
                }
            }
        }
        let mut w = W {
            out: Vec::new(),
            bits: 0,
            n_bits: 0,
            width: 9,
        };
        let (mut hi, mut overflow) = (257u32, 512u32);
        let mut table: HashMap<u32, u32> = HashMap::new();
        w.write(256);
        let Some((&first, rest)) = input.split_first() else {
            w.write(257);
            if w.n_bits > 0 {
                w.out.push(w.bits as u8);
            }
            return w.out;
        };
        let mut code = u32::from(first);
        // incHi: returns true when the table was reset.
        let inc_hi = |w: &mut W, hi: &mut u32, overflow: &mut u32, table: &mut HashMap<_, _>| {
            *hi += 1;
            if *hi == *overflow {
                w.width += 1;
                *overflow <<= 1;
            }
            if *hi == 4095 {
                w.write(256);
                w.width = 9;
                *hi = 257;
                *overflow = 512;
                table.clear();
                return true;
            }
            false
        };
        for &x in rest {
            let key = code << 8 | u32::from(x);
            if let Some(&c) = table.get(&key) {
                code = c;
                continue;
            }
            w.write(code);
            code = u32::from(x);
            if !inc_hi(&mut w, &mut hi, &mut overflow, &mut table) {
                table.insert(key, hi);
            }
        }
        w.write(code);
        inc_hi(&mut w, &mut hi, &mut overflow, &mut table);
        w.write(257);
        if w.n_bits > 0 {
            w.out.push(w.bits as u8);
        }
        w.out
    }

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

    /// util.go `compressPayload`: `compress{Algo: 0, Buf: lzw}` as a type-9 message.
    fn compress_message(inner: &[u8]) -> Vec<u8> {
        let mut e = Enc::new(MessageType::Compress as u8);
        e.map(2);
        e.key("Algo");
        e.uint(0);
        e.key("Buf");
        e.raw(&lzw_encode(inner));
        e.out
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
        let mut e = Enc::new(MessageType::Compress as u8);
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
