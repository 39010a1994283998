//! `[server]`, `[plugins]` and `[cluster]`: value checks, and the cluster settings the
//! gossip driver starts from.

use std::net::SocketAddr;

use std::collections::BTreeMap;

use crate::config::{
    ClusterConfig, Config, PluginLimitOverrides, PluginRef, PluginsConfig, Problem,
};
use crate::plugins::call::{Limits, LimitsByLanguage};

/// `[cluster]` compiled: what the gossip driver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub gossip_listen: SocketAddr,
    /// The address other nodes are told; `None` = derived from `gossip_listen`
    /// (127.0.0.1 when that is unspecified, which only suits single-host clusters).
    pub advertise: Option<SocketAddr>,
    pub join: Vec<String>,
    /// The decoded AES key: gossip is encrypted and authenticated when set.
    pub secret_key: Option<Vec<u8>>,
    pub node_name: Option<String>,
    /// `cluster.gossip`: false = no gossip driver (Redis-only sharing).
    pub gossip: bool,
}

impl ClusterSettings {
    /// The address other nodes reach us at.
    pub fn advertised(&self) -> SocketAddr {
        match self.advertise {
            Some(a) => a,
            None if self.gossip_listen.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], self.gossip_listen.port()))
            }
            None => self.gossip_listen,
        }
    }
}

/// Checks `[server]`; returns the parsed listen address.
pub(super) fn check_server(config: &Config, out: &mut Vec<Problem>) -> Option<SocketAddr> {
    let s = &config.server;
    let listen = s.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
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
    check_http2(s, out);
    listen
}

/// `[server.http2]`: a zero would refuse every stream or header, or make hyper's
/// keep-alive timer spin; the header list is capped like `max_header_bytes`.
fn check_http2(s: &crate::config::ServerConfig, out: &mut Vec<Problem>) {
    let h2 = &s.http2;
    for (key, value) in [
        (
            "max_concurrent_streams",
            u64::from(h2.max_concurrent_streams),
        ),
        ("max_header_list_bytes", u64::from(h2.max_header_list_bytes)),
        ("keep_alive_interval_ms", h2.keep_alive_interval_ms),
        ("keep_alive_timeout_ms", h2.keep_alive_timeout_ms),
    ] {
        if value == 0 {
            out.push(Problem::new(
                format!("server.http2.{key}"),
                "must be greater than 0",
            ));
        }
    }
    if h2.max_header_list_bytes > 1024 * 1024 {
        out.push(Problem::new(
            "server.http2.max_header_list_bytes",
            "must be at most 1048576",
        ));
    }
}

/// Checks `[cluster]` and compiles it.
pub(super) fn compile_cluster(
    c: &ClusterConfig,
    out: &mut Vec<Problem>,
) -> Option<ClusterSettings> {
    let before = out.len();
    let gossip_listen = c.gossip_listen.parse::<SocketAddr>().ok();
    if gossip_listen.is_none() {
        out.push(Problem::new(
            "cluster.gossip_listen",
            format!(
                "\"{}\" is not an address like 0.0.0.0:7946",
                c.gossip_listen
            ),
        ));
    }
    let advertise = match &c.advertise {
        Some(a) => {
            let parsed = a.parse::<SocketAddr>().ok();
            if parsed.is_none() {
                out.push(Problem::new(
                    "cluster.advertise",
                    format!("\"{a}\" is not an address like 10.0.0.2:7946"),
                ));
            }
            parsed
        }
        None => None,
    };
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
    let secret_key = match &c.secret_key {
        Some(key) => match crate::cluster::wire::decode_key(key) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                out.push(Problem::new("cluster.secret_key", e));
                None
            }
        },
        None => None,
    };
    if c.node_name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 128)
    {
        out.push(Problem::new(
            "cluster.node_name",
            "must be 1-128 characters",
        ));
    }
    if out.len() > before {
        return None;
    }
    Some(ClusterSettings {
        gossip_listen: gossip_listen?,
        advertise,
        join: c.join.clone(),
        secret_key,
        node_name: c.node_name.clone(),
        gossip: c.gossip,
    })
}

/// Plugin names are file stems in the plugin folder.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn check_plugin_refs(at: &str, refs: &[PluginRef], out: &mut Vec<Problem>) {
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

/// The limits plugin calls run under, compiled from `[plugins]`,
/// `[plugins.languages.*]` and `[plugins.limits.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimitsPlan {
    /// For a plugin without its own table.
    pub default: LimitsByLanguage,
    /// `[plugins.limits.NAME]`, applied over the language's limits.
    pub per_plugin: BTreeMap<String, LimitsByLanguage>,
}

impl PluginLimitsPlan {
    /// The limits of plugin `name`, per language of the file that gets loaded.
    pub fn for_plugin(&self, name: &str) -> LimitsByLanguage {
        self.per_plugin.get(name).copied().unwrap_or(self.default)
    }
}

/// Built-in limits for JavaScript plugins (componentize-js: SpiderMonkey and its
/// heap in every instance), under `[plugins.languages.javascript]`. Measured in
/// docs/PLUGINS.md ("Plugins in JavaScript and Python"): an instance of the example
/// starts at 9 MiB of linear memory (Python: 13) and its heap grows with use, so
/// 32 MiB is too tight for real work; an instance costs 25-60x a Rust one's resident
/// memory, so fewer are kept warm (4: the calls a plugin may run at once).
pub const JAVASCRIPT_DEFAULTS: PluginLimitOverrides = PluginLimitOverrides {
    timeout_ms: None,
    memory_limit_mb: Some(128),
    max_idle_instances: Some(4),
    max_concurrent_calls: None,
    max_instances: Some(16),
    max_idle_mb: Some(256),
};

