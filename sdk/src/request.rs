//! The request view a plugin reads and edits, and the edits it produces.

use crate::headers::Headers;

/// The request as a plugin sees it in `on_request` (editable) and `on_response`
/// (read-only).
///
/// Every change made through the setters is recorded; `on_request` then hands the host
/// exactly those changes (see [`RequestEdits`]).
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    path: String,
    /// The path before the first `set_path` (kept only then: most hooks never change it).
    original_path: Option<String>,
    query: Option<String>,
    /// The query before the first `set_query`.
    original_query: Option<Option<String>>,
    headers: Headers,
    client_ip: String,
    route: String,
    params: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    body_set: bool,
}

/// The changes a plugin made to a request, as sent to the host.
///
/// Only real changes are listed: setting a header to the single value it already had,
/// removing a header that was not there, or setting the path back to what it was
/// leaves no edit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// Headers to set, (lower-case name, value); each replaces every value of its name.
    pub set_headers: Vec<(String, Vec<u8>)>,
    /// Header names to remove (applied before the sets).
    pub remove_headers: Vec<String>,
    /// The new path.
    pub path: Option<String>,
    /// The new query string (without '?'; an empty string removes the query).
    pub query: Option<String>,
    /// The new body.
    pub body: Option<Vec<u8>>,
}

impl RequestEdits {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The value a `set-headers` edit gives `name` (any case), as UTF-8 text.
    pub fn set_header(&self, name: &str) -> Option<&str> {
        self.set_header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw value a `set-headers` edit gives `name` (any case).
    pub fn set_header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.set_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// True if the edits remove `name` (any case).
    pub fn removes_header(&self, name: &str) -> bool {
        self.remove_headers
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The parts of a request, as the host sends them.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestParts {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub client_ip: String,
    pub route: String,
    pub params: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub(crate) fn from_parts(parts: RequestParts) -> Self {
        let query = parts.query.filter(|q| !q.is_empty());
        Self {
            method: parts.method,
            original_path: None,
            path: parts.path,
            original_query: None,
            query,
            headers: Headers::new(parts.headers),
            client_ip: parts.client_ip,
            route: parts.route,
            params: parts.params,
            body: parts.body,
            body_set: false,
        }
    }

    /// The HTTP method, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path (as the route matched it, or as set by [`Request::set_path`]).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Replaces the path. A path not starting with '/' gets one put in front.
    pub fn set_path(&mut self, path: impl Into<String>) {
        let path = path.into();
        if self.original_path.is_none() {
            self.original_path = Some(self.path.clone());
        }
        self.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
    }

    /// The raw query string without '?', if there is one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Replaces the query string; a leading '?' is dropped and an empty string removes
    /// the query.
    pub fn set_query(&mut self, query: impl Into<String>) {
        let query = query.into();
        let query = query.strip_prefix('?').unwrap_or(&query);
        if self.original_query.is_none() {
            self.original_query = Some(self.query.clone());
        }
        self.query = (!query.is_empty()).then(|| query.to_string());
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Every query parameter as decoded (name, value) pairs, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        let Some(query) = self.query.as_deref() else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect()
    }

    /// The first value of header `name` (any case) as text; `None` if it is missing or
    /// not valid UTF-8 (use [`Request::header_bytes`] for raw bytes).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// The first value of header `name` (any case) as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name)
    }

    /// All headers as (lower-case name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter()
    }

    /// Sets header `name` to `value`, replacing every value it had.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers.set(name, value.as_ref());
    }

    /// Removes every value of header `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.remove(name);
    }

    /// The client's IP address, e.g. `"127.0.0.1"` or `"::1"`.
    pub fn client_ip(&self) -> &str {
        &self.client_ip
    }

    /// The name of the matched route.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The route path parameter `name`, e.g. `"42"` for `id` in `/users/:id`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All route path parameters as (name, value).
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The request body; only present if the plugin asked for it
    /// ([`crate::Info::request_body`]) and it fit the gateway's limit.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The body as UTF-8 text, if present and valid.
    pub fn body_str(&self) -> Option<&str> {
        self.body().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The body parsed as JSON.
    pub fn body_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let body = self.body().ok_or_else(|| "no request body".to_string())?;
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// Replaces the body (the plugin must ask for the request body in its
    /// [`crate::Info`]).
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
        self.body_set = true;
    }

    /// The changes made through this view so far.
    pub fn edits(&self) -> RequestEdits {
        let (set_headers, remove_headers) = self.headers.edits();
        RequestEdits {
            set_headers,
            remove_headers,
            path: self
                .original_path
                .as_ref()
                .filter(|original| **original != self.path)
                .map(|_| self.path.clone()),
            query: self
                .original_query
                .as_ref()
                .filter(|original| **original != self.query)
                .map(|_| self.query.clone().unwrap_or_default()),
            body: if self.body_set {
                self.body.clone()
            } else {
                None
            },
        }
    }
}

