//! The chunked transfer coding (RFC 9112 7.1), strictly: sizes are hex digits checked
//! for overflow, extensions are bounded and free of control characters, every line
//! ends in CRLF (no bare LF, no extra CRLF between chunks), and the trailer section is
//! bounded. The decoder works on bytes already read and hands out data as slices of
//! them (no copy).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Longest chunk-size line (size + extensions), and the trailer section's bytes.
const MAX_SIZE_LINE: usize = 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILER_FIELDS: usize = 64;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("chunk extension too long or with control characters")]
    BadExtension,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("invalid or oversized trailer section")]
    BadTrailers,
}

/// What the decoder produced from the bytes it had.
#[derive(Debug)]
pub enum Decoded {
    /// Some body bytes.
    Data(Bytes),
    /// The body ended; trailer fields, if any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the next size (`digits` so far).
    Size {
        digits: usize,
    },
    /// In the chunk extension after `;`.
    Extension,
    /// Read CR of the size line; LF must follow.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// Decodes one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk being read, or bytes of it still to come.
    size: u64,
    /// Bytes of the current size line.
    line: usize,
    last: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            last: false,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from the front of `buf` until it can return data, the end, or
    /// needs more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End(None)),
                State::Data => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (buf.len() as u64).min(self.size) as usize;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::Trailers => return self.trailers(buf),
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.step(b)?;
        }
    }

    /// One byte of a size line or of the CRLF after data.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size { digits } => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(ChunkError::BadExtension);
                }
                match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let value = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(value)))
                            .ok_or(ChunkError::SizeOverflow)?;
                        self.state = State::Size { digits: digits + 1 };
                    }
                    b';' if digits > 0 => self.state = State::Extension,
                    b'\r' if digits > 0 => self.state = State::SizeLf,
                    _ => return Err(ChunkError::BadSize),
                }
            }
            State::Extension => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(ChunkError::BadExtension);
                }
                match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' => {}
                    b if b < 0x20 || b == 0x7f => return Err(ChunkError::BadExtension),
                    _ => {}
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadSize);
                }
                self.line = 0;
                if self.size == 0 {
                    self.last = true;
                    self.state = State::Trailers;
                } else {
                    self.state = State::Data;
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::MissingCrlf);
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::MissingCrlf);
                }
                self.size = 0;
                self.state = State::Size { digits: 0 };
            }
            State::Data | State::Trailers | State::Done => {}
        }
        Ok(())
    }

    /// The trailer section: fields until an empty line, parsed once it is complete.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End(None));
        }
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_TRAILER_BYTES {
                return Err(ChunkError::BadTrailers);
            }
            return Ok(Decoded::NeedMore);
        };
        let section = &buf[..end + 4];
        let bare_lf = section
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
        if section.len() > MAX_TRAILER_BYTES || bare_lf {
            return Err(ChunkError::BadTrailers);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let parsed = match httparse::parse_headers(section, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| ChunkError::BadTrailers)?;
                    let value =
                        HeaderValue::from_bytes(f.value).map_err(|_| ChunkError::BadTrailers)?;
                    map.append(name, value);
                }
                map
            }
            _ => return Err(ChunkError::BadTrailers),
        };
        buf.advance(end + 4);
        self.state = State::Done;
        Ok(Decoded::End(Some(parsed)))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes the chunk-size line of a `len`-byte chunk into `out`.
pub fn encode_size(len: usize, out: &mut BytesMut) {
    use std::fmt::Write as _;
    let _ = write!(Hex(out), "{len:x}\r\n");
}

/// The last chunk and the trailer fields, into `out`.
pub fn encode_end(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        for (name, value) in trailers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `fmt::Write` into a BytesMut.
struct Hex<'a>(&'a mut BytesMut);

impl std::fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body or the error.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End(t) => return Ok((body, t)),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(ChunkError::MissingCrlf);
                    }
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunks_are_decoded_whatever_the_read_sizes() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (body, trailers) = decode_all(input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert!(trailers.is_none());
        }
        let (body, trailers) =
            decode_all(b"A\r\n0123456789\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n", 4).unwrap();
        assert_eq!(body, b"0123456789");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-sum"], "1");
        assert_eq!(trailers["y"], "2");
    }

    #[test]
    fn malformed_chunking_is_refused() {
        let cases: [(&[u8], ChunkError); 9] = [
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::MissingCrlf),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::MissingCrlf),
            (b"5\r\nhello\r\n\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"fffffffffffffffff\r\n", ChunkError::SizeOverflow),
            (b"5;a\x01b\r\nhello\r\n0\r\n\r\n", ChunkError::BadExtension),
        ];
        for (input, expected) in cases {
            assert_eq!(
                decode_all(input, 3).unwrap_err(),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            decode_all(long_ext.as_bytes(), 64).unwrap_err(),
            ChunkError::BadExtension
        );
        let big_trailer = format!("0\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(
            decode_all(big_trailer.as_bytes(), 1000).unwrap_err(),
            ChunkError::BadTrailers
        );
        assert_eq!(
            decode_all(b"0\r\nx: 1\ny: 2\r\n\r\n", 50).unwrap_err(),
            ChunkError::BadTrailers
        );
    }

    #[test]
    fn the_encoder_writes_what_the_decoder_reads() {
        let mut out = BytesMut::new();
        encode_size(300, &mut out);
        out.extend_from_slice(&[b'z'; 300]);
        out.extend_from_slice(b"\r\n");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        encode_end(Some(&trailers), &mut out);
        assert!(out.starts_with(b"12c\r\n"));
        let (body, t) = decode_all(&out, 17).unwrap();
        assert_eq!(body.len(), 300);
        assert_eq!(t.unwrap()["grpc-status"], "0");
    }
}
