//! The rules the gateway applies to a plugin's edits (see the `request` resource in
//! `wit/plugin.wit`), as public checks for authors and as the checks of the native test
//! double in [`crate::testing`].
//!
//! In the gateway an edit that breaks one of these rules fails the hook call (a trap:
//! the request gets `plugins.on_error`). Check values you do not control before setting
//! them: [`is_valid_header_name`], [`is_valid_header_value`], [`is_reserved_header`].

/// The most header fields a request or response may hold after a plugin's edits.
pub const MAX_HEADER_FIELDS: usize = 256;

/// The most header bytes (names plus values) a request or response may hold after a
/// plugin's edits: 64 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The largest value [`crate::Request::stash`] takes: 4 KiB.
pub const MAX_STASH_BYTES: usize = 4 * 1024;

/// The framing and connection headers: the gateway's own, a plugin can neither set nor
/// remove them (nor send them in a [`crate::DirectResponse`]).
pub const RESERVED_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// True if `name` is a valid HTTP header name: a non-empty RFC 9110 token (any case;
/// the gateway lower-cases it).
///
/// ```
/// assert!(fluxgate_sdk::is_valid_header_name("X-Api-Key"));
/// assert!(!fluxgate_sdk::is_valid_header_name("bad name"));
/// ```
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True if `value` is a header value the gateway accepts: no control character other
/// than horizontal tab (so no CR, LF or NUL, and no DEL). Bytes from 0x80 up are
/// allowed: values are bytes, not necessarily UTF-8.
///
/// ```
/// assert!(fluxgate_sdk::is_valid_header_value(b"Bearer abc"));
/// assert!(!fluxgate_sdk::is_valid_header_value(b"a\r\nx-injected: 1"));
/// ```
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// True if `name` (any case) is one of the [`RESERVED_HEADERS`], which a plugin can
/// neither set nor remove.
///
/// ```
/// assert!(fluxgate_sdk::is_reserved_header("Content-Length"));
/// assert!(!fluxgate_sdk::is_reserved_header("host"));
/// ```
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// The checks of the test double (native only: on wasm32 the gateway checks).
#[cfg(not(target_arch = "wasm32"))]
mod checks {
    use super::*;
    use crate::backend::Header;

    /// The rule a header name breaks for an edit (set, append or remove), if any.
    pub(crate) fn check_edit_name(name: &str) -> Result<(), String> {
        if !is_valid_header_name(name) {
            return Err(format!(
                "header name {name:?} is not an HTTP token (rule: header names must be tokens)"
            ));
        }
        if is_reserved_header(name) {
            return Err(format!(
                "header {:?} is a framing/connection header (rule: content-length, \
                 transfer-encoding, connection, keep-alive, upgrade, te, trailer and \
                 proxy-connection cannot be set or removed)",
                name.to_ascii_lowercase()
            ));
        }
        Ok(())
    }

    /// The rule a header field to be set breaks, if any.
    pub(crate) fn check_field(name: &str, value: &[u8]) -> Result<(), String> {
        check_edit_name(name)?;
        if !is_valid_header_value(value) {
            return Err(format!(
                "the value of header {:?} holds a control character (rule: header values \
                 must not hold CR, LF, NUL or other controls but tab)",
                name.to_ascii_lowercase()
            ));
        }
        Ok(())
    }

    /// The rule a whole header list breaks (field count, header bytes), if any.
    pub(crate) fn check_totals(headers: &[Header]) -> Result<(), String> {
        if headers.len() > MAX_HEADER_FIELDS {
            return Err(format!(
                "{} header fields (rule: a message holds at most {MAX_HEADER_FIELDS} header fields)",
                headers.len()
            ));
        }
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if bytes > MAX_HEADER_BYTES {
            return Err(format!(
                "{bytes} bytes of headers (rule: a message holds at most 64 KiB of header bytes)"
            ));
        }
        Ok(())
    }

    /// The rule a status breaks, if any.
    pub(crate) fn check_status(status: u16) -> Result<(), String> {
        if (200..=599).contains(&status) {
            Ok(())
        } else {
            Err(format!("status {status} (rule: a status must be 200-599)"))
        }
    }

    /// The rule a stash value breaks, if any.
    pub(crate) fn check_stash(value: &[u8]) -> Result<(), String> {
        if value.len() > MAX_STASH_BYTES {
            return Err(format!(
                "a stash of {} bytes (rule: a stash holds at most 4 KiB)",
                value.len()
            ));
        }
        Ok(())
    }