/// Built-in limits for Python plugins (componentize-py: CPython and its heap in every
/// instance), under `[plugins.languages.python]`; see [`JAVASCRIPT_DEFAULTS`].
pub const PYTHON_DEFAULTS: PluginLimitOverrides = PluginLimitOverrides {
    timeout_ms: None,
    memory_limit_mb: Some(128),
    max_idle_instances: Some(4),
    max_concurrent_calls: None,
    max_instances: Some(16),
    max_idle_mb: Some(256),
};

/// `[plugins]`'s own limits (native plugins, and the base of the others).
fn base_limits(p: &PluginsConfig) -> Limits {
    Limits {
        timeout_ms: p.timeout_ms,
        memory_bytes: mib(p.memory_limit_mb),
        max_idle: p.max_idle_instances,
        max_concurrent: p.max_concurrent_calls,
        max_instances: p.max_instances,
        max_idle_bytes: mib(p.max_idle_mb),
        max_body: p.max_body_bytes,
    }
}

fn mib(mb: u64) -> usize {
    usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// `limits` with the keys `over` sets replaced.
fn overridden(limits: Limits, over: &PluginLimitOverrides) -> Limits {
    Limits {
        timeout_ms: over.timeout_ms.unwrap_or(limits.timeout_ms),
        memory_bytes: over.memory_limit_mb.map_or(limits.memory_bytes, mib),
        max_idle: over.max_idle_instances.unwrap_or(limits.max_idle),
        max_concurrent: over.max_concurrent_calls.unwrap_or(limits.max_concurrent),
        max_instances: over.max_instances.unwrap_or(limits.max_instances),
        max_idle_bytes: over.max_idle_mb.map_or(limits.max_idle_bytes, mib),
        max_body: limits.max_body,
    }
}

/// Checks the overriding keys of one table (`at` is its key path).
fn check_overrides(at: &str, over: &PluginLimitOverrides, out: &mut Vec<Problem>) {
    let keys = [
        ("timeout_ms", over.timeout_ms, 60_000),
        ("memory_limit_mb", over.memory_limit_mb, 4096),
        (
            "max_idle_instances",
            over.max_idle_instances.map(|v| v as u64),
            256,
        ),
        (
            "max_concurrent_calls",
            over.max_concurrent_calls.map(|v| v as u64),
            1024,
        ),
        ("max_instances", over.max_instances.map(|v| v as u64), 4096),
        ("max_idle_mb", over.max_idle_mb, 65_536),
    ];
    for (key, value, max) in keys {
        let Some(value) = value else { continue };
        // max_idle_instances may be 0 (keep none warm); the others must allow a call.
        let min = u64::from(key != "max_idle_instances");
        if value < min || value > max {
            out.push(Problem::new(
                format!("{at}.{key}"),
                format!("must be between {min} and {max}"),
            ));
        }
    }
}

/// Compiles the limits of `[plugins]`, `[plugins.languages.*]` and
/// `[plugins.limits.NAME]`: a plugin's own table, over its language's table, over the
/// built-in language defaults, over `[plugins]`.
pub(super) fn compile_plugin_limits(p: &PluginsConfig, out: &mut Vec<Problem>) -> PluginLimitsPlan {
    check_overrides("plugins.languages.javascript", &p.languages.javascript, out);
    check_overrides("plugins.languages.python", &p.languages.python, out);
    let base = base_limits(p);
    let default = LimitsByLanguage {
        native: base,
        javascript: overridden(
            overridden(base, &JAVASCRIPT_DEFAULTS),
            &p.languages.javascript,
        ),
        python: overridden(overridden(base, &PYTHON_DEFAULTS), &p.languages.python),
    };
    let mut per_plugin = BTreeMap::new();
    for (name, over) in &p.limits {
        let at = format!("plugins.limits.{name}");
        if !is_plugin_name(name) {
            out.push(Problem::new(
                at.clone(),
                format!("\"{name}\" is not a plugin name (letters, digits, '-', '_')"),
            ));
        }
        check_overrides(&at, over, out);
        per_plugin.insert(
            name.clone(),
            LimitsByLanguage {
                native: overridden(default.native, over),
                javascript: overridden(default.javascript, over),
                python: overridden(default.python, over),
            },
        );
    }
    PluginLimitsPlan {
        default,
        per_plugin,
    }
}

/// Checks `[plugins]`.
pub(super) fn check_plugins(config: &Config, out: &mut Vec<Problem>) {
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
    for (key, value, max) in [
        ("max_concurrent_calls", p.max_concurrent_calls as u64, 1024),
        ("max_instances", p.max_instances as u64, 4096),
        ("max_idle_mb", p.max_idle_mb, 65_536),
        ("kv_max_mb", p.kv_max_mb, 65_536),
        ("max_file_mb", p.max_file_mb, 1024),
        ("breaker.failures", u64::from(p.breaker.failures), 1_000_000),
        ("breaker.window_ms", p.breaker.window_ms, 86_400_000),
        ("breaker.open_ms", p.breaker.open_ms, 86_400_000),
    ] {
        if value == 0 || value > max {
            out.push(Problem::new(
                format!("plugins.{key}"),
                format!("must be between 1 and {max}"),
            ));
        }
    }
    check_plugin_refs("plugins.global", &p.global, out);
}
