//! Active health checks: one probe task per target, feeding `policy::health`'s verdict.

use std::time::Duration;

use http::{Request, header};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::addr::TargetAddr;
use super::client::HttpClient;
use super::stats::TargetStats;
use crate::body::GatewayBody;
use crate::config::HealthCheckConfig;
use crate::metrics::Metrics;

/// What a probe task needs to know about its target.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub group: std::sync::Arc<str>,
    pub url: std::sync::Arc<str>,
    pub addr: TargetAddr,
    pub host_header: http::HeaderValue,
    pub stats: std::sync::Arc<TargetStats>,
}

/// The probe tasks of one config snapshot; dropping it (when the snapshot goes) stops
/// them, so a reload never leaves stale probes running.
#[derive(Debug, Default)]
pub struct HealthCheckers(Vec<JoinHandle<()>>);

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl HealthCheckers {
    /// Starts one probe task per target. Outside a tokio runtime (unit tests that only
    /// build snapshots) no task is started.
    pub fn spawn(
        targets: Vec<(ProbeTarget, HealthCheckConfig, HttpClient)>,
        metrics: &Metrics,
    ) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self::default();
        };
        Self(
            targets
                .into_iter()
                .map(|(target, spec, client)| {
                    runtime.spawn(probe_loop(target, spec, client, metrics.clone()))
                })
                .collect(),
        )
    }
}

/// Probes a target every `interval_ms`; `unhealthy_threshold` failures in a row take
/// it out, `healthy_threshold` passes in a row bring it back, so one blip does not flap.
async fn probe_loop(
    target: ProbeTarget,
    spec: HealthCheckConfig,
    client: HttpClient,
    metrics: Metrics,
) {
    let interval = Duration::from_millis(spec.interval_ms.max(1));
    let health = &target.stats.health;
    let first = health.next_probe(interval, tokio::time::Instant::now());
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&target, &spec, &client).await;
        let (passes, failures) = health.record_probe(result.is_ok(), Instant::now());
        match result {
            Ok(()) => {
                if !health.active_ok() && passes >= spec.healthy_threshold.max(1) {
                    health.set_active(true);
                    tracing::info!(upstream = %target.group, target = %target.url, passes, "target healthy again");
                    record_change(&metrics, &target, "healthy");
                }
            }
            Err(reason) => {
                if health.active_ok() && failures >= spec.unhealthy_threshold.max(1) {
                    health.set_active(false);
                    tracing::warn!(upstream = %target.group, target = %target.url, failures, reason, "target unhealthy: no traffic until it passes its health checks");
                    record_change(&metrics, &target, "unhealthy");
                }
            }
        }
    }
}

/// Counts a health transition.
fn record_change(metrics: &Metrics, target: &ProbeTarget, state: &str) {
    metrics
        .health_changes
        .with_label_values(&[&*target.group, &*target.url, state])
        .inc();
}

/// One probe: GET the check path; passes on the expected status within the timeout.
async fn probe(
    target: &ProbeTarget,
    spec: &HealthCheckConfig,
    client: &HttpClient,
) -> Result<(), String> {
    let uri = http::Uri::builder()
        .scheme(target.addr.scheme.clone())
        .authority(target.addr.authority.clone())
        .path_and_query(spec.path.as_str())
        .build()
        .map_err(|e| format!("bad check URL: {e}"))?;
    let request = Request::get(uri)
        .header(header::HOST, target.host_header.clone())
        .header(header::USER_AGENT, "fluxgate-health-check")
        .body(GatewayBody::empty())
        .map_err(|e| format!("bad check request: {e}"))?;
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {} ms", spec.timeout_ms)),
        Ok(Err(e)) => Err(format!("request failed: {e}")),
        Ok(Ok(response)) if response.status().as_u16() == spec.expected_status => Ok(()),
        Ok(Ok(response)) => Err(format!(
            "status {} (expected {})",
            response.status().as_u16(),
            spec.expected_status
        )),
    }
}
