//! An upstream group as the request path uses it: its targets and the pick of one.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::addr::TargetAddr;
use super::client::HttpClient;
use super::stats::TargetStats;
use crate::balancer::{Balancer, Candidate};
use crate::config::{
    BalancerKind, CircuitBreakerConfig, OutlierConfig, RetryConfig, UpstreamProtocol,
};
use crate::policy::breaker::CircuitBreaker;
use crate::policy::retry::RetryBudget;

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
    /// Idle HTTP/1.1 connections to this target (groups speaking HTTP/1.1).
    pub pool: Option<Arc<crate::h1::outbound::TargetPool>>,
    pub(super) id_hash: u64,
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
    /// Our HTTP/1.1 client, when the group speaks HTTP/1.1 (else `client` is used).
    pub h1: Option<Arc<super::h1_client::H1Client>>,
    /// HTTP/1.1 or HTTP/2 to the targets.
    pub protocol: UpstreamProtocol,
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
