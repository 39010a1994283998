//! Phase "forward": the request as the upstream gets it, then per attempt a target
//! (healthy, breaker closed, not yet tried), one exchange, and the retry decision.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use tokio::time::Instant;

use crate::body::{self, BodyError, Collected, GatewayBody};
use crate::config::UpstreamProtocol;
use crate::error::GatewayError;
use crate::gateway::{Gateway, Route};
use crate::headers::{add_forwarded, strip_hop_by_hop};
use crate::peer::Peer;
use crate::policy::retry;
use crate::trace::span::TRACEPARENT;
use crate::trace::{ChildKind, RequestTrace};
use crate::upstream::h1_client::SendError;
use crate::upstream::{InFlight, RetryPolicy, Target, UpstreamGroup};

/// What the access log and the request's accounting learn from forwarding: which group
/// and target answered, and the target's in-flight count, held until the response
/// body ends so least_connections counts streaming responses.
#[derive(Debug, Default)]
pub struct UpstreamRecord {
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub in_flight: Option<InFlight>,
    /// Exchanges tried (1 = no retry).
    pub attempts: u32,
}

/// The target-independent part of an upstream request: rewritten path, cleaned and
/// edited headers. Only the authority and Host differ between attempts.
pub struct Prepared {
    pub method: Method,
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    /// The client's Host, for `preserve_host`.
    pub original_host: Option<HeaderValue>,
}

/// Rewrites the request for the upstream: path rewrite, hop-by-hop headers removed,
/// X-Forwarded-* added, the route's request header edits applied.
pub fn prepare(
    route: &Route,
    parts: http::request::Parts,
    path: &str,
    peer: &Peer,
) -> Result<Prepared, GatewayError> {
    let http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    // Unchanged path: reuse the client's path+query as is (no re-encoding, no copy).
    let path_and_query = match uri.path_and_query() {
        Some(original) if route.rewrite.is_identity() && original.path() == path => {
            original.clone()
        }
        original => {
            let upstream_path = route.rewrite.apply(path);
            let joined = match original.and_then(|pq| pq.query()) {
                Some(q) => format!("{upstream_path}?{q}"),
                None => upstream_path,
            };
            joined
                .parse()
                .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))?
        }
    };
    // An HTTP/2 client names the host in :authority (the URI), not in a Host header.
    let original_host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // gRPC needs `te: trailers` end to end; every other TE is hop-by-hop.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let proto = if peer.secure { "https" } else { "http" };
    add_forwarded(
        &mut headers,
        &peer.forwarded_for,
        original_host.as_ref(),
        proto,
    );
    route.request_headers.apply(&mut headers);
    Ok(Prepared {
        method,
        path_and_query,
        headers,
        original_host,
    })
}

