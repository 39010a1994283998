//! `[server]`, `[plugins]` and `[cluster]`: value checks, and the cluster settings the
//! gossip driver starts from.

use std::net::SocketAddr;

use crate::config::{ClusterConfig, Config, PluginRef, Problem};

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
