//! Who is calling: user ids taken from a request by an ordered list of sources.
//!
//! Used to pick per-user routes (and later per-user rate limits). A `jwt:` source reads
//! the claim without verifying the signature: it identifies, it does not authenticate
//! (verification belongs in an auth plugin).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderName, header};

/// One place a user id can come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    Header(HeaderName),
    Query(String),
    Cookie(String),
    Form(String),
    Jwt(String),
    BasicUser,
    Ip,
}

impl KeySource {
    /// Parses `header:NAME`, `query:NAME`, `cookie:NAME`, `form:NAME`, `jwt:CLAIM`,
    /// `basic:username` or `ip`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let named = |arg: Option<&str>| match arg {
            Some(a) if !a.is_empty() => Ok(a.to_owned()),
            _ => Err(format!("\"{text}\" needs a name after ':'")),
        };
        match kind.to_ascii_lowercase().as_str() {
            "header" => HeaderName::from_bytes(named(arg)?.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("\"{text}\": not a valid header name")),
            "query" => named(arg).map(KeySource::Query),
            "cookie" => named(arg).map(KeySource::Cookie),
            "form" => named(arg).map(KeySource::Form),
            "jwt" => named(arg).map(KeySource::Jwt),
            "basic" if matches!(arg, None | Some("username") | Some("user")) => {
                Ok(KeySource::BasicUser)
            }
            "ip" if arg.is_none() => Ok(KeySource::Ip),
            _ => Err(format!(
                "\"{text}\" is not one of header:NAME, query:NAME, cookie:NAME, form:NAME, \
                 jwt:CLAIM, basic:username, ip"
            )),
        }
    }
}

/// The parts of a request user ids are read from.
pub struct RequestView<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The body, when it is `application/x-www-form-urlencoded` and was read.
    pub form: Option<&'a [u8]>,
    pub client_ip: IpAddr,
}

/// The first non-empty user id the sources yield, in order.
pub fn resolve(sources: &[KeySource], req: &RequestView<'_>) -> Option<String> {
    sources
        .iter()
        .find_map(|s| one(s, req).filter(|id| !id.is_empty()))
}

fn one(source: &KeySource, req: &RequestView<'_>) -> Option<String> {
    match source {
        KeySource::Header(name) => req.headers.get(name)?.to_str().ok().map(str::to_owned),
        KeySource::Query(name) => pair(req.query?.as_bytes(), name),
        KeySource::Form(name) => pair(req.form?, name),
        KeySource::Cookie(name) => req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim_matches('"').to_owned()),
        KeySource::Jwt(claim) => jwt_claim(req.headers, claim),
        KeySource::BasicUser => basic_user(req.headers),
        KeySource::Ip => Some(req.client_ip.to_string()),
    }
}

fn pair(encoded: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(encoded)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn credentials<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn jwt_claim(headers: &HeaderMap, claim: &str) -> Option<String> {
    let token = credentials(headers, "Bearer")?;
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    match value.get(claim)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    let decoded = STANDARD.decode(credentials(headers, "Basic")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.as_str(), |(u, _)| u)
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view<'a>(
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        form: Option<&'a [u8]>,
    ) -> RequestView<'a> {
        RequestView {
            headers,
            query,
            form,
            client_ip: "10.1.2.3".parse().unwrap(),
        }
    }

    fn keys(list: &[&str]) -> Vec<KeySource> {
        list.iter().map(|k| KeySource::parse(k).unwrap()).collect()
    }

    #[test]
    fn parses_every_kind_and_rejects_unknown_ones() {
        assert_eq!(KeySource::parse("ip"), Ok(KeySource::Ip));
        assert_eq!(KeySource::parse("basic:username"), Ok(KeySource::BasicUser));
        assert_eq!(
            KeySource::parse("HEADER:X-User-ID"),
            Ok(KeySource::Header("x-user-id".parse().unwrap()))
        );
        assert!(KeySource::parse("query:").is_err());
        assert!(KeySource::parse("ip:4").is_err());
        assert!(KeySource::parse("smoke:x").is_err());
    }

    #[test]
    fn first_source_with_a_value_wins() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            HeaderValue::from_static("a=1; session=s%20x; b=2"),
        );
        let v = view(&headers, Some("uid=q+1&x=2"), Some(b"user=f%40rm"));
        assert_eq!(
            resolve(&keys(&["header:x-user-id", "query:uid"]), &v),
            Some("q 1".into())
        );
        assert_eq!(
            resolve(&keys(&["cookie:session"]), &v),
            Some("s%20x".into())
        );
        assert_eq!(resolve(&keys(&["form:user"]), &v), Some("f@rm".into()));
        assert_eq!(
            resolve(&keys(&["query:none", "ip"]), &v),
            Some("10.1.2.3".into())
        );
        assert_eq!(resolve(&keys(&["query:none"]), &v), None);
    }

    #[test]
    fn jwt_claims_and_basic_users_are_read() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","n":42}"#);
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer xx.{payload}.sig").parse().unwrap(),
        );
        let v = view(&headers, None, None);
        assert_eq!(resolve(&keys(&["jwt:sub"]), &v), Some("alice".into()));
        assert_eq!(resolve(&keys(&["jwt:n"]), &v), Some("42".into()));
        assert_eq!(resolve(&keys(&["jwt:missing"]), &v), None);

        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Basic {}", STANDARD.encode("bob:pw"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            resolve(&keys(&["basic:username"]), &view(&headers, None, None)),
            Some("bob".into())
        );
    }

    #[test]
    fn garbage_credentials_yield_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer not-a-jwt"),
        );
        assert_eq!(
            resolve(
                &keys(&["jwt:sub", "basic:username"]),
                &view(&headers, None, None)
            ),
            None
        );
    }
}
