//! Phase 4 — route match (reading a form body only when a route needs it), and phase 5
//! — CORS preflight.

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};

use super::{Exchange, Step};
use crate::body::{self, Collected, GatewayBody};
use crate::error::GatewayError;
use crate::gateway::Route;
use crate::policy::cors::{Cors, Preflight};
use crate::user_id::{self, RequestView};

/// Most of a form body read to find a `form:` user id. A longer body is still
/// forwarded whole; the id is looked for in these first bytes.
pub const MAX_FORM_BODY: usize = 64 * 1024;

/// Phase 4 — the most specific route for method + path (and user, for per-user
/// routes), or 404. A form post's body is read (its first `MAX_FORM_BODY` bytes) only
/// when a route that could match keys users on a form field, or the matched route's
/// per-user limit does.
pub(super) async fn match_route(
    ex: &mut Exchange,
    mut req: Request<GatewayBody>,
) -> Result<(Arc<Route>, Request<GatewayBody>), GatewayError> {
    let form_post = is_form_post(&req);
    if form_post && ex.snapshot.router.needs_form(req.method(), &ex.path) {
        req = Box::pin(read_form(ex, req)).await?;
    }
    let view = RequestView {
        headers: req.headers(),
        query: req.uri().query(),
        form: ex.form.as_deref(),
        client_ip: ex.peer.ip,
    };
    let found = ex
        .snapshot
        .router
        .find(req.method(), &ex.path, |keys| user_id::resolve(keys, &view))
        .ok_or_else(|| GatewayError::NoRoute {
            method: req.method().to_string(),
            path: ex.path.clone(),
        })?;
    let route = ex.snapshot.routes[found.index].clone();
    ex.params = found.params;
    ex.route = Some(route.clone());
    ex.log.record().route = Some(route.metrics.clone());
    if form_post && ex.form.is_none() && route.reads_form {
        req = Box::pin(read_form(ex, req)).await?;
    }
    Ok((route, req))
}

/// Is this an `application/x-www-form-urlencoded` post?
fn is_form_post(req: &Request<GatewayBody>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Reads at most `MAX_FORM_BODY` bytes of the body into `ex.form`; the request keeps
/// its whole body (the bytes read, then the rest, streamed).
async fn read_form(
    ex: &mut Exchange,
    req: Request<GatewayBody>,
) -> Result<Request<GatewayBody>, GatewayError> {
    let (parts, body) = req.into_parts();
    let collected = body::read_up_to(body, MAX_FORM_BODY)
        .await
        .map_err(|_| GatewayError::BadRequest("request body could not be read"))?;
    ex.form = Some(match &collected {
        Collected::Whole(bytes) | Collected::Partial { read: bytes, .. } => bytes.clone(),
    });
    Ok(Request::from_parts(parts, collected.into_body()))
}

/// Phase 5 — CORS preflight on a CORS route, answered before plugins run (an auth
/// plugin would refuse the credential-less OPTIONS a browser sends). Other requests of
/// a CORS route keep their Origin for the response headers (phase 13).
pub(super) fn cors_preflight(
    ex: &mut Exchange,
    route: &Route,
    req: Request<GatewayBody>,
) -> Result<Step<Request<GatewayBody>>, GatewayError> {
    let Some(cors) = &route.policies.cors else {
        return Ok(Step::Next(req));
    };
    if !Cors::is_preflight(req.method(), req.headers()) {
        ex.origin = req.headers().get(header::ORIGIN).cloned();
        return Ok(Step::Next(req));
    }
    match cors.preflight(req.headers()) {
        // A preflight answer carries its own CORS headers.
        Preflight::Allowed(allowed) => {
            let mut response = Response::new(GatewayBody::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            *response.headers_mut() = allowed;
            Ok(Step::Answer(response))
        }
        Preflight::Rejected(reason) => Err(GatewayError::CorsRejected(reason)),
    }
}
