//! `GET /api/v1/dashboard`: everything the page shows, in one JSON document built from
//! the snapshot, the registry, the metrics and the sampled history.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::history::{self, label};
use crate::admin;
use crate::gateway::{Gateway, Snapshot};
use crate::registry;

/// The dashboard's data.
pub fn build(gateway: &Gateway, snapshot: &Snapshot) -> Value {
    let families = gateway.metrics.gather();
    let health = admin::health_json(gateway, snapshot);
    let last_reload = gateway.last_reload().map(|r| match r.result {
        Ok(generation) => json!({ "at_ms": r.at_ms, "ok": true, "generation": generation }),
        Err(error) => json!({ "at_ms": r.at_ms, "ok": false, "error": error }),
    });
    let services = registry::api::services_json(gateway, snapshot, &[]);
    json!({
        "node": gateway.node_name,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": gateway.started.elapsed().as_secs(),
        "listen": gateway.local_addr.to_string(),
        "config": {
            "generation": snapshot.generation,
            "last_reload": last_reload,
        },
        "cluster": health.get("cluster").cloned().unwrap_or(Value::Null),
        "services": services,
        "routes": routes(snapshot, &services),
        "upstreams": upstreams(gateway, snapshot),
        "plugins": plugins(gateway, &families),
        "history": gateway.history.routes(),
        "tracing": {
            "exporting": snapshot.plan.telemetry.export.is_some(),
            "trace_context": snapshot.plan.telemetry.trace_context,
        },
    })
}

/// Config routes as written (pattern, methods, upstream, policies, plugins), then one
/// `/{service}/*` route per registered or discovered service.
fn routes(snapshot: &Snapshot, services: &BTreeMap<String, Vec<Value>>) -> Vec<Value> {
    let config = snapshot.config();
    let global: Vec<&str> = config
        .plugins
        .global
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut out: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            let mut policies = Vec::new();
            if let Some(limit) = &r.rate_limit {
                policies.push(format!("rate_limit {}/{}", limit.capacity, limit_scope(limit)));
            }
            if r.user_rate_limit.is_some() {
                policies.push("user_rate_limit".to_owned());
            }
            if r.cache.is_some() {
                policies.push("cache".to_owned());
            }
            if r.cors.is_some() {
                policies.push("cors".to_owned());
            }
            if r.websocket {
                policies.push("websocket".to_owned());
            }
            if !r.users.is_empty() {
                policies.push(format!("users: {}", r.users.join(", ")));
            }
            let plugins: Vec<&str> = global
                .iter()
                .copied()
                .chain(r.plugins.iter().map(|p| p.name.as_str()))
                .collect();
            json!({
                "name": r.name.clone().unwrap_or_else(|| r.path.clone()),
                "path": r.path,
                "methods": if r.methods.is_empty() { vec!["any".to_owned()] } else { r.methods.clone() },
                "upstream": r.upstream,
                "policies": policies,
                "plugins": plugins,
                "source": "config",
            })
        })
        .collect();
    for service in services.keys() {
        let path = format!("/{service}/*");
        if config.routes.iter().any(|r| r.path == path) {
            continue;
        }
        out.push(json!({
            "name": path,
            "path": path,
            "methods": ["any"],
            "upstream": registry::group_name(service),
            "policies": [],
            "plugins": global,
            "source": "registry",
        }));
    }
    out
}

fn limit_scope(limit: &crate::config::RateLimitConfig) -> &'static str {
    match limit.scope {
        crate::config::LimitScopeConfig::Cluster => "cluster",
        _ => "node",
    }
}

/// `/api/v1/upstreams`'s groups with each target's request and error rates added.
fn upstreams(gateway: &Gateway, snapshot: &Snapshot) -> Value {
    let mut doc = admin::upstreams_json(snapshot);
    if let Some(groups) = doc.get_mut("upstreams").and_then(Value::as_array_mut) {
        for group in groups {
            let name = group
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(targets) = group.get_mut("targets").and_then(Value::as_array_mut) {
                for target in targets {
                    let url = target
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let rate = gateway.history.target(&name, url);
                    target["rps"] = json!(rate.rps);
                    target["errors_per_s"] = json!(rate.errors_per_s);
                }
            }
        }
    }
    doc.get("upstreams").cloned().unwrap_or(Value::Null)
}

/// Loaded plugins with their calls, errors and p99 call time (since start).
fn plugins(gateway: &Gateway, families: &[prometheus::proto::MetricFamily]) -> Vec<Value> {
    #[derive(Default)]
    struct Stats {
        calls: u64,
        errors: u64,
        buckets: Vec<(f64, u64)>,
    }
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    for family in families {
        for metric in family.get_metric() {
            let Some(plugin) = label(metric, "plugin") else {
                continue;
            };
            let entry = stats.entry(plugin.to_owned()).or_default();
            match family.name() {
                "fluxgate_plugin_calls_total" => {
                    entry.calls += metric.get_counter().get_value() as u64
                }
                "fluxgate_plugin_errors_total" => {
                    entry.errors += metric.get_counter().get_value() as u64
                }
                "fluxgate_plugin_call_duration_seconds" => {
                    // Both hooks share the bucket bounds: their counts add up.
                    for (i, (bound, count)) in history::buckets(metric).into_iter().enumerate() {
                        match entry.buckets.get_mut(i) {
                            Some(b) => b.1 += count,
                            None => entry.buckets.push((bound, count)),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut loaded = gateway.plugins.loaded();
    loaded.sort_by(|a, b| a.name.cmp(&b.name));
    loaded
        .iter()
        .map(|v| {
            let s = stats.remove(&*v.name).unwrap_or_default();
            json!({
                "name": &*v.name,
                "version": v.version,
                "breaker": gateway.plugins.breaker_state(&v.name).map_or("closed", |b| b.as_str()),
                "calls": s.calls,
                "errors": s.errors,
                "p99_ms": history::quantile(&s.buckets, &[], 0.99).map(|s| s * 1000.0),
            })
        })
        .collect()
}
