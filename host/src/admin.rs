//! Endpoints the gateway answers itself on the main listener: health, upstream state
//! and metrics.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::time::Instant;

use crate::body::GatewayBody;
use crate::error::{GatewayError, json_response};
use crate::gateway::{Gateway, Snapshot};
use crate::paths::ADMIN_PATHS;

/// Answers a management request, or returns `None` when the path is not one of ours.
pub fn answer<B>(
    gateway: &Gateway,
    snapshot: &Snapshot,
    req: &Request<B>,
) -> Option<Result<Response<GatewayBody>, GatewayError>> {
    let path = *ADMIN_PATHS.iter().find(|p| **p == req.uri().path())?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(Err(GatewayError::MethodNotAllowed {
            path,
            allowed: "GET, HEAD",
        }));
    }
    Some(Ok(match path {
        "/metrics" => metrics(gateway, snapshot),
        "/api/v1/upstreams" => upstreams(snapshot),
        _ => health(gateway, snapshot),
    }))
}

/// `GET /api/v1/health`: liveness plus what is loaded.
fn health(gateway: &Gateway, snapshot: &Snapshot) -> Response<GatewayBody> {
    json_response(StatusCode::OK, &health_json(gateway, snapshot))
}

/// The health document (also part of the dashboard's data).
pub fn health_json(gateway: &Gateway, snapshot: &Snapshot) -> serde_json::Value {
    let members: Vec<serde_json::Value> = match gateway.cluster.get() {
        Some(view) => view
            .members()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "addr": m.addr.to_string(),
                    "state": crate::cluster::view::state_name(m.state),
                    "incarnation": m.incarnation,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let body = serde_json::json!({
        "status": "ok",
        "node": gateway.node_name,
        "cluster": {
            "enabled": gateway.cluster.get().is_some(),
            "members": members,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "listen": gateway.local_addr.to_string(),
        "uptime_s": gateway.started.elapsed().as_secs(),
        "config": {
            "generation": snapshot.generation,
            "routes": snapshot.routes.len(),
            "upstreams": snapshot.upstreams.len(),
        },
        "plugins": plugins(gateway),
    });
    body
}

/// The plugins in force: name, version, file digest and breaker state.
fn plugins(gateway: &Gateway) -> Vec<serde_json::Value> {
    let mut loaded = gateway.plugins.loaded();
    loaded.sort_by(|a, b| a.name.cmp(&b.name));
    loaded
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": &*v.name,
                "version": v.version,
                "digest": v.digest,
                "breaker": gateway.plugins.breaker_state(&v.name).map_or("closed", |b| b.as_str()),
                "kv_bytes": gateway.plugins.kv_bytes(&v.name),
                "language": v.language.as_str(),
            })
        })
        .collect()
}

/// `GET /api/v1/upstreams`: every group and target with its health, breaker state,
/// in-flight and total requests.
fn upstreams(snapshot: &Snapshot) -> Response<GatewayBody> {
    json_response(StatusCode::OK, &upstreams_json(snapshot))
}

/// The upstreams document (also part of the dashboard's data).
pub fn upstreams_json(snapshot: &Snapshot) -> serde_json::Value {
    let now = Instant::now();
    let mut groups: Vec<_> = snapshot.upstreams.values().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let groups: Vec<serde_json::Value> = groups
        .into_iter()
        .map(|group| {
            let targets: Vec<serde_json::Value> = group
                .targets
                .iter()
                .map(|t| {
                    let health = &t.stats.health;
                    let ejected_ms = health.ejected_for(now).map(|d| d.as_millis() as u64);
                    serde_json::json!({
                        "url": &*t.url,
                        "weight": t.weight,
                        "available": t.is_available(now),
                        "health": if !health.active_ok() {
                            "unhealthy"
                        } else if ejected_ms.is_some() {
                            "ejected"
                        } else {
                            "healthy"
                        },
                        "ejected_for_ms": ejected_ms,
                        "breaker": t.breaker.as_ref().map(|b| b.state().as_str()),
                        "in_flight": t.stats.in_flight.load(Ordering::Relaxed),
                        "requests": t.stats.requests.load(Ordering::Relaxed),
                        "failures": t.stats.failures.load(Ordering::Relaxed),
                    })
                })
                .collect();
            serde_json::json!({
                "name": &*group.name,
                "balancer": group.kind,
                "health_check": snapshot.plan.upstreams.get(&*group.name).is_some_and(|c| c.config.health_check.is_some()),
                "targets": targets,
            })
        })
        .collect();
    serde_json::json!({ "upstreams": groups })
}

/// Brings the per-target gauges (health, breaker) up to date; they are read at
/// scrape time because an open breaker turns half-open by time alone.
fn refresh_target_gauges(gateway: &Gateway, snapshot: &Snapshot) {
    let m = &gateway.metrics;
    m.target_healthy.reset();
    m.breaker_state.reset();
    m.plugin_breaker_state.reset();
    for version in gateway.plugins.loaded() {
        if let Some(state) = gateway.plugins.breaker_state(&version.name) {
            m.plugin_breaker_state
                .with_label_values(&[&*version.name])
                .set(state.gauge());
        }
    }
    let now = Instant::now();
    for group in snapshot.upstreams.values() {
        for t in &group.targets {
            let labels = [&*group.name, &*t.url];
            let serving = t.stats.health.is_serving(now);
            m.target_healthy
                .with_label_values(&labels)
                .set(i64::from(serving));
            if let Some(b) = &t.breaker {
                m.breaker_state
                    .with_label_values(&labels)
                    .set(b.state().gauge());
            }
        }
    }
}

/// The Prometheus text `/metrics` serves, with the gauges read at scrape time brought
/// up to date.
pub fn render_metrics(gateway: &Gateway, snapshot: &Snapshot) -> String {
    refresh_target_gauges(gateway, snapshot);
    gateway.metrics.render()
}

/// `GET /metrics`: Prometheus text format.
fn metrics(gateway: &Gateway, snapshot: &Snapshot) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(render_metrics(gateway, snapshot)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
