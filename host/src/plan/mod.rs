//! The config compiled once: every check `validate` makes produces the typed value the
//! gateway is built from, so validation and build cannot disagree.
//!
//! - `settings`  `[server]`, `[plugins]` and `[cluster]` checks; the cluster settings
//! - `upstreams` `[upstreams.NAME]` → parsed target addresses
//! - `routes`    `[[routes]]` → patterns, methods, user keys, rewrites, header edits
//! - `policy`    traffic-policy tables → limit specs, CORS, value checks
//! - `discovery` `[cluster.redis]` and `[[discovery]]` → Redis and provider settings
//! - `telemetry` `[telemetry]` → request id header, sampling bound, export settings
//!
//! `fluxgate-host validate`, startup and every hot reload go through [`parse`] (or
//! [`load_file`]), so they print and apply the same thing.

mod discovery;
mod policy;
mod routes;
mod settings;
mod telemetry;
mod tls;
mod upstreams;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{self, Config, ConfigError, Problem};

pub use discovery::{DiscoveryPlan, RedisSettings, Source};
pub use policy::{LimitPlan, LimitScope, UserLimitPlan};
pub use routes::{RoutePlan, compile_route};
pub use settings::{
    ClusterSettings, JAVASCRIPT_DEFAULTS, PYTHON_DEFAULTS, PluginLimitsPlan, is_plugin_name,
};
pub use telemetry::{ExportSettings, MAX_REQUEST_ID_BYTES, TelemetryPlan, sample_bound};
pub use tls::{AcmePlan, TlsPlan};
pub use upstreams::{TargetPlan, UpstreamPlan, compile_upstream};

/// A checked config and everything compiled from it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config as written (sections the gateway reads as they are: server limits,
    /// plugin settings).
    pub config: Config,
    /// `server.listen`, parsed.
    pub listen: SocketAddr,
    pub upstreams: BTreeMap<String, UpstreamPlan>,
    /// In config order (a route's index is its tie-breaker in matching).
    pub routes: Vec<RoutePlan>,
    /// `[cluster]` with the command-line overrides applied; `None` = one node.
    pub cluster: Option<ClusterSettings>,
    /// `[tls]`; `None` = no TLS listener.
    pub tls: Option<TlsPlan>,
    /// `[cluster.redis]`: where cluster-scoped rate limits count.
    pub redis: Option<RedisSettings>,
    /// `[[discovery]]` providers, in config order.
    pub discovery: Vec<DiscoveryPlan>,
    /// The limits plugin calls run under, per plugin and language.
    pub plugin_limits: PluginLimitsPlan,
    /// `[telemetry]`: request ids, trace context, span export.
    pub telemetry: TelemetryPlan,
}

/// Command-line settings that override the file, applied to every version of it (at
/// start and on each reload).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--port`: replaces `server.listen`'s port.
    pub port: Option<u16>,
    /// `--gossip-port`: turns clustering on and replaces `cluster.gossip_listen`'s port.
    pub gossip_port: Option<u16>,
    /// `--join`: turns clustering on and adds seeds.
    pub join: Vec<String>,
    /// `--tls-port`: replaces `tls.listen`'s port.
    pub tls_port: Option<u16>,
    /// `--advertise`: replaces `cluster.advertise` (a pod's IP is only known at start).
    pub advertise: Option<String>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let (Some(port), Some(tls)) = (self.tls_port, &mut config.tls)
            && let Ok(mut addr) = tls.listen.parse::<SocketAddr>()
        {
            addr.set_port(port);
            tls.listen = addr.to_string();
        }
        if let Some(port) = self.port
            && let Ok(mut addr) = config.server.listen.parse::<SocketAddr>()
        {
            addr.set_port(port);
            config.server.listen = addr.to_string();
        }
        if let (Some(advertise), Some(cluster)) = (&self.advertise, &mut config.cluster) {
            cluster.advertise = Some(advertise.clone());
        }
        if self.gossip_port.is_none() && self.join.is_empty() {
            return;
        }
        let cluster = config.cluster.get_or_insert_with(Default::default);
        if let Some(advertise) = &self.advertise {
            cluster.advertise = Some(advertise.clone());
        }
        if let Some(port) = self.gossip_port
            && let Ok(mut addr) = cluster.gossip_listen.parse::<SocketAddr>()
        {
            addr.set_port(port);
            cluster.gossip_listen = addr.to_string();
        }
        cluster.join.extend(self.join.iter().cloned());
    }
}

