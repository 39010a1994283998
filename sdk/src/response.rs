//! The response view, direct responses and the request action.

use crate::backend::{Header, ResponseBackend};
use serde::Serialize;

/// What `on_request` decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next plugin and the upstream, with the edits made to the request.
    #[default]
    Continue,
    /// Answer now with this response; the upstream and the later plugins are not
    /// called. Its status must be 200-599 and its headers follow the rules of edits.
    Respond(DirectResponse),
}

impl Action {
    /// Answers now with a JSON body (see [`DirectResponse::json`]).
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        Self::Respond(DirectResponse::json(status, value))
    }

    /// Answers now with a plain-text body (see [`DirectResponse::text`]).
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::Respond(DirectResponse::text(status, body))
    }

    /// True for [`Action::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue)
    }
}

impl From<DirectResponse> for Action {
    fn from(response: DirectResponse) -> Self {
        Self::Respond(response)
    }
}

/// A response the plugin sends itself instead of calling the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectResponse {
    status: u16,
    headers: Vec<Header>,
    body: Vec<u8>,
}

impl DirectResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON response (`content-type: application/json`). If `value` cannot be
    /// serialised (e.g. a map with non-string keys) the result is a 500 saying so.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => Self::new(500)
                .with_header("content-type", "application/json")
                .with_body(error_body(
                    "plugin_error",
                    &format!("could not serialise the response: {e}"),
                )),
        }
    }

    /// A plain-text response (`content-type: text/plain; charset=utf-8`).
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// The gateway's error shape: `{"error":"<error>","message":"<message>"}` as JSON.
    pub fn error(status: u16, error: &str, message: &str) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(error_body(error, message))
    }

    /// Adds a header (name lower-cased); an existing one of the same name is kept, so
    /// this can add several values. The gateway's rules for edits apply (see
    /// [`crate::rules`]): framing headers such as `content-length` are its own.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case) as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// All headers as (lower-case name, value).
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text (invalid bytes replaced).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn body_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// The parts: status, headers as (lower-case name, value), body.
    pub fn into_parts(self) -> (u16, Vec<Header>, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

/// `{"error":..,"message":..}` as JSON bytes.
pub(crate) fn error_body(error: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "error": error, "message": message })
        .to_string()
        .into_bytes()
}

/// The response as `on_response` sees it: the upstream's answer (or a plugin's direct
/// one) so far, editable in place.
///
/// Like [`crate::Request`], a thin view over the gateway's response (a
/// [`ResponseBackend`]): each read and each edit is one host call, and edits take
/// effect when the hook returns normally. An edit that breaks one of the gateway's
/// rules (see [`crate::rules`]) fails the hook call.
pub struct Response<'a> {
    backend: &'a mut dyn ResponseBackend,
}

impl<'a> Response<'a> {
    /// A view over `backend` (the gateway's handle, or a [`crate::testing::TestResponse`]).
    pub fn new(backend: &'a mut dyn ResponseBackend) -> Self {
        Self { backend }
    }

    /// The backend, for operations the view does not wrap.
    pub fn backend(&self) -> &dyn ResponseBackend {
        &*self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut dyn ResponseBackend {
        &mut *self.backend
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.backend.status()
    }

    /// Replaces the status code (200-599).
    pub fn set_status(&mut self, status: u16) {
        self.backend.set_status(status);
    }

    /// The first value of header `name` (any case) as text; `None` if missing or not
    /// valid UTF-8. One host call.
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
    /// prefer [`Response::header`].
    pub fn headers(&self) -> Vec<Header> {
        self.backend.headers()
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

    /// The body: present only if the plugin declared it ([`crate::Info::response_body`])
    /// and it fit `plugins.max_body_bytes`.
    pub fn body(&self) -> Option<Vec<u8>> {
        self.backend.body()
    }

    /// The body as UTF-8 text, if present and valid.
    pub fn body_str(&self) -> Option<String> {
        self.body().and_then(|b| String::from_utf8(b).ok())
    }

    /// The body parsed as JSON.
    pub fn body_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let body = self.body().ok_or_else(|| "no response body".to_string())?;
        serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: impl AsRef<[u8]>) {
        self.backend.set_body(body.as_ref());
    }

    /// Replaces the body with `value` as JSON and sets `content-type: application/json`;
    /// an error (and no change) if it cannot be serialised.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let body = serde_json::to_vec(value).map_err(|e| format!("not serialisable: {e}"))?;
        self.set_header("content-type", "application/json");
        self.set_body(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_response() {
        let r = DirectResponse::json(401, &serde_json::json!({"error": "unauthorized"}))
            .with_header("WWW-Authenticate", "ApiKey");
        assert_eq!(r.status(), 401);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
        assert_eq!(r.body_str(), r#"{"error":"unauthorized"}"#);
    }

    #[test]
    fn json_of_a_struct_and_unserialisable_values() {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            count: u32,
        }
        let r = DirectResponse::json(
            429,
            &Body {
                error: "quota",
                count: 3,
            },
        );
        assert_eq!(r.body_str(), r#"{"error":"quota","count":3}"#);

        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        let r = DirectResponse::json(200, &bad);
        assert_eq!(r.status(), 500);
        let v: serde_json::Value = r.body_json().unwrap_or_default();
        assert_eq!(v["error"], "plugin_error");
    }

    #[test]
    fn error_and_text_responses() {
        let r = DirectResponse::error(401, "unauthorized", "missing API key");
        assert_eq!(
            r.body_str(),
            r#"{"error":"unauthorized","message":"missing API key"}"#
        );
        let t = DirectResponse::text(418, "teapot").with_header("x-a", "1");
        assert_eq!(t.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(t.header("x-a"), Some("1"));
        assert_eq!(t.body(), b"teapot");
        assert_eq!(
            Action::text(418, "teapot"),
            Action::Respond(DirectResponse::text(418, "teapot"))
        );
        assert!(Action::default().is_continue());
    }

    #[test]
    fn response_view() {
        let mut backend = crate::testing::response(200)
            .header("Server", "up")
            .body("{}")
            .build();
        let mut r = Response::new(&mut backend);
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("server").as_deref(), Some("up"));
        assert_eq!(r.body_str().as_deref(), Some("{}"));
        r.set_status(201);
        r.set_header("X-Tag", "a");
        r.append_header("x-tag", "b");
        r.remove_header("Server");
        assert_eq!(r.status(), 201);
        assert_eq!(r.header("x-tag").as_deref(), Some("a"));
        assert_eq!(r.header_values("X-TAG"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(!r.has_header("server"));
        assert_eq!(r.headers().len(), 2);
        assert!(r.set_json(&serde_json::json!({"ok": true})).is_ok());
        assert_eq!(r.body_json(), Ok(serde_json::json!({"ok": true})));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header_bytes("x-tag"), Some(b"a".to_vec()));
        assert_eq!(r.backend().status(), 201);
        r.backend_mut().set_body(b"x");
        assert_eq!(r.body(), Some(b"x".to_vec()));
    }
}
