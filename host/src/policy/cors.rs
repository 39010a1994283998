//! Per-route CORS policy: origin matching, preflight answers and response headers (Fetch standard, "CORS protocol").

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::CorsConfig as CorsSpec;

/// What a preflight request gets.
#[derive(Debug)]
pub enum Preflight {
    /// 204 with these headers (Access-Control-Allow-Origin/-Methods/-Headers/-Credentials/-Max-Age, Vary).
    Allowed(http::HeaderMap),
    /// Refused; the reason is for the JSON error body and logs (e.g. "origin not allowed", "method not allowed", "header x-foo not allowed").
    Rejected(String),
}

/// A compiled [`CorsSpec`]: matching rules plus every header value it can send, built and
/// validated once so request handling never fails on configuration.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<OriginRule>,
    any_method: bool,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    any_header: bool,
    headers: Vec<HeaderName>,
    /// `None` when no header beyond the safelisted ones is allowed.
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// One non-`*` entry of `allow_origins`, lower-cased.
#[derive(Debug, Clone)]
enum OriginRule {
    /// A serialised origin (`scheme://host[:port]`) or `null`.
    Exact(String),
    /// `https://*.example.com` kept as `prefix = "https://"`, `suffix = ".example.com"`;
    /// what lies between must be one or more DNS labels.
    Subdomains { prefix: String, suffix: String },
}

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
const ORIGIN_TOKEN: &str = "Origin";

