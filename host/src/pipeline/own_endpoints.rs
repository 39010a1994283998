//! Phase 2 — the gateway's own endpoints on the main listener: health, upstream state
//! and metrics (`admin`), the dashboard (`dashboard`), and the service registry's API (`registry::api`).

use http::{Request, Response};

use super::{Exchange, Step};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::paths::REGISTRY_PATHS;
use crate::registry;
use crate::{admin, dashboard};

/// Answers requests for the gateway's own paths (they are counted under the `(admin)`
/// route); other requests go on.
pub(super) async fn answer(
    ex: &mut Exchange,
    req: Request<GatewayBody>,
) -> Result<Step<Request<GatewayBody>>, GatewayError> {
    let dashboard = dashboard::answer(&ex.gateway, &ex.snapshot, &req, ex.peer.ip);
    if let Some(answer) = dashboard.or_else(|| admin::answer(&ex.gateway, &ex.snapshot, &req)) {
        ex.log.record().route = Some(ex.gateway.admin_metrics.clone());
        return answer.map(Step::Answer);
    }
    if !REGISTRY_PATHS.contains(&req.uri().path()) {
        return Ok(Step::Next(req));
    }
    ex.log.record().route = Some(ex.gateway.admin_metrics.clone());
    // Boxed: rare, and its state would otherwise be carried by every request.
    let answer: Response<GatewayBody> = Box::pin(registry::api::answer(
        &ex.gateway,
        &ex.snapshot,
        req,
        ex.peer.ip,
    ))
    .await?;
    Ok(Step::Answer(answer))
}
