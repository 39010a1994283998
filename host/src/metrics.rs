//! Prometheus metrics: one registry per gateway, rendered as text at `/metrics`.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Statuses whose counters are cached per route; others are looked up by label.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504, 101,
];

/// All metrics the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route label and status code.
    pub requests: IntCounterVec,
    /// Time from request head to the last byte of the response, by route label.
    pub request_duration: HistogramVec,
    /// Failed upstream exchanges, by upstream group and kind (connect, timeout, failed).
    pub upstream_errors: IntCounterVec,
    /// Requests currently being handled.
    pub in_flight: IntGauge,
    /// Config reload attempts by result (ok, error).
    pub config_reloads: IntCounterVec,
    /// Generation number of the config snapshot in force.
    pub config_generation: IntGauge,
    /// Plugin hook calls, by plugin and hook.
    pub plugin_calls: IntCounterVec,
    /// Plugin failures, by plugin and kind (trap, timeout, memory, init, not_loaded...).
    pub plugin_errors: IntCounterVec,
    /// Plugin hook call latency, by plugin and hook.
    pub plugin_call_duration: HistogramVec,
    /// The version number of each loaded plugin (0 after it is removed).
    pub plugin_version: IntGaugeVec,
    /// Plugin file loads by plugin and result (ok, error).
    pub plugin_loads: IntCounterVec,
    /// Requests refused with 429, by route and scope (route, user).
    pub rate_limited: IntCounterVec,
    /// Cache lookups by route and result (hit, miss, bypass).
    pub cache_lookups: IntCounterVec,
    /// Retries by upstream group and outcome (sent, budget_exhausted).
    pub retries: IntCounterVec,
    /// 1 while a target gets traffic (healthy, not ejected), by group and target.
    pub target_healthy: IntGaugeVec,
    /// Health transitions by group, target and new state (healthy, unhealthy, ejected).
    pub health_changes: IntCounterVec,
    /// Circuit breaker state per target: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Open WebSocket tunnels.
    pub websockets: IntGauge,
    /// Gossip bytes by direction (sent, received) and transport (udp, tcp).
    pub gossip_bytes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("fluxgate".to_owned()), None)
            .unwrap_or_else(|_| Registry::new());
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by route and status"),
            &["route", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Request latency from head received to last response byte",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        );
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed upstream exchanges, by group and kind",
            ),
            &["upstream", "kind"],
        );
        let in_flight = IntGauge::new("requests_in_flight", "Requests currently being handled");
        let config_reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Config reload attempts by result"),
            &["result"],
        );
        let config_generation = IntGauge::new(
            "config_generation",
            "Generation of the config snapshot in force",
        );
        let plugin_calls = IntCounterVec::new(
            Opts::new(
                "plugin_calls_total",
                "Plugin hook calls, by plugin and hook",
            ),
            &["plugin", "hook"],
        );
        let plugin_errors = IntCounterVec::new(
            Opts::new("plugin_errors_total", "Plugin failures, by plugin and kind"),
            &["plugin", "kind"],
        );
        let plugin_call_duration = HistogramVec::new(
            HistogramOpts::new("plugin_call_duration_seconds", "Plugin hook call latency").buckets(
                vec![
                    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25,
                    0.000_5, 0.001, 0.005, 0.025, 0.1,
                ],
            ),
            &["plugin", "hook"],
        );
        let plugin_version = IntGaugeVec::new(
            Opts::new(
                "plugin_version",
                "Version number of each loaded plugin (0 = removed)",
            ),
            &["plugin"],
        );
        let plugin_loads = IntCounterVec::new(
            Opts::new(
                "plugin_loads_total",
                "Plugin file loads by plugin and result",
            ),
            &["plugin", "result"],
        );
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429, by route and scope",
            ),
            &["route", "scope"],
        );
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "cache_lookups_total",
                "Response cache lookups by route and result",
            ),
            &["route", "result"],
        );
        let retries = IntCounterVec::new(
            Opts::new("retries_total", "Upstream retries by group and outcome"),
            &["upstream", "outcome"],
        );
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "target_healthy",
                "1 while a target gets traffic (healthy and not ejected)",
            ),
            &["upstream", "target"],
        );
        let health_changes = IntCounterVec::new(
            Opts::new(
                "target_health_changes_total",
                "Target health transitions, by new state",
            ),
            &["upstream", "target", "state"],
        );
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                "circuit_breaker_state",
                "Circuit breaker state per target: 0 closed, 1 half-open, 2 open",
            ),
            &["upstream", "target"],
        );
        let websockets = IntGauge::new("websocket_connections", "Open WebSocket tunnels");
        let gossip_bytes = IntCounterVec::new(
            Opts::new(
                "gossip_bytes_total",
                "Gossip bytes by direction and transport",
            ),
            &["direction", "transport"],
        );
        // The names and label sets above are fixed and valid, so construction and
        // registration cannot fail; unwrap_or_else keeps that out of the panic path.
        let metrics = Self {
            requests: requests.unwrap_or_else(|e| unreachable!("{e}")),
            request_duration: request_duration.unwrap_or_else(|e| unreachable!("{e}")),
            upstream_errors: upstream_errors.unwrap_or_else(|e| unreachable!("{e}")),
            in_flight: in_flight.unwrap_or_else(|e| unreachable!("{e}")),
            config_reloads: config_reloads.unwrap_or_else(|e| unreachable!("{e}")),
            config_generation: config_generation.unwrap_or_else(|e| unreachable!("{e}")),
            plugin_calls: plugin_calls.unwrap_or_else(|e| unreachable!("{e}")),
            plugin_errors: plugin_errors.unwrap_or_else(|e| unreachable!("{e}")),
            plugin_call_duration: plugin_call_duration.unwrap_or_else(|e| unreachable!("{e}")),
            plugin_version: plugin_version.unwrap_or_else(|e| unreachable!("{e}")),
            plugin_loads: plugin_loads.unwrap_or_else(|e| unreachable!("{e}")),
            rate_limited: rate_limited.unwrap_or_else(|e| unreachable!("{e}")),
            cache_lookups: cache_lookups.unwrap_or_else(|e| unreachable!("{e}")),
            retries: retries.unwrap_or_else(|e| unreachable!("{e}")),
            target_healthy: target_healthy.unwrap_or_else(|e| unreachable!("{e}")),
            health_changes: health_changes.unwrap_or_else(|e| unreachable!("{e}")),
            breaker_state: breaker_state.unwrap_or_else(|e| unreachable!("{e}")),
            websockets: websockets.unwrap_or_else(|e| unreachable!("{e}")),
            gossip_bytes: gossip_bytes.unwrap_or_else(|e| unreachable!("{e}")),
            registry,
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.upstream_errors.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.config_reloads.clone()),
            Box::new(metrics.config_generation.clone()),
            Box::new(metrics.plugin_calls.clone()),
            Box::new(metrics.plugin_errors.clone()),
            Box::new(metrics.plugin_call_duration.clone()),
            Box::new(metrics.plugin_version.clone()),
            Box::new(metrics.plugin_loads.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.cache_lookups.clone()),
            Box::new(metrics.retries.clone()),
            Box::new(metrics.target_healthy.clone()),
            Box::new(metrics.health_changes.clone()),
            Box::new(metrics.breaker_state.clone()),
            Box::new(metrics.websockets.clone()),
            Box::new(metrics.gossip_bytes.clone()),
        ] {
            if let Err(e) = metrics.registry.register(collector) {
                unreachable!("metric registration: {e}");
            }
        }
        metrics
    }

    /// Metric handles for one route label, resolved once instead of per request.
    pub fn for_route(&self, label: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            label: Arc::from(label),
            duration: self.request_duration.with_label_values(&[label]),
            requests: self.requests.clone(),
            common: Default::default(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which we never create.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One route's request counters and latency histogram. Counters for common statuses
/// are created on first use (so /metrics lists only statuses that happened) and cached.
#[derive(Debug)]
pub struct RouteMetrics {
    pub label: Arc<str>,
    duration: Histogram,
    requests: IntCounterVec,
    common: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

impl RouteMetrics {
    /// Counts one answered request and its latency.
    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let label = |s: u16| [&*self.label, &s.to_string()].map(str::to_owned);
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.common[i]
                .get_or_init(|| self.requests.with_label_values(&label(status)))
                .inc(),
            None => self.requests.with_label_values(&label(status)).inc(),
        }
    }
}

/// One plugin's call counters and latency histograms per hook, resolved once.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    pub plugin: Arc<str>,
    calls: [IntCounter; 2],
    durations: [Histogram; 2],
    errors: IntCounterVec,
}

/// The hook a plugin call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    OnRequest = 0,
    OnResponse = 1,
}

impl Metrics {
    pub fn for_plugin(&self, plugin: &str) -> PluginMetrics {
        let hooks = ["on_request", "on_response"];
        PluginMetrics {
            plugin: Arc::from(plugin),
            calls: hooks.map(|h| self.plugin_calls.with_label_values(&[plugin, h])),
            durations: hooks.map(|h| self.plugin_call_duration.with_label_values(&[plugin, h])),
            errors: self.plugin_errors.clone(),
        }
    }
}

impl PluginMetrics {
    pub fn call(&self, hook: Hook, seconds: f64) {
        self.calls[hook as usize].inc();
        self.durations[hook as usize].observe(seconds);
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[&*self.plugin, kind]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        let route = m.for_route("r");
        route.record(200, 0.002);
        route.record(599, 0.002);
        let text = m.render();
        assert!(
            text.contains("fluxgate_requests_total{route=\"r\",status=\"599\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("status=\"404\""),
            "unused statuses are not listed: {text}"
        );
        assert!(
            text.contains("fluxgate_requests_total{route=\"r\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fluxgate_request_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 2"),
            "{text}"
        );
    }
}