/// Decodes a query-string component: `+` is a space, `%XX` a byte; invalid UTF-8 is
/// replaced, a malformed escape is kept as it is.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request::from_parts(RequestParts {
            method: "GET".into(),
            path: "/users/42".into(),
            query: Some("a=1&b=hello+world&c=%41%zz&flag".into()),
            headers: vec![
                ("X-Api-Key".into(), b"k1".to_vec()),
                ("binary".into(), vec![0xff, 0xfe]),
            ],
            client_ip: "127.0.0.1".into(),
            route: "users".into(),
            params: vec![("id".into(), "42".into())],
            body: None,
        })
    }

    #[test]
    fn reads() {
        let r = request();
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/users/42");
        assert_eq!(r.header("x-api-key"), Some("k1"));
        assert_eq!(r.header("binary"), None);
        assert_eq!(r.header_bytes("BINARY"), Some(&[0xff, 0xfe][..]));
        assert_eq!(r.headers().count(), 2);
        assert_eq!(r.client_ip(), "127.0.0.1");
        assert_eq!(r.route(), "users");
        assert_eq!(r.param("id"), Some("42"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(r.body(), None);
        assert!(r.edits().is_empty());
    }

    #[test]
    fn query_params_are_decoded() {
        let r = request();
        assert_eq!(r.query_param("a").as_deref(), Some("1"));
        assert_eq!(r.query_param("b").as_deref(), Some("hello world"));
        assert_eq!(r.query_param("c").as_deref(), Some("A%zz"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(percent_decode("%e2%82%ac%"), "€%");
    }

    #[test]
    fn edits_record_exactly_the_changes() {
        let mut r = request();
        r.set_header("X-Consumer-Id", "alice");
        r.remove_header("x-api-key");
        r.remove_header("not-there");
        r.set_path("v2/users/42");
        r.set_query("?x=1");
        r.set_body("new");
        assert_eq!(r.path(), "/v2/users/42");
        assert_eq!(r.query(), Some("x=1"));
        assert_eq!(r.header("x-consumer-id"), Some("alice"));
        assert_eq!(r.header("x-api-key"), None);
        let edits = r.edits();
        assert_eq!(
            edits,
            RequestEdits {
                set_headers: vec![("x-consumer-id".into(), b"alice".to_vec())],
                remove_headers: vec!["x-api-key".into()],
                path: Some("/v2/users/42".into()),
                query: Some("x=1".into()),
                body: Some(b"new".to_vec()),
            }
        );
        assert_eq!(edits.set_header("X-CONSUMER-ID"), Some("alice"));
        assert!(edits.removes_header("X-Api-Key"));
    }

    #[test]
    fn removing_the_query_is_an_empty_string_edit() {
        let mut r = request();
        r.set_query("");
        assert_eq!(r.query(), None);
        assert_eq!(r.edits().query.as_deref(), Some(""));
    }

    #[test]
    fn setting_things_back_is_no_edit() {
        let mut r = request();
        r.set_path("/other");
        r.set_path("/users/42");
        r.set_query("a=1&b=hello+world&c=%41%zz&flag");
        r.set_header("x-api-key", "k1");
        assert!(r.edits().is_empty());
    }

    #[test]
    fn json_body() {
        let mut r = request();
        assert!(r.body_json::<serde_json::Value>().is_err());
        r.set_body(r#"{"a":1}"#);
        let v: serde_json::Value = r.body_json().unwrap_or_default();
        assert_eq!(v["a"], 1);
        assert_eq!(r.body_str(), Some(r#"{"a":1}"#));
    }
}
