//! Phases 6 and 12 on a route with plugins: on-request hooks (which may edit the
//! request or answer it) before the upstream phases, on-response hooks in reverse
//! chain order after them.
//!
//! The request and the answer are lent to the plugins (moved into their stores for a
//! call and back, never copied header by header); a plugin reads only what it asks
//! for. Bodies are buffered only for plugins that declared them, up to
//! `plugins.max_body_bytes`.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::{Exchange, Step};
use crate::body::{self, GatewayBody};
use crate::error::{self, GatewayError, GrpcCode};
use crate::gateway::Route;
use crate::plugins::{Chain, Entries, OnRequest, RequestState, ResponseState};

/// A request's plugin state between its on-request and on-response hooks: the chain,
/// and the request as the plugins left it (on-response hooks read it, and their
/// stashes live in it).
pub(super) struct Seen {
    chain: Arc<Chain>,
    request: RequestState,
}

fn entries<'a>(ex: &'a Exchange, route: &'a Route) -> Entries<'a> {
    Entries {
        global: &ex.snapshot.global_plugins,
        route: &route.plugins,
    }
}

/// Phase 6, first step: the route's chain (global entries, then the route's), or
/// `None` when it has none or every entry resolved to nothing.
pub(super) async fn resolve(
    ex: &Exchange,
    route: &Route,
) -> Result<Option<Arc<Chain>>, GatewayError> {
    let entries = entries(ex, route);
    if entries.is_empty() {
        return Ok(None);
    }
    let chain = match route.chain.cached(&ex.gateway.plugins) {
        Some(chain) => chain,
        // Boxed: resolving (and a first `init`) is rare next to reusing.
        None => {
            let on_error = ex.snapshot.config().plugins.on_error;
            Box::pin(route.chain.resolve(&ex.gateway.plugins, entries, on_error)).await?
        }
    };
    Ok((!chain.is_empty()).then_some(chain))
}

/// Phase 6 — on-request hooks in chain order. A plugin's direct answer goes back
/// through the on-response hooks of the plugins before it; otherwise the edited
/// request goes on (a changed path becomes the exchange's path).
pub(super) async fn on_request(
    ex: &mut Exchange,
    route: &Route,
    chain: Arc<Chain>,
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
    let mut state = RequestState {
        method: parts.method.clone(),
        path: std::mem::take(&mut ex.path),
        query: parts.uri.query().map(str::to_owned),
        headers: std::mem::take(&mut parts.headers),
        client_ip: ex.peer.forwarded_for.clone(),
        route: route.metrics.label.clone(),
        params: std::mem::take(&mut ex.params),
        body: buffered,
        body_replaced: false,
        target_edited: false,
        stashes: Vec::new(),
    };
    if chain.has_on_request() {
        let entries = entries(ex, route);
        if let OnRequest::Respond { mut response, ran } =
            chain.on_request(entries, &mut state).await?
        {
            chain
                .on_response(entries, ran, &mut state, &mut response)
                .await?;
            if ex.grpc && !response.status.is_success() && !error::is_grpc(&response.headers) {
                return Ok(Step::Answer(grpc_refusal(&response)));
            }
            return Ok(Step::Answer(into_response(response, None, None)));
        }
    }
    // The request goes upstream as the plugins left it; on-response hooks get a copy
    // of it only when some plugin has one.
    let keep = chain.has_on_response();
    parts.headers = if keep {
        state.headers.clone()
    } else {
        std::mem::take(&mut state.headers)
    };
    if state.target_edited {
        let target = match &state.query {
            Some(q) => format!("{}?{q}", state.path),
            None => state.path.clone(),
        };
        // Checked when the plugin set them; a failure here would be ours.
        parts.uri = target
            .parse()
            .map_err(|_| GatewayError::BadRequest("request target cannot be forwarded"))?;
    }
    if state.body_replaced {
        body = GatewayBody::full(state.body.take().unwrap_or_default());
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    ex.path = if keep {
        state.path.clone()
    } else {
        std::mem::take(&mut state.path)
    };
    let seen = Box::new(Seen {
        chain,
        request: state,
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
    let Seen { chain, mut request } = *seen;
    // A 101 means the WebSocket tunnel is already up: its upgrade headers must reach
    // the client as they are, so on-response hooks do not run on it.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS || !chain.has_on_response() {
        return Ok(response);
    }
    let max_body = ex.snapshot.config().plugins.max_body_bytes;
    let (parts, body) = response.into_parts();
    let length = parts.headers.get(header::CONTENT_LENGTH).cloned();
    let (streamed, buffered) = if chain.wants_response_body() {
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
    let mut state = ResponseState {
        status: parts.status,
        headers: parts.headers,
        body: buffered,
        body_replaced: false,
    };
    chain
        .on_response(entries(ex, route), chain.len(), &mut request, &mut state)
        .await?;
    Ok(into_response(state, streamed, length))
}

/// A plugin's refusal of a gRPC call in the form gRPC clients read: the status mapped
/// to a gRPC code; as the message, the body's `message` when it is a JSON error like
/// the gateway's own (api-key-auth, jwt-auth answer so), else the body when short
/// text, else the reason phrase.
fn grpc_refusal(response: &ResponseState) -> Response<GatewayBody> {
    let text = response
        .body
        .as_deref()
        .filter(|b| !b.is_empty() && b.len() <= 1024)
        .and_then(|b| std::str::from_utf8(b).ok());
    let json_message = text
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned));
    let message = match (json_message, text) {
        (Some(message), _) => message,
        (None, Some(text)) => text.trim().to_owned(),
        (None, None) => format!(
            "{} {}",
            response.status.as_u16(),
            response.status.canonical_reason().unwrap_or("refused")
        ),
    };
    let mut answer = error::grpc_answer(GrpcCode::for_status(response.status), &message);
    for (name, value) in &response.headers {
        let ours = name == header::CONTENT_TYPE
            || name == header::CONTENT_LENGTH
            || name.as_str().starts_with("grpc-");
        if !ours {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// The client's answer from the plugins' view of it. `streamed` is the upstream body
/// when it was not buffered; it goes on (with its length) unless a plugin replaced it.
fn into_response(
    state: ResponseState,
    streamed: Option<GatewayBody>,
    streamed_length: Option<HeaderValue>,
) -> Response<GatewayBody> {
    let ResponseState {
        status,
        mut headers,
        body,
        body_replaced,
    } = state;
    // Framing is the gateway's: the length comes from the body that is sent.
    headers.remove(header::CONTENT_LENGTH);
    let body = match (body_replaced, streamed) {
        (false, Some(streamed)) => {
            if let Some(length) = streamed_length {
                headers.insert(header::CONTENT_LENGTH, length);
            }
            streamed
        }
        _ => GatewayBody::full(body.unwrap_or_default()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