impl Cors {
    /// Compiles `spec`, or names the first entry that cannot be used.
    pub fn new(spec: &CorsSpec) -> Result<Self, String> {
        let mut any_origin = false;
        let mut origins = Vec::new();
        for raw in &spec.allow_origins {
            match compile_origin(raw)? {
                None => any_origin = true,
                Some(rule) => origins.push(rule),
            }
        }

        let mut any_method = false;
        let mut methods = Vec::new();
        for raw in &spec.allow_methods {
            if raw == "*" {
                any_method = true;
                continue;
            }
            let method = Method::from_bytes(raw.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("cors: invalid allow_methods entry {raw:?}"))?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if spec.allow_methods.is_empty() {
            methods = vec![Method::GET, Method::HEAD, Method::POST];
        }
        let allow_methods = join_value(methods.iter().map(Method::as_str), "allow_methods")?
            .unwrap_or(HeaderValue::from_static(""));

        let mut any_header = false;
        let mut headers = Vec::new();
        for raw in &spec.allow_headers {
            if raw == "*" {
                any_header = true;
                continue;
            }
            let name = HeaderName::from_bytes(raw.as_bytes())
                .map_err(|_| format!("cors: invalid allow_headers entry {raw:?}"))?;
            if !headers.contains(&name) {
                headers.push(name);
            }
        }
        let allow_headers = join_value(headers.iter().map(HeaderName::as_str), "allow_headers")?;

        let mut expose = Vec::new();
        for raw in &spec.expose_headers {
            if raw == "*" {
                // Fetch: a `*` here is a wildcard only for requests without credentials;
                // with them browsers read it as a header literally named "*".
                if spec.allow_credentials {
                    return Err(
                        "cors: expose_headers entry \"*\" has no effect with allow_credentials; list the header names"
                            .to_owned(),
                    );
                }
                expose.push("*".to_owned());
                continue;
            }
            let name = HeaderName::from_bytes(raw.as_bytes())
                .map_err(|_| format!("cors: invalid expose_headers entry {raw:?}"))?;
            if !expose.iter().any(|e| e == name.as_str()) {
                expose.push(name.as_str().to_owned());
            }
        }
        let expose_headers = join_value(expose.iter().map(String::as_str), "expose_headers")?;

        Ok(Self {
            any_origin,
            origins,
            any_method,
            methods,
            allow_methods,
            any_header,
            headers,
            allow_headers,
            expose_headers,
            credentials: spec.allow_credentials,
            max_age: spec.max_age_s.map(HeaderValue::from),
        })
    }

    /// OPTIONS with Origin and Access-Control-Request-Method.
    pub fn is_preflight(method: &http::Method, headers: &http::HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Decides a preflight from its request headers: origin, then method, then each requested header.
    pub fn preflight(&self, request_headers: &http::HeaderMap) -> Preflight {
        let Some(allow_origin) = self.allowed_origin(request_headers) else {
            return Preflight::Rejected("origin not allowed".to_owned());
        };
        let Some(method) = request_headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) else {
            return Preflight::Rejected("missing Access-Control-Request-Method".to_owned());
        };
        // Fetch compares methods byte-for-byte (only the standard ones are normalised by
        // the browser), so `patch` is not `PATCH`.
        let method_ok = if self.any_method {
            Method::from_bytes(method.as_bytes()).is_ok()
        } else {
            self.methods
                .iter()
                .any(|m| m.as_str().as_bytes() == method.as_bytes())
        };
        if !method_ok {
            return Preflight::Rejected("method not allowed".to_owned());
        }
        let Some(requested) = requested_headers(request_headers) else {
            return Preflight::Rejected("malformed Access-Control-Request-Headers".to_owned());
        };
        if !self.any_header
            && let Some(name) = requested.iter().find(|n| !self.headers.contains(n))
        {
            return Preflight::Rejected(format!("header {name} not allowed"));
        }

        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        let allow_methods = if self.any_method {
            // Reflected rather than `*`: the wildcard is ignored for credentialed requests.
            method.clone()
        } else {
            self.allow_methods.clone()
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow_methods);
        if !requested.is_empty() {
            let allow_headers = if self.any_header {
                // Reflected rather than `*`: `*` never covers Authorization and is ignored
                // with credentials (Fetch, CORS-preflight fetch step 7).
                let joined: Vec<&str> = requested.iter().map(HeaderName::as_str).collect();
                HeaderValue::from_str(&joined.join(", ")).ok()
            } else {
                self.allow_headers.clone()
            };
            if let Some(value) = allow_headers {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
            }
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        out.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        Preflight::Allowed(out)
    }

    /// For actual (non-preflight) requests: adds Access-Control-Allow-Origin (+ -Credentials, -Expose-Headers) to the response when the request's Origin is allowed, and always adds `Vary: Origin` (appending to an existing Vary, not duplicating) unless the policy is a credential-less "*". Leaves responses of requests without Origin untouched. Overwrites any Access-Control-* the upstream sent (the gateway's policy wins).
    pub fn apply(&self, request_headers: &http::HeaderMap, response_headers: &mut http::HeaderMap) {
        if !request_headers.contains_key(header::ORIGIN) {
            return;
        }
        // Removed even for refused origins: otherwise an upstream that allows everything
        // would bypass the route's policy.
        let upstream: Vec<HeaderName> = response_headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in upstream {
            response_headers.remove(name);
        }

        match self.allowed_origin(request_headers) {
            Some(allow_origin) => {
                response_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
                if self.credentials {
                    response_headers.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
                if let Some(expose) = &self.expose_headers {
                    response_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
                }
            }
            None => tracing::debug!(
                origin = ?request_headers.get(header::ORIGIN),
                "cors: origin not allowed, no Access-Control-Allow-Origin sent"
            ),
        }

        // A credential-less `*` answer is the same for every origin; any other answer
        // depends on Origin, so caches must key on it (Fetch §3.2.5 "CORS protocol and HTTP caches").
        if !self.any_origin || self.credentials {
            add_vary_origin(response_headers);
        }
    }

    /// The Access-Control-Allow-Origin value for this request, or `None` if its origin is
    /// not allowed (or absent, repeated or unreadable).
    fn allowed_origin(&self, request_headers: &HeaderMap) -> Option<HeaderValue> {
        let mut values = request_headers.get_all(header::ORIGIN).iter();
        let origin = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let text = origin.to_str().ok()?;
        if self.any_origin {
            // Fetch forbids `*` together with credentials: echo the origin instead.
            return Some(if self.credentials {
                origin.clone()
            } else {
                HeaderValue::from_static("*")
            });
        }
        self.origins
            .iter()
            .any(|rule| rule.matches(text))
            .then(|| origin.clone())
    }
}

impl OriginRule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            // Scheme and host are case-insensitive (RFC 3986 §6.2.2.1); browsers send
            // them lower-case, but hand-written clients may not.
            OriginRule::Exact(expected) => origin.eq_ignore_ascii_case(expected),
            OriginRule::Subdomains { prefix, suffix } => {
                let bytes = origin.as_bytes();
                if bytes.len() <= prefix.len() + suffix.len() {
                    return false;
                }
                let (head, rest) = bytes.split_at(prefix.len());
                let (labels, tail) = rest.split_at(rest.len() - suffix.len());
                head.eq_ignore_ascii_case(prefix.as_bytes())
                    && tail.eq_ignore_ascii_case(suffix.as_bytes())
                    && is_dns_labels(labels)
            }
        }
    }
}

