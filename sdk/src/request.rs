//! The request view hooks read and edit.

use crate::backend::{Header, RequestBackend};
use serde::Serialize;

/// The request as a hook sees it: editable in `on_request` (`&mut Request`), read-only
/// in `on_response` (`&Request`, the request as it went upstream).
///
/// A thin view over the gateway's request (a [`RequestBackend`]): every read is one
/// host call that copies only what it returns, and every edit is one host call that
/// takes effect at once (reads see it) and for the next plugin and the upstream when
/// the hook returns normally. Read what you need once and keep it in a local: `headers`
/// copies every header, prefer [`Request::header`].
///
/// Header names go in any case and come out lower-case; values are bytes
/// ([`Request::header`] is the UTF-8 convenience). An edit that breaks one of the
/// gateway's rules (see [`crate::rules`]) fails the hook call.
pub struct Request<'a> {
    backend: &'a mut dyn RequestBackend,
}

impl<'a> Request<'a> {
    /// A view over `backend` (the gateway's handle, or a [`crate::testing::TestRequest`]).
    pub fn new(backend: &'a mut dyn RequestBackend) -> Self {
        Self { backend }
    }

    /// The backend, for operations the view does not wrap.
    pub fn backend(&self) -> &dyn RequestBackend {
        &*self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut dyn RequestBackend {
        &mut *self.backend
    }

    /// The HTTP method, e.g. `"GET"`.
    pub fn method(&self) -> String {
        self.backend.method()
    }

    /// The normalised path the route matched (with the edits made so far).
    pub fn path(&self) -> String {
        self.backend.path()
    }

    /// The raw query string without '?', if there is one.
    pub fn query(&self) -> Option<String> {
        self.backend.query()
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
        self.query().map(|q| parse_query(&q)).unwrap_or_default()
    }

    /// The first value of header `name` (any case) as text; `None` if it is missing or
    /// not valid UTF-8 (use [`Request::header_bytes`] for raw bytes). One host call.
    pub fn header(&self, name: &str) -> Option<String> {
        self.backend
            .header(name)
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case) as raw bytes. One host call.
    pub fn header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.backend.header(name)
    }

    /// True if header `name` (any case) is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.backend.header(name).is_some()
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.backend.header_values(name)
    }

    /// Every header field as (lower-case name, value), in order. Copies all of them:
    /// prefer [`Request::header`] for the ones you need.
    pub fn headers(&self) -> Vec<Header> {
        self.backend.headers()
    }

    /// The client's IP address, e.g. `"127.0.0.1"` or `"::1"`.
    pub fn client_ip(&self) -> String {
        self.backend.client_ip()
    }

    /// The name of the matched route.
    pub fn route(&self) -> String {
        self.backend.route()
    }

    /// The route path parameter `name`, e.g. `"42"` for `id` in `/users/:id`.
    pub fn param(&self, name: &str) -> Option<String> {
        self.backend.param(name)
    }

    /// Every route path parameter as (name, value), in pattern order.
    pub fn params(&self) -> Vec<(String, String)> {
        self.backend.params()
    }

    /// The request body: present only if the plugin declared it
    /// ([`crate::Info::request_body`]) and it fit `plugins.max_body_bytes`.
    pub fn body(&self) -> Option<Vec<u8>> {
        self.backend.body()
    }

    /// The body as UTF-8 text, if present and valid.
    pub fn body_str(&self) -> Option<String> {
        self.body().and_then(|b| String::from_utf8(b).ok())
    }

    /// The body parsed as JSON.
    pub fn body_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let body = self.body().ok_or_else(|| "no request body".to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// What this plugin stashed for this request in its `on_request`, if anything
    /// (see [`Request::stash`]).
    pub fn stashed(&self) -> Option<Vec<u8>> {
        self.backend.stashed()
    }

    /// The stash as UTF-8 text, if present and valid.
    pub fn stashed_str(&self) -> Option<String> {
        self.stashed().and_then(|v| String::from_utf8(v).ok())
    }

    /// The stash parsed as JSON (see [`Request::stash_json`]).
    pub fn stashed_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let value = self
            .stashed()
            .ok_or_else(|| "nothing stashed".to_string())?;
        serde_json::from_slice(&value).map_err(|e| format!("invalid JSON stash: {e}"))
    }

    /// Sets header `name` to `value`, replacing every value it had.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.backend.set_header(name, value.as_ref());
    }

    /// Adds a value to header `name`, keeping the values it had.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.backend.append_header(name, value.as_ref());
    }

    /// Removes every value of header `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.backend.remove_header(name);
    }

    /// Replaces the path. It must start with '/'; the gateway normalises it like a
    /// client's (`.`/`..` segments) and refuses one that climbs above '/'.
    pub fn set_path(&mut self, path: &str) {
        self.backend.set_path(path);
    }

    /// Replaces the query string (given without '?').
    pub fn set_query(&mut self, query: &str) {
        self.backend.set_query(Some(query));
    }

    /// Removes the query string.
    pub fn remove_query(&mut self) {
        self.backend.set_query(None);
    }

    /// Replaces the body (the plugin must declare [`crate::Info::request_body`]).
    pub fn set_body(&mut self, body: impl AsRef<[u8]>) {
        self.backend.set_body(body.as_ref());
    }

    /// Keeps `value` (at most [`crate::rules::MAX_STASH_BYTES`], 4 KiB) for this
    /// plugin's `on_response` of the same request, where [`Request::stashed`] reads it.
    /// Instances are pooled, so a global cannot carry a value from one hook to the
    /// other: this can. A later stash replaces an earlier one.
    pub fn stash(&mut self, value: impl AsRef<[u8]>) {
        self.backend.stash(value.as_ref());
    }

    /// Stashes `value` as JSON (see [`Request::stash`]); an error if it cannot be
    /// serialised.
    pub fn stash_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| format!("not serialisable: {e}"))?;
        self.stash(bytes);
        Ok(())
    }
}

