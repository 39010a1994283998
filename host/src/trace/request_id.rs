//! Request ids: a client's kept when valid, otherwise a fresh random one.

use http::HeaderValue;

use crate::plan::MAX_REQUEST_ID_BYTES;

/// A client's request id is kept when it is 1 to `MAX_REQUEST_ID_BYTES` bytes of
/// visible ASCII (no spaces or control characters: it goes into logs and upstream).
pub fn is_valid(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_BYTES
        && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new id: 128 random bits as 32 lower-case hex digits (one allocation, the value).
pub fn generate() -> HeaderValue {
    let mut text = [0u8; 32];
    super::context::write_hex(&mut text, rand::random::<u128>());
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_bounded_visible_ascii() {
        assert!(is_valid(&HeaderValue::from_static("abc-123_XYZ.{}")));
        assert!(!is_valid(&HeaderValue::from_static("")));
        assert!(!is_valid(&HeaderValue::from_static("has space")));
        assert!(!is_valid(&HeaderValue::from_bytes(b"tab\there").unwrap()));
        assert!(!is_valid(&HeaderValue::from_bytes("é".as_bytes()).unwrap()));
        let long = "a".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert!(!is_valid(&HeaderValue::from_str(&long).unwrap()));
        assert!(is_valid(&HeaderValue::from_str(&long[1..]).unwrap()));
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let (a, b) = (generate(), generate());
        assert!(is_valid(&a));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