impl Prepared {
    /// The request for one target. `headers` is taken on the last attempt and cloned
    /// before that, so a request that is tried once copies nothing.
    pub fn for_target(
        &mut self,
        route: &Route,
        target: &Target,
        body: GatewayBody,
        last: bool,
    ) -> Result<Request<GatewayBody>, GatewayError> {
        let uri = Uri::builder()
            .scheme(target.addr.scheme.clone())
            .authority(target.addr.authority.clone())
            .path_and_query(self.path_and_query.clone())
            .build()
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))?;
        let mut headers = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        let host = match (
            &route.host_rewrite,
            route.preserve_host,
            &self.original_host,
        ) {
            (Some(fixed), _, _) => fixed.clone(),
            (None, true, Some(original)) => original.clone(),
            _ => target.host_header.clone(),
        };
        headers.insert(header::HOST, host);
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = match route.upstream.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        };
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// Sends the request to the route's group: picks an available target (health,
/// ejection, breaker), sends, and retries per the group's `retry` policy (different
/// target when one exists, backoff with full jitter, within the retry budget). A
/// retry only ever happens before anything was sent to the client. Each attempt is
/// a child span of the request's trace (when recorded) and the upstream's parent.
pub async fn send(
    gateway: &Gateway,
    route: &Route,
    req: Request<GatewayBody>,
    path: &str,
    peer: &Peer,
    record: &mut UpstreamRecord,
    trace: &mut RequestTrace,
) -> Result<Response<GatewayBody>, GatewayError> {
    let group = &route.upstream;
    record.upstream = Some(group.name.clone());
    let (parts, body) = req.into_parts();
    let mut prepared = prepare(route, parts, path, peer)?;
    let policy = group.retry.as_ref().filter(|r| r.spec.attempts > 1);
    let (mut body, replay) = match policy {
        Some(policy) => {
            policy.budget.record_request(Instant::now());
            // Boxed, as the backoff below: retry-only state stays out of the future
            // every request carries.
            Box::pin(replayable(&prepared.headers, body, policy)).await?
        }
        None => (Some(body), None),
    };
    let attempts = match (policy, &replay) {
        (Some(policy), Some(_)) => policy.spec.attempts,
        _ => 1,
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= attempts;
        let Some(index) = group.pick(peer.ip, &tried) else {
            return Err(GatewayError::NoTarget {
                upstream: group.name.to_string(),
            });
        };
        tried.push(index);
        let target = &group.targets[index];
        // The breaker may have opened between the pick and now.
        let permit = match &target.breaker {
            Some(breaker) => match breaker.try_acquire() {
                Some(permit) => Some(permit),
                None if last => {
                    return Err(GatewayError::NoTarget {
                        upstream: group.name.to_string(),
                    });
                }
                None => continue,
            },
            None => None,
        };
        let attempt_body = match &replay {
            Some(bytes) => GatewayBody::full(bytes.clone()),
            None => body.take().unwrap_or_default(),
        };
        let mut request = prepared.for_target(route, target, attempt_body, last)?;
        let span = trace.start_child();
        if let Some(traceparent) = trace.upstream_traceparent(span) {
            request.headers_mut().insert(&TRACEPARENT, traceparent);
        }
        record.target = Some(target.url.clone());
        record.attempts = attempt;
        let outcome = send_once(gateway, group, target, request, record).await;
        trace.end_child(span, || ChildKind::Attempt {
            upstream: group.name.clone(),
            target: target.url.clone(),
            attempt,
            status: outcome.as_ref().ok().map(|r| r.status().as_u16()),
            error: outcome.as_ref().err().map(GatewayError::code),
        });
        let failed = match &outcome {
            Ok(response) => group.is_failure_status(response.status().as_u16()),
            Err(e) => !e.is_client_fault(),
        };
        if let Some(permit) = permit {
            if failed {
                permit.failure();
            } else {
                permit.success();
            }
        }
        record_outlier(gateway, group, target, failed);
        let Some(policy) = policy.filter(|_| !last) else {
            return outcome;
        };
        if !should_retry(policy, &prepared.method, &outcome) {
            return outcome;
        }
        if !policy.budget.try_spend(Instant::now()) {
            gateway
                .metrics
                .retries
                .with_label_values(&[&*group.name, "budget_exhausted"])
                .inc();
            tracing::debug!(upstream = %group.name, "retry budget exhausted; not retrying");
            return outcome;
        }
        gateway
            .metrics
            .retries
            .with_label_values(&[&*group.name, "sent"])
            .inc();
        let delay = retry::backoff(
            Duration::from_millis(policy.spec.base_ms),
            Duration::from_millis(policy.spec.max_ms),
            attempt,
            &mut rand::rng(),
        );
        tracing::debug!(upstream = %group.name, attempt, delay_ms = delay.as_millis() as u64, "retrying");
        drop(outcome);
        Box::pin(tokio::time::sleep(delay)).await;
    }
}

/// Connect errors are retried for any method (the request never left); other failures
/// and `on_status` answers only for idempotent methods unless configured otherwise.
fn should_retry(
    policy: &RetryPolicy,
    method: &Method,
    outcome: &Result<Response<GatewayBody>, GatewayError>,
) -> bool {
    let method_ok = policy.spec.retry_non_idempotent || retry::is_idempotent(method);
    match outcome {
        Ok(response) => method_ok && policy.spec.on_status.contains(&response.status().as_u16()),
        // The request never left: another target may answer (or have a good certificate).
        Err(GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamTls { .. }) => true,
        Err(GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamFailed { .. }) => {
            method_ok
        }
        Err(_) => false,
    }
}

/// Keeps the body so it can be sent again: empty bodies, and bodies whose
/// Content-Length is within `max_body_bytes`. Anything else streams through once
/// (`None` = not replayable).
async fn replayable(
    headers: &HeaderMap,
    body: GatewayBody,
    policy: &RetryPolicy,
) -> Result<(Option<GatewayBody>, Option<Bytes>), GatewayError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    match (length, chunked) {
        (None | Some(0), false) if body_is_empty(&body) => Ok((None, Some(Bytes::new()))),
        (Some(n), false) if n <= policy.spec.max_body_bytes => {
            match body::read_up_to(body, policy.spec.max_body_bytes)
                .await
                .map_err(|_| GatewayError::BadRequest("request body could not be read"))?
            {
                Collected::Whole(bytes) => Ok((None, Some(bytes))),
                // Longer than it said (cannot happen with a checked Content-Length):
                // not replayable, sent once.
                partial => Ok((Some(partial.into_body()), None)),
            }
        }
        _ => Ok((Some(body), None)),
    }
}

fn body_is_empty(body: &GatewayBody) -> bool {
    http_body::Body::is_end_stream(body) || http_body::Body::size_hint(body).exact() == Some(0)
}

