//! The request path, in order. [`handle`] is the whole story of a request, and
//! [`process`] and [`upstream_phases`] list every phase in the order it runs:
//!
//! ```text
//! handle: Exchange::begin (accounting starts: in-flight gauge, clock)
//!  0a. acme::answer_http01 plain listener: an ACME http-01 token under way → 200
//!   0. redirect::to_https  plain listener with tls.redirect_http → 308 (not ACME)
//!   1. check_limits        URI length (414), header count and bytes (431)
//!   2. own_endpoints       /api/v1/health, /api/v1/upstreams, /metrics, /api/v1/services*
//!   3. normalise_path      `.` and `..` resolved (also %2e); above "/" → 400
//!   4. match_route         most specific route for method + path (+ user) → 404; a form
//!                          post's body is read first only if a route keys users on it
//!   5. cors_preflight      answered before plugins (an auth plugin would refuse it)
//!   6. plugins on-request  global chain, then the route's: edit the request or answer
//!   7. check_rate_limits   route limit, then per-user limit → 429 + Retry-After
//!   8. websocket tunnel    (Upgrade: websocket on a websocket route) → 101, or
//!      cache lookup        fresh hit → X-Cache: HIT; concurrent misses wait for one
//!   9. forward::send       target pick (health, ejection, breaker), send, retries
//!  10. edit_response       hop-by-hop removed, the route's response header edits
//!  11. cache store         cacheable and small enough → stored, X-Cache: MISS
//!  12. plugins on-response reverse chain order (on cache hits too)
//!  13. finish_headers      RateLimit-* and CORS headers, on errors of the route too
//! finish: a refusal becomes its response (GatewayError::into_response, the one place);
//!   the accounting rides on the response body and writes the access log line and
//!   metrics when the body ends — or when the request is abandoned, exactly once.
//! ```
//!
//! Each phase is a small function in this folder; each refusal is a `GatewayError`.

mod acme;
mod cache;
mod exchange;
mod limits;
mod own_endpoints;
mod plugins;
mod redirect;
mod request;
mod respond;
mod route;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{GatewayBody, ObservedBody};
use crate::error::GatewayError;
use crate::forward;
use crate::gateway::{Gateway, Route};
use crate::peer::Peer;
use crate::trace::{ChildKind, ChildStart};
use crate::websocket;
pub use exchange::{CLIENT_CLOSED, Exchange};
pub use redirect::ACME_CHALLENGE_PREFIX;

/// The future `handle` returns, boxed once per request for the connection's service.
pub type HandleFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<ObservedBody>, Infallible>> + Send>>;

/// What a phase that may answer the request itself returns.
enum Step<T> {
    /// Go on to the next phase with this.
    Next(T),
    /// The request is answered; the phases after this one do not run.
    Answer(Response<GatewayBody>),
}

/// Unwraps a `Step`, returning its answer from the enclosing phase list.
macro_rules! next {
    ($step:expr) => {
        match $step {
            Step::Next(value) => value,
            Step::Answer(response) => return Ok(response),
        }
    };
}

/// Handles one request from `peer` and never fails: every error is already a response.
pub fn handle(
    gateway: Arc<Gateway>,
    req: Request<Incoming>,
    peer: Peer,
) -> impl Future<Output = Result<Response<ObservedBody>, Infallible>> + Send {
    exchange(gateway, req.map(GatewayBody::streamed), peer)
}

