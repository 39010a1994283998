//! Message heads written into a reused buffer: the status or request line, the fields
//! as given (framing fields excluded: the writer sets them from the body it sends),
//! then the framing and connection fields.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

/// How the body that follows a head is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `content-length: n`.
    Length(u64),
    Chunked,
    /// No framing field: no body (a 204), a close-delimited body, or a HEAD answer
    /// whose fields describe the body it would have had (kept as given).
    None,
}

/// Writes `HTTP/1.1 <status>` and the fields into `out`. `connection` is the value of
/// the Connection field to send (`close`, `keep-alive`), if any.
pub fn response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    connection: Option<&str>,
    date: &[u8],
    out: &mut BytesMut,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_framing_fields = framing == Framing::None;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut has_date = false;
    for (name, value) in headers {
        let skip = (!keep_framing_fields
            && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING))
            || (name == header::CONNECTION && !upgrade);
        if skip {
            continue;
        }
        has_date |= name == header::DATE;
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    if !has_date && !date.is_empty() {
        field(b"date", date, out);
    }
    framing_fields(framing, out);
    if let Some(connection) = connection.filter(|_| !upgrade) {
        field(b"connection", connection.as_bytes(), out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `METHOD target HTTP/1.1`, the fields (with `host` first when the fields
/// have none), and the framing fields into `out`.
pub fn request_head(
    method: &Method,
    target: &str,
    host: Option<&[u8]>,
    headers: &HeaderMap,
    framing: Framing,
    out: &mut BytesMut,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host.filter(|_| !headers.contains_key(header::HOST)) {
        field(b"host", host, out);
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    framing_fields(framing, out);
    out.extend_from_slice(b"\r\n");
}

fn framing_fields(framing: Framing, out: &mut BytesMut) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = itoa_buf(n);
            out.extend_from_slice(digits.as_bytes_mut());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
}

fn field(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A u64 in decimal without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn heads_carry_our_framing_not_the_given_one() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("connection", HeaderValue::from_static("x-a"));
        let mut out = BytesMut::new();
        response_head(
            StatusCode::OK,
            &headers,
            Framing::Length(12),
            Some("close"),
            b"Tue, 01 Dec 2026 00:00:00 GMT",
            &mut out,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"[..]
        );
        let mut out = BytesMut::new();
        request_head(
            &Method::POST,
            "/p?q",
            Some(b"up:80"),
            &headers,
            Framing::Chunked,
            &mut out,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("POST /p?q HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("999"));
        let mut out = BytesMut::new();
        response_head(StatusCode::OK, &headers, Framing::None, None, b"", &mut out);
        assert!(
            String::from_utf8_lossy(&out).contains("content-length: 999"),
            "HEAD answers keep theirs"
        );
        assert_eq!(itoa_buf(0).as_bytes_mut(), b"0");
        assert_eq!(itoa_buf(u64::MAX).as_bytes_mut(), b"18446744073709551615");
    }
}
