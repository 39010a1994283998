//! What a hook call works on: the gateway's request and response, lent to the plugin's
//! store for the call; the edits the plugin makes, applied only when the call ends
//! normally; and the rules every piece of plugin output is checked against.
//!
//! A plugin is not trusted to produce valid HTTP. Every edit is checked as it is made
//! (an edit that breaks a rule fails the call), counts and sizes are bounded, and the
//! merge of edits into the message is linear in the number of edits.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Most header fields a message may have after a plugin's edits.
pub const MAX_FIELDS: usize = 256;
/// Most bytes of header names and values a message may have after a plugin's edits.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest value a plugin may stash from on-request to on-response.
pub const MAX_STASH_BYTES: usize = 4 * 1024;

/// Headers that describe the connection or the framing: the gateway's alone.
const RESERVED: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    HeaderName::from_static("proxy-connection"),
];

/// A rule plugin output broke. It fails the call: the request gets `on_error`, and the
/// log line names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("header name {0:?} is not an HTTP token")]
    HeaderName(String),
    #[error("the value of header {0} holds a control character (CR, LF, NUL, ...)")]
    HeaderValue(String),
    #[error("header {0} is the gateway's: framing and connection headers cannot be edited")]
    Reserved(String),
    #[error("more than {MAX_FIELDS} header fields")]
    TooManyFields,
    #[error("more than {MAX_HEADER_BYTES} bytes of headers")]
    HeadersTooLarge,
    #[error("status {0} is not in 200-599")]
    Status(u16),
    #[error("path {0:?}: {1}")]
    Path(String, &'static str),
    #[error("query {0:?} is not a valid query")]
    Query(String),
    #[error("set-body without declaring the body in plugin-info")]
    BodyNotDeclared,
    #[error("a body of {size} bytes is larger than plugins.max_body_bytes ({limit})")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("a stash of {0} bytes is larger than {MAX_STASH_BYTES}")]
    StashTooLarge(usize),
    #[error("the request was edited in on-response, after it went upstream")]
    RequestGone,
}

/// Checks a header name a plugin gave: a token (lower-cased) the gateway lets it edit.
pub fn check_name(name: &str) -> Result<HeaderName, Violation> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Violation::HeaderName(truncated(name)))?;
    if RESERVED.contains(&parsed) {
        return Err(Violation::Reserved(parsed.as_str().to_owned()));
    }
    Ok(parsed)
}

/// Checks a header value: no control characters but tab.
pub fn check_value(name: &HeaderName, value: Vec<u8>) -> Result<HeaderValue, Violation> {
    HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| Violation::HeaderValue(name.as_str().to_owned()))
}

/// Checks a status a plugin answers with or sets: 200-599 only (no informational or
/// switching answers: the gateway cannot honour them on a plugin's behalf).
pub fn check_status(status: u16) -> Result<StatusCode, Violation> {
    match StatusCode::from_u16(status) {
        Ok(code) if (200..=599).contains(&status) => Ok(code),
        _ => Err(Violation::Status(status)),
    }
}

/// Keeps error messages bounded whatever a plugin sends.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The request a hook call works on: the gateway's own parts, moved (not copied) into
/// the plugin's store for the call and back out after it.
#[derive(Debug)]
pub struct RequestState {
    pub method: Method,
    /// The normalised path (routes matched it; the upstream gets it rewritten).
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub client_ip: HeaderValue,
    pub route: Arc<str>,
    pub params: Vec<(Arc<str>, String)>,
    /// The buffered body, when some plugin of the chain declared it.
    pub body: Option<Bytes>,
    /// The body was replaced by a plugin.
    pub body_replaced: bool,
    /// A plugin changed the path or the query (the request target is rebuilt).
    pub target_edited: bool,
    /// What each chain step stashed in its on-request, by step.
    pub stashes: Vec<Option<Vec<u8>>>,
}

/// The route name of an empty `RequestState` (made once: a `Default` per hook call must
/// not allocate).
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

