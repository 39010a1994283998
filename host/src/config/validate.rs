//! Semantic checks serde cannot make: references, patterns, URLs, limits. Every problem
//! is collected, none stops the others from being found.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::{HeaderName, HeaderValue, Method};

use super::{Config, HeaderOps, Problem, RouteConfig};
use crate::router::Pattern;
use crate::upstream::TargetAddr;
use crate::user_id::KeySource;

/// Paths the gateway answers itself; a route cannot take them over.
pub const RESERVED_PATHS: &[&str] = &["/api/v1/health", "/api/v1/upstreams", "/metrics"];

/// Returns every problem found in an already-parsed config (empty = valid).
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    check_server(config, &mut out);
    check_plugins(config, &mut out);
    if let Some(cluster) = &config.cluster {
        check_cluster(cluster, &mut out);
    }
    for (name, upstream) in &config.upstreams {
        let at = |key: &str| format!("upstreams.{name}.{key}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            out.push(Problem::new(
                format!("upstreams.{name}"),
                "name may only use letters, digits, '-', '_' and '.'",
            ));
        }
        if upstream.targets.is_empty() {
            out.push(Problem::new(at("targets"), "needs at least one target"));
        }
        for (i, target) in upstream.targets.iter().enumerate() {
            if let Err(e) = TargetAddr::parse(&target.url) {
                out.push(Problem::new(at(&format!("targets[{i}].url")), e));
            }
            if !(1..=10_000).contains(&target.weight) {
                out.push(Problem::new(
                    at(&format!("targets[{i}].weight")),
                    "must be between 1 and 10000",
                ));
            }
        }
        super::check_policy::check_upstream(name, upstream, &mut out);
        for (key, value) in [
            ("connect_timeout_ms", upstream.connect_timeout_ms),
            ("request_timeout_ms", upstream.request_timeout_ms),
        ] {
            if value == 0 {
                out.push(Problem::new(at(key), "must be greater than 0"));
            }
        }
    }
    let mut seen: HashMap<(String, Vec<String>, Vec<String>), usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        check_route(config, i, route, &mut out);
        let mut methods: Vec<String> = route
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        methods.sort();
        let mut users = route.users.clone();
        users.sort();
        let key = (normalise_pattern(&route.path), methods, users);
        if let Some(first) = seen.get(&key) {
            out.push(Problem::new(
                format!("routes[{i}].path"),
                format!("same path, methods and users as routes[{first}]; it could never match"),
            ));
        } else {
            seen.insert(key, i);
        }
    }
    out
}

/// `{id}` and `:id` are the same pattern for duplicate detection.
fn normalise_pattern(path: &str) -> String {
    match Pattern::parse(path) {
        Ok(p) => p.shape(),
        Err(_) => path.to_owned(),
    }
}

