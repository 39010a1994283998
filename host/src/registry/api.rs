//! The registry's management endpoints: register, deregister, heartbeat, list. Writes
//! are accepted from loopback, or with `Authorization: Bearer <admin_token>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use super::{Registration, group_name};
use crate::body::{self, GatewayBody};
use crate::error::{GatewayError, json_response};
use crate::gateway::{Gateway, Snapshot};

/// Largest request body accepted by the management API.
const MAX_BODY: usize = 64 * 1024;

/// Answers a registry request (the path is one of `paths::REGISTRY_PATHS`).
pub async fn answer(
    gateway: &Gateway,
    snapshot: &Snapshot,
    req: Request<GatewayBody>,
    client_ip: IpAddr,
) -> Result<Response<GatewayBody>, GatewayError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), &method) {
        ("/api/v1/services", &Method::GET | &Method::HEAD) => Ok(list(gateway, snapshot, &req)),
        ("/api/v1/services", _) => Err(not_allowed("/api/v1/services", "GET, HEAD")),
        ("/api/v1/services/register", &Method::POST | &Method::PUT) => {
            crate::access::authorize(snapshot, req.headers(), client_ip)?;
            let body = read_body(req).await?;
            let reg = Registration::from_json(&body).map_err(|e| GatewayError::InvalidField {
                field: e.field,
                message: e.message,
            })?;
            let (id, service) = (reg.id.clone(), reg.service.clone());
            gateway.register(reg);
            let answer = serde_json::json!({
                "registered": id,
                "service": service,
                "node": gateway.node_name,
                "route": format!("/{service}/*"),
            });
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        ("/api/v1/services/register", _) => {
            Err(not_allowed("/api/v1/services/register", "POST, PUT"))
        }
        ("/api/v1/services/deregister", &Method::DELETE | &Method::POST) => {
            crate::access::authorize(snapshot, req.headers(), client_ip)?;
            let id = instance_id(req).await?;
            if gateway.deregister(&id) {
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "deregistered": id }),
                ))
            } else {
                Err(GatewayError::UnknownInstance(id))
            }
        }
        ("/api/v1/services/deregister", _) => {
            Err(not_allowed("/api/v1/services/deregister", "DELETE, POST"))
        }
        ("/api/v1/services/heartbeat", &Method::PUT | &Method::POST) => {
            crate::access::authorize(snapshot, req.headers(), client_ip)?;
            let id = instance_id(req).await?;
            gateway.heartbeat(&id)?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "renewed": id }),
            ))
        }
        _ => Err(not_allowed("/api/v1/services/heartbeat", "PUT, POST")),
    }
}

fn not_allowed(path: &'static str, allowed: &'static str) -> GatewayError {
    GatewayError::MethodNotAllowed { path, allowed }
}

async fn read_body(req: Request<GatewayBody>) -> Result<Bytes, GatewayError> {
    body::read_up_to(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| GatewayError::BadRequest("request body could not be read"))?
        .whole(|| GatewayError::BodyTooLarge { limit: MAX_BODY })
}

/// The instance id from `?id=` or a JSON body `{"id": "..."}`.
async fn instance_id(req: Request<GatewayBody>) -> Result<String, GatewayError> {
    if let Some(id) = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.into_owned())
    }) {
        return Ok(id);
    }
    let body = read_body(req).await?;
    let missing = || GatewayError::InvalidField {
        field: "id".to_owned(),
        message: "give the instance id as ?id= or in a JSON body {\"id\": \"...\"}".to_owned(),
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| missing())?;
    value
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(missing)
}

/// `GET /api/v1/services[?service=S&version=V&region=R]`: live instances grouped by
/// service, with their health and owner: `node` for the registry (gossiped; `node`
/// names the owning node), else the discovery provider (`etcd`, `dns_srv`, `consul`)
/// that feeds them, `stale` while that provider cannot be reached.
fn list<B>(gateway: &Gateway, snapshot: &Snapshot, req: &Request<B>) -> Response<GatewayBody> {
    let filters: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "node": gateway.node_name,
            "services": services_json(gateway, snapshot, &filters),
        }),
    )
}

/// Live instances grouped by service (filtered by `service`, `version`, `region`),
/// as `GET /api/v1/services` and the dashboard show them.
pub fn services_json(
    gateway: &Gateway,
    snapshot: &Snapshot,
    filters: &[(String, String)],
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let wanted = |key: &str| filters.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let keep = |service: &str, reg: &Registration| {
        wanted("service").is_none_or(|s| *s == service)
            && ["version", "region"]
                .iter()
                .all(|k| wanted(k).is_none_or(|v| reg.metadata.get(*k) == Some(v)))
    };
    let now = Instant::now();
    let healthy = |service: &str, url: &str| {
        snapshot
            .upstreams
            .get(&group_name(service))
            .and_then(|g| g.targets.iter().find(|t| *t.url == *url))
            .map(|t| t.is_available(now))
    };
    let mut services: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (service, instances) in gateway.registry().services() {
        for (reg, stamp) in instances.iter().filter(|(r, _)| keep(&service, r)) {
            let url = reg.url();
            services
                .entry(service.clone())
                .or_default()
                .push(serde_json::json!({
                    "id": reg.id,
                    "address": reg.address,
                    "port": reg.port,
                    "url": url,
                    "metadata": reg.metadata,
                    "check": reg.check,
                    "ttl_s": reg.ttl_s,
                    "node": stamp.owner,
                    "owner": "node",
                    "stale": false,
                    "healthy": healthy(&service, &url),
                }));
        }
    }
    for (service, instances) in gateway.discovered().services() {
        for (reg, found) in instances.iter().filter(|(r, _)| keep(&service, r)) {
            let url = reg.url();
            services
                .entry(service.clone())
                .or_default()
                .push(serde_json::json!({
                    "id": reg.id,
                    "address": reg.address,
                    "port": reg.port,
                    "url": url,
                    "metadata": reg.metadata,
                    "check": reg.check,
                    "owner": found.kind.as_str(),
                    "provider": found.label,
                    "stale": found.stale,
                    "healthy": healthy(&service, &url),
                }));
        }
    }
    services
}