impl Default for RequestState {
    fn default() -> Self {
        Self {
            method: Method::GET,
            path: String::new(),
            query: None,
            headers: HeaderMap::new(),
            client_ip: HeaderValue::from_static(""),
            route: NO_ROUTE.clone(),
            params: Vec::new(),
            body: None,
            body_replaced: false,
            target_edited: false,
            stashes: Vec::new(),
        }
    }
}

/// The answer a hook call works on.
#[derive(Debug)]
pub struct ResponseState {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The buffered body, when some plugin of the chain declared it, or a plugin's
    /// direct answer.
    pub body: Option<Bytes>,
    pub body_replaced: bool,
}

impl Default for ResponseState {
    fn default() -> Self {
        Self {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: None,
            body_replaced: false,
        }
    }
}

/// A plugin's header edits during one call: every name it touched and that name's
/// values now (none = removed). Reads consult it before the message; it is merged in
/// (one removal and the appends per touched name) only when the call ends normally.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    touched: HeaderMap<Vec<HeaderValue>>,
    /// Fields and bytes of the message as it would be with these edits; `None` until
    /// the first edit (reads need no count).
    totals: Option<(usize, usize)>,
}

fn field_bytes(name: &HeaderName, value: &HeaderValue) -> usize {
    name.as_str().len() + value.len()
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// The first value of `name` with the edits applied.
    pub fn first<'a>(&'a self, base: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
        match self.touched.get(name) {
            Some(values) => values.first(),
            None => base.get(name),
        }
    }

    /// Every value of `name` with the edits applied.
    pub fn values(&self, base: &HeaderMap, name: &HeaderName) -> Vec<Vec<u8>> {
        match self.touched.get(name) {
            Some(values) => values.iter().map(|v| v.as_bytes().to_vec()).collect(),
            None => base
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Every field with the edits applied: untouched fields in order, then the
    /// touched names.
    pub fn all(&self, base: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = base
            .iter()
            .filter(|(name, _)| !self.touched.contains_key(*name))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        for (name, values) in &self.touched {
            for value in values {
                out.push((name.as_str().to_owned(), value.as_bytes().to_vec()));
            }
        }
        out
    }

    /// The values `name` has now (edited or from the message), for an edit to start from.
    fn current(&self, base: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
        match self.touched.get(name) {
            Some(values) => values.clone(),
            None => base.get_all(name).iter().cloned().collect(),
        }
    }

    /// Replaces `name`'s values, keeping the totals within bounds.
    fn replace(
        &mut self,
        base: &HeaderMap,
        name: HeaderName,
        values: Vec<HeaderValue>,
    ) -> Result<(), Violation> {
        let (fields, bytes) = *self.totals.get_or_insert_with(|| {
            let bytes = base.iter().map(|(n, v)| field_bytes(n, v)).sum();
            (base.len(), bytes)
        });
        let before = self.current(base, &name);
        let old_bytes: usize = before.iter().map(|v| field_bytes(&name, v)).sum();
        let new_bytes: usize = values.iter().map(|v| field_bytes(&name, v)).sum();
        let fields = fields - before.len() + values.len();
        let bytes = bytes - old_bytes + new_bytes;
        if fields > MAX_FIELDS {
            return Err(Violation::TooManyFields);
        }
        if bytes > MAX_HEADER_BYTES {
            return Err(Violation::HeadersTooLarge);
        }
        self.totals = Some((fields, bytes));
        self.touched.insert(name, values);
        Ok(())
    }

    pub fn set(&mut self, base: &HeaderMap, name: &str, value: Vec<u8>) -> Result<(), Violation> {
        let name = check_name(name)?;
        let value = check_value(&name, value)?;
        self.replace(base, name, vec![value])
    }

    pub fn append(
        &mut self,
        base: &HeaderMap,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), Violation> {
        let name = check_name(name)?;
        let value = check_value(&name, value)?;
        let mut values = self.current(base, &name);
        values.push(value);
        self.replace(base, name, values)
    }

    pub fn remove(&mut self, base: &HeaderMap, name: &str) -> Result<(), Violation> {
        let name = check_name(name)?;
        self.replace(base, name, Vec::new())
    }

    /// Merges the edits into the message: linear in the number of edits.
    pub fn apply(self, base: &mut HeaderMap) {
        // Each touched name holds one entry (a Vec of its values), so every item
        // carries its name.
        for (name, values) in self.touched {
            let Some(name) = name else { continue };
            base.remove(&name);
            for value in values {
                base.append(name.clone(), value);
            }
        }
    }
}

/// Looks a header name up for a read: an invalid name simply has no values.
pub fn lookup_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

/// A plugin's edits of a request during one call.
#[derive(Debug, Default)]
pub struct RequestEdits {
    pub headers: HeaderEdits,
    pub path: Option<String>,
    pub query: Option<Option<String>>,
    pub body: Option<Bytes>,
    pub stash: Option<Vec<u8>>,
}

impl RequestEdits {
    /// Checks and records a new path: it starts with '/', and is normalised like a
    /// client's (dot segments resolved; climbing above '/' is refused).
    pub fn set_path(&mut self, path: String) -> Result<(), Violation> {
        if !path.starts_with('/') {
            return Err(Violation::Path(truncated(&path), "must start with '/'"));
        }
        if path.contains(['?', '#']) || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(Violation::Path(truncated(&path), "is not a valid path"));
        }
        let normal = crate::paths::normalise(&path)
            .map_err(|reason| Violation::Path(truncated(&path), reason))?;
        self.path = Some(normal.into_owned());
        Ok(())
    }

    pub fn set_query(&mut self, query: Option<String>) -> Result<(), Violation> {
        if let Some(q) = &query
            && (q.contains('#') || format!("/?{q}").parse::<http::uri::PathAndQuery>().is_err())
        {
            return Err(Violation::Query(truncated(q)));
        }
        self.query = Some(query.filter(|q| !q.is_empty()));
        Ok(())
    }

    pub fn set_stash(&mut self, value: Vec<u8>) -> Result<(), Violation> {
        if value.len() > MAX_STASH_BYTES {
            return Err(Violation::StashTooLarge(value.len()));
        }
        self.stash = Some(value);
        Ok(())
    }

    /// Merges the edits into the request; `step` is the plugin's place in the chain
    /// (its stash slot).
    pub fn apply(self, req: &mut RequestState, step: usize) {
        self.headers.apply(&mut req.headers);
        if let Some(path) = self.path {
            req.path = path;
            req.target_edited = true;
        }
        if let Some(query) = self.query {
            req.query = query;
            req.target_edited = true;
        }
        if let Some(body) = self.body {
            req.body = Some(body);
            req.body_replaced = true;
        }
        if let Some(stash) = self.stash {
            // Grown on the first stash: most requests never stash anything.
            if req.stashes.len() <= step {
                req.stashes.resize(step + 1, None);
            }
            req.stashes[step] = Some(stash);
        }
    }
}

