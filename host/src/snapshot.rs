//! One consistent view of the gateway's config: routes, upstream groups and plugin
//! chains built from a compiled plan (plus the registry's services), with the state
//! carried over from the previous snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::carry::Carried;
use crate::cluster_limit::{ClusterLimiter, ClusterLimits};
use crate::config::{CacheConfig, Config, OnRedisError, PluginRef, PluginsConfig};
use crate::headers::strip_hop_by_hop;
use crate::metrics::{Metrics, RouteMetrics};
use crate::plan::{LimitScope, Plan, PluginLimitsPlan, RoutePlan};
use crate::plugins::gate::BreakerLimits;
use crate::plugins::{ChainCache, ChainEntry, HostSettings, LimitsByLanguage};
use crate::policy::rate_limit::{KeyedLimiter, LimitSpec, Limiter};
use crate::policy::response_cache::ResponseCache;
use crate::policy::{RouteLimiter, RoutePolicies, UserLimit, UserLimiter};
use crate::registry::{self, Registration};
use crate::rewrite::{HeaderEdits, PathRewrite};
use crate::router::Router;
use crate::upstream::probe::HealthCheckers;
use crate::upstream::{UpstreamGroup, UpstreamState};

/// A route as the request path uses it.
#[derive(Debug)]
pub struct Route {
    /// Label in logs and metrics, with the metric handles for it.
    pub metrics: Arc<RouteMetrics>,
    pub upstream: Arc<UpstreamGroup>,
    pub rewrite: PathRewrite,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub preserve_host: bool,
    pub host_rewrite: Option<HeaderValue>,
    /// The route's own plugin chain (runs after the global one).
    pub plugins: Vec<ChainEntry>,
    /// The global and route chains as last resolved.
    pub chain: ChainCache,
    /// Rate limits, cache, CORS, WebSocket permission.
    pub policies: RoutePolicies,
    /// The route reads a `form:` field (per-user routing or limit), so a form post's
    /// body is read before it is decided.
    pub reads_form: bool,
}

impl Route {
    /// The response edits every answer from the route's upstream gets: hop-by-hop
    /// headers removed, the route's `response_headers` applied.
    pub fn edit_response_headers(&self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        self.response_headers.apply(headers);
    }
}

/// One consistent view of the config: a request loads it once and uses it throughout.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// The compiled config this snapshot was built from.
    pub plan: Arc<Plan>,
    pub router: Router,
    /// Indexed by `RouteMatch::index`: config routes in order, then registry routes.
    pub routes: Vec<Arc<Route>>,
    pub upstreams: HashMap<String, Arc<UpstreamGroup>>,
    /// `[plugins] global`: runs first on every routed request.
    pub global_plugins: Vec<ChainEntry>,
    /// Probes of this snapshot's upstream targets; they stop when the snapshot goes.
    pub health_checkers: HealthCheckers,
}

impl Snapshot {
    /// The config as written.
    pub fn config(&self) -> &Config {
        &self.plan.config
    }

    /// Every (config, limits) plugin `name` is used with, so a new version can be
    /// initialised with each before it goes into service.
    pub fn plugin_uses(&self, name: &str) -> Vec<(Arc<str>, LimitsByLanguage)> {
        let mut uses: Vec<(Arc<str>, LimitsByLanguage)> = Vec::new();
        let entries = self
            .global_plugins
            .iter()
            .chain(self.routes.iter().flat_map(|r| r.plugins.iter()));
        for entry in entries.filter(|e| &*e.name == name) {
            if !uses
                .iter()
                .any(|(c, l)| *c == entry.config_json && *l == entry.limits)
            {
                uses.push((entry.config_json.clone(), entry.limits));
            }
        }
        uses
    }
}

/// Per-route policy state carried across snapshots, keyed by the route's label and the
/// policy's settings: a reload that leaves them unchanged keeps counters and stored
/// responses; a changed setting starts fresh.
#[derive(Debug, Default)]
pub struct PolicyState {
    limiters: Carried<(Arc<str>, LimitSpec), Limiter>,
    user_limiters: Carried<(Arc<str>, LimitSpec, u64), KeyedLimiter>,
    /// Cluster-scoped limits, by (route, per-user?, spec, on_redis_error, max_keys).
    cluster_limiters: Carried<ClusterKey, ClusterLimiter>,
    caches: Carried<(Arc<str>, CacheConfig), ResponseCache>,
}

type ClusterKey = (Arc<str>, bool, LimitSpec, OnRedisError, u64);

/// What a snapshot is built with besides the plan.
pub struct Inputs<'a> {
    pub upstream_state: &'a UpstreamState,
    pub policy_state: &'a PolicyState,
    pub cluster_limits: &'a ClusterLimits,
    pub metrics: &'a Metrics,
    /// The registry's and the discovery providers' services, merged.
    pub services: &'a BTreeMap<String, Vec<Registration>>,
}