/// Checks a parsed config and compiles it. Every problem is collected with its key
/// path; none stops the others from being found.
pub fn compile(config: Config) -> Result<Plan, Vec<Problem>> {
    let mut out = Vec::new();
    let listen = settings::check_server(&config, &mut out);
    settings::check_plugins(&config, &mut out);
    let plugin_limits = settings::compile_plugin_limits(&config.plugins, &mut out);
    let cluster = config
        .cluster
        .as_ref()
        .and_then(|c| settings::compile_cluster(c, &mut out));
    let tls = config
        .tls
        .as_ref()
        .and_then(|t| tls::compile_tls(t, &mut out));
    let redis = config
        .cluster
        .as_ref()
        .and_then(|c| c.redis.as_ref())
        .and_then(|r| discovery::compile_redis(r, &mut out));
    let discovery = discovery::compile_discovery(&config.discovery, &mut out);
    let telemetry = telemetry::compile_telemetry(&config.telemetry, &mut out);
    if config.server.upgrade_timeout_ms == 0 || config.server.upgrade_timeout_ms > 3_600_000 {
        out.push(Problem::new(
            "server.upgrade_timeout_ms",
            "must be between 1 and 3600000",
        ));
    }
    let mut upstreams = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
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
        if let Some(plan) = compile_upstream(name, upstream, &format!("upstreams.{name}"), &mut out)
        {
            upstreams.insert(name.clone(), plan);
        }
    }
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut seen: HashMap<routes::Identity, usize> = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if route.upstream.is_empty() {
            out.push(Problem::new(format!("{at}.upstream"), "is required"));
        } else if !config.upstreams.contains_key(&route.upstream) {
            out.push(Problem::new(
                format!("{at}.upstream"),
                format!("no upstream named \"{}\"", route.upstream),
            ));
        }
        let compiled = compile_route(route, &at, &mut out);
        let identity = routes::Identity::of(route);
        match seen.get(&identity) {
            Some(first) => out.push(Problem::new(
                format!("{at}.path"),
                format!("same path, methods and users as routes[{first}]; it could never match"),
            )),
            None => {
                seen.insert(identity, i);
            }
        }
        routes.extend(compiled);
    }
    match (listen, out.is_empty()) {
        (Some(listen), true) => Ok(Plan {
            config,
            listen,
            upstreams,
            routes,
            cluster,
            redis,
            discovery,
            plugin_limits,
            tls,
            telemetry,
        }),
        _ => Err(out),
    }
}

/// Parses and compiles config text, with `overrides` applied before the checks.
pub fn parse(text: &str, overrides: &Overrides) -> Result<Plan, ConfigError> {
    from_text(text, None, overrides)
}

/// Parses and compiles the text of the config file at `file` (relative paths in it are
/// taken from the file's folder), with `overrides` applied before the checks.
pub fn from_text(
    text: &str,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<Plan, ConfigError> {
    let config::Parsed {
        mut config,
        unknown_keys,
    } = config::parse(text)?;
    if let Some(base) = file.and_then(Path::parent) {
        config.resolve_paths(base);
    }
    overrides.apply(&mut config);
    match compile(config) {
        Ok(plan) if unknown_keys.is_empty() => Ok(plan),
        Ok(_) => Err(ConfigError::Invalid(unknown_keys)),
        Err(problems) => Err(ConfigError::Invalid(
            unknown_keys.into_iter().chain(problems).collect(),
        )),
    }
}

/// Reads, parses and compiles a config file.
pub fn load_file(path: &Path, overrides: &Overrides) -> Result<Plan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_text(&text, Some(path), overrides)
}

