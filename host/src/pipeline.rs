//! The request path, in order. `handle` is the whole story of a request:
//!
//! ```text
//! limits → admin and registry endpoints → path normalisation → route match → CORS preflight
//!   → plugins on-request → rate limits → cache lookup → forward (breaker, balancer,
//!   retries) → response edits → cache store → plugins on-response
//!   → CORS and RateLimit headers (on every answer of the route, errors included)
//! ```
//!
//! Each phase is a small function that either passes the request on or returns a
//! `GatewayError`; errors become HTTP responses in exactly one place
//! (`GatewayError::into_response`), and every response is measured and logged by the
//! `RequestLog` attached to its body.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::admin;
use crate::body::{GatewayBody, ObservedBody, OnBodyEnd};
use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::forward;
use crate::gateway::{Gateway, Route, Snapshot};
use crate::headers::strip_hop_by_hop;
use crate::metrics::RouteMetrics;
use crate::plugins::bindings as wit;
use crate::plugins::{Chain, OnRequest, convert};
use crate::policy::cache_policy::{self, RequestCacheMode};
use crate::policy::cors::{Cors, Preflight};
use crate::policy::rate_limit::Decision;
use crate::policy::rate_limit_headers;
use crate::policy::response_cache::{self, Lookup, ResponseCache};
use crate::registry;
use crate::router::RouteMatch;
use crate::upstream::InFlight;
use crate::user_id::{self, RequestView};
use crate::websocket;

/// Largest form body read to find a `form:` user id.
const MAX_FORM_BODY: usize = 64 * 1024;

/// The future `handle` returns, boxed once per request for the connection's service.
pub type HandleFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<ObservedBody>, Infallible>> + Send>>;

/// The client end of a connection, with its address rendered once for X-Forwarded-For.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub forwarded_for: HeaderValue,
    /// Set once a 101 answer turns the connection into a tunnel: its bytes are no
    /// longer HTTP (the server must not answer a stalled "head" with a 408).
    pub upgraded: Arc<AtomicBool>,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        Self {
            ip,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            upgraded: Arc::default(),
        }
    }
}

/// Handles one request from `peer` and never fails: every error is already a response.
pub async fn handle(
    gateway: Arc<Gateway>,
    req: Request<Incoming>,
    peer: Peer,
) -> Result<Response<ObservedBody>, Infallible> {
    let snapshot = gateway.snapshot();
    let mut log = RequestLog::new(gateway.clone(), &snapshot.config.server, &req, peer.ip);
    let mut response = match process(&gateway, &snapshot, req, &peer, &mut log).await {
        Ok(response) => response,
        Err(error) => {
            log.error = Some(error.code());
            error.into_response()
        }
    };
    finish_headers(&snapshot, &mut log, response.headers_mut());
    log.status = response.status().as_u16();
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        peer.upgraded.store(true, Ordering::Relaxed);
    }
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        ObservedBody::new(body, Some(Box::new(log))),
    ))
}

/// The phases, in order.
async fn process(
    gateway: &Gateway,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    peer: &Peer,
    log: &mut RequestLog,
) -> Result<Response<GatewayBody>, GatewayError> {
    check_limits(&req, &snapshot.config.server)?;
    if let Some(response) = admin::answer(gateway, snapshot, &req) {
        log.route = Some(gateway.admin_metrics.clone());
        return response;
    }
    if registry::api::PATHS.contains(&req.uri().path()) {
        log.route = Some(gateway.admin_metrics.clone());
        return Box::pin(registry::api::answer(gateway, snapshot, req, peer.ip)).await;
    }
    let path = normalise_path(req.uri().path())?.into_owned();
    let req = req.map(GatewayBody::streamed);
    let (req, form) = if needs_form(snapshot, &req) {
        // Boxed: rare, and its state would otherwise be carried by every request.
        Box::pin(read_form(req)).await?
    } else {
        (req, None)
    };
    let found = match_route(snapshot, &req, &path, form.as_deref(), peer.ip)?;
    let route = &snapshot.routes[found.index];
    log.route = Some(route.metrics.clone());
    log.route_index = Some(found.index);
    if let Some(cors) = &route.policies.cors {
        // A preflight answer carries its own CORS headers; others get them at the end.
        if Cors::is_preflight(req.method(), req.headers()) {
            return cors_preflight(cors, req.headers());
        }
        log.origin = req.headers().get(header::ORIGIN).cloned();
    }
    if snapshot.global_plugins.is_empty() && route.plugins.is_empty() {
        return upstream_phases(gateway, route, req, &path, peer, form.as_deref(), log).await;
    }
    // Boxed: the plugin phases' state is large, and keeping it out of this future
    // keeps every plugin-less request from copying it around.
    Box::pin(plugin_phases(
        gateway, snapshot, route, &found, req, path, peer, form, log,
    ))
    .await
}

