//! `[[routes]]`: the pattern, methods, user keys, rewrites and header edits of each
//! route, parsed once; what the router and the request path are built from.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use super::policy::{LimitPlan, UserLimitPlan, compile_route_policies};
use super::settings::check_plugin_refs;
use crate::config::{CacheConfig, DEFAULT_USER_ID_KEY, HeaderOps, PluginRef, Problem, RouteConfig};
use crate::paths;
use crate::policy::cors::Cors;
use crate::rewrite::{HeaderEdits, PathRewrite};
use crate::router::{Pattern, RouteSpec};
use crate::user_id::KeySource;

/// One route, compiled.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// Label in logs and metrics: the route's `name`, else its path pattern. Also
    /// identifies the route's policy state across reloads.
    pub label: Arc<str>,
    /// The pattern as written.
    pub path: String,
    /// What the router matches on.
    pub spec: RouteSpec,
    /// The `[upstreams.NAME]` (or registry) group it forwards to.
    pub upstream: String,
    pub rewrite: PathRewrite,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub preserve_host: bool,
    pub host_rewrite: Option<HeaderValue>,
    pub plugins: Vec<PluginRef>,
    pub rate_limit: Option<LimitPlan>,
    pub user_rate_limit: Option<UserLimitPlan>,
    pub cache: Option<CacheConfig>,
    pub cors: Option<Cors>,
    pub websocket: bool,
}

/// Two routes with the same identity could never both match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Identity {
    shape: String,
    methods: Vec<String>,
    users: Vec<String>,
}

impl Identity {
    /// Taken from the route as written, so a duplicate is found even when the route
    /// has other problems too (`{id}` and `:id` are the same shape).
    pub(super) fn of(route: &RouteConfig) -> Self {
        let mut methods: Vec<String> = route
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        methods.sort();
        let mut users = route.users.clone();
        users.sort();
        Identity {
            shape: Pattern::parse(&route.path).map_or_else(|_| route.path.clone(), |p| p.shape()),
            methods,
            users,
        }
    }
}

impl RoutePlan {
    /// Does this route read a form field (per-user routing or a per-user limit keyed
    /// on `form:NAME`), so a form body must be read before it is decided?
    pub fn reads_form(&self) -> bool {
        self.spec.keys_users_on_form()
            || self
                .user_rate_limit
                .as_ref()
                .is_some_and(|u| u.keys.iter().any(|k| matches!(k, KeySource::Form(_))))
    }
}

/// Checks and compiles one route; `at` is its key path (`routes[3]`). Whether its
/// upstream exists is checked by the caller, which knows the groups. Returns `None`
/// when something was wrong (the problems say what).
pub fn compile_route(route: &RouteConfig, at: &str, out: &mut Vec<Problem>) -> Option<RoutePlan> {
    let before = out.len();
    let key = |k: &str| format!("{at}.{k}");
    let pattern = match Pattern::parse(&route.path) {
        Ok(p) => Some(p),
        Err(e) => {
            out.push(Problem::new(key("path"), e));
            None
        }
    };
    if paths::is_reserved(&route.path) {
        out.push(Problem::new(
            key("path"),
            format!("{} is answered by the gateway itself", route.path),
        ));
    }
    let mut methods = Vec::with_capacity(route.methods.len());
    for (j, method) in route.methods.iter().enumerate() {
        match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => out.push(Problem::new(
                key(&format!("methods[{j}]")),
                format!("\"{method}\" is not an HTTP method"),
            )),
        }
    }
    check_prefixes(route, pattern.as_ref(), &key, out);
    if route.preserve_host && route.host_rewrite.is_some() {
        out.push(Problem::new(
            key("host_rewrite"),
            "cannot be combined with preserve_host = true",
        ));
    }
    let host_rewrite = match &route.host_rewrite {
        Some(host) => match HeaderValue::from_str(host) {
            Ok(value) if !host.is_empty() => Some(value),
            _ => {
                out.push(Problem::new(
                    key("host_rewrite"),
                    "is not a valid Host value",
                ));
                None
            }
        },
        None => None,
    };
    for (j, user) in route.users.iter().enumerate() {
        if user.is_empty() {
            out.push(Problem::new(
                key(&format!("users[{j}]")),
                "must not be empty",
            ));
        }
    }
    let mut user_id_key = Vec::with_capacity(route.user_id_key.len());
    for (j, k) in route.user_id_key.iter().enumerate() {
        match KeySource::parse(k) {
            Ok(source) => user_id_key.push(source),
            Err(e) => out.push(Problem::new(key(&format!("user_id_key[{j}]")), e)),
        }
    }
    if !route.user_id_key.is_empty() && route.users.is_empty() {
        out.push(Problem::new(
            key("user_id_key"),
            "only applies together with users = [...]",
        ));
    }
    if user_id_key.is_empty() {
        user_id_key.push(KeySource::parse(DEFAULT_USER_ID_KEY).unwrap_or(KeySource::Ip));
    }
    check_plugin_refs(&key("plugins"), &route.plugins, out);
    let policies = compile_route_policies(at, route, out);
    let request_headers = compile_header_ops(&key("request_headers"), &route.request_headers, out);
    let response_headers =
        compile_header_ops(&key("response_headers"), &route.response_headers, out);
    if out.len() > before {
        return None;
    }
    Some(RoutePlan {
        label: Arc::from(route.name.as_deref().unwrap_or(&route.path)),
        path: route.path.clone(),
        spec: RouteSpec {
            pattern: pattern?,
            methods,
            users: route.users.clone(),
            user_id_key: Arc::from(user_id_key),
        },
        upstream: route.upstream.clone(),
        rewrite: PathRewrite::from_route(route),
        request_headers,
        response_headers,
        preserve_host: route.preserve_host,
        host_rewrite,
        plugins: route.plugins.clone(),
        rate_limit: policies.rate_limit,
        user_rate_limit: policies.user_rate_limit,
        cache: route.cache.clone(),
        cors: policies.cors,
        websocket: route.websocket,
    })
}

