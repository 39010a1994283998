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

use crate::balancer::{Balancer, Candidate, stable_hash};
use crate::body::GatewayBody;
use crate::config::UpstreamConfig;

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
    id_hash: u64,
}

/// One `[upstreams.NAME]` group as the request path uses it.
#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    pub client: HttpClient,
    pub request_timeout: Duration,
}

impl UpstreamGroup {
    /// Picks a target for a request from `client_ip`.
    pub fn pick(&self, client_ip: IpAddr) -> Option<&Target> {
        if self.targets.len() == 1 {
            return self.targets.first();
        }
        let candidates: Vec<Candidate> = self
            .targets
            .iter()
            .map(|t| Candidate {
                weight: t.weight,
                in_flight: t.stats.in_flight.load(Ordering::Relaxed),
                id_hash: t.id_hash,
            })
            .collect();
        self.balancer
            .pick(&candidates, client_ip)
            .and_then(|i| self.targets.get(i))
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
}

impl UpstreamState {
    /// Builds the runtime groups for a (validated) config, reusing counters and pools.
    /// Counters of targets no longer configured are dropped.
    pub fn build(
        &self,
        upstreams: &std::collections::BTreeMap<String, UpstreamConfig>,
    ) -> HashMap<String, Arc<UpstreamGroup>> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept_stats = HashMap::new();
        let mut kept_clients = HashMap::new();
        let mut groups = HashMap::new();
        for (name, cfg) in upstreams {
            let targets = cfg
                .targets
                .iter()
                .filter_map(|t| {
                    // Validation guarantees the URL parses; skip defensively if not.
                    let addr = TargetAddr::parse(&t.url).ok()?;
                    let key = format!("{}://{}", addr.scheme, addr.authority);
                    let s = stats.get(&key).cloned().unwrap_or_default();
                    kept_stats.insert(key.clone(), s.clone());
                    Some(Target {
                        host_header: http::HeaderValue::from_str(addr.authority.as_str()).ok()?,
                        id_hash: stable_hash(key.as_bytes()),
                        url: Arc::from(key),
                        addr,
                        weight: t.weight,
                        stats: s,
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
            groups.insert(
                name.clone(),
                Arc::new(UpstreamGroup {
                    name: Arc::from(name.as_str()),
                    balancer: Balancer::new(cfg.balancer, targets.len()),
                    targets,
                    client,
                    request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                }),
            );
        }
        *stats = kept_stats;
        *clients = kept_clients;
        groups
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
        let first = state.build(&cfg(&["http://127.0.0.1:1", "http://127.0.0.1:2"]));
        let guard = InFlight::start(&first["g"].targets[0].stats);
        let second = state.build(&cfg(&["http://127.0.0.1:1"]));
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
