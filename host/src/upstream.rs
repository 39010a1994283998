//! Upstream groups: targets, their live counters, the balancer, and the pooled client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use tokio::time::Instant;

use crate::balancer::{Balancer, Candidate, stable_hash};
use crate::body::GatewayBody;
use crate::config::{
    BalancerKind, CircuitBreakerConfig, OutlierConfig, RetryConfig, UpstreamConfig,
};
use crate::metrics::Metrics;
use crate::policy::breaker::{BreakerSpec, CircuitBreaker};
use crate::policy::health::{HealthCheckers, ProbeTarget, TargetHealth};
use crate::policy::retry::RetryBudget;

/// The pooled keep-alive HTTP/1.1 client used to reach targets.
pub type HttpClient = Client<HttpConnector, GatewayBody>;

/// A target's address, parsed from `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddr {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl TargetAddr {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("\"{url}\" is not a URL like http://127.0.0.1:8081"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!("\"{url}\": https targets are not supported yet"));
            }
            _ => return Err(format!("\"{url}\" must start with http://")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("\"{url}\" has no host"))?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(format!(
                "\"{url}\" must be http://host[:port] without user info"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "\"{url}\" must not have a path; use the route's strip_prefix/add_prefix"
            ));
        }
        Ok(Self {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

/// Live counters of one target. Kept across config reloads (keyed by URL) so in-flight
/// counts stay right while old and new snapshots both send traffic.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub health: TargetHealth,
    /// Kept here (not in the snapshot) so a reload does not close an open circuit.
    breaker: Mutex<Option<Arc<CircuitBreaker>>>,
}

impl TargetStats {
    /// Installs, updates (state kept) or removes the target's breaker.
    fn set_breaker(&self, spec: Option<BreakerSpec>, label: &str) -> Option<Arc<CircuitBreaker>> {
        let mut slot = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        *slot = match (spec, slot.take()) {
            (None, _) => None,
            (Some(spec), Some(existing)) => {
                existing.set_spec(spec);
                Some(existing)
            }
            (Some(spec), None) => Some(Arc::new(CircuitBreaker::new(spec, Arc::from(label)))),
        };
        slot.clone()
    }
}

/// Decrements a target's in-flight count when the request is over, however it ends.
#[derive(Debug)]
pub struct InFlight(Arc<TargetStats>);

impl InFlight {
    pub fn start(stats: &Arc<TargetStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }

    pub fn failed(&self) {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Target {
    pub url: Arc<str>,
    pub addr: TargetAddr,
    /// `host:port` as a Host header value, built once (the client would format it per
    /// request).
    pub host_header: http::HeaderValue,
    pub weight: u32,
    pub stats: Arc<TargetStats>,
    /// The target's circuit breaker, when the group has one.
    pub breaker: Option<Arc<CircuitBreaker>>,
    id_hash: u64,
}

impl Target {
    /// Healthy, not ejected, and its breaker (if any) would admit a request.
    pub fn is_available(&self, now: Instant) -> bool {
        self.stats.health.is_serving(now) && self.breaker.as_ref().is_none_or(|b| b.can_admit())
    }
}

/// A group's retry settings with its budget (shared across reloads).
#[derive(Debug)]
pub struct RetryPolicy {
    pub spec: RetryConfig,
    pub budget: Arc<RetryBudget>,
}

/// One `[upstreams.NAME]` group as the request path uses it.
#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub kind: BalancerKind,
    pub balancer: Balancer,
    pub client: HttpClient,
    pub request_timeout: Duration,
    pub retry: Option<RetryPolicy>,
    /// Statuses the breaker counts as failures (when the group has breakers).
    pub breaker: Option<CircuitBreakerConfig>,
    pub outlier: Option<OutlierConfig>,
}

impl UpstreamGroup {
    /// Picks an available target for a request from `client_ip`, preferring targets
    /// not in `tried` (a retry goes elsewhere when it can). Returns its index.
    pub fn pick(&self, client_ip: IpAddr, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        if self.targets.len() == 1 {
            return self.targets[0].is_available(now).then_some(0);
        }
        let mut candidates: Vec<Candidate> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                weight: t.weight,
                in_flight: t.stats.in_flight.load(Ordering::Relaxed),
                id_hash: t.id_hash,
                available: !tried.contains(&i) && t.is_available(now),
            })
            .collect();
        if let Some(i) = self.balancer.pick(&candidates, client_ip) {
            return Some(i);
        }
        if tried.is_empty() {
            return None;
        }
        // Every untried target is out: an available one may be tried again.
        for (c, t) in candidates.iter_mut().zip(&self.targets) {
            c.available = t.is_available(now);
        }
        self.balancer.pick(&candidates, client_ip)
    }

    /// Is `status` a failure for breakers and outlier detection?
    pub fn is_failure_status(&self, status: u16) -> bool {
        match &self.breaker {
            Some(b) => b.failure_status.contains(&status),
            None => matches!(status, 500 | 502 | 503 | 504),
        }
    }
}

/// Settings that shape a client; groups with equal settings share one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientSettings {
    connect_timeout_ms: u64,
    pool_idle_timeout_ms: u64,
    pool_max_idle: usize,
}

/// State that outlives config snapshots: per-target counters and connection pools.
#[derive(Debug, Default)]
pub struct UpstreamState {
    stats: Mutex<HashMap<String, Arc<TargetStats>>>,
    clients: Mutex<HashMap<ClientSettings, HttpClient>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
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
    pub groups: HashMap<String, Arc<UpstreamGroup>>,
    pub checkers: HealthCheckers,
}