/// `strip_prefix`, `add_prefix` and `replace_prefix`: paths, and the stripped ones must
/// lead the route's pattern.
fn check_prefixes(
    route: &RouteConfig,
    pattern: Option<&Pattern>,
    key: &dyn Fn(&str) -> String,
    out: &mut Vec<Problem>,
) {
    if route.strip_prefix.is_some() && route.replace_prefix.is_some() {
        out.push(Problem::new(
            key("replace_prefix"),
            "cannot be combined with strip_prefix",
        ));
    }
    let mut prefixes = Vec::new();
    if let Some(p) = &route.strip_prefix {
        prefixes.push(("strip_prefix", p.as_str(), true));
    }
    if let Some(p) = &route.add_prefix {
        prefixes.push(("add_prefix", p.as_str(), false));
    }
    if let Some(r) = &route.replace_prefix {
        prefixes.push(("replace_prefix.from", r.from.as_str(), true));
        prefixes.push(("replace_prefix.to", r.to.as_str(), false));
    }
    for (k, prefix, must_lead_path) in prefixes {
        if !prefix.starts_with('/') || prefix.contains(['?', '#', '*']) {
            out.push(Problem::new(
                key(k),
                format!("\"{prefix}\" must be a path starting with '/'"),
            ));
        } else if must_lead_path
            && let Some(pattern) = pattern
            && !pattern.has_literal_prefix(prefix)
        {
            out.push(Problem::new(
                key(k),
                format!(
                    "\"{prefix}\" is not a leading part of the route path \"{}\"",
                    route.path
                ),
            ));
        }
    }
}

/// Parses `request_headers` / `response_headers` (`at` is the table's key path).
fn compile_header_ops(at: &str, ops: &HeaderOps, out: &mut Vec<Problem>) -> HeaderEdits {
    let mut set = Vec::with_capacity(ops.set.len());
    for (name, value) in &ops.set {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => set.push((name, value)),
            (Err(_), _) => out.push(Problem::new(
                format!("{at}.set.{name}"),
                "is not a valid header name",
            )),
            (_, Err(_)) => out.push(Problem::new(
                format!("{at}.set.{name}"),
                "is not a valid header value",
            )),
        }
    }
    let mut remove = Vec::with_capacity(ops.remove.len());
    for (j, name) in ops.remove.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => remove.push(name),
            Err(_) => out.push(Problem::new(
                format!("{at}.remove[{j}]"),
                "is not a valid header name",
            )),
        }
    }
    HeaderEdits::new(remove, set)
}