/// Phases 6 to 12 for a route with plugins: resolves the chain, then runs it around
/// the upstream phases (or skips it when every entry resolved to nothing).
#[allow(clippy::too_many_arguments)]
async fn plugin_phases(
    gateway: &Gateway,
    snapshot: &Snapshot,
    route: &Route,
    found: &RouteMatch,
    req: Request<GatewayBody>,
    path: String,
    peer: &Peer,
    form: Option<Bytes>,
    log: &mut RequestLog,
) -> Result<Response<GatewayBody>, GatewayError> {
    let chain = Chain::resolve(
        &gateway.plugins,
        snapshot.global_plugins.iter().chain(&route.plugins),
        snapshot.config.plugins.on_error,
    )
    .await?;
    if chain.is_empty() {
        return upstream_phases(gateway, route, req, &path, peer, form.as_deref(), log).await;
    }
    let ctx = PluginContext {
        route,
        found,
        peer,
        max_body: snapshot.config.plugins.max_body_bytes,
        form: form.as_deref(),
    };
    with_plugins(gateway, &chain, ctx, req, path, log).await
}

/// Phase 5 — CORS preflight, answered before plugins run (an auth plugin would refuse
/// the credential-less OPTIONS a browser sends).
fn cors_preflight(
    cors: &Cors,
    headers: &http::HeaderMap,
) -> Result<Response<GatewayBody>, GatewayError> {
    match cors.preflight(headers) {
        Preflight::Allowed(allowed) => {
            let mut response = Response::new(GatewayBody::empty());
            *response.status_mut() = http::StatusCode::NO_CONTENT;
            *response.headers_mut() = allowed;
            Ok(response)
        }
        Preflight::Rejected(reason) => Err(GatewayError::CorsRejected(reason)),
    }
}

/// Phases 7 to 11, between the plugins' on-request and on-response: rate limits,
/// then (for a WebSocket handshake) the tunnel, or the cache and the upstream.
async fn upstream_phases(
    gateway: &Gateway,
    route: &Route,
    req: Request<GatewayBody>,
    path: &str,
    peer: &Peer,
    form: Option<&[u8]>,
    log: &mut RequestLog,
) -> Result<Response<GatewayBody>, GatewayError> {
    check_rate_limits(gateway, route, &req, form, peer, log)?;
    if route.policies.websocket && websocket::is_upgrade(&req) {
        return Box::pin(websocket::proxy(gateway, route, req, path, peer, log)).await;
    }
    // Phase 9 — forward (see `forward::send`), through the cache when the route has one.
    match &route.policies.cache {
        // Boxed, like the plugin phases: rare state kept out of the common future.
        Some(cache) => Box::pin(cached(gateway, route, cache, req, path, peer, log)).await,
        None => {
            let response = forward::send(gateway, route, req, path, peer, log).await?;
            Ok(edit_response(route, response))
        }
    }
}

