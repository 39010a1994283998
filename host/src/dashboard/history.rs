//! What the dashboard charts: per-route requests/s and p99 latency, sampled once a
//! second from the metrics the request path already keeps (nothing is added per
//! request), in a bounded ring per route; and per-target request and error rates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use prometheus::proto::MetricFamily;

/// Samples kept per route: five minutes at one a second.
pub const SAMPLES: usize = 300;
/// Routes charted at once (the busiest kept when there are more).
pub const MAX_ROUTES: usize = 64;

/// One second of one route.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Unix time of the sample, in milliseconds.
    pub t: u64,
    pub rps: f64,
    /// p99 latency in milliseconds over the second (`None`: no request in it).
    pub p99_ms: Option<f64>,
}

/// Per-target rates from the last two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct TargetRate {
    pub rps: f64,
    pub errors_per_s: f64,
}

/// The route and target counters at one instant.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counters {
    /// Per route: requests answered, and the latency histogram's cumulative buckets
    /// (upper bound in seconds, count).
    pub routes: HashMap<String, (u64, Vec<(f64, u64)>)>,
    /// Per (upstream, target): requests and failures.
    pub targets: HashMap<(String, String), (u64, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: BTreeMap<String, VecDeque<Point>>,
    targets: HashMap<(String, String), TargetRate>,
    last: Option<(u64, Counters)>,
}

/// The history, shared by the sampler task and the dashboard's data endpoint.
#[derive(Debug, Default)]
pub struct History(Mutex<Inner>);

impl History {
    /// Adds one sample taken at `now_ms` (the first only sets the baseline).
    pub fn record(&self, now_ms: u64, counters: Counters) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, last)) = inner.last.take() {
            let seconds = (now_ms.saturating_sub(then) as f64 / 1000.0).max(0.001);
            for (route, (count, buckets)) in &counters.routes {
                let (before, before_buckets) = last
                    .routes
                    .get(route)
                    .map_or((0, &[][..]), |(c, b)| (*c, b.as_slice()));
                let point = Point {
                    t: now_ms,
                    rps: count.saturating_sub(before) as f64 / seconds,
                    p99_ms: quantile(buckets, before_buckets, 0.99).map(|s| s * 1000.0),
                };
                if !inner.routes.contains_key(route) && inner.routes.len() >= MAX_ROUTES {
                    continue;
                }
                let series = inner.routes.entry(route.clone()).or_default();
                if series.len() == SAMPLES {
                    series.pop_front();
                }
                series.push_back(point);
            }
            // Routes gone from the metrics (a reload removed them) stop being charted.
            inner
                .routes
                .retain(|route, _| counters.routes.contains_key(route));
            inner.targets = counters
                .targets
                .iter()
                .map(|(key, (requests, failures))| {
                    let (r0, f0) = last.targets.get(key).copied().unwrap_or((0, 0));
                    let rate = TargetRate {
                        rps: requests.saturating_sub(r0) as f64 / seconds,
                        errors_per_s: failures.saturating_sub(f0) as f64 / seconds,
                    };
                    (key.clone(), rate)
                })
                .collect();
        }
        inner.last = Some((now_ms, counters));
    }

    /// Every charted route's points, oldest first.
    pub fn routes(&self) -> BTreeMap<String, Vec<Point>> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .routes
            .iter()
            .map(|(route, points)| (route.clone(), points.iter().copied().collect()))
            .collect()
    }

    /// The rates of one target over the last second.
    pub fn target(&self, upstream: &str, target: &str) -> TargetRate {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .targets
            .get(&(upstream.to_owned(), target.to_owned()))
            .copied()
            .unwrap_or_default()
    }
}

/// The per-route counters in gathered metric families (`requests_total` summed over
/// statuses, `request_duration_seconds` buckets).
pub fn route_counters(families: &[MetricFamily], out: &mut Counters) {
    for family in families {
        match family.name() {
            "fluxgate_requests_total" => {
                for metric in family.get_metric() {
                    if let Some(route) = label(metric, "route") {
                        let entry = out.routes.entry(route.to_owned()).or_default();
                        entry.0 += metric.get_counter().get_value() as u64;
                    }
                }
            }
            "fluxgate_request_duration_seconds" => {
                for metric in family.get_metric() {
                    if let Some(route) = label(metric, "route") {
                        out.routes.entry(route.to_owned()).or_default().1 = buckets(metric);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A histogram's cumulative buckets, with the implied `+Inf` one (all observations).
pub fn buckets(metric: &prometheus::proto::Metric) -> Vec<(f64, u64)> {
    let histogram = metric.get_histogram();
    let mut out: Vec<(f64, u64)> = histogram
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    if out.last().is_none_or(|b| b.0.is_finite()) {
        out.push((f64::INFINITY, histogram.get_sample_count()));
    }
    out
}

/// A label's value on a metric.
pub fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// The `q` quantile (seconds) of the observations between two cumulative bucket
/// snapshots, interpolated linearly inside its bucket (Prometheus's
/// `histogram_quantile`); `None` when nothing was observed.
pub fn quantile(now: &[(f64, u64)], before: &[(f64, u64)], q: f64) -> Option<f64> {
    let count_before = |i: usize| before.get(i).map_or(0, |b| b.1);
    let deltas: Vec<(f64, u64)> = now
        .iter()
        .enumerate()
        .map(|(i, (bound, count))| (*bound, count.saturating_sub(count_before(i))))
        .collect();
    let total = deltas.last().map(|d| d.1)?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (bound, count) in &deltas {
        if *count as f64 >= rank {
            if !bound.is_finite() {
                // Above the last finite bucket: its bound is the best answer.
                return Some(lower_bound);
            }
            let in_bucket = (*count - lower_count) as f64;
            let position = if in_bucket > 0.0 {
                (rank - lower_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower_bound + (bound - lower_bound) * position);
        }
        lower_bound = *bound;
        lower_count = *count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(route: &str, count: u64, buckets: &[(f64, u64)]) -> Counters {
        let mut c = Counters::default();
        c.routes.insert(route.to_owned(), (count, buckets.to_vec()));
        c.targets
            .insert(("u".to_owned(), "http://t".to_owned()), (count, count / 10));
        c
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let now = [(0.01, 90), (0.1, 100), (f64::INFINITY, 100)];
        let p99 = quantile(&now, &[], 0.99).unwrap();
        assert!((p99 - 0.091).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&now, &now, 0.99), None, "nothing new observed");
        let p50 = quantile(&now, &[], 0.5).unwrap();
        assert!(p50 < 0.01);
    }

    #[test]
    fn rates_come_from_deltas_and_the_ring_is_bounded() {
        let history = History::default();
        let b = |n| vec![(0.01, n), (f64::INFINITY, n)];
        history.record(1_000, counters("r", 0, &b(0)));
        assert!(
            history.routes().is_empty(),
            "the first sample is the baseline"
        );
        history.record(2_000, counters("r", 50, &b(50)));
        let points = &history.routes()["r"];
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].rps, 50.0);
        assert!(points[0].p99_ms.unwrap() <= 10.0);
        assert_eq!(history.target("u", "http://t").rps, 50.0);
        assert_eq!(history.target("u", "http://t").errors_per_s, 5.0);
        for i in 0..(SAMPLES as u64 + 20) {
            history.record(3_000 + i * 1000, counters("r", 50 + i, &b(50 + i)));
        }
        assert_eq!(history.routes()["r"].len(), SAMPLES);
        history.record(999_000, Counters::default());
        assert!(
            history.routes().is_empty(),
            "a removed route stops being charted"
        );
    }
}
