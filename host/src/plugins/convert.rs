//! Between HTTP messages and the WIT records plugins see, and checks on what plugins
//! hand back (a plugin is not trusted to produce valid HTTP).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, request, response};

use super::bindings::{DirectResponse, Header, Request, RequestEdits, Response, ResponseEdits};

/// A plugin answer that is not valid HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin returned an invalid {0}")]
pub struct InvalidEdit(pub &'static str);

pub fn headers_to_wit(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// The request record for a route's chain.
pub fn request_to_wit(
    parts: &request::Parts,
    path: &str,
    client_ip: &str,
    route: &str,
    params: &[(std::sync::Arc<str>, String)],
    body: Option<&Bytes>,
) -> Request {
    Request {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: headers_to_wit(&parts.headers),
        client_ip: client_ip.to_owned(),
        route: route.to_owned(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        body: body.map(|b| b.to_vec()),
    }
}

pub fn response_to_wit(parts: &response::Parts, body: Option<&Bytes>) -> Response {
    Response {
        status: parts.status.as_u16(),
        headers: headers_to_wit(&parts.headers),
        body: body.map(|b| b.to_vec()),
    }
}

fn name(text: &str) -> Result<HeaderName, InvalidEdit> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| InvalidEdit("header name"))
}

fn value(bytes: &[u8]) -> Result<HeaderValue, InvalidEdit> {
    HeaderValue::from_bytes(bytes).map_err(|_| InvalidEdit("header value"))
}

/// Checks header edits before anything is changed, so an edit applies whole or not at all.
fn check_headers(remove: &[String], set: &[Header]) -> Result<(), InvalidEdit> {
    for r in remove {
        name(r)?;
    }
    for h in set {
        name(&h.name)?;
        value(&h.value)?;
    }
    Ok(())
}

/// Applies (checked) removals then sets to a header list, as the WIT documents.
fn edit_headers(headers: &mut Vec<Header>, remove: &[String], set: Vec<Header>) {
    for r in remove {
        headers.retain(|h| !h.name.eq_ignore_ascii_case(r));
    }
    for mut h in set {
        h.name.make_ascii_lowercase();
        headers.retain(|existing| existing.name != h.name);
        headers.push(h);
    }
}

fn check_path(path: &str) -> Result<(), InvalidEdit> {
    if path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok()
    {
        Ok(())
    } else {
        Err(InvalidEdit("path"))
    }
}

fn check_query(query: &str) -> Result<(), InvalidEdit> {
    if !query.contains('#')
        && format!("/?{query}")
            .parse::<http::uri::PathAndQuery>()
            .is_ok()
    {
        Ok(())
    } else {
        Err(InvalidEdit("query"))
    }
}

/// Applies one plugin's request edits to the record the next plugin will see; nothing
/// changes if any part is invalid.
pub fn apply_request_edits(req: &mut Request, edits: RequestEdits) -> Result<(), InvalidEdit> {
    check_headers(&edits.remove_headers, &edits.set_headers)?;
    if let Some(path) = &edits.path {
        check_path(path)?;
    }
    if let Some(query) = &edits.query {
        check_query(query)?;
    }
    edit_headers(&mut req.headers, &edits.remove_headers, edits.set_headers);
    if let Some(path) = edits.path {
        req.path = path;
    }
    if let Some(query) = edits.query {
        req.query = (!query.is_empty()).then_some(query);
    }
    if let Some(body) = edits.body {
        req.body = Some(body);
    }
    Ok(())
}

/// Applies one plugin's response edits; nothing changes if any part is invalid.
pub fn apply_response_edits(resp: &mut Response, edits: ResponseEdits) -> Result<(), InvalidEdit> {
    if let Some(status) = edits.status {
        StatusCode::from_u16(status).map_err(|_| InvalidEdit("status"))?;
    }
    check_headers(&edits.remove_headers, &edits.set_headers)?;
    if let Some(status) = edits.status {
        resp.status = status;
    }
    edit_headers(&mut resp.headers, &edits.remove_headers, edits.set_headers);
    if let Some(body) = edits.body {
        resp.body = Some(body);
    }
    Ok(())
}

/// Rebuilds a header map from a (checked) header list.
pub fn headers_from_wit(headers: &[Header]) -> Result<HeaderMap, InvalidEdit> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        map.append(name(&h.name)?, value(&h.value)?);
    }
    Ok(map)
}

/// Checks a plugin's direct response is valid HTTP.
pub fn check_direct(d: &DirectResponse) -> Result<(), InvalidEdit> {
    StatusCode::from_u16(d.status).map_err(|_| InvalidEdit("status"))?;
    check_headers(&[], &d.headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn request() -> Request {
        Request {
            method: "GET".into(),
            path: "/a".into(),
            query: Some("x=1".into()),
            headers: vec![h("x-a", "1"), h("x-a", "2"), h("x-b", "3")],
            client_ip: "127.0.0.1".into(),
            route: "r".into(),
            params: vec![],
            body: None,
        }
    }

    #[test]
    fn request_edits_remove_then_set_and_replace_path_and_query() {
        let mut req = request();
        apply_request_edits(
            &mut req,
            RequestEdits {
                set_headers: vec![h("X-A", "new"), h("x-c", "4")],
                remove_headers: vec!["x-b".into()],
                path: Some("/b".into()),
                query: Some(String::new()),
                body: None,
            },
        )
        .unwrap();
        assert_eq!(req.headers, vec![h("x-a", "new"), h("x-c", "4")]);
        assert_eq!(req.path, "/b");
        assert_eq!(req.query, None);
    }

    #[test]
    fn invalid_plugin_output_is_refused() {
        let mut req = request();
        let bad_name = RequestEdits {
            set_headers: vec![h("bad name", "x")],
            remove_headers: vec![],
            path: None,
            query: None,
            body: None,
        };
        assert_eq!(
            apply_request_edits(&mut req, bad_name),
            Err(InvalidEdit("header name"))
        );
        assert_eq!(req, request(), "a refused edit changes nothing");
        let bad_value = RequestEdits {
            set_headers: vec![h("x", "a\r\nb")],
            ..empty()
        };
        assert_eq!(
            apply_request_edits(&mut req, bad_value),
            Err(InvalidEdit("header value"))
        );
        let bad_path = RequestEdits {
            path: Some("no-slash".into()),
            ..empty()
        };
        assert_eq!(
            apply_request_edits(&mut req, bad_path),
            Err(InvalidEdit("path"))
        );
        let bad_status = DirectResponse {
            status: 1000,
            headers: vec![],
            body: vec![],
        };
        assert_eq!(
            check_direct(&bad_status).unwrap_err(),
            InvalidEdit("status")
        );
    }

    fn empty() -> RequestEdits {
        RequestEdits {
            set_headers: vec![],
            remove_headers: vec![],
            path: None,
            query: None,
            body: None,
        }
    }
}