/// The plan of the built-in defaults (no config file).
pub fn defaults(overrides: &Overrides) -> Result<Plan, ConfigError> {
    let mut config = Config::default();
    overrides.apply(&mut config);
    compile(config).map_err(ConfigError::Invalid)
}

/// Every problem config text has, as printed (empty = valid). For tests.
#[cfg(test)]
pub(crate) fn test_problems(text: &str) -> Vec<String> {
    match parse(text, &Overrides::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_problems as problems;

    const UPSTREAM: &str = "[upstreams.users]\ntargets = [{ url = \"http://127.0.0.1:9000\" }]\n";

    #[test]
    fn a_full_valid_config_has_no_problems() {
        let text = format!(
            "{UPSTREAM}[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npath = \"/api/v1/users/:id\"\nmethods = [\"get\"]\nupstream = \"users\"\nstrip_prefix = \"/api/v1\"\nusers = [\"demo\"]\nuser_id_key = [\"header:X-User-ID\", \"ip\"]\nrequest_headers = {{ set = {{ x-env = \"prod\" }}, remove = [\"cookie\"] }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn the_plan_holds_what_validation_checked() {
        let text = format!(
            "{UPSTREAM}[[routes]]\npath = \"/api/v1/users/{{id}}\"\nmethods = [\"get\"]\nupstream = \"users\"\nstrip_prefix = \"/api/v1\"\nusers = [\"demo\"]\nuser_id_key = [\"header:X-User-ID\", \"ip\"]\n\
             rate_limit = {{ algorithm = \"fixed_window\", capacity = 5, window_ms = 2000 }}\n\
             user_rate_limit = {{ capacity = 2, refill_per_s = 1.0, key = [\"query:u\"] }}\n\
             cors = {{ allow_origins = [\"*\"] }}\n"
        );
        let plan = parse(&text, &Overrides::default()).unwrap();
        assert_eq!(plan.listen, "0.0.0.0:8080".parse().unwrap());
        let target = &plan.upstreams["users"].targets[0];
        assert_eq!(target.addr.authority.as_str(), "127.0.0.1:9000");
        let route = &plan.routes[0];
        assert_eq!(&*route.label, "/api/v1/users/{id}");
        assert_eq!(route.spec.methods, vec![http::Method::GET]);
        assert_eq!(route.spec.user_id_key.len(), 2);
        assert_eq!(route.rewrite.apply("/api/v1/users/7"), "/users/7");
        let limit = &route.rate_limit.as_ref().unwrap().spec;
        assert_eq!(
            (limit.capacity, limit.window),
            (5, std::time::Duration::from_secs(2))
        );
        let user = route.user_rate_limit.as_ref().unwrap();
        assert_eq!(
            user.keys,
            vec![crate::user_id::KeySource::Query("u".into())]
        );
        assert!(route.cors.is_some());
    }

    #[test]
    fn overrides_apply_before_the_checks() {
        let overrides = Overrides {
            port: Some(9999),
            gossip_port: Some(7000),
            join: vec!["127.0.0.1:7001".into()],
            ..Overrides::default()
        };
        let plan = parse("", &overrides).unwrap();
        assert_eq!(plan.listen.port(), 9999);
        let cluster = plan.cluster.unwrap();
        assert_eq!(cluster.gossip_listen.port(), 7000);
        assert_eq!(cluster.join, vec!["127.0.0.1:7001".to_owned()]);
        let bad = Overrides {
            join: vec!["nowhere".into()],
            ..Overrides::default()
        };
        assert_eq!(
            parse("", &bad).unwrap_err().problems()[0].to_string(),
            "cluster.join[0]: \"nowhere\" is not host:port"
        );
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
    fn http2_limits_must_be_usable() {
        let found = problems(
            "[server.http2]\nmax_concurrent_streams = 0\nmax_header_list_bytes = 2000000\n\
             keep_alive_timeout_ms = 0\n",
        );
        for expected in [
            "server.http2.max_concurrent_streams: must be greater than 0",
            "server.http2.max_header_list_bytes: must be at most 1048576",
            "server.http2.keep_alive_timeout_ms: must be greater than 0",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert_eq!(
            problems("[server]\nh2c = true\n[server.http2]\nmax_cancelled_streams_per_s = 0\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn plugin_chains_accept_names_and_tables_and_reject_unknown_keys() {
        let ok = format!(
            "{UPSTREAM}[plugins]\nglobal = [\"trace\"]\n[[routes]]\npath = \"/a\"\nupstream = \"users\"\nplugins = [\"api-key-auth\", {{ name = \"header-rewrite\", config = {{ set = {{ x = \"1\" }} }} }}]\n"
        );
        let plan = parse(&ok, &Overrides::default()).unwrap();
        let config = &plan.config;
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
    fn plugin_limits_go_plugin_over_language_over_builtin_over_plugins() {
        let text = format!(
            "{UPSTREAM}[plugins]\nmemory_limit_mb = 16\nmax_idle_instances = 8\n\
             [plugins.languages.python]\nmemory_limit_mb = 96\n\
             [plugins.limits.big]\nmemory_limit_mb = 200\nmax_instances = 3\n"
        );
        let plan = parse(&text, &Overrides::default()).unwrap();
        let mib = |n: usize| n << 20;
        let any = plan.plugin_limits.for_plugin("any");
        // Native plugins keep [plugins]'s limits, whatever the other languages get.
        assert_eq!(any.native.memory_bytes, mib(16));
        assert_eq!(any.native.max_idle, 8);
        // JavaScript: the built-in defaults over [plugins].
        assert_eq!(
            any.javascript.memory_bytes,
            mib(JAVASCRIPT_DEFAULTS.memory_limit_mb.unwrap() as usize)
        );
        assert_eq!(
            any.javascript.max_idle,
            JAVASCRIPT_DEFAULTS.max_idle_instances.unwrap()
        );
        // Python: the operator's table over the built-in defaults.
        assert_eq!(any.python.memory_bytes, mib(96));
        assert_eq!(
            any.python.max_idle,
            PYTHON_DEFAULTS.max_idle_instances.unwrap()
        );
        // One plugin's own table wins for every language its file may be.
        let big = plan.plugin_limits.for_plugin("big");
        for limits in [big.native, big.javascript, big.python] {
            assert_eq!(limits.memory_bytes, mib(200));
            assert_eq!(limits.max_instances, 3);
        }
        assert_eq!(big.native.max_idle, 8);
        assert_eq!(plan.plugin_limits.for_plugin("other"), any);
    }

    #[test]
    fn plugin_limit_tables_are_checked_with_their_key_paths() {
        let text = format!(
            "{UPSTREAM}[plugins.languages.javascript]\nmemory_limit_mb = 0\nmemory_mb = 1\n\
             [plugins.limits.\"../x\"]\ntimeout_ms = 60001\n\
             [plugins.limits.ok]\nmax_idle_instances = 0\n"
        );
        let found = problems(&text);
        for expected in [
            "plugins.languages.javascript.memory_limit_mb: must be between 1 and 4096",
            "plugins.limits.../x: \"../x\" is not a plugin name (letters, digits, '-', '_')",
            "plugins.limits.../x.timeout_ms: must be between 1 and 60000",
        ] {
            assert!(
                found.iter().any(|f| f == expected),
                "missing {expected:?} in {found:#?}"
            );
        }
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("plugins.languages.javascript.memory_mb")),
            "unknown keys are named: {found:#?}"
        );
        assert!(
            !found.iter().any(|f| f.starts_with("plugins.limits.ok")),
            "0 warm instances is allowed: {found:#?}"
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
            (
                "cluster.toml",
                include_str!("../../../examples/cluster.toml"),
            ),
        ] {
            assert_eq!(problems(text), Vec::<String>::new(), "examples/{name}");
        }
    }
}
