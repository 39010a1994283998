//! Phase "forward", WebSocket flavour: an `Upgrade: websocket` request is sent on to a
//! target with its upgrade headers, and after the target's 101 the two connections are
//! joined by a byte tunnel that lives on its own task (a config reload cannot cut it).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::forward::{self, Prepared, UpstreamRecord};
use crate::gateway::{Gateway, Route};
use crate::http_upgrade::{ClientUpgrade, Upgraded};
use crate::peer::Peer;

/// Is this an HTTP/1.1 `Upgrade: websocket` request?
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.version() == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Proxies the handshake and, on 101, starts the tunnel. Any other answer from the
/// target is returned as an ordinary response (with the route's response edits).
pub async fn proxy(
    gateway: &Gateway,
    route: &Route,
    mut req: Request<GatewayBody>,
    path: &str,
    peer: &Peer,
    record: &mut UpstreamRecord,
) -> Result<Response<GatewayBody>, GatewayError> {
    let group = &route.upstream;
    record.upstream = Some(group.name.clone());
    let client_side = req
        .extensions_mut()
        .remove::<ClientUpgrade>()
        .and_then(|slot| slot.take())
        .ok_or(GatewayError::BadRequest(
            "this connection cannot be upgraded",
        ))?;
    if group.h1.is_none() {
        return Err(GatewayError::BadRequest(
            "WebSockets need an HTTP/1.1 upstream (protocol = \"http1\")",
        ));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    let (parts, body) = req.into_parts();
    let mut prepared: Prepared = forward::prepare(route, parts, path, peer)?;
    // prepare() dropped the hop-by-hop upgrade headers; the handshake needs them.
    prepared
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    prepared.headers.insert(header::UPGRADE, upgrade);
    let Some(index) = group.pick(peer.ip, &[]) else {
        return Err(GatewayError::NoTarget {
            upstream: group.name.to_string(),
        });
    };
    let target = &group.targets[index];
    record.target = Some(target.url.clone());
    record.attempts = 1;
    let request = prepared.for_target(route, target, body, true)?;
    let mut response = forward::send_once(gateway, group, target, request, record).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        route.edit_response_headers(response.headers_mut());
        return Ok(response);
    }
    let accepted = response.headers().get(header::UPGRADE).cloned();
    let (mut parts, body) = response.into_parts();
    let upstream_side = match body {
        GatewayBody::Upstream { body } => body.into_upgraded(),
        _ => None,
    }
    .map(|(stream, leftover)| Upgraded::new(stream, leftover))
    .ok_or_else(|| GatewayError::UpstreamFailed {
        upstream: group.name.to_string(),
    })?;
    route.edit_response_headers(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(accepted) = accepted {
        parts.headers.insert(header::UPGRADE, accepted);
    }
    let gauge = gateway.metrics.websockets.clone();
    let open = gateway.tunnels.open();
    let (group_name, target_url) = (group.name.clone(), target.url.clone());
    let in_flight = record.in_flight.take();
    tokio::spawn(async move {
        let mut upstream = upstream_side;
        let mut client = match client_side.await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, upstream = %group_name, "websocket upgrade failed");
                return;
            }
        };
        gauge.inc();
        let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        gauge.dec();
        drop(open);
        // Counted as in flight to its target until the tunnel closes.
        drop(in_flight);
        match copied {
            Ok((up, down)) => {
                tracing::debug!(upstream = %group_name, target = %target_url, bytes_up = up, bytes_down = down, "websocket closed")
            }
            Err(e) => {
                tracing::debug!(upstream = %group_name, target = %target_url, error = %e, "websocket ended with an error")
            }
        }
    });
    Ok(Response::from_parts(parts, GatewayBody::empty()))
}