/// Builds a snapshot of `plan` plus the registry's and providers' `services`.
pub fn build(plan: Arc<Plan>, generation: u64, inputs: &Inputs<'_>) -> Snapshot {
    let Inputs {
        upstream_state,
        policy_state,
        cluster_limits,
        metrics,
        services,
    } = *inputs;
    let (service_groups, service_routes) = registry::service_routes(services, &plan.routes);
    let built = upstream_state.build(plan.upstreams.values().chain(&service_groups), metrics);
    let mut limiters = policy_state.limiters.rebuild();
    let mut user_limiters = policy_state.user_limiters.rebuild();
    let mut cluster_limiters = policy_state.cluster_limiters.rebuild();
    let mut caches = policy_state.caches.rebuild();
    let now = Instant::now();
    let mut specs = Vec::new();
    let mut routes = Vec::new();
    for route in plan.routes.iter().chain(&service_routes) {
        // Compilation checked every route's upstream against the groups it builds.
        let Some(upstream) = built.groups.get(&route.upstream) else {
            tracing::error!(route = %route.label, upstream = %route.upstream, "route left out: its upstream group was not built");
            continue;
        };
        let label = &route.label;
        let policies = RoutePolicies {
            rate_limit: route.rate_limit.as_ref().map(|limit| {
                let spec = &limit.spec;
                match limit.scope {
                    LimitScope::Node => {
                        RouteLimiter::Node(limiters.keep((label.clone(), spec.clone()), || {
                            Limiter::new(spec.clone(), now)
                        }))
                    }
                    LimitScope::Cluster { on_redis_error } => {
                        RouteLimiter::Cluster(cluster_limiters.keep(
                            (label.clone(), false, spec.clone(), on_redis_error, 1),
                            || {
                                cluster_limits.limiter(
                                    label,
                                    false,
                                    spec.clone(),
                                    on_redis_error,
                                    1,
                                )
                            },
                        ))
                    }
                }
            }),
            user_rate_limit: route.user_rate_limit.as_ref().map(|user| UserLimit {
                limiter: match user.scope {
                    LimitScope::Node => UserLimiter::Node(
                        user_limiters
                            .keep((label.clone(), user.spec.clone(), user.max_keys), || {
                                KeyedLimiter::new(user.spec.clone(), user.max_keys)
                            }),
                    ),
                    LimitScope::Cluster { on_redis_error } => {
                        let key = (
                            label.clone(),
                            true,
                            user.spec.clone(),
                            on_redis_error,
                            user.max_keys,
                        );
                        UserLimiter::Cluster(cluster_limiters.keep(key, || {
                            cluster_limits.limiter(
                                label,
                                true,
                                user.spec.clone(),
                                on_redis_error,
                                user.max_keys,
                            )
                        }))
                    }
                },
                keys: user.keys.clone(),
            }),
            cache: route.cache.as_ref().map(|cfg| {
                caches.keep((label.clone(), cfg.clone()), || {
                    ResponseCache::new(cfg.clone())
                })
            }),
            cors: route.cors.clone(),
            websocket: route.websocket,
        };
        specs.push(route.spec.clone());
        routes.push(Arc::new(build_route(
            route,
            upstream.clone(),
            policies,
            &plan.plugin_limits,
            metrics,
        )));
    }
    limiters.commit();
    user_limiters.commit();
    cluster_limiters.commit();
    caches.commit();
    Snapshot {
        generation,
        global_plugins: chain(&plan.config.plugins.global, &plan.plugin_limits, metrics),
        router: Router::new(specs),
        routes,
        upstreams: built.groups,
        health_checkers: built.checkers,
        plan,
    }
}

fn build_route(
    route: &RoutePlan,
    upstream: Arc<UpstreamGroup>,
    policies: RoutePolicies,
    plugin_limits: &PluginLimitsPlan,
    metrics: &Metrics,
) -> Route {
    Route {
        metrics: metrics.for_route(&route.label),
        upstream,
        rewrite: route.rewrite.clone(),
        request_headers: route.request_headers.clone(),
        response_headers: route.response_headers.clone(),
        preserve_host: route.preserve_host,
        host_rewrite: route.host_rewrite.clone(),
        plugins: chain(&route.plugins, plugin_limits, metrics),
        chain: ChainCache::default(),
        policies,
        reads_form: route.reads_form(),
    }
}

/// The settings that apply to each plugin as a whole, from `[plugins]`.
pub fn host_settings(settings: &PluginsConfig) -> HostSettings {
    HostSettings {
        kv_max_bytes: settings.kv_max_mb << 20,
        breaker: BreakerLimits {
            failures: settings.breaker.failures,
            window: std::time::Duration::from_millis(settings.breaker.window_ms),
            open_for: std::time::Duration::from_millis(settings.breaker.open_ms),
        },
    }
}

fn chain(refs: &[PluginRef], limits: &PluginLimitsPlan, metrics: &Metrics) -> Vec<ChainEntry> {
    refs.iter()
        .map(|r| {
            // A TOML table always serialises to JSON.
            let json = serde_json::to_string(&r.config).unwrap_or_else(|_| "{}".to_owned());
            ChainEntry::new(
                &r.name,
                json,
                limits.for_plugin(&r.name),
                metrics.for_plugin(&r.name),
            )
        })
        .collect()
}