/// Phase 7 — rate limits: the route's limit, then the per-user one. The decision
/// shown in RateLimit-* headers is kept for the response.
fn check_rate_limits(
    gateway: &Gateway,
    route: &Route,
    req: &Request<GatewayBody>,
    form: Option<&[u8]>,
    peer: &Peer,
    log: &mut RequestLog,
) -> Result<(), GatewayError> {
    let policies = &route.policies;
    if policies.rate_limit.is_none() && policies.user_rate_limit.is_none() {
        return Ok(());
    }
    let view = RequestView {
        headers: req.headers(),
        query: req.uri().query(),
        form,
        client_ip: peer.ip,
    };
    match policies.check_limits(&view, Instant::now()) {
        Ok(decision) => {
            log.rate_limit = decision;
            Ok(())
        }
        Err((scope, decision)) => {
            log.rate_limit = Some(decision);
            gateway
                .metrics
                .rate_limited
                .with_label_values(&[&*route.metrics.label, scope.as_str()])
                .inc();
            Err(GatewayError::RateLimited {
                scope: scope.as_str(),
                retry_after_secs: decision.retry_after_secs(),
            })
        }
    }
}

/// Phases 8 and 11 for a cached route: a fresh stored answer is served as is (`X-Cache:
/// HIT`); on a miss one request per key goes upstream while the others wait for it,
/// and a cacheable answer is stored on its way to the client (`X-Cache: MISS`).
async fn cached(
    gateway: &Gateway,
    route: &Route,
    cache: &std::sync::Arc<ResponseCache>,
    req: Request<GatewayBody>,
    path: &str,
    peer: &Peer,
    log: &mut RequestLog,
) -> Result<Response<GatewayBody>, GatewayError> {
    let count = |result: &str| {
        gateway
            .metrics
            .cache_lookups
            .with_label_values(&[&*route.metrics.label, result])
            .inc();
    };
    let mode = cache_policy::request_mode(req.method(), req.headers());
    if mode == RequestCacheMode::Bypass {
        count("bypass");
        let response = forward::send(gateway, route, req, path, peer, log).await?;
        return Ok(edit_response(route, response));
    }
    let primary = ResponseCache::primary_key(&req);
    let request_headers = req.headers().clone();
    let refresh = mode == RequestCacheMode::Refresh;
    let mut lookup = cache.lookup(primary.clone(), &request_headers, refresh);
    if let Lookup::Follow(waiting) = lookup {
        response_cache::wait_for_leader(waiting, route.upstream.request_timeout).await;
        lookup = cache.lookup(primary, &request_headers, refresh);
    }
    let guard = match lookup {
        Lookup::Hit(stored) => {
            count("hit");
            let mut response = Response::new(GatewayBody::full(stored.body.clone()));
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers.clone();
            let headers = response.headers_mut();
            headers.insert(
                header::AGE,
                HeaderValue::from(stored.age_secs(Instant::now())),
            );
            headers.insert("x-cache", HeaderValue::from_static("HIT"));
            return Ok(response);
        }
        Lookup::Lead(guard) => Some(guard),
        // Still being fetched after the wait: do not queue twice, go upstream.
        Lookup::Follow(_) => None,
    };
    count("miss");
    let response = forward::send(gateway, route, req, path, peer, log).await?;
    let mut response = edit_response_streamed(route, response);
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static("MISS"));
    let ttl = cache_policy::response_ttl(
        response.status(),
        response.headers(),
        std::time::Duration::from_millis(cache.config.ttl_ms),
        std::time::Duration::from_millis(cache.config.max_ttl_ms),
    );
    let (Some(guard), Some(ttl)) = (guard, ttl) else {
        return Ok(response.map(GatewayBody::streamed));
    };
    let (parts, body) = response.into_parts();
    match read_up_to(body, cache.config.max_body_bytes).await? {
        Ok(bytes) => {
            let mut stored_headers = parts.headers.clone();
            stored_headers.remove("x-cache");
            guard.store(
                &request_headers,
                parts.status,
                stored_headers,
                bytes.clone(),
                ttl,
            );
            Ok(Response::from_parts(parts, GatewayBody::full(bytes)))
        }
        // Too big to store: the bytes read so far, then the rest, straight through.
        Err(resumed) => Ok(Response::from_parts(parts, resumed)),
    }
}