/// One or more non-empty dot-separated labels of letters, digits and `-`; this is what keeps
/// `https://x@evil.com/.example.com`-style tricks out of a wildcard.
fn is_dns_labels(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// `None` for `*`; otherwise the rule, or an error naming `raw`.
fn compile_origin(raw: &str) -> Result<Option<OriginRule>, String> {
    let bad = |why: &str| format!("cors: invalid allow_origins entry {raw:?}: {why}");
    if raw == "*" {
        return Ok(None);
    }
    if raw.eq_ignore_ascii_case("null") {
        return Ok(Some(OriginRule::Exact("null".to_owned())));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only visible ASCII without spaces is allowed"));
    }
    let lower = raw.to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(bad("expected scheme://host[:port]"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(bad("invalid scheme"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad(
            "an origin has no path, query or fragment (drop any trailing '/')",
        ));
    }
    if authority.contains('@') {
        return Err(bad("an origin has no user info"));
    }
    let (host_port, wildcard) = match authority.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (authority, false),
    };
    if host_port.contains('*') {
        return Err(bad(
            "'*' is only allowed as the whole first label, as in https://*.example.com",
        ));
    }
    let host_ok = if let Some(bracketed) = host_port.strip_prefix('[') {
        // IPv6 literal: `[...]` then an optional port.
        match bracketed.split_once(']') {
            Some((addr, port)) => {
                !wildcard
                    && !addr.is_empty()
                    && addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
            }
            None => false,
        }
    } else {
        let (host, port) = match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        };
        is_dns_labels(host.as_bytes()) && port.is_none_or(is_port)
    };
    if !host_ok {
        return Err(bad("invalid host or port"));
    }
    Ok(Some(if wildcard {
        OriginRule::Subdomains {
            prefix: format!("{scheme}://"),
            suffix: format!(".{host_port}"),
        }
    } else {
        OriginRule::Exact(lower)
    }))
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Joins tokens into one list value; `Ok(None)` when there are none.
fn join_value<'a>(
    items: impl Iterator<Item = &'a str>,
    field: &str,
) -> Result<Option<HeaderValue>, String> {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&joined)
        .map(Some)
        .map_err(|_| format!("cors: {field} do not form a valid header value: {joined:?}"))
}

