//! Phase 7 — rate limits: the route's limit, then the per-user one.

use http::Request;
use tokio::time::Instant;

use super::Exchange;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::gateway::Route;
use crate::user_id::RequestView;

/// Checks the route's limits; the decision shown in RateLimit-* headers is kept for
/// the response (phase 13), refusals included.
pub(super) fn check_rate_limits(
    ex: &mut Exchange,
    route: &Route,
    req: &Request<GatewayBody>,
) -> Result<(), GatewayError> {
    let policies = &route.policies;
    if policies.rate_limit.is_none() && policies.user_rate_limit.is_none() {
        return Ok(());
    }
    let view = RequestView {
        headers: req.headers(),
        query: req.uri().query(),
        form: ex.form.as_deref(),
        client_ip: ex.peer.ip,
    };
    match policies.check_limits(&view, Instant::now()) {
        Ok(decision) => {
            ex.rate_limit = decision;
            Ok(())
        }
        Err((scope, decision)) => {
            ex.rate_limit = Some(decision);
            ex.gateway
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