/// Reads a response body while it fits in `limit`: `Ok(Ok(bytes))` when it all did,
/// `Ok(Err(body))` with a body that replays what was read and streams the rest.
async fn read_up_to(
    mut body: Incoming,
    limit: usize,
) -> Result<Result<Bytes, GatewayBody>, GatewayError> {
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::UpstreamFailed {
            upstream: "(cache fill)".to_owned(),
        })?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                return Ok(Err(GatewayBody::Resumed {
                    head: Some(buffer.freeze()),
                    body,
                }));
            }
        }
    }
    Ok(Ok(buffer.freeze()))
}

/// Phase 13 — CORS and RateLimit headers, added to every answer of a route (errors included, so
/// a browser can read a 429 and a client sees its allowance).
fn finish_headers(snapshot: &Snapshot, log: &mut RequestLog, headers: &mut http::HeaderMap) {
    if let Some(decision) = &log.rate_limit {
        rate_limit_headers(headers, decision);
    }
    if let Some(origin) = log.origin.take()
        && let Some(cors) = log
            .route_index
            .and_then(|i| snapshot.routes.get(i))
            .and_then(|r| r.policies.cors.as_ref())
    {
        let mut request_headers = http::HeaderMap::new();
        request_headers.insert(header::ORIGIN, origin);
        cors.apply(&request_headers, headers);
    }
}

/// What the plugin phases need to know about the request beyond the message itself.
struct PluginContext<'a> {
    route: &'a Route,
    found: &'a RouteMatch,
    peer: &'a Peer,
    max_body: usize,
    form: Option<&'a [u8]>,
}

