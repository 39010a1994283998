//! Pure storage and lookup decisions for the gateway's shared response cache (RFC 9111).

use std::time::Duration;

use http::header::{self, HeaderName};
use http::{Method, StatusCode};

/// May this request be answered from / stored in the shared cache? GET or HEAD only; not when the request carries Authorization (RFC 9111 §3.5 — we don't special-case `public`/`s-maxage` here, be conservative) or Cache-Control: no-store. (Request `no-cache`/`max-age=0` means "revalidate": return `RequestCacheMode::Refresh` so the caller skips lookup but may store.)
///
/// Other request directives (`max-stale`, `min-fresh`, `only-if-cached`, a non-zero
/// `max-age`) are ignored. GET and HEAD share these rules, so the caller must keep the
/// method in its primary key (a stored HEAD response has no body to serve a GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestCacheMode {
    /// Neither look up nor store.
    Bypass,
    /// Skip the lookup (the client wants a fresh answer), but the response may be stored.
    Refresh,
    /// Look up; on a miss the response may be stored.
    Normal,
}

/// Classifies a request for the shared cache; see [`RequestCacheMode`].
pub fn request_mode(method: &http::Method, headers: &http::HeaderMap) -> RequestCacheMode {
    if method != Method::GET && method != Method::HEAD {
        return RequestCacheMode::Bypass;
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return RequestCacheMode::Bypass;
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store {
        return RequestCacheMode::Bypass;
    }
    if cc.no_cache || cc.max_age == Some(0) {
        return RequestCacheMode::Refresh;
    }
    RequestCacheMode::Normal
}

/// Statuses cacheable without explicit freshness (RFC 9110 §15.1). Anything else (206,
/// 302, most 5xx...) is never stored, even with a `max-age`: partial and temporary
/// answers are where a wrong hit hurts most.
const HEURISTICALLY_CACHEABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// How long a response may be stored, or None if it must not be. `default_ttl` is the route's ttl, used when the response says nothing.
///
/// `None` when the status is not heuristically cacheable (RFC 9110 §15.1), when
/// Cache-Control has `no-store`, `private` or `no-cache` (this cache never revalidates, so
/// "store but revalidate" means "don't store"), when any Set-Cookie is present, when Vary
/// is `*` or unreadable, or when the ttl comes out zero.
///
/// The ttl is `s-maxage` if present (it is meant for shared caches and overrides
/// `max-age`, RFC 9111 §5.2.2.10), else `max-age`, else `default_ttl`, and in every case at
/// most `max_ttl`. `Expires` is deliberately not read: only Cache-Control directives and the
/// default ttl are honoured.
pub fn response_ttl(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    default_ttl: Duration,
    max_ttl: Duration,
) -> Option<Duration> {
    if !is_heuristically_cacheable(status) {
        return None;
    }
    let cc = CacheControl::parse(headers);
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    // A cookie set for one client must never be replayed to another.
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    vary_names(headers)?;
    let ttl = cc
        .s_maxage
        .or(cc.max_age)
        .map_or(default_ttl, Duration::from_secs)
        .min(max_ttl);
    (!ttl.is_zero()).then_some(ttl)
}

fn is_heuristically_cacheable(status: StatusCode) -> bool {
    HEURISTICALLY_CACHEABLE.contains(&status.as_u16())
}

/// Parsed Cache-Control directives (case-insensitive names, tolerant of spaces, quoted values, repeated headers and unknown directives; malformed numbers ignore that directive).
///
/// Spaces around `=` are accepted although RFC 9111's grammar has none. A qualified
/// `private="set-cookie"` or `no-cache="x"` counts as the plain directive (conservative).
/// When a number appears twice, the first well-formed one wins (RFC 9111 §4.2.1 allows
/// using the first occurrence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`: must not be stored at all.
    pub no_store: bool,
    /// `no-cache` (with or without field names): must be revalidated before reuse.
    pub no_cache: bool,
    /// `private` (with or without field names): only for the user's own cache.
    pub private: bool,
    /// `public`: parsed for completeness; not used to relax any rule here.
    pub public: bool,
    /// `max-age` in seconds.
    pub max_age: Option<u64>,
    /// `s-maxage` in seconds (shared caches only).
    pub s_maxage: Option<u64>,
}