impl UpstreamState {
    /// Builds the runtime groups for a (validated) config, reusing counters, breakers,
    /// budgets and pools, and starts health probes. State of targets no longer
    /// configured is dropped.
    pub fn build(
        &self,
        upstreams: &std::collections::BTreeMap<String, UpstreamConfig>,
        metrics: &Metrics,
    ) -> BuiltUpstreams {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept_stats = HashMap::new();
        let mut kept_clients = HashMap::new();
        let mut kept_budgets = HashMap::new();
        let mut groups = HashMap::new();
        let mut probes = Vec::new();
        for (name, cfg) in upstreams {
            let targets = cfg
                .targets
                .iter()
                .filter_map(|t| {
                    // Validation guarantees the URL parses; skip defensively if not.
                    let addr = TargetAddr::parse(&t.url).ok()?;
                    let key = format!("{}://{}", addr.scheme, addr.authority);
                    // Stats are per group and URL: a target shared by two groups has
                    // one health and breaker per group, as each group configures them.
                    let stats_key = format!("{name} {key}");
                    let s: Arc<TargetStats> = stats.get(&stats_key).cloned().unwrap_or_default();
                    kept_stats.insert(stats_key, s.clone());
                    let label = format!("{name}/{key}");
                    let breaker =
                        s.set_breaker(cfg.circuit_breaker.as_ref().map(breaker_spec), &label);
                    if cfg.health_check.is_none() {
                        s.health.set_active(true);
                    }
                    if cfg.outlier_detection.is_none() {
                        s.health.clear_ejection();
                    }
                    Some(Target {
                        host_header: http::HeaderValue::from_str(addr.authority.as_str()).ok()?,
                        id_hash: stable_hash(key.as_bytes()),
                        url: Arc::from(key),
                        addr,
                        weight: t.weight,
                        stats: s,
                        breaker,
                    })
                })
                .collect::<Vec<_>>();
            let settings = ClientSettings {
                connect_timeout_ms: cfg.connect_timeout_ms,
                pool_idle_timeout_ms: cfg.pool_idle_timeout_ms,
                pool_max_idle: cfg.pool_max_idle_per_target,
            };
            let client = clients
                .get(&settings)
                .cloned()
                .unwrap_or_else(|| new_client(&settings));
            kept_clients.insert(settings, client.clone());
            let group_name: Arc<str> = Arc::from(name.as_str());
            if let Some(check) = &cfg.health_check {
                for t in &targets {
                    let probe = ProbeTarget {
                        group: group_name.clone(),
                        url: t.url.clone(),
                        addr: t.addr.clone(),
                        host_header: t.host_header.clone(),
                        stats: t.stats.clone(),
                    };
                    probes.push((probe, check.clone(), client.clone()));
                }
            }
            let retry = cfg.retry.as_ref().map(|spec| {
                let budget = match budgets.get(name) {
                    Some(b) => {
                        b.set_params(spec.budget_ratio, spec.budget_min_per_s);
                        b.clone()
                    }
                    None => Arc::new(RetryBudget::new(
                        spec.budget_ratio,
                        spec.budget_min_per_s,
                        RETRY_BUDGET_WINDOW,
                    )),
                };
                kept_budgets.insert(name.clone(), budget.clone());
                RetryPolicy {
                    spec: spec.clone(),
                    budget,
                }
            });
            groups.insert(
                name.clone(),
                Arc::new(UpstreamGroup {
                    name: group_name,
                    kind: cfg.balancer,
                    balancer: Balancer::new(cfg.balancer, targets.len()),
                    targets,
                    client,
                    request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                    retry,
                    breaker: cfg.circuit_breaker.clone(),
                    outlier: cfg.outlier_detection.clone(),
                }),
            );
        }
        *stats = kept_stats;
        *clients = kept_clients;
        *budgets = kept_budgets;
        BuiltUpstreams {
            groups,
            checkers: HealthCheckers::spawn(probes, metrics),
        }
    }
}

fn new_client(settings: &ClientSettings) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        // Requests are small: one flattened write beats a writev of head + body parts.
        .http1_writev(false)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(settings.pool_idle_timeout_ms))
        .pool_max_idle_per_host(settings.pool_max_idle)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_checked() {
        assert!(TargetAddr::parse("http://127.0.0.1:8081").is_ok());
        assert!(TargetAddr::parse("http://svc.local").is_ok());
        assert!(TargetAddr::parse("http://127.0.0.1:8081/").is_ok());
        for bad in [
            "127.0.0.1:80",
            "ftp://x",
            "https://x",
            "http://x/api",
            "http://u@x",
            "http://x?q",
        ] {
            assert!(TargetAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn counters_and_pools_survive_a_rebuild_and_unused_ones_are_dropped() {
        let state = UpstreamState::default();
        let cfg = |urls: &[&str]| {
            let mut m = std::collections::BTreeMap::new();
            m.insert(
                "g".to_owned(),
                UpstreamConfig {
                    targets: urls
                        .iter()
                        .map(|u| crate::config::TargetConfig {
                            url: (*u).to_owned(),
                            weight: 1,
                        })
                        .collect(),
                    ..UpstreamConfig::default()
                },
            );
            m
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
        assert_eq!(state.stats.lock().unwrap().len(), 1);
    }
}