fn check_server(config: &Config, out: &mut Vec<Problem>) {
    let s = &config.server;
    if s.listen.parse::<SocketAddr>().is_err() {
        out.push(Problem::new(
            "server.listen",
            format!("\"{}\" is not an address like 0.0.0.0:8080", s.listen),
        ));
    }
    for (key, value) in [
        ("header_read_timeout_ms", s.header_read_timeout_ms as usize),
        ("max_uri_bytes", s.max_uri_bytes),
        ("max_headers", s.max_headers),
        ("max_header_bytes", s.max_header_bytes),
    ] {
        if value == 0 {
            out.push(Problem::new(
                format!("server.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if s.max_header_bytes > 1024 * 1024 {
        out.push(Problem::new(
            "server.max_header_bytes",
            "must be at most 1048576",
        ));
    }
}

fn check_cluster(c: &super::ClusterConfig, out: &mut Vec<Problem>) {
    if c.gossip_listen.parse::<SocketAddr>().is_err() {
        out.push(Problem::new(
            "cluster.gossip_listen",
            format!(
                "\"{}\" is not an address like 0.0.0.0:7946",
                c.gossip_listen
            ),
        ));
    }
    if let Some(a) = &c.advertise
        && a.parse::<SocketAddr>().is_err()
    {
        out.push(Problem::new(
            "cluster.advertise",
            format!("\"{a}\" is not an address like 10.0.0.2:7946"),
        ));
    }
    for (i, join) in c.join.iter().enumerate() {
        if join
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            out.push(Problem::new(
                format!("cluster.join[{i}]"),
                format!("\"{join}\" is not host:port"),
            ));
        }
    }
    if let Some(key) = &c.secret_key
        && let Err(e) = crate::cluster::decode_key(key)
    {
        out.push(Problem::new("cluster.secret_key", e));
    }
    if c.node_name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 128)
    {
        out.push(Problem::new(
            "cluster.node_name",
            "must be 1-128 characters",
        ));
    }
}

/// Plugin names are file stems in the plugin folder.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_plugin_refs(at: &str, refs: &[super::PluginRef], out: &mut Vec<Problem>) {
    for (i, r) in refs.iter().enumerate() {
        if !is_plugin_name(&r.name) {
            out.push(Problem::new(
                format!("{at}[{i}].name"),
                format!(
                    "\"{}\" is not a plugin name (letters, digits, '-', '_')",
                    r.name
                ),
            ));
        }
    }
}

fn check_plugins(config: &Config, out: &mut Vec<Problem>) {
    let p = &config.plugins;
    if p.timeout_ms == 0 || p.timeout_ms > 60_000 {
        out.push(Problem::new(
            "plugins.timeout_ms",
            "must be between 1 and 60000",
        ));
    }
    if p.memory_limit_mb == 0 || p.memory_limit_mb > 4096 {
        out.push(Problem::new(
            "plugins.memory_limit_mb",
            "must be between 1 and 4096",
        ));
    }
    if p.max_body_bytes > 64 * 1024 * 1024 {
        out.push(Problem::new(
            "plugins.max_body_bytes",
            "must be at most 67108864",
        ));
    }
    if p.max_idle_instances > 256 {
        out.push(Problem::new(
            "plugins.max_idle_instances",
            "must be at most 256",
        ));
    }
    check_plugin_refs("plugins.global", &p.global, out);
}

fn check_route(config: &Config, i: usize, route: &RouteConfig, out: &mut Vec<Problem>) {
    let at = |key: &str| format!("routes[{i}].{key}");
    let pattern = match Pattern::parse(&route.path) {
        Ok(p) => Some(p),
        Err(e) => {
            out.push(Problem::new(at("path"), e));
            None
        }
    };
    if RESERVED_PATHS.contains(&route.path.as_str())
        || crate::registry::api::PATHS.contains(&route.path.as_str())
    {
        out.push(Problem::new(
            at("path"),
            format!("{} is answered by the gateway itself", route.path),
        ));
    }
    for (j, method) in route.methods.iter().enumerate() {
        if Method::from_bytes(method.to_ascii_uppercase().as_bytes()).is_err() {
            out.push(Problem::new(
                format!("routes[{i}].methods[{j}]"),
                format!("\"{method}\" is not an HTTP method"),
            ));
        }
    }
    if route.upstream.is_empty() {
        out.push(Problem::new(at("upstream"), "is required"));
    } else if !config.upstreams.contains_key(&route.upstream) {
        out.push(Problem::new(
            at("upstream"),
            format!("no upstream named \"{}\"", route.upstream),
        ));
    }
    if route.strip_prefix.is_some() && route.replace_prefix.is_some() {
        out.push(Problem::new(
            at("replace_prefix"),
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
    for (key, prefix, must_lead_path) in prefixes {
        if !prefix.starts_with('/') || prefix.contains(['?', '#', '*']) {
            out.push(Problem::new(
                at(key),
                format!("\"{prefix}\" must be a path starting with '/'"),
            ));
        } else if must_lead_path
            && let Some(pattern) = &pattern
            && !pattern.has_literal_prefix(prefix)
        {
            out.push(Problem::new(
                at(key),
                format!(
                    "\"{prefix}\" is not a leading part of the route path \"{}\"",
                    route.path
                ),
            ));
        }
    }
    if route.preserve_host && route.host_rewrite.is_some() {
        out.push(Problem::new(
            at("host_rewrite"),
            "cannot be combined with preserve_host = true",
        ));
    }
    if let Some(host) = &route.host_rewrite
        && (host.is_empty() || HeaderValue::from_str(host).is_err())
    {
        out.push(Problem::new(
            at("host_rewrite"),
            "is not a valid Host value",
        ));
    }
    for (j, user) in route.users.iter().enumerate() {
        if user.is_empty() {
            out.push(Problem::new(
                format!("routes[{i}].users[{j}]"),
                "must not be empty",
            ));
        }
    }
    for (j, key) in route.user_id_key.iter().enumerate() {
        if let Err(e) = KeySource::parse(key) {
            out.push(Problem::new(format!("routes[{i}].user_id_key[{j}]"), e));
        }
    }
    if !route.user_id_key.is_empty() && route.users.is_empty() {
        out.push(Problem::new(
            at("user_id_key"),
            "only applies together with users = [...]",
        ));
    }
    check_plugin_refs(&at("plugins"), &route.plugins, out);
    super::check_policy::check_route(i, route, out);
    check_header_ops(&at("request_headers"), &route.request_headers, out);
    check_header_ops(&at("response_headers"), &route.response_headers, out);
}

fn check_header_ops(at: &str, ops: &HeaderOps, out: &mut Vec<Problem>) {
    for (name, value) in &ops.set {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            out.push(Problem::new(
                format!("{at}.set.{name}"),
                "is not a valid header name",
            ));
        } else if HeaderValue::from_str(value).is_err() {
            out.push(Problem::new(
                format!("{at}.set.{name}"),
                "is not a valid header value",
            ));
        }
    }
    for (j, name) in ops.remove.iter().enumerate() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            out.push(Problem::new(
                format!("{at}.remove[{j}]"),
                "is not a valid header name",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    use crate::config::test_problems as problems;

    const UPSTREAM: &str = "[upstreams.users]\ntargets = [{ url = \"http://127.0.0.1:9000\" }]\n";

    #[test]
    fn a_full_valid_config_has_no_problems() {
        let text = format!(
            "{UPSTREAM}[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/api/v1/users/:id\"\nmethods = [\"get\"]\nupstream = \"users\"\nstrip_prefix = \"/api/v1\"\nusers = [\"demo\"]\nuser_id_key = [\"header:X-User-ID\", \"ip\"]\nrequest_headers = {{ set = {{ x-env = \"prod\" }}, remove = [\"cookie\"] }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_key_path() {
        let text = format!(
            "{UPSTREAM}[server]\nlisten = \"nowhere\"\n\
             [[routes]]\npath = \"/a\"\nupstream = \"users\"\n\
             [[routes]]\npath = \"/b\"\nupstream = \"users\"\n\
             [[routes]]\npath = \"/c/*/d\"\nupstream = \"userz\"\nmethods = [\"G T\"]\n\
             [[routes]]\npath = \"/e\"\nupstream = \"users\"\nstrip_prefix = \"/x\"\nreplace_prefix = {{ from = \"/e\", to = \"/f\" }}\n\
             [[routes]]\npath = \"/a\"\nupstream = \"users\"\nuser_id_key = [\"smoke:signal\"]\n\
             [upstreams.empty]\n[upstreams.bad]\ntargets = [{{ url = \"ftp://x\", weight = 0 }}]\n"
        );
        let found = problems(&text);
        for expected in [
            "server.listen: \"nowhere\" is not an address like 0.0.0.0:8080",
            "routes[2].upstream: no upstream named \"userz\"",
            "routes[2].methods[0]: \"G T\" is not an HTTP method",
            "routes[3].replace_prefix: cannot be combined with strip_prefix",
            "routes[3].strip_prefix: \"/x\" is not a leading part of the route path \"/e\"",
            "routes[4].path: same path, methods and users as routes[0]; it could never match",
            "upstreams.empty.targets: needs at least one target",
            "upstreams.bad.targets[0].weight: must be between 1 and 10000",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert!(
            found.iter().any(|f| f.starts_with("routes[2].path: ")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("routes[4].user_id_key[0]: ")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("upstreams.bad.targets[0].url: ")),
            "{found:#?}"
        );
    }

    #[test]
    fn plugin_chains_accept_names_and_tables_and_reject_unknown_keys() {
        let ok = format!(
            "{UPSTREAM}[plugins]\nglobal = [\"trace\"]\n[[routes]]\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"api-key-auth\", {{ name = \"header-rewrite\", config = {{ set = {{ x = \"1\" }} }} }}]\n"
        );
        let config = parse(&ok).unwrap();
        assert_eq!(config.routes[0].plugins[1].name, "header-rewrite");
        assert!(config.routes[0].plugins[1].config.contains_key("set"));
        let bad = format!(
            "{UPSTREAM}[[routes]]\npath = \"/a\"\nupstream = \"users\"\nplugins = [{{ name = \"x\", confg = {{}} }}, \"../evil\"]\n"
        );
        let found = problems(&bad);
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("routes[0].plugins[0]: unknown field `confg`")),
            "{found:?}"
        );
        let bad_name = format!(
            "{UPSTREAM}[[routes]]\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"../evil\"]\n"
        );
        assert_eq!(
            problems(&bad_name),
            vec![
                "routes[0].plugins[0].name: \"../evil\" is not a plugin name (letters, digits, '-', '_')"
            ]
        );
    }

    #[test]
    fn reserved_paths_cannot_be_routed() {
        let text = format!("{UPSTREAM}[[routes]]\npath = \"/metrics\"\nupstream = \"users\"\n");
        assert_eq!(
            problems(&text),
            vec!["routes[0].path: /metrics is answered by the gateway itself"]
        );
    }

    #[test]
    fn the_shipped_example_configs_are_valid() {
        for (name, text) in [
            (
                "gateway.toml",
                include_str!("../../../examples/gateway.toml"),
            ),
            (
                "plugins.toml",
                include_str!("../../../examples/plugins.toml"),
            ),
        ] {
            assert_eq!(problems(text), Vec::<String>::new(), "examples/{name}");
        }
    }
}
