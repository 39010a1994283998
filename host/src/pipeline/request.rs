//! Checks on what the client sent before anything else runs: size limits (phase 1)
//! and path normalisation (phase 3).

use std::borrow::Cow;

use http::Request;

use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::paths;

/// Phase 1 — limits. Runs first: refuses request targets and header sections larger
/// than the `[server]` limits (hyper has already enforced the header count and the
/// hard buffer limit while parsing).
pub(super) fn check_limits<B>(req: &Request<B>, server: &ServerConfig) -> Result<(), GatewayError> {
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > server.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: server.max_uri_bytes,
        });
    }
    if req.headers().len() > server.max_headers {
        return Err(GatewayError::HeadersTooLarge("the header count limit"));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > server.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge("the header size limit"));
    }
    Ok(())
}

/// Phase 3 — path normalisation. Resolves `.` and `..` segments (also percent-encoded)
/// so a route cannot be escaped with `/public/../admin`; a path climbing above `/` is
/// refused. Returns the path routes are matched against and the upstream receives.
pub(super) fn normalise_path(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    paths::normalise(path).map_err(GatewayError::BadRequest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved_and_cannot_climb_above_root() {
        assert_eq!(normalise_path("/a/b").unwrap(), "/a/b");
        assert_eq!(normalise_path("/public/../admin").unwrap(), "/admin");
        assert_eq!(normalise_path("/a/./b/%2E%2e/c").unwrap(), "/a/c");
        assert_eq!(normalise_path("/a/b/..").unwrap(), "/a/");
        assert!(normalise_path("/../etc/passwd").is_err());
        assert!(normalise_path("/a/%2e%2e/%2e%2e").is_err());
        assert!(normalise_path("*").is_err());
        assert_eq!(normalise_path("/a..b/..c").unwrap(), "/a..b/..c");
    }

    #[test]
    fn limits_are_enforced() {
        let server = ServerConfig {
            max_uri_bytes: 10,
            max_header_bytes: 40,
            max_headers: 2,
            ..ServerConfig::default()
        };
        let ok = Request::get("/short").header("a", "b").body(()).unwrap();
        assert!(check_limits(&ok, &server).is_ok());
        let long = Request::get("/much-too-long-path").body(()).unwrap();
        assert_eq!(check_limits(&long, &server).unwrap_err().status(), 414);
        let big = Request::get("/")
            .header("a", "x".repeat(50))
            .body(())
            .unwrap();
        assert_eq!(check_limits(&big, &server).unwrap_err().status(), 431);
        let many = Request::get("/")
            .header("a", "1")
            .header("b", "2")
            .header("c", "3")
            .body(())
            .unwrap();
        assert_eq!(check_limits(&many, &server).unwrap_err().status(), 431);
    }
}