    /// The path a `set-path` leads to, normalised as the gateway normalises a client's
    /// path (`.` and `..` segments resolved, also percent-encoded); or the rule it breaks.
    pub(crate) fn normalise_path(path: &str) -> Result<String, String> {
        if !path.starts_with('/') {
            return Err(format!(
                "set_path({path:?}) (rule: a path must start with '/')"
            ));
        }
        if path
            .bytes()
            .any(|b| b == b'?' || b == b'#' || b <= b' ' || b == 0x7f)
        {
            return Err(format!(
                "set_path({path:?}) (rule: a path holds no '?', '#', space or control \
                 character; set the query with set_query)"
            ));
        }
        let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
        let is_dotdot = |s: &str| {
            matches!(
                s.to_ascii_lowercase().as_str(),
                ".." | ".%2e" | "%2e." | "%2e%2e"
            )
        };
        if !path.split('/').any(|s| is_dot(s) || is_dotdot(s)) {
            return Ok(path.to_string());
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let last = segments.len().saturating_sub(1);
        let mut out: Vec<&str> = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            if is_dot(segment) {
                if i == last {
                    out.push("");
                }
            } else if is_dotdot(segment) {
                if out.pop().is_none() {
                    return Err(format!(
                        "set_path({path:?}) (rule: a path that climbs above '/' is refused)"
                    ));
                }
                if i == last {
                    out.push("");
                }
            } else {
                out.push(segment);
            }
        }
        Ok(format!("/{}", out.join("/")))
    }

    /// The rule a query string breaks, if any. The WIT states none; these are what cannot
    /// be a query at all in an HTTP request target.
    pub(crate) fn check_query(query: &str) -> Result<(), String> {
        if query.bytes().any(|b| b == b'#' || b <= b' ' || b == 0x7f) {
            return Err(format!(
                "set_query({query:?}) (rule: a query holds no '#', space or control character)"
            ));
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use checks::*;

#[cfg(test)]
mod tests {
    use super::checks::*;
    use super::*;
    use crate::backend::Header;

    #[test]
    fn header_validity() {
        assert!(is_valid_header_name("x-api-key"));
        assert!(is_valid_header_name("X_Odd.Name~1"));
        assert!(!is_valid_header_name(""));
        assert!(!is_valid_header_name("bad name"));
        assert!(!is_valid_header_name("bad:name"));
        assert!(!is_valid_header_name("bad\r\nname"));
        assert!(is_valid_header_value(b"Bearer abc\tdef \xff"));
        assert!(is_valid_header_value(b""));
        assert!(!is_valid_header_value(b"a\r\nb"));
        assert!(!is_valid_header_value(b"a\0"));
        assert!(!is_valid_header_value(b"a\x7f"));
        assert!(is_reserved_header("Transfer-Encoding"));
        assert!(is_reserved_header("te"));
        assert!(!is_reserved_header("x-te"));
    }

    #[test]
    fn rules_name_what_they_refuse() {
        let err = |r: Result<(), String>| r.err().unwrap_or_default();
        assert!(err(check_field("bad name", b"v")).contains("token"));
        assert!(err(check_field("Content-Length", b"1")).contains("\"content-length\""));
        assert!(err(check_field("x-a", b"1\n")).contains("CR, LF, NUL"));
        assert!(check_field("X-A", b"1").is_ok());
        assert!(err(check_status(101)).contains("200-599"));
        assert!(check_status(599).is_ok() && check_status(200).is_ok());
        assert!(err(check_status(600)).contains("200-599"));
        assert!(check_stash(&[0; MAX_STASH_BYTES]).is_ok());
        assert!(err(check_stash(&[0; MAX_STASH_BYTES + 1])).contains("4 KiB"));
        let many: Vec<Header> = (0..=MAX_HEADER_FIELDS)
            .map(|i| (format!("x-{i}"), Vec::new()))
            .collect();
        assert!(err(check_totals(&many)).contains("256"));
        assert!(check_totals(&many[1..]).is_ok());
        let big = vec![("x".to_string(), vec![b'v'; MAX_HEADER_BYTES])];
        assert!(err(check_totals(&big)).contains("64 KiB"));
        assert!(check_totals(&big[..0]).is_ok());
        assert!(err(check_query("a#b")).contains("'#'"));
        assert!(check_query("a=1&b=?").is_ok());
    }

    #[test]
    fn paths_are_normalised_like_a_clients() {
        let ok = |p: &str| normalise_path(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("/a/b"), "/a/b");
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/a/./b/%2E%2e/c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a..b/..c"), "/a..b/..c");
        for bad in [
            "/../x",
            "/a/%2e%2e/%2e%2e",
            "no-slash",
            "",
            "/a?b",
            "/a b",
            "/a#f",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
    }
}