/// What an over-large delta-seconds means (RFC 9111 §1.2.2).
const DELTA_SECONDS_MAX: u64 = 1 << 31;

impl CacheControl {
    /// Parses every Cache-Control line of `headers`; bytes that are not UTF-8 only spoil the
    /// directive they appear in.
    pub fn parse(headers: &http::HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for_each_directive(&text, |name, arg| {
                if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case("public") {
                    cc.public = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    cc.max_age = cc.max_age.or_else(|| arg.and_then(parse_delta_seconds));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    cc.s_maxage = cc.s_maxage.or_else(|| arg.and_then(parse_delta_seconds));
                }
            });
        }
        cc
    }
}

/// Calls `f(name, argument)` for each directive of one Cache-Control line. Commas inside a
/// quoted argument (`private="a, b"`) do not split directives.
fn for_each_directive(text: &str, mut f: impl FnMut(&str, Option<&str>)) {
    let mut emit = |element: &str| {
        let element = element.trim();
        if element.is_empty() {
            return;
        }
        match element.split_once('=') {
            Some((name, arg)) => f(name.trim(), Some(arg.trim())),
            None => f(element, None),
        }
    };
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            // ',' is ASCII, so `i` is a char boundary.
            emit(&text[start..i]);
            start = i + 1;
        }
    }
    emit(&text[start..]);
}

/// delta-seconds: digits only, optionally quoted (RFC 9111 §5.2 lets senders quote).
fn parse_delta_seconds(arg: &str) -> Option<u64> {
    let digits = arg
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .unwrap_or(arg);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only overflow can fail once the digits are checked.
    Some(digits.parse().unwrap_or(DELTA_SECONDS_MAX))
}