/// Phases 6 and 12 when the route has plugins: on-request hooks (which may edit the
/// request or answer it), forward, then on-response hooks in reverse order. Bodies are
/// buffered only for plugins that asked, up to `plugins.max_body_bytes`.
async fn with_plugins(
    gateway: &Gateway,
    chain: &Chain<'_>,
    ctx: PluginContext<'_>,
    req: Request<GatewayBody>,
    path: String,
    log: &mut RequestLog,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (mut parts, mut body) = req.into_parts();
    let buffered = if chain.wants_request_body() {
        let bytes =
            collect_limited(body, ctx.max_body)
                .await
                .map_err(|_| GatewayError::BodyTooLarge {
                    limit: ctx.max_body,
                })?;
        body = GatewayBody::full(bytes.clone());
        Some(bytes)
    } else {
        None
    };
    let client_ip = ctx.peer.forwarded_for.to_str().unwrap_or("unknown");
    let label = &*ctx.route.metrics.label;
    let mut wreq = convert::request_to_wit(
        &parts,
        &path,
        client_ip,
        label,
        &ctx.found.params,
        buffered.as_ref(),
    );
    if chain.has_on_request() {
        if let OnRequest::Respond { response, ran } = chain.on_request(&mut wreq).await? {
            let mut wresp = wit::Response {
                status: response.status,
                headers: response.headers,
                body: Some(response.body),
            };
            chain.on_response(ran, &wreq, &mut wresp).await?;
            return response_from_wit(wresp, None, None);
        }
        write_back(&mut parts, &mut body, &mut wreq, &path, buffered.as_ref())?;
    }
    wreq.body = None;

    let response = upstream_phases(
        gateway,
        ctx.route,
        Request::from_parts(parts, body),
        &wreq.path,
        ctx.peer,
        ctx.form,
        log,
    )
    .await?;
    // A 101 means the WebSocket tunnel is already up: its upgrade headers must reach
    // the client as they are, so on-response hooks do not run on it.
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    if !chain.has_on_response() {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let (body, buffered) = if chain.wants_response_body() {
        let bytes = collect_limited(body, ctx.max_body).await.map_err(|_| {
            GatewayError::ResponseTooLarge {
                limit: ctx.max_body,
            }
        })?;
        (None, Some(bytes))
    } else {
        (Some(body), None)
    };
    let mut wresp = convert::response_to_wit(&parts, buffered.as_ref());
    chain.on_response(chain.len(), &wreq, &mut wresp).await?;
    response_from_wit(
        wresp,
        body,
        parts.headers.get(header::CONTENT_LENGTH).cloned(),
    )
}

/// Puts the plugins' view of the request back into the HTTP request: headers, path and
/// query, body. Framing stays the gateway's: Content-Length is the client's unless a
/// plugin replaced the body.
fn write_back(
    parts: &mut http::request::Parts,
    body: &mut GatewayBody,
    wreq: &mut wit::Request,
    path: &str,
    buffered: Option<&Bytes>,
) -> Result<(), GatewayError> {
    let original_length = parts.headers.get(header::CONTENT_LENGTH).cloned();
    parts.headers = convert::headers_from_wit(&wreq.headers).map_err(plugin_output)?;
    parts.headers.remove(header::CONTENT_LENGTH);
    let body_replaced = wreq.body.is_some() && wreq.body.as_deref() != buffered.map(|b| b.as_ref());
    if body_replaced {
        *body = GatewayBody::full(wreq.body.take().unwrap_or_default());
    } else if let Some(length) = original_length {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    if wreq.path != path || wreq.query.as_deref() != parts.uri.query() {
        let target = match &wreq.query {
            Some(q) => format!("{}?{q}", wreq.path),
            None => wreq.path.clone(),
        };
        parts.uri = target
            .parse()
            .map_err(|_| plugin_output(convert::InvalidEdit("path")))?;
    }
    Ok(())
}

/// Builds the client response from the plugins' view of it. `streamed` is the upstream
/// body when it was not buffered; it is used unless a plugin replaced the body.
fn response_from_wit(
    wresp: wit::Response,
    streamed: Option<GatewayBody>,
    streamed_length: Option<HeaderValue>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let mut headers = convert::headers_from_wit(&wresp.headers).map_err(plugin_output)?;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let body = match (wresp.body, streamed) {
        (Some(bytes), _) => GatewayBody::full(bytes),
        (None, Some(body)) => {
            if let Some(length) = streamed_length {
                headers.insert(header::CONTENT_LENGTH, length);
            }
            body
        }
        (None, None) => GatewayBody::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(wresp.status)
        .map_err(|_| plugin_output(convert::InvalidEdit("status")))?;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Plugin output that passed the per-plugin checks but still cannot be sent.
fn plugin_output(e: convert::InvalidEdit) -> GatewayError {
    tracing::warn!("{e}");
    GatewayError::Plugin {
        plugin: "(chain)".to_owned(),
        kind: "invalid_output",
    }
}

/// Reads a whole body, failing once it exceeds `limit` bytes.
async fn collect_limited(body: GatewayBody, limit: usize) -> Result<Bytes, ()> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| ())
}

/// Phase 1 — limits. Runs first: refuses request targets and header sections larger
/// than the `[server]` limits (hyper has already enforced the header count and the
/// hard buffer limit while parsing).
fn check_limits<B>(req: &Request<B>, server: &ServerConfig) -> Result<(), GatewayError> {
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

/// Phase 2 — path normalisation. Resolves `.` and `..` segments (also percent-encoded)
/// so a route cannot be escaped with `/public/../admin`; a path climbing above `/` is
/// refused. Returns the path routes are matched against and the upstream receives.
fn normalise_path(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::BadRequest("request path must start with '/'"));
    }
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let is_dotdot = |s: &str| {
        s.len() >= 2
            && s.len() <= 6
            && matches!(
                s.to_ascii_lowercase().as_str(),
                ".." | ".%2e" | "%2e." | "%2e%2e"
            )
    };
    if !path.split('/').any(|s| is_dot(s) || is_dotdot(s)) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if is_dot(segment) {
            if i == last {
                out.push("");
            }
        } else if is_dotdot(segment) {
            if out.pop().is_none() {
                return Err(GatewayError::BadRequest("request path climbs above '/'"));
            }
            if i == last {
                out.push("");
            }
        } else {
            out.push(segment);
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

/// Does a route's user id come from this request's form body (some per-user route
/// identifies users by a form field, and this is a form post)?
fn needs_form(snapshot: &Snapshot, req: &Request<GatewayBody>) -> bool {
    snapshot.reads_forms
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Phase 3 — form body: reads at most 64 KiB so the user id can be found; the bytes
/// read are what gets forwarded.
async fn read_form(
    req: Request<GatewayBody>,
) -> Result<(Request<GatewayBody>, Option<Bytes>), GatewayError> {
    let (parts, body) = req.into_parts();
    let bytes = Limited::new(body, MAX_FORM_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::BodyTooLarge {
                    limit: MAX_FORM_BODY,
                }
            } else {
                GatewayError::BadRequest("request body could not be read")
            }
        })?
        .to_bytes();
    Ok((
        Request::from_parts(parts, GatewayBody::full(bytes.clone())),
        Some(bytes),
    ))
}

/// Phase 4 — route match: the most specific route for method + path (and user, for
/// per-user routes), or 404.
fn match_route(
    snapshot: &Snapshot,
    req: &Request<GatewayBody>,
    path: &str,
    form: Option<&[u8]>,
    client_ip: IpAddr,
) -> Result<RouteMatch, GatewayError> {
    let view = RequestView {
        headers: req.headers(),
        query: req.uri().query(),
        form,
        client_ip,
    };
    snapshot
        .router
        .find(req.method(), path, |keys| user_id::resolve(keys, &view))
        .ok_or_else(|| GatewayError::NoRoute {
            method: req.method().to_string(),
            path: path.to_owned(),
        })
}

/// Phase 10 — response edits: hop-by-hop headers removed, the route's response header
/// edits applied; the body streams on untouched.
pub(crate) fn edit_response(route: &Route, response: Response<Incoming>) -> Response<GatewayBody> {
    edit_response_streamed(route, response).map(GatewayBody::streamed)
}

pub(crate) fn edit_response_streamed(
    route: &Route,
    response: Response<Incoming>,
) -> Response<Incoming> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    route.response_headers.apply(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// What the access log and metrics record about a request; written when its response
/// body ends (or is abandoned).
pub struct RequestLog {
    gateway: Arc<Gateway>,
    access_log: bool,
    start: Instant,
    method: Method,
    /// Kept only when access logging is on.
    path: Option<String>,
    client_ip: IpAddr,
    status: u16,
    /// The matched route (or the admin pseudo-route); `None` = no route matched.
    route: Option<Arc<RouteMetrics>>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) target: Option<Arc<str>>,
    error: Option<&'static str>,
    /// Held until the body ends so least_connections counts streaming responses.
    pub(crate) in_flight: Option<InFlight>,
    /// Index of the matched route in the snapshot (for its response headers).
    route_index: Option<usize>,
    /// The request's Origin, kept only on CORS routes.
    origin: Option<HeaderValue>,
    /// The rate-limit decision whose RateLimit-* headers the response carries.
    rate_limit: Option<Decision>,
}

impl RequestLog {
    fn new<B>(
        gateway: Arc<Gateway>,
        server: &ServerConfig,
        req: &Request<B>,
        client_ip: IpAddr,
    ) -> Self {
        gateway.metrics.in_flight.inc();
        Self {
            gateway,
            access_log: server.access_log,
            start: Instant::now(),
            method: req.method().clone(),
            path: server.access_log.then(|| req.uri().path().to_owned()),
            client_ip,
            status: 0,
            route: None,
            upstream: None,
            target: None,
            error: None,
            in_flight: None,
            route_index: None,
            origin: None,
            rate_limit: None,
        }
    }
}

impl OnBodyEnd for RequestLog {
    fn on_end(self: Box<Self>, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        let route = self
            .route
            .as_ref()
            .unwrap_or(&self.gateway.unrouted_metrics);
        route.record(self.status, elapsed.as_secs_f64());
        self.gateway.metrics.in_flight.dec();
        if self.access_log {
            tracing::info!(
                target: "access",
                method = %self.method,
                path = self.path.as_deref().unwrap_or("-"),
                client = %self.client_ip,
                route = &*route.label,
                upstream = self.upstream.as_deref().unwrap_or("-"),
                target = self.target.as_deref().unwrap_or("-"),
                status = self.status,
                bytes,
                complete,
                error = self.error.unwrap_or("-"),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
            );
        }
    }
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
