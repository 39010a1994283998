//! The operator's page at `/dashboard`: three files embedded in the binary (no CDN,
//! works air-gapped), the JSON they poll (`/api/v1/dashboard`, admin access only),
//! and the history sampled once a second for its charts.
//!
//! - `history` per-route requests/s and p99, per-target rates (bounded ring buffers)
//! - `data`    the JSON document the page renders

pub mod data;
pub mod history;

use std::net::IpAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::body::GatewayBody;
use crate::error::{GatewayError, json_response};
use crate::gateway::{Gateway, Snapshot};

/// The page, its script and its style sheet.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

use crate::paths::{DASHBOARD_DATA, DASHBOARD_PATHS};

/// Answers a dashboard request, or `None` when the path is not the dashboard's.
///
/// The page and its assets hold no data and are served to anyone: a browser cannot
/// send a bearer token when it navigates, so the page asks for the token and sends
/// it (as `Authorization: Bearer`, never in a URL) with its data requests, which need
/// admin access like every management endpoint.
pub fn answer<B>(
    gateway: &Gateway,
    snapshot: &Snapshot,
    req: &Request<B>,
    client_ip: IpAddr,
) -> Option<Result<Response<GatewayBody>, GatewayError>> {
    let path = *DASHBOARD_PATHS.iter().find(|p| **p == req.uri().path())?;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(Err(GatewayError::MethodNotAllowed {
            path,
            allowed: "GET, HEAD",
        }));
    }
    Some(match path {
        DASHBOARD_DATA => crate::access::authorize(snapshot, req.headers(), client_ip).map(|()| {
            let mut response = json_response(StatusCode::OK, &data::build(gateway, snapshot));
            no_store(&mut response);
            response
        }),
        "/dashboard/app.js" => Ok(asset(SCRIPT, "text/javascript; charset=utf-8")),
        "/dashboard/app.css" => Ok(asset(STYLE, "text/css; charset=utf-8")),
        _ => Ok(asset(PAGE, "text/html; charset=utf-8")),
    })
}

fn asset(text: &'static str, content_type: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(text));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Only our own files run; nothing may frame the page (clickjacking).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response<GatewayBody>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Samples the metrics into the history once a second, for the gateway's lifetime.
pub async fn sample(gateway: std::sync::Arc<Gateway>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = gateway.snapshot();
        let mut counters = history::Counters::default();
        history::route_counters(&gateway.metrics.gather(), &mut counters);
        for group in snapshot.upstreams.values() {
            for target in &group.targets {
                let stats = &target.stats;
                counters.targets.insert(
                    (group.name.to_string(), target.url.to_string()),
                    (
                        stats.requests.load(std::sync::atomic::Ordering::Relaxed),
                        stats.failures.load(std::sync::atomic::Ordering::Relaxed),
                    ),
                );
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        gateway.history.record(now_ms, counters);
    }
}
