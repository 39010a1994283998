//! Phase 10 — the upstream's answer made the client's, and phase 13 — headers every
//! answer of a route carries.

use http::Response;
use http::header::{self, HeaderMap};

use super::Exchange;
use crate::body::GatewayBody;
use crate::gateway::Route;
use crate::policy::rate_limit_headers;

/// Phase 10 — response edits: hop-by-hop headers removed, the route's response header
/// edits applied; the body streams on untouched.
pub(super) fn edit_response(
    route: &Route,
    response: Response<GatewayBody>,
) -> Response<GatewayBody> {
    let mut response = response;
    route.edit_response_headers(response.headers_mut());
    response
}

/// Phase 13 — RateLimit-* and CORS headers, added to every answer of a route (errors
/// included, so a browser can read a 429 and a client sees its allowance).
pub(super) fn finish_headers(ex: &mut Exchange, headers: &mut HeaderMap) {
    if let Some(decision) = &ex.rate_limit {
        rate_limit_headers(headers, decision);
    }
    if let Some(origin) = ex.origin.take()
        && let Some(cors) = ex.route().and_then(|r| r.policies.cors.as_ref())
    {
        let mut request_headers = HeaderMap::new();
        request_headers.insert(header::ORIGIN, origin);
        cors.apply(&request_headers, headers);
    }
}