/// The request header names a stored response varies on (lower-case, deduplicated, sorted), from all Vary headers of the response; None for `Vary: *` (never store).
///
/// Also `None` when a Vary line is not readable or names something that is not a header
/// name: a response we cannot key correctly is not stored. No Vary gives an empty list.
pub fn vary_names(response_headers: &http::HeaderMap) -> Option<Vec<http::HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in response_headers.get_all(header::VARY) {
        for member in value.to_str().ok()?.split(',') {
            let member = member.trim();
            if member.is_empty() {
                continue;
            }
            if member == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(member.as_bytes()).ok()?);
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// A stable string of the request's values for those names (absent and present-but-empty distinguished; multiple values joined in order), used as the secondary cache key.
///
/// Each name contributes `name?;` when absent, or `name=LEN:VALUE;` where VALUE is its
/// lines joined with `", "` (RFC 9111 §4.1 treats that as the same field) with `%`, controls
/// and non-ASCII bytes percent-encoded, and LEN its length. The length prefix keeps the
/// key unambiguous whatever the values contain; the encoding keeps distinct bytes distinct.
pub fn vary_key(names: &[http::HeaderName], request_headers: &http::HeaderMap) -> String {
    let mut key = String::new();
    for name in names {
        key.push_str(name.as_str());
        let mut values = request_headers.get_all(name).iter();
        let Some(first) = values.next() else {
            key.push_str("?;");
            continue;
        };
        let mut value = encode_value(first.as_bytes());
        for next in values {
            value.push_str(", ");
            value.push_str(&encode_value(next.as_bytes()));
        }
        key.push('=');
        key.push_str(&value.len().to_string());
        key.push(':');
        key.push_str(&value);
        key.push(';');
    }
    key
}

fn encode_value(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    const DEFAULT: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(3600);

    use crate::policy::test_headers as headers;

    fn ttl(status: u16, pairs: &[(&str, &str)]) -> Option<Duration> {
        response_ttl(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            DEFAULT,
            MAX,
        )
    }

    fn cc(lines: &[&str]) -> CacheControl {
        let pairs: Vec<_> = lines.iter().map(|l| ("cache-control", *l)).collect();
        CacheControl::parse(&headers(&pairs))
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn request_modes() {
        use RequestCacheMode::*;
        let none = HeaderMap::new();
        assert_eq!(request_mode(&Method::GET, &none), Normal);
        assert_eq!(request_mode(&Method::HEAD, &none), Normal);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(request_mode(&method, &none), Bypass, "{method}");
        }
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(request_mode(&Method::GET, &auth), Bypass);
        for (line, mode) in [
            ("no-store", Bypass),
            ("max-age=0, no-store", Bypass),
            ("no-cache", Refresh),
            ("No-Cache", Refresh),
            ("max-age=0", Refresh),
            ("max-age=60", Normal),
            ("max-stale=10, only-if-cached", Normal),
        ] {
            let h = headers(&[("cache-control", line)]);
            assert_eq!(request_mode(&Method::GET, &h), mode, "{line}");
        }
    }

    #[test]
    fn ttl_precedence_and_cap() {
        assert_eq!(ttl(200, &[]), Some(DEFAULT));
        assert_eq!(ttl(200, &[("cache-control", "public")]), Some(DEFAULT));
        assert_eq!(ttl(200, &[("cache-control", "max-age=120")]), secs(120));
        // An explicit lifetime wins over the default in both directions.
        assert_eq!(ttl(200, &[("cache-control", "max-age=5")]), secs(5));
        assert_eq!(
            ttl(200, &[("cache-control", "max-age=120, s-maxage=600")]),
            secs(600)
        );
        assert_eq!(
            ttl(200, &[("cache-control", "s-maxage=10, max-age=600")]),
            secs(10)
        );
        assert_eq!(ttl(200, &[("cache-control", "max-age=999999")]), Some(MAX));
        assert_eq!(
            ttl(
                200,
                &[("cache-control", "s-maxage=99999999999999999999999")]
            ),
            Some(MAX)
        );
        let capped = response_ttl(
            StatusCode::OK,
            &HeaderMap::new(),
            Duration::from_secs(100),
            Duration::from_secs(10),
        );
        assert_eq!(capped, secs(10));
        // Expires is not read: the default applies.
        assert_eq!(
            ttl(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]),
            Some(DEFAULT)
        );
    }

    #[test]
    fn zero_ttl_is_not_stored() {
        assert_eq!(ttl(200, &[("cache-control", "max-age=0")]), None);
        assert_eq!(
            ttl(200, &[("cache-control", "max-age=60, s-maxage=0")]),
            None
        );
        let zero_default = response_ttl(StatusCode::OK, &HeaderMap::new(), Duration::ZERO, MAX);
        assert_eq!(zero_default, None);
    }

    #[test]
    fn forbidding_directives_and_headers_prevent_storage() {
        for line in [
            "no-store",
            "private",
            "no-cache",
            "public, max-age=60, private",
            "private=\"set-cookie\"",
            "no-cache=\"x-foo\", max-age=60",
        ] {
            assert_eq!(ttl(200, &[("cache-control", line)]), None, "{line}");
        }
        assert_eq!(ttl(200, &[("set-cookie", "sid=1")]), None);
        assert_eq!(
            ttl(
                200,
                &[
                    ("cache-control", "public, s-maxage=60"),
                    ("set-cookie", "a=b")
                ]
            ),
            None
        );
        assert_eq!(ttl(200, &[("vary", "*")]), None);
        assert_eq!(
            ttl(200, &[("vary", "accept"), ("vary", "user-agent, *")]),
            None
        );
        assert_eq!(ttl(200, &[("vary", "accept-encoding")]), Some(DEFAULT));
    }

    #[test]
    fn only_heuristically_cacheable_statuses() {
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(ttl(status, &[]), Some(DEFAULT), "{status}");
        }
        for status in [206, 302, 303, 307, 400, 401, 403, 500, 502, 503, 504] {
            assert_eq!(
                ttl(status, &[("cache-control", "public, max-age=60")]),
                None,
                "{status}"
            );
        }
    }

    #[test]
    fn cache_control_parsing_is_tolerant() {
        let sixty = CacheControl {
            max_age: Some(60),
            ..CacheControl::default()
        };
        for line in [
            "max-age=60",
            "MAX-AGE=60",
            "max-age=\"60\"",
            "Max-Age = 60",
            " ,max-age=60,, ",
        ] {
            assert_eq!(cc(&[line]), sixty, "{line}");
        }
        assert_eq!(
            cc(&["public", "S-MaxAge=10", "no-cache"]),
            CacheControl {
                public: true,
                no_cache: true,
                s_maxage: Some(10),
                ..CacheControl::default()
            }
        );
        // A comma inside a quoted argument does not start a directive.
        assert_eq!(
            cc(&["private=\"set-cookie, no-store\", max-age=5"]),
            CacheControl {
                private: true,
                max_age: Some(5),
                ..CacheControl::default()
            }
        );
        // Malformed numbers drop only that directive; the first good one wins.
        for line in [
            "max-age=-1",
            "max-age=1.5",
            "max-age=60s",
            "max-age=",
            "max-age",
            "max-age=\"60",
        ] {
            assert_eq!(cc(&[line]).max_age, None, "{line}");
        }
        assert_eq!(cc(&["max-age=abc, max-age=7, max-age=9"]).max_age, Some(7));
        assert_eq!(cc(&["max-age=99999999999999999999"]).max_age, Some(1 << 31));
        assert!(cc(&["x-unknown=\"a,b\", must-revalidate, NO-STORE"]).no_store);

        let mut h = HeaderMap::new();
        h.append(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"x-\xff\xfe, max-age=3").unwrap(),
        );
        assert_eq!(CacheControl::parse(&h).max_age, Some(3));
    }

    #[test]
    fn vary_names_are_sorted_deduplicated_lowercase() {
        let h = headers(&[
            ("vary", "User-Agent, accept-encoding"),
            ("vary", " Accept-Encoding ,Accept,,"),
        ]);
        let names = vary_names(&h).unwrap();
        let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "accept-encoding", "user-agent"]);
        assert_eq!(vary_names(&HeaderMap::new()), Some(vec![]));
        assert_eq!(vary_names(&headers(&[("vary", "accept, *")])), None);
        assert_eq!(vary_names(&headers(&[("vary", "accept, bad name")])), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::VARY,
            HeaderValue::from_bytes(b"acc\xffept").unwrap(),
        );
        assert_eq!(vary_names(&h), None);
    }

    #[test]
    fn vary_key_distinguishes_absent_empty_and_values() {
        let names = [header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
        let key = |pairs: &[(&str, &str)]| vary_key(&names, &headers(pairs));

        let absent = key(&[]);
        let empty = key(&[("accept-encoding", "")]);
        let gzip = key(&[("accept-encoding", "gzip")]);
        let br = key(&[("accept-encoding", "br")]);
        assert_eq!(absent, "accept-encoding?;accept-language?;");
        assert_eq!(empty, "accept-encoding=0:;accept-language?;");
        assert_eq!(gzip, "accept-encoding=4:gzip;accept-language?;");
        assert_ne!(gzip, br);
        // Unrelated headers do not matter.
        assert_eq!(gzip, key(&[("accept-encoding", "gzip"), ("cookie", "a=1")]));

        // Two lines are the same field as one comma-joined line (RFC 9111 §4.1).
        let two_lines = key(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]);
        assert_eq!(two_lines, key(&[("accept-encoding", "gzip, br")]));
        assert_ne!(
            two_lines,
            key(&[("accept-encoding", "br"), ("accept-encoding", "gzip")])
        );

        // A value that looks like the key syntax cannot forge another key.
        let forged = key(&[("accept-encoding", "x;accept-language=2:en")]);
        assert_ne!(
            forged,
            key(&[("accept-encoding", "x"), ("accept-language", "en")])
        );

        let raw = |bytes: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_bytes(bytes).unwrap(),
            );
            vary_key(&names, &h)
        };
        assert_ne!(raw(b"\xff"), raw(b"\xfe"));
        assert_ne!(raw(b"%FF"), raw(b"\xff"));
        assert_eq!(vary_key(&[], &headers(&[("accept", "x")])), "");
    }
}
