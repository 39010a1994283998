//! Phase 0a on the plain listener: an ACME http-01 validation asks
//! `GET /.well-known/acme-challenge/<token>` and gets the key authorization, while the
//! `[tls.acme]` task has that token under way. Other paths, and tokens not under way,
//! go on through the phases (the redirect exempts this prefix).

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use super::exchange::Exchange;
use super::redirect::ACME_CHALLENGE_PREFIX;
use crate::body::GatewayBody;

/// The key authorization for a token under way, as `text/plain`.
pub(super) fn answer_http01<B>(ex: &Exchange, req: &Request<B>) -> Option<Response<GatewayBody>> {
    if ex.peer.secure || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let token = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
    let key_authorization = ex.gateway.acme_tokens.get(token)?;
    tracing::debug!(token, "ACME http-01 validation answered");
    ex.gateway
        .metrics
        .acme_challenges_answered
        .with_label_values(&["http-01"])
        .inc();
    let mut response = Response::new(GatewayBody::full(key_authorization.as_bytes().to_vec()));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Some(response)
}