/// A plugin's edits of a response during one call.
#[derive(Debug, Default)]
pub struct ResponseEdits {
    pub headers: HeaderEdits,
    pub status: Option<StatusCode>,
    pub body: Option<Bytes>,
}

impl ResponseEdits {
    pub fn apply(self, resp: &mut ResponseState) {
        self.headers.apply(&mut resp.headers);
        if let Some(status) = self.status {
            resp.status = status;
        }
        if let Some(body) = self.body {
            resp.body = Some(body);
            resp.body_replaced = true;
        }
    }
}

/// Checks a body a plugin sets against `plugins.max_body_bytes`.
pub fn check_body(body: Vec<u8>, limit: usize) -> Result<Bytes, Violation> {
    if body.len() > limit {
        return Err(Violation::BodyTooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(Bytes::from(body))
}

/// A plugin's direct answer, checked like any edit: a status in 200-599, headers by
/// the same rules and bounds, a body within `limit`.
pub fn direct_response(
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    limit: usize,
) -> Result<ResponseState, Violation> {
    let status = check_status(status)?;
    if headers.len() > MAX_FIELDS {
        return Err(Violation::TooManyFields);
    }
    let mut map = HeaderMap::with_capacity(headers.len());
    let mut bytes = 0usize;
    for (name, value) in headers {
        let name = check_name(&name)?;
        let value = check_value(&name, value)?;
        bytes += field_bytes(&name, &value);
        if bytes > MAX_HEADER_BYTES {
            return Err(Violation::HeadersTooLarge);
        }
        map.append(name, value);
    }
    Ok(ResponseState {
        status,
        headers: map,
        body: Some(check_body(body, limit)?),
        body_replaced: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-b", HeaderValue::from_static("3"));
        h
    }

    #[test]
    fn edits_are_read_back_at_once_and_merged_only_when_applied() {
        let mut h = base();
        let mut edits = HeaderEdits::default();
        edits.set(&h, "X-A", b"new".to_vec()).unwrap();
        edits.append(&h, "x-c", b"4".to_vec()).unwrap();
        edits.append(&h, "x-c", b"5".to_vec()).unwrap();
        edits.remove(&h, "x-b").unwrap();
        let a = HeaderName::from_static("x-a");
        assert_eq!(edits.first(&h, &a).unwrap(), "new");
        assert_eq!(h.get_all(&a).iter().count(), 2, "the message is untouched");
        edits.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(h.get_all("x-c").iter().collect::<Vec<_>>(), vec!["4", "5"]);
        assert!(h.get("x-b").is_none());
    }

    #[test]
    fn broken_rules_are_named() {
        let h = base();
        let mut e = HeaderEdits::default();
        assert_eq!(
            e.set(&h, "bad name", vec![]),
            Err(Violation::HeaderName("bad name".into()))
        );
        assert_eq!(
            e.set(&h, "x", b"a\r\nb".to_vec()),
            Err(Violation::HeaderValue("x".into()))
        );
        for reserved in [
            "Content-Length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "keep-alive",
        ] {
            assert!(
                matches!(
                    e.set(&h, reserved, b"1".to_vec()),
                    Err(Violation::Reserved(_))
                ),
                "{reserved}"
            );
        }
        assert!(e.is_empty(), "a refused edit records nothing");
        assert_eq!(check_status(101), Err(Violation::Status(101)));
        assert_eq!(check_status(600), Err(Violation::Status(600)));
        assert!(check_status(204).is_ok());
        let mut r = RequestEdits::default();
        assert!(r.set_path("no-slash".into()).is_err());
        assert!(r.set_path("/../etc".into()).is_err());
        r.set_path("/a/./b/../c".into()).unwrap();
        assert_eq!(r.path.as_deref(), Some("/a/c"));
        assert!(r.set_query(Some("a#b".into())).is_err());
        assert!(r.set_stash(vec![0; MAX_STASH_BYTES + 1]).is_err());
    }

    #[test]
    fn header_counts_and_bytes_are_bounded_in_linear_time() {
        let h = HeaderMap::new();
        let mut e = HeaderEdits::default();
        for i in 0..MAX_FIELDS {
            e.set(&h, &format!("x-{i}"), b"v".to_vec()).unwrap();
        }
        assert_eq!(
            e.set(&h, "x-one-more", b"v".to_vec()),
            Err(Violation::TooManyFields)
        );
        // Replacing an existing name does not count twice.
        e.set(&h, "x-0", b"w".to_vec()).unwrap();
        let mut big = HeaderEdits::default();
        assert_eq!(
            big.set(&h, "x", vec![b'a'; MAX_HEADER_BYTES]),
            Err(Violation::HeadersTooLarge)
        );
        let many: Vec<(String, Vec<u8>)> = (0..100_000)
            .map(|i| (format!("x-{i}"), b"v".to_vec()))
            .collect();
        assert_eq!(
            direct_response(200, many, vec![], 10).unwrap_err(),
            Violation::TooManyFields
        );
    }
}
