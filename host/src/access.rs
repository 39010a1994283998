//! Admin access: loopback clients, or any client with `Authorization: Bearer
//! <admin_token>` (`server.admin_token`, else the FLUXGATE_ADMIN_TOKEN environment
//! variable). Registry writes and the dashboard's data need it.

use std::net::IpAddr;

use http::{HeaderMap, header};

use crate::error::GatewayError;
use crate::gateway::Snapshot;

/// Loopback clients pass; others need the admin token. No token configured =
/// loopback only.
pub fn authorize(
    snapshot: &Snapshot,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<(), GatewayError> {
    let token = snapshot
        .config()
        .server
        .admin_token
        .clone()
        .or_else(|| std::env::var("FLUXGATE_ADMIN_TOKEN").ok());
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    check(token.as_deref(), presented, client_ip)
}

/// The rule itself: a presented token must be right; without one, loopback only.
fn check(
    token: Option<&str>,
    presented: Option<&str>,
    client_ip: IpAddr,
) -> Result<(), GatewayError> {
    match (token.filter(|t| !t.is_empty()), presented) {
        (Some(token), Some(given)) if constant_time_eq(token.as_bytes(), given.as_bytes()) => {
            Ok(())
        }
        (Some(_), Some(_)) => Err(GatewayError::Forbidden("wrong admin token")),
        _ if client_ip.is_loopback() => Ok(()),
        (Some(_), None) => Err(GatewayError::Unauthorized),
        (None, _) => Err(GatewayError::Forbidden(
            "admin access is only allowed from loopback when no admin token is configured",
        )),
    }
}

/// Compares without an early exit, so timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_loopback_or_the_admin_token() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(check(None, None, local).is_ok());
        assert!(check(Some("t"), None, local).is_ok());
        assert!(check(Some("t"), Some("t"), remote).is_ok());
        let status = |r: Result<(), GatewayError>| r.unwrap_err().status().as_u16();
        assert_eq!(status(check(None, None, remote)), 403);
        assert_eq!(status(check(None, Some("t"), remote)), 403);
        assert_eq!(status(check(Some("t"), None, remote)), 401);
        assert_eq!(status(check(Some("t"), Some("x"), remote)), 403);
        assert_eq!(
            status(check(Some("t"), Some("x"), local)),
            403,
            "a wrong token is wrong anywhere"
        );
        assert_eq!(
            status(check(Some(""), None, remote)),
            403,
            "an empty token is no token"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