/// Splits a query string into decoded (name, value) pairs.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
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
    use crate::testing::{self, TestRequest};

    fn request() -> TestRequest {
        testing::request()
            .path("/users/42?a=1&b=hello+world&c=%41%zz&flag")
            .header("X-Api-Key", "k1")
            .header("binary", [0xff, 0xfe])
            .header("accept", "a")
            .header("accept", "b")
            .route("users")
            .param("id", "42")
            .build()
    }

    #[test]
    fn reads() {
        let mut backend = request();
        let r = Request::new(&mut backend);
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/users/42");
        assert_eq!(r.header("x-api-key").as_deref(), Some("k1"));
        assert_eq!(r.header("X-API-KEY").as_deref(), Some("k1"));
        assert!(r.has_header("Accept") && !r.has_header("missing"));
        assert_eq!(r.header("binary"), None);
        assert_eq!(r.header_bytes("BINARY"), Some(vec![0xff, 0xfe]));
        assert_eq!(
            r.header_values("Accept"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(r.headers().len(), 4);
        assert_eq!(r.client_ip(), "127.0.0.1");
        assert_eq!(r.route(), "users");
        assert_eq!(r.param("id").as_deref(), Some("42"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(r.params(), vec![("id".to_string(), "42".to_string())]);
        assert_eq!(r.body(), None);
        assert_eq!(r.stashed(), None);
        assert!(r.body_json::<serde_json::Value>().is_err());
    }

    #[test]
    fn query_params_are_decoded() {
        let mut backend = request();
        let r = Request::new(&mut backend);
        assert_eq!(r.query_param("a").as_deref(), Some("1"));
        assert_eq!(r.query_param("b").as_deref(), Some("hello world"));
        assert_eq!(r.query_param("c").as_deref(), Some("A%zz"));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(percent_decode("%e2%82%ac%"), "€%");
    }

    #[test]
    fn edits_are_seen_at_once() {
        let mut backend = request();
        let mut r = Request::new(&mut backend);
        r.set_header("X-Consumer-Id", "alice");
        r.append_header("accept", "c");
        r.remove_header("x-api-key");
        r.remove_header("not-there");
        r.set_path("/v2/./users/42");
        r.set_query("x=1");
        r.set_body("new");
        r.stash("kept");
        assert_eq!(r.path(), "/v2/users/42");
        assert_eq!(r.query().as_deref(), Some("x=1"));
        assert_eq!(r.header("x-consumer-id").as_deref(), Some("alice"));
        assert_eq!(r.header("x-api-key"), None);
        assert_eq!(r.header_values("accept").len(), 3);
        assert_eq!(r.body_str().as_deref(), Some("new"));
        assert_eq!(r.stashed_str().as_deref(), Some("kept"));
        r.remove_query();
        assert_eq!(r.query(), None);
        assert!(r.stash_json(&serde_json::json!({"n": 1})).is_ok());
        assert_eq!(
            r.stashed_json::<serde_json::Value>(),
            Ok(serde_json::json!({"n": 1}))
        );
        r.set_body(r#"{"a":1}"#);
        let v: serde_json::Value = r.body_json().unwrap_or_default();
        assert_eq!(v["a"], 1);
        assert!(r.backend().header("x-consumer-id").is_some());
        r.backend_mut().remove_header("x-consumer-id");
        assert!(!r.has_header("x-consumer-id"));
    }
}
