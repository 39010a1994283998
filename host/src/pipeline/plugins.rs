//! Phases 6 and 12 on a route with plugins: on-request hooks (which may edit the
//! request or answer it) before the upstream phases, on-response hooks in reverse
//! chain order after them. Bodies are buffered only for plugins that asked, up to
//! `plugins.max_body_bytes`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::{Exchange, Step};
use crate::body::{self, GatewayBody};
use crate::error::GatewayError;
use crate::gateway::Route;
use crate::headers::strip_hop_by_hop;
use crate::plugins::bindings as wit;
use crate::plugins::{Chain, Entries, OnRequest, convert};

/// A request's plugin state between its on-request and on-response hooks: the chain,
/// and the request as the plugins left it (on-response hooks see it).
pub(super) struct Seen {
    chain: Chain,
    request: wit::Request,
}

fn entries<'a>(ex: &'a Exchange, route: &'a Route) -> Entries<'a> {
    Entries {
        global: &ex.snapshot.global_plugins,
        route: &route.plugins,
    }
}

/// Phase 6, first step: the route's chain (global entries, then the route's), or
/// `None` when it has none or every entry resolved to nothing.
pub(super) async fn resolve(ex: &Exchange, route: &Route) -> Result<Option<Chain>, GatewayError> {
    let entries = entries(ex, route);
    if entries.is_empty() {
        return Ok(None);
    }
    let on_error = ex.snapshot.config().plugins.on_error;
    let chain = Box::pin(Chain::resolve(&ex.gateway.plugins, entries, on_error)).await?;
    Ok((!chain.is_empty()).then_some(chain))
}

/// Phase 6 — on-request hooks in chain order. A plugin's direct answer goes back
/// through the on-response hooks of the plugins before it; otherwise the edited
/// request goes on (a changed path becomes the exchange's path).
pub(super) async fn on_request(
    ex: &mut Exchange,
    route: &Route,
    chain: Chain,
    req: Request<GatewayBody>,
) -> Result<Step<(Request<GatewayBody>, Box<Seen>)>, GatewayError> {
    let max_body = ex.snapshot.config().plugins.max_body_bytes;
    let (mut parts, mut body) = req.into_parts();
    let buffered = if chain.wants_request_body() {
        let bytes = body::read_up_to(body, max_body)
            .await
            .map_err(|_| GatewayError::BadRequest("request body could not be read"))?
            .whole(|| GatewayError::BodyTooLarge { limit: max_body })?;
        body = GatewayBody::full(bytes.clone());
        Some(bytes)
    } else {
        None
    };
    let client_ip = ex.peer.forwarded_for.to_str().unwrap_or("unknown");
    let mut wreq = convert::request_to_wit(
        &parts,
        &ex.path,
        client_ip,
        &route.metrics.label,
        &ex.params,
        buffered.as_ref(),
    );
    if chain.has_on_request() {
        let entries = entries(ex, route);
        if let OnRequest::Respond { response, ran } = chain.on_request(entries, &mut wreq).await? {
            let mut wresp = wit::Response {
                status: response.status,
                headers: response.headers,
                body: Some(response.body),
            };
            chain.on_response(entries, ran, &wreq, &mut wresp).await?;
            return Ok(Step::Answer(response_from_wit(wresp, None, None)?));
        }
        write_back(
            &mut parts,
            &mut body,
            &mut wreq,
            &ex.path,
            buffered.as_ref(),
        )?;
        if wreq.path != ex.path {
            ex.path.clone_from(&wreq.path);
        }
    }
    wreq.body = None;
    let seen = Box::new(Seen {
        chain,
        request: wreq,
    });
    Ok(Step::Next((Request::from_parts(parts, body), seen)))
}

/// Phase 12 — on-response hooks in reverse chain order, on every answer of the
/// upstream phases (cache hits included).
pub(super) async fn on_response(
    ex: &Exchange,
    route: &Route,
    seen: Box<Seen>,
    response: Response<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let Seen { chain, request } = *seen;
    // A 101 means the WebSocket tunnel is already up: its upgrade headers must reach
    // the client as they are, so on-response hooks do not run on it.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS || !chain.has_on_response() {
        return Ok(response);
    }
    let max_body = ex.snapshot.config().plugins.max_body_bytes;
    let (parts, body) = response.into_parts();
    let (body, buffered) = if chain.wants_response_body() {
        let bytes = body::read_up_to(body, max_body)
            .await
            .map_err(|_| GatewayError::UpstreamFailed {
                upstream: route.upstream.name.to_string(),
            })?
            .whole(|| GatewayError::ResponseTooLarge { limit: max_body })?;
        (None, Some(bytes))
    } else {
        (Some(body), None)
    };
    let mut wresp = convert::response_to_wit(&parts, buffered.as_ref());
    chain
        .on_response(entries(ex, route), chain.len(), &request, &mut wresp)
        .await?;
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
