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

/// Declares every metric once: its field, type, name, help text and labels (or
/// buckets). The macro writes the struct, the constructor and the registration.
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $kind:ident($name:literal $(, buckets = $buckets:expr)? $(, labels = $labels:expr)?),
    )*) => {
        /// All metrics the gateway exports.
        #[derive(Clone)]
        pub struct Metrics {
            registry: Registry,
            $($(#[doc = $doc])* pub $field: $kind,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let registry = Registry::new_custom(Some("fluxgate".to_owned()), None)
                    .unwrap_or_else(|_| Registry::new());
                let metrics = Self {
                    $($field: $kind::declare(
                        $name,
                        concat!($($doc),*).trim(),
                        metrics!(@buckets $($buckets)?),
                        metrics!(@labels $($labels)?),
                    ),)*
                    registry,
                };
                $(
                    if let Err(e) = metrics.registry.register(Box::new(metrics.$field.clone())) {
                        unreachable!("metric registration: {e}");
                    }
                )*
                metrics
            }
        }
    };
    (@buckets) => { None };
    (@buckets $b:expr) => { Some($b) };
    (@labels) => { &[] };
    (@labels $l:expr) => { &$l };
}

/// Builds a metric from its declaration. The names and label sets declared below
/// are fixed and valid, so construction cannot fail.
trait Declare: Sized {
    fn declare(name: &str, help: &str, buckets: Option<Vec<f64>>, labels: &[&str]) -> Self;
}

macro_rules! declare {
    ($kind:ty, |$name:ident, $help:ident, $buckets:ident, $labels:ident| $make:expr) => {
        impl Declare for $kind {
            fn declare(
                $name: &str,
                $help: &str,
                $buckets: Option<Vec<f64>>,
                $labels: &[&str],
            ) -> Self {
                let _ = (&$buckets, &$labels);
                ($make).unwrap_or_else(|e| unreachable!("metric {}: {e}", $name))
            }
        }
    };
}

declare!(IntCounterVec, |name, help, buckets, labels| {
    IntCounterVec::new(Opts::new(name, help), labels)
});
declare!(IntGauge, |name, help, buckets, labels| IntGauge::new(
    name, help
));
declare!(IntCounter, |name, help, buckets, labels| IntCounter::new(
    name, help
));
declare!(IntGaugeVec, |name, help, buckets, labels| {
    IntGaugeVec::new(Opts::new(name, help), labels)
});
declare!(HistogramVec, |name, help, buckets, labels| {
    let mut opts = HistogramOpts::new(name, help);
    if let Some(buckets) = buckets {
        opts = opts.buckets(buckets);
    }
    HistogramVec::new(opts, labels)
});