/// Handles one request read by our HTTP/1.1 codec (its body already a `GatewayBody`).
pub async fn handle_request(
    gateway: Arc<Gateway>,
    req: Request<GatewayBody>,
    peer: Peer,
) -> Response<ObservedBody> {
    match exchange(gateway, req, peer).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// One request's whole life: its accounting begins, the phases run, the outcome is
/// finished into the response.
async fn exchange(
    gateway: Arc<Gateway>,
    req: Request<GatewayBody>,
    peer: Peer,
) -> Result<Response<ObservedBody>, Infallible> {
    let mut req = req;
    let mut ex = Exchange::begin(gateway, &mut req, peer);
    let outcome = process(&mut ex, req).await;
    Ok(finish(ex, outcome))
}

/// Phases 0 to 6 and 12, in order; 7 to 11 are `upstream_phases`.
async fn process(
    ex: &mut Exchange,
    req: Request<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    if let Some(answer) = acme::answer_http01(ex, &req) {
        return Ok(answer);
    }
    if let Some(redirect) = redirect::to_https(ex, &req) {
        return Ok(redirect);
    }
    request::check_limits(&req, &ex.snapshot.config().server)?;
    let req = next!(own_endpoints::answer(ex, req).await?);
    ex.path = request::normalise_path(req.uri().path())?.into_owned();
    let (route, req) = route::match_route(ex, req).await?;
    let req = next!(route::cors_preflight(ex, &route, req)?);
    let Some(chain) = plugins::resolve(ex, &route).await? else {
        return upstream_phases(ex, &route, req).await;
    };
    let chain_len = chain.len();
    // Boxed: the plugin phases' state is large, and keeping it out of this future
    // keeps every plugin-less request from copying it around.
    let span = ex.log.record().trace.start_child();
    let step = Box::pin(plugins::on_request(ex, &route, chain, req)).await;
    end_plugin_span(ex, span, "on_request", chain_len);
    let (req, seen) = next!(step?);
    let response = upstream_phases(ex, &route, req).await?;
    let span = ex.log.record().trace.start_child();
    let response = Box::pin(plugins::on_response(ex, &route, seen, response)).await;
    end_plugin_span(ex, span, "on_response", chain_len);
    response
}

/// Ends the child span of a plugin chain's hooks (when the request is recorded).
fn end_plugin_span(
    ex: &mut Exchange,
    span: Option<ChildStart>,
    hook: &'static str,
    plugins: usize,
) {
    ex.log
        .record()
        .trace
        .end_child(span, || ChildKind::Plugins { hook, plugins });
}

/// Phases 7 to 11, between the plugins' on-request and on-response hooks.
async fn upstream_phases(
    ex: &mut Exchange,
    route: &Route,
    req: Request<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    limits::check_rate_limits(ex, route, &req)?;
    if route.policies.websocket && websocket::is_upgrade(&req) {
        let record = &mut ex.log.record().upstream;
        return Box::pin(websocket::proxy(
            &ex.gateway,
            route,
            req,
            &ex.path,
            &ex.peer,
            record,
        ))
        .await;
    }
    let fill = match &route.policies.cache {
        // Boxed, like the plugin phases: rare state kept out of the common future.
        Some(cache) => Some(next!(Box::pin(cache::lookup(ex, route, cache, &req)).await)),
        None => None,
    };
    let record = ex.log.record();
    let response = forward::send(
        &ex.gateway,
        route,
        req,
        &ex.path,
        &ex.peer,
        &mut record.upstream,
        &mut record.trace,
    )
    .await?;
    let response = respond::edit_response(route, response);
    match fill {
        Some(fill) => Box::pin(cache::store(fill, response)).await,
        None => Ok(response),
    }
}

/// Turns the outcome into the response (a refusal through its one conversion), adds
/// phase 13's headers, and hands the accounting to the response body.
fn finish(
    mut ex: Exchange,
    outcome: Result<Response<GatewayBody>, GatewayError>,
) -> Response<ObservedBody> {
    let mut response = outcome.unwrap_or_else(|error| {
        ex.log.record().error = Some(error.code());
        if ex.grpc {
            error.into_grpc_response()
        } else {
            error.into_response()
        }
    });
    respond::finish_headers(&mut ex, response.headers_mut());
    let record = ex.log.record();
    record.status = response.status().as_u16();
    if let (Some(name), Some(id)) = (
        &ex.snapshot.plan.telemetry.request_id_header,
        &record.request_id,
    ) {
        response.headers_mut().insert(name.clone(), id.clone());
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        ex.peer.upgraded.store(true, Ordering::Relaxed);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, ObservedBody::new(body, ex.log.into_hook()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-request future lives in each HTTP/1 connection's task (and is boxed once
    /// per HTTP/2 stream): rare phases are boxed out of it so connections stay small.
    /// Its size is printed for the record.
    #[tokio::test]
    async fn the_per_request_future_stays_small() {
        let plan = crate::plan::defaults(&crate::plan::Overrides::default()).unwrap();
        let addr = "127.0.0.1:8080".parse().unwrap();
        let gateway = Gateway::new(plan, addr);
        let req = Request::get("/").body(GatewayBody::empty()).unwrap();
        let future = exchange(gateway, req, Peer::new(addr, false));
        let size = std::mem::size_of_val(&future);
        println!("per-request future: {size} bytes");
        // 4144 bytes before the restructure of issue 10, 3848 after, 4304 with the HTTP/1
        // fast path of issue 13, 4712 with the trace context of issue 14 (dev profile).
        assert!(size <= 4864, "the per-request future grew to {size} bytes");
    }
}
