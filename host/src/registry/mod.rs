//! The service registry: services register over HTTP and are served at `/{service}/*`;
//! with a cluster, registrations spread to every node by gossip.

pub mod api;
pub mod model;
pub mod store;

use std::collections::BTreeMap;

use crate::config::{BalancerKind, HealthCheckConfig, RouteConfig, TargetConfig, UpstreamConfig};
use crate::plan::{self, RoutePlan, UpstreamPlan};
pub use model::Registration;
pub use store::{Delta, Registry};

/// How long a deregistration is remembered, so a late copy of the registration it
/// removed cannot bring it back.
pub const TOMBSTONE_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// Upstream-group name of a registered service (a '/' cannot occur in config names).
pub fn group_name(service: &str) -> String {
    format!("service/{service}")
}

/// The upstream groups and routes the registry adds to a snapshot: one weighted group
/// per service over its live instances, and `/{service}/*` with the prefix stripped.
/// A config route with the same path takes precedence (its service route is left out).
/// They go through the same compiler as the config; a registration the model let
/// through but the compiler refuses is logged and left out.
pub fn service_routes(
    services: &BTreeMap<String, Vec<Registration>>,
    config_routes: &[RoutePlan],
) -> (Vec<UpstreamPlan>, Vec<RoutePlan>) {
    let mut groups = Vec::new();
    let mut routes = Vec::new();
    for (service, instances) in services {
        let path = format!("/{service}/*");
        if instances.is_empty() || config_routes.iter().any(|r| r.path == path) {
            continue;
        }
        let health_check =
            instances
                .iter()
                .find_map(|i| i.check.as_ref())
                .map(|c| HealthCheckConfig {
                    path: c.path.clone(),
                    interval_ms: c.interval_ms,
                    timeout_ms: c.interval_ms.min(1_000),
                    ..HealthCheckConfig::default()
                });
        let name = group_name(service);
        let group = UpstreamConfig {
            balancer: BalancerKind::WeightedRoundRobin,
            targets: instances
                .iter()
                .map(|i| TargetConfig {
                    url: i.url(),
                    weight: i.weight(),
                })
                .collect(),
            health_check,
            ..UpstreamConfig::default()
        };
        let route = RouteConfig {
            name: Some(format!("service:{service}")),
            path,
            upstream: name.clone(),
            strip_prefix: Some(format!("/{service}")),
            ..RouteConfig::default()
        };
        let mut problems = Vec::new();
        let at = format!("service {service}");
        let compiled = (
            plan::compile_upstream(&name, &group, &at, &mut problems),
            plan::compile_route(&route, &at, &mut problems),
        );
        match compiled {
            (Some(group), Some(route)) if problems.is_empty() => {
                groups.push(group);
                routes.push(route);
            }
            _ => {
                for problem in problems {
                    tracing::error!(service = %service, "registered service not routed: {problem}");
                }
            }
        }
    }
    (groups, routes)
}
