//! The upstream-response view, response edits, direct responses and the request action.

use crate::headers::{HeaderList, Headers, lower};
use serde::Serialize;

/// What `on_request` decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next plugin and the upstream, with the edits made to the request.
    #[default]
    Continue,
    /// Answer now; the upstream is not called (and the request edits are dropped).
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
    headers: Vec<(String, Vec<u8>)>,
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
    /// this can add several values.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((lower(name), value.as_ref().to_vec()));
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
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
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

    pub(crate) fn into_parts(self) -> (u16, HeaderList, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

/// `{"error":..,"message":..}` as JSON bytes.
pub(crate) fn error_body(error: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "error": error, "message": message })
        .to_string()
        .into_bytes()
}

/// The upstream's response as a plugin sees it in `on_response`; changes are recorded
/// and handed to the host as [`ResponseEdits`].
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    original_status: u16,
    headers: Headers,
    body: Option<Vec<u8>>,
    body_set: bool,
}

/// The changes a plugin made to a response, as sent to the host. Only real changes are
/// listed (see [`crate::RequestEdits`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseEdits {
    /// The new status code.
    pub status: Option<u16>,
    /// Headers to set, (lower-case name, value); each replaces every value of its name.
    pub set_headers: Vec<(String, Vec<u8>)>,
    /// Header names to remove (applied before the sets).
    pub remove_headers: Vec<String>,
    /// The new body.
    pub body: Option<Vec<u8>>,
}

impl ResponseEdits {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The value a `set-headers` edit gives `name` (any case), as UTF-8 text.
    pub fn set_header(&self, name: &str) -> Option<&str> {
        self.set_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// True if the edits remove `name` (any case).
    pub fn removes_header(&self, name: &str) -> bool {
        self.remove_headers
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

impl Response {
    pub(crate) fn from_parts(
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Option<Vec<u8>>,
    ) -> Self {
        Self {
            status,
            original_status: status,
            headers: Headers::new(headers),
            body,
            body_set: false,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Replaces the status code.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The first value of header `name` (any case) as text; `None` if missing or not
    /// valid UTF-8.
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

    /// The upstream's body; only present if the plugin asked for it
    /// ([`crate::Info::response_body`]) and it fit the gateway's limit.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The body as UTF-8 text, if present and valid.
    pub fn body_str(&self) -> Option<&str> {
        self.body().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The body parsed as JSON.
    pub fn body_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let body = self.body().ok_or_else(|| "no response body".to_string())?;
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
        self.body_set = true;
    }

    /// Replaces the body with `value` as JSON and sets `content-type: application/json`.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let body = serde_json::to_vec(value).map_err(|e| format!("not serialisable: {e}"))?;
        self.set_header("content-type", "application/json");
        self.set_body(body);
        Ok(())
    }

    /// The changes made through this view so far.
    pub fn edits(&self) -> ResponseEdits {
        let (set_headers, remove_headers) = self.headers.edits();
        ResponseEdits {
            status: (self.status != self.original_status).then_some(self.status),
            set_headers,
            remove_headers,
            body: if self.body_set {
                self.body.clone()
            } else {
                None
            },
        }
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
    fn response_edits() {
        let mut r = Response::from_parts(
            200,
            vec![("server".into(), b"up".to_vec())],
            Some(b"{}".to_vec()),
        );
        assert!(r.edits().is_empty());
        r.set_status(201);
        r.set_header("X-Tag", "a");
        r.remove_header("Server");
        assert_eq!(r.status(), 201);
        assert_eq!(r.header("x-tag"), Some("a"));
        assert_eq!(r.header("server"), None);
        let mut e = r.edits();
        assert_eq!(
            e,
            ResponseEdits {
                status: Some(201),
                set_headers: vec![("x-tag".into(), b"a".to_vec())],
                remove_headers: vec!["server".into()],
                body: None,
            }
        );
        assert_eq!(e.set_header("X-TAG"), Some("a"));
        assert!(e.removes_header("SERVER"));

        r.set_status(200);
        assert!(r.set_json(&serde_json::json!({"ok": true})).is_ok());
        e = r.edits();
        assert_eq!(e.status, None);
        assert_eq!(e.body.as_deref(), Some(&br#"{"ok":true}"#[..]));
        assert_eq!(e.set_header("content-type"), Some("application/json"));
    }
}