metrics! {
    /// Requests answered, by route and status
    requests: IntCounterVec("requests_total", labels = ["route", "status"]),
    /// Request latency from head received to last response byte
    request_duration: HistogramVec(
        "request_duration_seconds",
        buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
        labels = ["route"]
    ),
    /// Failed upstream exchanges, by group and kind
    upstream_errors: IntCounterVec("upstream_errors_total", labels = ["upstream", "kind"]),
    /// Requests currently being handled
    in_flight: IntGauge("requests_in_flight"),
    /// Config reload attempts by result
    config_reloads: IntCounterVec("config_reloads_total", labels = ["result"]),
    /// Generation of the config snapshot in force
    config_generation: IntGauge("config_generation"),
    /// Plugin hook calls, by plugin and hook
    plugin_calls: IntCounterVec("plugin_calls_total", labels = ["plugin", "hook"]),
    /// Plugin failures, by plugin and kind
    plugin_errors: IntCounterVec("plugin_errors_total", labels = ["plugin", "kind"]),
    /// Plugin hook call latency
    plugin_call_duration: HistogramVec(
        "plugin_call_duration_seconds",
        buckets = vec![
            0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
            0.001, 0.005, 0.025, 0.1,
        ],
        labels = ["plugin", "hook"]
    ),
    /// Plugin log lines dropped over the per-call bound
    plugin_log_dropped: IntCounterVec("plugin_log_lines_dropped_total", labels = ["plugin"]),
    /// Plugin breaker state: 0 closed, 1 half-open, 2 open
    plugin_breaker_state: IntGaugeVec("plugin_breaker_state", labels = ["plugin"]),
    /// Version number of each loaded plugin (0 = removed)
    plugin_version: IntGaugeVec("plugin_version", labels = ["plugin"]),
    /// Plugin file loads by plugin and result
    plugin_loads: IntCounterVec("plugin_loads_total", labels = ["plugin", "result"]),
    /// Requests refused with 429, by route and scope
    rate_limited: IntCounterVec("rate_limited_total", labels = ["route", "scope"]),
    /// Response cache lookups by route and result
    cache_lookups: IntCounterVec("cache_lookups_total", labels = ["route", "result"]),
    /// Upstream retries by group and outcome
    retries: IntCounterVec("retries_total", labels = ["upstream", "outcome"]),
    /// 1 while a target gets traffic (healthy and not ejected)
    target_healthy: IntGaugeVec("target_healthy", labels = ["upstream", "target"]),
    /// Target health transitions, by new state
    health_changes: IntCounterVec(
        "target_health_changes_total",
        labels = ["upstream", "target", "state"]
    ),
    /// Circuit breaker state per target: 0 closed, 1 half-open, 2 open
    breaker_state: IntGaugeVec("circuit_breaker_state", labels = ["upstream", "target"]),
    /// Open WebSocket tunnels
    websockets: IntGauge("websocket_connections"),
    /// Client connections accepted, by worker (how SO_REUSEPORT spreads them)
    worker_connections: IntCounterVec("worker_connections_total", labels = ["worker"]),
    /// Gossip bytes by direction and transport
    gossip_bytes: IntCounterVec("gossip_bytes_total", labels = ["direction", "transport"]),
    /// 1 while the Redis of `[cluster.redis]` answers in time
    redis_up: IntGauge("cluster_redis_up"),
    /// Failed Redis calls, by kind (timeout, error)
    redis_errors: IntCounterVec("cluster_redis_errors_total", labels = ["kind"]),
    /// Redis reachability changes, by new state (up, down)
    redis_transitions: IntCounterVec("cluster_redis_transitions_total", labels = ["to"]),
    /// Cluster-limit decisions made without Redis, by on_redis_error mode (local, allow, deny)
    rate_limit_fallback: IntCounterVec("rate_limit_fallback_total", labels = ["mode"]),
    /// Redis calls of cluster limits (token batches taken or given back)
    redis_calls: IntCounterVec("cluster_redis_calls_total", labels = ["op"]),
    /// Instances a discovery provider currently feeds (its last good answer)
    discovery_instances: IntGaugeVec("discovery_instances", labels = ["provider"]),
    /// 1 while a discovery provider cannot be reached (its instances are stale)
    discovery_stale: IntGaugeVec("discovery_stale", labels = ["provider"]),
    /// Failed fetches or watches, by provider
    discovery_errors: IntCounterVec("discovery_errors_total", labels = ["provider"]),
    /// Entries skipped as invalid registrations, by provider
    discovery_skipped: IntCounterVec("discovery_skipped_total", labels = ["provider"]),
    /// TLS handshakes completed, by protocol version and negotiated ALPN protocol
    tls_handshakes: IntCounterVec("tls_handshakes_total", labels = ["version", "alpn"]),
    /// TLS handshakes that failed, by reason (error, timeout)
    tls_handshake_errors: IntCounterVec("tls_handshake_errors_total", labels = ["reason"]),
    /// Expiry of each served certificate name, in seconds since the Unix epoch
    tls_certificate_expiry: IntGaugeVec("tls_certificate_expiry_seconds", labels = ["name"]),
    /// Certificate reloads from changed files, by result (ok, error)
    tls_certificate_reloads: IntCounterVec("tls_certificate_reloads_total", labels = ["result"]),
    /// ACME certificate orders by result (issued, failed)
    acme_orders: IntCounterVec("acme_orders_total", labels = ["result"]),
    /// ACME validations answered, by challenge (http-01 requests, tls-alpn-01 handshakes)
    acme_challenges_answered: IntCounterVec("acme_challenges_answered_total", labels = ["challenge"]),
    /// Spans sent to the OTLP endpoint
    trace_spans_exported: IntCounter("trace_spans_exported_total"),
    /// Spans not exported, by reason (queue_full, export_failed, no_exporter)
    trace_spans_dropped: IntCounterVec("trace_spans_dropped_total", labels = ["reason"]),
}

impl Metrics {
    /// Metric handles for one route label, resolved once instead of per request.
    pub fn for_route(&self, label: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            label: Arc::from(label),
            duration: self.request_duration.with_label_values(&[label]),
            requests: self.requests.clone(),
            common: Default::default(),
        })
    }

    /// Every metric's current value (the dashboard samples these once a second).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
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
