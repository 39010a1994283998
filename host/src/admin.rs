//! Endpoints the gateway answers itself on the main listener: health and metrics.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::GatewayBody;
use crate::config::validate::RESERVED_PATHS;
use crate::error::{GatewayError, json_response};
use crate::gateway::{Gateway, Snapshot};

/// Answers a management request, or returns `None` when the path is not one of ours.
pub fn answer<B>(
    gateway: &Gateway,
    snapshot: &Snapshot,
    req: &Request<B>,
) -> Option<Result<Response<GatewayBody>, GatewayError>> {
    let path = *RESERVED_PATHS.iter().find(|p| **p == req.uri().path())?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(Err(GatewayError::MethodNotAllowed {
            path,
            allowed: "GET, HEAD",
        }));
    }
    Some(Ok(match path {
        "/metrics" => metrics(gateway),
        _ => health(gateway, snapshot),
    }))
}

/// `GET /api/v1/health`: liveness plus what is loaded.
fn health(gateway: &Gateway, snapshot: &Snapshot) -> Response<GatewayBody> {
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "listen": gateway.local_addr.to_string(),
        "uptime_s": gateway.started.elapsed().as_secs(),
        "config": {
            "generation": snapshot.generation,
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.upstreams.len(),
        },
    });
    json_response(StatusCode::OK, &body)
}

/// `GET /metrics`: Prometheus text format.
fn metrics(gateway: &Gateway) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(gateway.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
