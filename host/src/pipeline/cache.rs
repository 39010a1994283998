//! Phases 8 and 11 for a route with a cache: lookup before forwarding, store after.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use tokio::time::Instant;

use super::{Exchange, Step};
use crate::body::{self, Collected, GatewayBody};
use crate::error::GatewayError;
use crate::gateway::Route;
use crate::policy::cache_policy::{self, RequestCacheMode};
use crate::policy::response_cache::{self, FillGuard, Lookup, ResponseCache};

/// A request that went past the cache: what storing its answer needs.
pub(super) struct Fill {
    cache: Arc<ResponseCache>,
    /// `None` for a bypass (`no-store`, non-cacheable method), which is neither
    /// stored nor marked.
    miss: Option<Miss>,
}

struct Miss {
    /// This request fetches for every waiting request of the same key; `None` when it
    /// went upstream after waiting in vain (it does not queue twice).
    guard: Option<FillGuard>,
    request_headers: HeaderMap,
}

/// Phase 8 — a fresh stored answer is served as is (`X-Cache: HIT`); on a miss one
/// request per key goes upstream while the others wait for it.
pub(super) async fn lookup(
    ex: &Exchange,
    route: &Route,
    cache: &Arc<ResponseCache>,
    req: &Request<GatewayBody>,
) -> Step<Fill> {
    let count = |result: &str| {
        ex.gateway
            .metrics
            .cache_lookups
            .with_label_values(&[&*route.metrics.label, result])
            .inc();
    };
    let mode = cache_policy::request_mode(req.method(), req.headers());
    if mode == RequestCacheMode::Bypass {
        count("bypass");
        return Step::Next(Fill {
            cache: cache.clone(),
            miss: None,
        });
    }
    let primary = ResponseCache::primary_key(req);
    let refresh = mode == RequestCacheMode::Refresh;
    let mut found = cache.lookup(primary.clone(), req.headers(), refresh);
    if let Lookup::Follow(waiting) = found {
        response_cache::wait_for_leader(waiting, route.upstream.request_timeout).await;
        found = cache.lookup(primary, req.headers(), refresh);
    }
    let guard = match found {
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
            return Step::Answer(response);
        }
        Lookup::Lead(guard) => Some(guard),
        // Still being fetched after the wait: do not queue twice, go upstream.
        Lookup::Follow(_) => None,
    };
    count("miss");
    Step::Next(Fill {
        cache: cache.clone(),
        miss: Some(Miss {
            guard,
            request_headers: req.headers().clone(),
        }),
    })
}

/// Phase 11 — a cacheable answer is stored on its way to the client (`X-Cache: MISS`)
/// when its body fits `max_body_bytes`; a larger one streams through unstored.
pub(super) async fn store(
    fill: Fill,
    mut response: Response<GatewayBody>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let Some(miss) = fill.miss else {
        return Ok(response);
    };
    response
        .headers_mut()
        .insert("x-cache", HeaderValue::from_static("MISS"));
    let config = &fill.cache.config;
    let ttl = cache_policy::response_ttl(
        response.status(),
        response.headers(),
        Duration::from_millis(config.ttl_ms),
        Duration::from_millis(config.max_ttl_ms),
    );
    let (Some(guard), Some(ttl)) = (miss.guard, ttl) else {
        return Ok(response);
    };
    let (parts, body) = response.into_parts();
    let collected = body::read_up_to(body, config.max_body_bytes)
        .await
        .map_err(|_| GatewayError::UpstreamFailed {
            upstream: "(cache fill)".to_owned(),
        })?;
    match collected {
        Collected::Whole(bytes) => {
            let mut stored_headers = parts.headers.clone();
            stored_headers.remove("x-cache");
            guard.store(
                &miss.request_headers,
                parts.status,
                stored_headers,
                bytes.clone(),
                ttl,
            );
            Ok(Response::from_parts(parts, GatewayBody::full(bytes)))
        }
        // Too big to store: the bytes read so far, then the rest, straight through.
        partial => Ok(Response::from_parts(parts, partial.into_body())),
    }
}
