//! Phase 0 on the plain listener with `tls.redirect_http`: every request is sent to the
//! same host, path and query over HTTPS (308 keeps the method and body), except ACME
//! http-01 challenges, which must be answered over plain HTTP.

use http::{HeaderValue, Request, Response, StatusCode, header};

use super::exchange::Exchange;
use crate::body::GatewayBody;

/// Where ACME http-01 validations ask for their token.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The 308 to HTTPS, when this request should get one.
pub(super) fn to_https<B>(ex: &Exchange, req: &Request<B>) -> Option<Response<GatewayBody>> {
    if ex.peer.secure {
        return None;
    }
    let tls = ex.snapshot.plan.tls.as_ref()?;
    if !tls.redirect_http || req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
        return None;
    }
    let port = ex.gateway.tls_port().unwrap_or(tls.listen.port());
    let host = request_host(req)?;
    let authority = if port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{authority}{target}")).ok()?;
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}

/// The request's host without its port: the URI's authority (absolute form), else the
/// Host header. `None` without one (no redirect can be made: the request goes on).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let authority = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    // "[::1]:80" keeps its brackets; "example.com:80" loses the port.
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_loses_its_port_only() {
        let req = |host: &str| Request::get("/").header("host", host).body(()).unwrap();
        assert_eq!(request_host(&req("example.com:8080")), Some("example.com"));
        assert_eq!(request_host(&req("example.com")), Some("example.com"));
        assert_eq!(request_host(&req("[::1]:80")), Some("[::1]"));
        assert_eq!(request_host(&req("[::1]")), Some("[::1]"));
        let absolute = Request::get("http://a.test:81/x").body(()).unwrap();
        assert_eq!(request_host(&absolute), Some("a.test"));
        assert_eq!(request_host(&Request::get("/").body(()).unwrap()), None);
    }
}
