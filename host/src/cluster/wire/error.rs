//! [`WireError`]: why bytes could not be encoded or decoded, whichever layer found it.

use crate::cluster::messages::UnknownMessageType;

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

impl From<UnknownMessageType> for WireError {
    fn from(e: UnknownMessageType) -> Self {
        WireError::UnknownType(e.0)
    }
}

pub(super) type Result<T> = std::result::Result<T, WireError>;
