//! Building a snapshot's upstream groups from compiled plans, with the state carried
//! over from the previous snapshot (counters, health, breakers, budgets, pools).

use std::sync::Arc;
use std::time::Duration;

use super::addr::TargetAddr;
use super::client::{ClientKey, ClientSettings, HttpClient, new_client};
use super::group::{RetryPolicy, Target, UpstreamGroup};
use super::h1_client::H1Client;
use super::probe::{HealthCheckers, ProbeTarget};
use super::stats::TargetStats;
use crate::balancer::{Balancer, stable_hash};
use crate::carry::Carried;
use crate::config::CircuitBreakerConfig;
use crate::config::UpstreamProtocol;
use crate::metrics::Metrics;
use crate::plan::UpstreamPlan;
use crate::policy::breaker::BreakerSpec;
use crate::policy::retry::RetryBudget;

/// State that outlives config snapshots: per-target counters, health and breakers,
/// retry budgets and connection pools.
#[derive(Debug, Default)]
pub struct UpstreamState {
    /// Per group and target: a target shared by two groups has one health and breaker
    /// per group, as each group configures them.
    stats: Carried<(Arc<str>, TargetAddr), TargetStats>,
    clients: Carried<ClientKey, HttpClient>,
    h1_clients: Carried<ClientKey, H1Client>,
    budgets: Carried<Arc<str>, RetryBudget>,
}

/// Sliding window over which retry budgets count requests.
const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

fn breaker_spec(cfg: &CircuitBreakerConfig) -> BreakerSpec {
    BreakerSpec {
        failure_threshold: cfg.failure_threshold,
        window: Duration::from_secs(cfg.window_s),
        open_for: Duration::from_secs(cfg.open_s),
        half_open_requests: cfg.half_open_requests,
        success_threshold: cfg.success_threshold,
    }
}

/// The groups of one snapshot and the health probes that watch their targets.
pub struct BuiltUpstreams {
    pub groups: std::collections::HashMap<String, Arc<UpstreamGroup>>,
    pub checkers: HealthCheckers,
}

impl UpstreamState {
    /// Builds the runtime groups for compiled groups, reusing counters, breakers,
    /// budgets and pools, and starts health probes. State of targets no longer
    /// configured is dropped.
    pub fn build<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a UpstreamPlan>,
        metrics: &Metrics,
    ) -> BuiltUpstreams {
        let mut stats = self.stats.rebuild();
        let mut clients = self.clients.rebuild();
        let mut h1_clients = self.h1_clients.rebuild();
        let mut budgets = self.budgets.rebuild();
        let mut groups = std::collections::HashMap::new();
        let mut probes = Vec::new();
        for plan in upstreams {
            let cfg = &plan.config;
            let settings = ClientSettings {
                connect_timeout_ms: cfg.connect_timeout_ms,
                pool_idle_timeout_ms: cfg.pool_idle_timeout_ms,
                pool_max_idle: cfg.pool_max_idle_per_target,
                protocol: cfg.protocol,
                tls: plan.tls.clone(),
            };
            let h1 = (cfg.protocol == UpstreamProtocol::Http1).then(|| {
                h1_clients.keep(settings.key(), || {
                    H1Client::new(
                        Duration::from_millis(cfg.connect_timeout_ms),
                        &plan.tls,
                        cfg.pool_max_idle_per_target,
                        Duration::from_millis(cfg.pool_idle_timeout_ms),
                    )
                })
            });
            let targets: Vec<Target> = plan
                .targets
                .iter()
                .map(|t| {
                    let url: Arc<str> = Arc::from(t.addr.url());
                    let s = stats.keep((plan.name.clone(), t.addr.clone()), TargetStats::default);
                    let label = format!("{}/{url}", plan.name);
                    let breaker =
                        s.set_breaker(cfg.circuit_breaker.as_ref().map(breaker_spec), &label);
                    if cfg.health_check.is_none() {
                        s.health.set_active(true);
                    }
                    if cfg.outlier_detection.is_none() {
                        s.health.clear_ejection();
                    }
                    Target {
                        host_header: host_header(&t.addr),
                        id_hash: stable_hash(url.as_bytes()),
                        url,
                        addr: t.addr.clone(),
                        weight: t.weight,
                        stats: s,
                        breaker,
                        pool: h1.as_ref().map(|c| c.pool(&t.addr)),
                    }
                })
                .collect();
            let client = clients.keep(settings.key(), || new_client(&settings));
            if let Some(check) = &cfg.health_check {
                for t in &targets {
                    let probe = ProbeTarget {
                        group: plan.name.clone(),
                        url: t.url.clone(),
                        addr: t.addr.clone(),
                        host_header: t.host_header.clone(),
                        stats: t.stats.clone(),
                    };
                    probes.push((probe, check.clone(), HttpClient::clone(&client)));
                }
            }
            let retry = cfg.retry.as_ref().map(|spec| {
                let budget = budgets.keep(plan.name.clone(), || {
                    RetryBudget::new(
                        spec.budget_ratio,
                        spec.budget_min_per_s,
                        RETRY_BUDGET_WINDOW,
                    )
                });
                budget.set_params(spec.budget_ratio, spec.budget_min_per_s);
                RetryPolicy {
                    spec: spec.clone(),
                    budget,
                }
            });
            groups.insert(
                plan.name.to_string(),
                Arc::new(UpstreamGroup {
                    name: plan.name.clone(),
                    kind: cfg.balancer,
                    balancer: Balancer::new(cfg.balancer, targets.len()),
                    targets,
                    client: HttpClient::clone(&client),
                    h1,
                    protocol: cfg.protocol,
                    request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                    retry,
                    breaker: cfg.circuit_breaker.clone(),
                    outlier: cfg.outlier_detection.clone(),
                }),
            );
        }
        stats.commit();
        clients.commit();
        budgets.commit();
        BuiltUpstreams {
            groups,
            checkers: HealthCheckers::spawn(probes, metrics),
        }
    }
}

/// `host:port` as a Host header value. An authority is always a valid header value.
fn host_header(addr: &TargetAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(addr.authority.as_str())
        .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::InFlight;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn counters_and_pools_survive_a_rebuild_and_unused_ones_are_dropped() {
        let state = UpstreamState::default();
        let cfg = |urls: &[&str]| {
            let config = crate::config::UpstreamConfig {
                targets: urls
                    .iter()
                    .map(|u| crate::config::TargetConfig {
                        url: (*u).to_owned(),
                        weight: 1,
                    })
                    .collect(),
                ..crate::config::UpstreamConfig::default()
            };
            let mut problems = Vec::new();
            vec![crate::plan::compile_upstream("g", &config, "upstreams.g", &mut problems).unwrap()]
        };
        let metrics = Metrics::new();
        let first = state
            .build(
                &cfg(&["http://127.0.0.1:1", "http://127.0.0.1:2"]),
                &metrics,
            )
            .groups;
        let guard = InFlight::start(&first["g"].targets[0].stats);
        let second = state.build(&cfg(&["http://127.0.0.1:1"]), &metrics).groups;
        assert!(Arc::ptr_eq(
            &first["g"].targets[0].stats,
            &second["g"].targets[0].stats
        ));
        assert_eq!(
            second["g"].targets[0]
                .stats
                .in_flight
                .load(Ordering::Relaxed),
            1
        );
        drop(guard);
        assert_eq!(
            second["g"].targets[0]
                .stats
                .in_flight
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(state.stats.len(), 1);
    }
}