/// The names in all Access-Control-Request-Headers lines, lower-cased and deduplicated;
/// `None` if any entry is not a header name.
fn requested_headers(request_headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in request_headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        for item in value.to_str().ok()?.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let name = HeaderName::from_bytes(item.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// Adds `Origin` to Vary unless already listed (or `*`, which covers it). A single existing
/// line is extended in place; otherwise a new line is added, which RFC 9110 §5.3 makes
/// equivalent to one combined line.
fn add_vary_origin(response_headers: &mut HeaderMap) {
    let mut lines = 0;
    let mut covered = false;
    for value in response_headers.get_all(header::VARY) {
        lines += 1;
        if let Ok(text) = value.to_str() {
            covered |= text
                .split(',')
                .map(str::trim)
                .any(|member| member == "*" || member.eq_ignore_ascii_case(ORIGIN_TOKEN));
        }
    }
    if covered {
        return;
    }
    let merged = if lines == 1 {
        response_headers
            .get(header::VARY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .and_then(|text| HeaderValue::from_str(&format!("{text}, {ORIGIN_TOKEN}")).ok())
    } else {
        None
    };
    match merged {
        Some(value) => {
            response_headers.insert(header::VARY, value);
        }
        None if lines == 1 => {
            // The one line is empty or unreadable: replace an empty one, keep anything else.
            let empty = response_headers
                .get(header::VARY)
                .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace));
            let origin = HeaderValue::from_static(ORIGIN_TOKEN);
            if empty {
                response_headers.insert(header::VARY, origin);
            } else {
                response_headers.append(header::VARY, origin);
            }
        }
        None => {
            response_headers.append(header::VARY, HeaderValue::from_static(ORIGIN_TOKEN));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(origins: &[&str]) -> CorsSpec {
        CorsSpec {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsSpec::default()
        }
    }

    fn cors(spec: &CorsSpec) -> Cors {
        match Cors::new(spec) {
            Ok(cors) => cors,
            Err(e) => panic!("spec should compile: {e}"),
        }
    }

    use crate::policy::test_headers as headers;

    fn preflight_req(origin: &str, method: &str, request_headers: Option<&str>) -> HeaderMap {
        let mut map = headers(&[
            ("origin", origin),
            ("access-control-request-method", method),
        ]);
        if let Some(h) = request_headers {
            map.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(h).unwrap(),
            );
        }
        map
    }

    fn allowed(p: Preflight) -> HeaderMap {
        match p {
            Preflight::Allowed(h) => h,
            Preflight::Rejected(why) => panic!("expected Allowed, got Rejected({why})"),
        }
    }

    fn rejected(p: Preflight) -> String {
        match p {
            Preflight::Rejected(why) => why,
            Preflight::Allowed(h) => panic!("expected Rejected, got Allowed({h:?})"),
        }
    }

    /// The Access-Control-Allow-Origin `apply` sends for `origin`, if any.
    fn acao(c: &Cors, origin: &str) -> Option<String> {
        let mut resp = HeaderMap::new();
        c.apply(&headers(&[("origin", origin)]), &mut resp);
        resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn exact_origin_matches_case_insensitively_only_itself() {
        let c = cors(&spec(&["https://App.Example.com", "http://localhost:8080"]));
        assert_eq!(
            acao(&c, "https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        // Reflected as sent, compared case-insensitively.
        assert_eq!(
            acao(&c, "HTTPS://APP.EXAMPLE.COM").as_deref(),
            Some("HTTPS://APP.EXAMPLE.COM")
        );
        assert!(acao(&c, "http://localhost:8080").is_some());
        for miss in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evil.app.example.com",
            "http://localhost",
            "null",
        ] {
            assert_eq!(acao(&c, miss), None, "{miss} must not match");
        }
    }

    #[test]
    fn wildcard_origin_matches_subdomains_only() {
        let c = cors(&spec(&["https://*.example.com"]));
        assert!(acao(&c, "https://a.example.com").is_some());
        assert!(acao(&c, "https://a.b.example.com").is_some());
        assert!(acao(&c, "https://A.Example.COM").is_some());
        for miss in [
            "https://example.com",
            "https://evil-example.com",
            "http://a.example.com",
            "https://.example.com",
            "https://a..example.com",
            "https://x@a.example.com",
            "https://a.example.com.evil.com",
            "https://a.example.com:8443",
            "null",
        ] {
            assert_eq!(acao(&c, miss), None, "{miss} must not match");
        }
        let with_port = cors(&spec(&["https://*.example.com:8443"]));
        assert!(acao(&with_port, "https://a.example.com:8443").is_some());
        assert!(acao(&with_port, "https://a.example.com").is_none());
    }

    #[test]
    fn star_allows_any_origin_including_null() {
        let c = cors(&spec(&["*"]));
        assert_eq!(acao(&c, "https://anything.test").as_deref(), Some("*"));
        assert_eq!(acao(&c, "null").as_deref(), Some("*"));
    }

    #[test]
    fn null_origin_needs_explicit_entry() {
        let c = cors(&spec(&["null"]));
        assert_eq!(acao(&c, "null").as_deref(), Some("null"));
        assert_eq!(acao(&c, "https://a.example.com"), None);
        let wildcard = cors(&spec(&["https://*.example.com"]));
        assert_eq!(acao(&wildcard, "null"), None);
    }

    #[test]
    fn empty_origin_list_allows_nothing() {
        let c = cors(&spec(&[]));
        assert_eq!(acao(&c, "https://a.test"), None);
        assert_eq!(acao(&c, "null"), None);
        assert_eq!(
            rejected(c.preflight(&preflight_req("https://a.test", "GET", None))),
            "origin not allowed"
        );
    }

    #[test]
    fn unreadable_or_repeated_origin_is_not_allowed() {
        let c = cors(&spec(&["*"]));
        let mut req = HeaderMap::new();
        req.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"https://\xffa.test").unwrap(),
        );
        let mut resp = HeaderMap::new();
        c.apply(&req, &mut resp);
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

        let req = headers(&[("origin", "https://a.test"), ("origin", "https://b.test")]);
        let mut resp = HeaderMap::new();
        c.apply(&req, &mut resp);
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn preflight_allowed_carries_configured_headers() {
        let c = cors(&CorsSpec {
            allow_methods: vec!["get".into(), "PUT".into(), "put".into()],
            allow_headers: vec!["X-Foo".into(), "content-type".into()],
            max_age_s: Some(600),
            ..spec(&["https://app.example.com"])
        });
        let h = allowed(c.preflight(&preflight_req(
            "https://app.example.com",
            "PUT",
            Some("Content-Type, x-foo"),
        )));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("x-foo, content-type")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        assert_eq!(
            get(&h, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn preflight_omits_allow_headers_and_max_age_when_not_needed() {
        let c = cors(&CorsSpec {
            allow_headers: vec!["x-foo".into()],
            ..spec(&["https://app.example.com"])
        });
        let h = allowed(c.preflight(&preflight_req("https://app.example.com", "POST", None)));
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_HEADERS).is_none());
        assert!(h.get(header::ACCESS_CONTROL_MAX_AGE).is_none());
    }

    #[test]
    fn preflight_rejects_origin_method_and_header() {
        let c = cors(&CorsSpec {
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["x-foo".into()],
            ..spec(&["https://app.example.com"])
        });
        assert_eq!(
            rejected(c.preflight(&preflight_req("https://evil.test", "GET", None))),
            "origin not allowed"
        );
        assert_eq!(
            rejected(c.preflight(&preflight_req("https://app.example.com", "DELETE", None))),
            "method not allowed"
        );
        // Methods are case-sensitive on the wire (Fetch).
        assert_eq!(
            rejected(c.preflight(&preflight_req("https://app.example.com", "put", None))),
            "method not allowed"
        );
        assert_eq!(
            rejected(c.preflight(&preflight_req(
                "https://app.example.com",
                "PUT",
                Some("X-Foo, X-Bar")
            ))),
            "header x-bar not allowed"
        );
        assert_eq!(
            rejected(c.preflight(&preflight_req(
                "https://app.example.com",
                "PUT",
                Some("x-foo, bad header")
            ))),
            "malformed Access-Control-Request-Headers"
        );
        let no_method = headers(&[("origin", "https://app.example.com")]);
        assert_eq!(
            rejected(c.preflight(&no_method)),
            "missing Access-Control-Request-Method"
        );
    }

    #[test]
    fn preflight_star_headers_reflects_requested_list() {
        let c = cors(&CorsSpec {
            allow_headers: vec!["*".into()],
            ..spec(&["https://app.example.com"])
        });
        let mut req = preflight_req(
            "https://app.example.com",
            "GET",
            Some(" X-One ,authorization,,"),
        );
        req.append(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-two, x-one"),
        );
        let h = allowed(c.preflight(&req));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("x-one, authorization, x-two")
        );
    }

    #[test]
    fn star_methods_reflect_requested_method() {
        let c = cors(&CorsSpec {
            allow_methods: vec!["*".into()],
            ..spec(&["https://app.example.com"])
        });
        let h = allowed(c.preflight(&preflight_req("https://app.example.com", "PURGE", None)));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PURGE"));
    }

    #[test]
    fn credentials_never_send_star_origin() {
        let c = cors(&CorsSpec {
            allow_credentials: true,
            allow_headers: vec!["*".into()],
            ..spec(&["*"])
        });
        let h = allowed(c.preflight(&preflight_req(
            "https://app.example.com",
            "GET",
            Some("x-foo"),
        )));
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-foo"));

        let mut resp = HeaderMap::new();
        c.apply(&headers(&[("origin", "https://b.test")]), &mut resp);
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("https://b.test")
        );
        assert_eq!(get(&resp, "access-control-allow-credentials"), Some("true"));
        // The answer now depends on Origin, so caches must know.
        assert_eq!(get(&resp, "vary"), Some("Origin"));
    }

    #[test]
    fn is_preflight_needs_options_origin_and_request_method() {
        let full = preflight_req("https://a.test", "PUT", None);
        assert!(Cors::is_preflight(&Method::OPTIONS, &full));
        assert!(!Cors::is_preflight(&Method::GET, &full));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &headers(&[("origin", "https://a.test")])
        ));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &headers(&[("access-control-request-method", "PUT")])
        ));
    }

    #[test]
    fn apply_adds_headers_for_allowed_origin_only() {
        let c = cors(&CorsSpec {
            allow_credentials: true,
            expose_headers: vec!["X-Request-Id".into(), "etag".into()],
            ..spec(&["https://app.example.com"])
        });
        let mut resp = headers(&[("content-type", "text/plain")]);
        c.apply(
            &headers(&[("origin", "https://app.example.com")]),
            &mut resp,
        );
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&resp, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&resp, "access-control-expose-headers"),
            Some("x-request-id, etag")
        );
        assert_eq!(get(&resp, "vary"), Some("Origin"));

        let mut resp = headers(&[
            ("content-type", "text/plain"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
        ]);
        c.apply(&headers(&[("origin", "https://evil.test")]), &mut resp);
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert!(resp.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        assert_eq!(get(&resp, "vary"), Some("Origin"));
        assert_eq!(get(&resp, "content-type"), Some("text/plain"));
    }

    #[test]
    fn apply_appends_vary_without_duplicating() {
        let c = cors(&spec(&["https://app.example.com"]));
        let req = headers(&[("origin", "https://app.example.com")]);

        let mut resp = headers(&[("vary", "Accept-Encoding")]);
        c.apply(&req, &mut resp);
        let vary: Vec<_> = resp.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding, Origin"]);

        for already in ["accept-encoding, origin", "ORIGIN", "*"] {
            let mut resp = headers(&[("vary", already)]);
            c.apply(&req, &mut resp);
            let vary: Vec<_> = resp.get_all(header::VARY).iter().collect();
            assert_eq!(vary, [already], "Vary: {already} already covers Origin");
        }

        let mut resp = headers(&[("vary", "Accept"), ("vary", "Accept-Language")]);
        c.apply(&req, &mut resp);
        let vary: Vec<_> = resp.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Accept-Language", "Origin"]);

        let mut resp = headers(&[("vary", "Accept"), ("vary", "origin")]);
        c.apply(&req, &mut resp);
        assert_eq!(resp.get_all(header::VARY).iter().count(), 2);
    }

    #[test]
    fn apply_overwrites_upstream_access_control_headers() {
        let c = cors(&spec(&["https://app.example.com"]));
        let mut resp = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-origin", "https://other.test"),
            ("access-control-expose-headers", "x-secret"),
            ("access-control-allow-methods", "DELETE"),
        ]);
        c.apply(
            &headers(&[("origin", "https://app.example.com")]),
            &mut resp,
        );
        let acao: Vec<_> = resp
            .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .iter()
            .collect();
        assert_eq!(acao, ["https://app.example.com"]);
        assert!(resp.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        assert!(resp.get(header::ACCESS_CONTROL_ALLOW_METHODS).is_none());
    }

    #[test]
    fn apply_without_origin_leaves_response_untouched() {
        let c = cors(&spec(&["https://app.example.com"]));
        let original = headers(&[
            ("access-control-allow-origin", "*"),
            ("vary", "Accept-Encoding"),
        ]);
        let mut resp = original.clone();
        c.apply(&headers(&[("host", "api.test")]), &mut resp);
        assert_eq!(resp, original);
    }

    #[test]
    fn credential_less_star_sends_star_without_vary() {
        let c = cors(&CorsSpec {
            expose_headers: vec!["*".into()],
            ..spec(&["*"])
        });
        let mut resp = headers(&[("vary", "Accept-Encoding")]);
        c.apply(&headers(&[("origin", "https://a.test")]), &mut resp);
        assert_eq!(get(&resp, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&resp, "access-control-expose-headers"), Some("*"));
        assert_eq!(get(&resp, "vary"), Some("Accept-Encoding"));
        assert_eq!(resp.get_all(header::VARY).iter().count(), 1);
    }

    #[test]
    fn new_rejects_invalid_config_naming_the_value() {
        let cases: Vec<(CorsSpec, &str)> = vec![
            (
                CorsSpec {
                    allow_headers: vec!["x-ok".into(), "X Foo".into()],
                    ..spec(&["*"])
                },
                "\"X Foo\"",
            ),
            (
                spec(&["https://a.example.com\nX-Evil: 1"]),
                "\"https://a.example.com\\nX-Evil: 1\"",
            ),
            (
                spec(&["https://a.example.com/"]),
                "\"https://a.example.com/\"",
            ),
            (spec(&["a.example.com"]), "\"a.example.com\""),
            (
                spec(&["https://a.*.example.com"]),
                "\"https://a.*.example.com\"",
            ),
            (spec(&["https://*example.com"]), "\"https://*example.com\""),
            (
                spec(&["https://a.example.com:80x"]),
                "\"https://a.example.com:80x\"",
            ),
            (
                CorsSpec {
                    allow_methods: vec!["GET".into(), "P UT".into()],
                    ..spec(&["*"])
                },
                "\"P UT\"",
            ),
            (
                CorsSpec {
                    expose_headers: vec!["x-ok".into(), "x\u{e9}".into()],
                    ..spec(&["*"])
                },
                "\"x\u{e9}\"",
            ),
            (
                CorsSpec {
                    allow_credentials: true,
                    expose_headers: vec!["*".into()],
                    ..spec(&["*"])
                },
                "expose_headers",
            ),
        ];
        for (bad, needle) in cases {
            match Cors::new(&bad) {
                Ok(_) => panic!("{bad:?} should be rejected"),
                Err(e) => assert!(e.contains(needle), "error {e:?} should name {needle}"),
            }
        }
    }
}