/// Feeds passive outlier detection with a real request's outcome.
fn record_outlier(gateway: &Gateway, group: &UpstreamGroup, target: &Target, failed: bool) {
    let Some(spec) = &group.outlier else {
        return;
    };
    if let Some(length) = target.stats.health.record(!failed, spec, Instant::now()) {
        tracing::warn!(
            upstream = %group.name,
            target = %target.url,
            ejected_ms = length.as_millis() as u64,
            "target ejected after consecutive failures"
        );
        gateway
            .metrics
            .health_changes
            .with_label_values(&[&*group.name, &*target.url, "ejected"])
            .inc();
    }
}

/// One exchange with one target, bounded by the group's request timeout.
pub async fn send_once(
    gateway: &Gateway,
    group: &UpstreamGroup,
    target: &Target,
    request: Request<GatewayBody>,
    record: &mut UpstreamRecord,
) -> Result<Response<GatewayBody>, GatewayError> {
    let in_flight = InFlight::start(&target.stats);
    let sent = match (&group.h1, &target.pool) {
        (Some(h1), Some(pool)) => {
            // Boxed: inline, the client's future (request write, answer head read) would
            // add 1.7 KB to the request future every HTTP/1 connection task holds.
            let send = Box::pin(h1.send(pool, &target.addr, request));
            let sent = tokio::time::timeout(group.request_timeout, send).await;
            match sent {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(h1_failure(group, target, e)),
                Err(_elapsed) => Err(GatewayError::UpstreamTimeout {
                    upstream: group.name.to_string(),
                }),
            }
        }
        _ => {
            let sent =
                tokio::time::timeout(group.request_timeout, group.client.request(request)).await;
            match sent {
                Ok(Ok(response)) => Ok(response.map(GatewayBody::streamed)),
                Ok(Err(e)) => Err(hyper_failure(group, target, &e)),
                Err(_elapsed) => Err(GatewayError::UpstreamTimeout {
                    upstream: group.name.to_string(),
                }),
            }
        }
    };
    let failure = match sent {
        Ok(response) => {
            record.in_flight = Some(in_flight);
            return Ok(response);
        }
        Err(failure) => failure,
    };
    if failure.is_client_fault() {
        return Err(failure);
    }
    in_flight.failed();
    gateway
        .metrics
        .upstream_errors
        .with_label_values(&[&group.name, failure.code()])
        .inc();
    Err(failure)
}

/// Our HTTP/1.1 client's failure as the gateway's refusal (the reason logged).
fn h1_failure(group: &UpstreamGroup, target: &Target, e: SendError) -> GatewayError {
    let upstream = group.name.to_string();
    match e {
        SendError::ConnectTimeout => GatewayError::UpstreamTimeout { upstream },
        SendError::Connect(_) => GatewayError::UpstreamConnect { upstream },
        SendError::Tls(reason) => {
            tracing::warn!(upstream = %group.name, target = %target.url, %reason, "TLS with the upstream target failed");
            GatewayError::UpstreamTls { upstream }
        }
        // The client's body broke the chunked coding (or ended early) while it was
        // forwarded: the client's fault, answered 400, not held against the target.
        SendError::Body(BodyError::Chunked(e)) => GatewayError::MalformedBody(e),
        SendError::Body(e) => {
            tracing::debug!(error = %e, upstream = %group.name, "the request body failed while forwarded");
            GatewayError::BadRequest("the request body ended before its end was announced")
        }
        other => {
            tracing::debug!(error = %other, upstream = %group.name, target = %target.url, "upstream exchange failed");
            GatewayError::UpstreamFailed { upstream }
        }
    }
}

/// hyper's client failure (HTTP/2 targets) as the gateway's refusal.
fn hyper_failure(
    group: &UpstreamGroup,
    target: &Target,
    e: &hyper_util::client::legacy::Error,
) -> GatewayError {
    let upstream = group.name.to_string();
    if e.is_connect() && caused_by_timeout(e) {
        return GatewayError::UpstreamTimeout { upstream };
    }
    if e.is_connect() {
        return match crate::tls::client::failure_reason(e) {
            Some(reason) => {
                tracing::warn!(upstream = %group.name, target = %target.url, %reason, "TLS with the upstream target failed");
                GatewayError::UpstreamTls { upstream }
            }
            None => {
                tracing::debug!(error = ?e, upstream = %group.name, target = %target.url, "could not connect to the upstream target");
                GatewayError::UpstreamConnect { upstream }
            }
        };
    }
    tracing::debug!(error = %e, upstream = %group.name, "upstream exchange failed");
    GatewayError::UpstreamFailed { upstream }
}

fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        source = e.source();
    }
    false
}
