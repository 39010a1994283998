//! The sections of gateway.toml and their keys, with defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::discovery::{DiscoveryConfig, RedisConfig};
use super::policy::{
    CacheConfig, CircuitBreakerConfig, CorsConfig, HealthCheckConfig, OutlierConfig,
    RateLimitConfig, RetryConfig,
};
use super::telemetry::TelemetryConfig;
use super::tls::{Http2Config, TlsConfig, UpstreamProtocol, UpstreamTlsConfig};

/// The whole gateway.toml. All sections are optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub plugins: PluginsConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Absent = a single node (no gossip).
    pub cluster: Option<ClusterConfig>,
    /// `[[discovery]]`: services read from etcd, DNS SRV or Consul.
    pub discovery: Vec<DiscoveryConfig>,
    /// Absent = no TLS listener.
    pub tls: Option<TlsConfig>,
    /// Request ids, trace context, span export.
    pub telemetry: TelemetryConfig,
}

/// `[cluster]`: gossip with other gateway nodes (memberlist's protocol).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClusterConfig {
    /// UDP and TCP address for gossip; `--gossip-port` replaces the port.
    pub gossip_listen: String,
    /// Address other nodes reach us at; default: the listen address (127.0.0.1 when
    /// it is unspecified, which only suits single-host clusters).
    pub advertise: Option<String>,
    /// Nodes to join at start (`host:port`); `--join` adds to them.
    pub join: Vec<String>,
    /// Base64 AES key (16, 24 or 32 bytes): gossip is encrypted and authenticated.
    pub secret_key: Option<String>,
    /// Unique node name; default `hostname:http-port`.
    pub node_name: Option<String>,
    /// `false`: no gossip (a node that only shares rate-limit state through Redis).
    pub gossip: bool,
    /// `[cluster.redis]`: shared state for `scope = "cluster"` rate limits.
    pub redis: Option<RedisConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            gossip_listen: "0.0.0.0:7946".to_owned(),
            advertise: None,
            join: Vec::new(),
            secret_key: None,
            node_name: None,
            gossip: true,
            redis: None,
        }
    }
}

impl Config {
    /// Makes relative paths in the config relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |path: &mut std::path::PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.plugins.dir);
        if let Some(pid_file) = &mut self.server.pid_file {
            resolve(pid_file);
        }
        if let Some(tls) = &mut self.tls {
            for cert in &mut tls.certificates {
                resolve(&mut cert.cert);
                resolve(&mut cert.key);
            }
            if let Some(acme) = &mut tls.acme {
                resolve(&mut acme.storage);
                if let Some(ca) = &mut acme.directory_ca_file {
                    resolve(ca);
                }
            }
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(tls) = &mut upstream.tls {
                for path in [&mut tls.ca_file, &mut tls.client_cert, &mut tls.client_key]
                    .into_iter()
                    .flatten()
                {
                    resolve(path);
                }
            }
        }
    }
}

/// `[plugins]`: where WebAssembly plugins come from and the limits they run under.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct PluginsConfig {
    /// Watched folder; `NAME.wasm` is plugin `NAME`. Relative to the config file.
    pub dir: std::path::PathBuf,
    /// Longest a single hook call may run.
    pub timeout_ms: u64,
    /// Most linear memory one plugin instance may use.
    pub memory_limit_mb: u64,
    /// What a failing plugin (trap, timeout, out of memory, not loaded) does to the
    /// request: `deny` answers with a JSON 5xx, `allow` skips the plugin.
    pub on_error: OnError,
    /// Largest request/response body buffered for plugins that ask for bodies.
    pub max_body_bytes: usize,
    /// Warm instances kept per plugin version and config.
    pub max_idle_instances: usize,
    /// Calls of one plugin running at once (a call only overlaps another when it runs
    /// past an epoch tick); more fail fast with `on_error`.
    pub max_concurrent_calls: usize,
    /// Instances of one plugin alive at once, across its versions and configs.
    pub max_instances: usize,
    /// Linear memory one plugin's idle instances may keep, in MiB.
    pub max_idle_mb: u64,
    /// Bytes one plugin's key-value store may hold, in MiB.
    pub kv_max_mb: u64,
    /// Largest plugin file read from the folder, in MiB.
    pub max_file_mb: u64,
    /// When a plugin whose calls keep failing is short-circuited.
    pub breaker: PluginBreakerConfig,
    /// Chain run on every routed request, before the route's own chain.
    pub global: Vec<PluginRef>,
    /// Limits for plugins that carry a language runtime (detected when a file is
    /// loaded), over the settings above: `[plugins.languages.javascript]`,
    /// `[plugins.languages.python]`. Keys left out keep the built-in defaults for that
    /// language (docs/CONFIG.md), then the settings above.
    pub languages: PluginLanguagesConfig,
    /// One plugin's own limits, over everything above: `[plugins.limits.NAME]`.
    pub limits: BTreeMap<String, PluginLimitOverrides>,
}

/// `[plugins.languages]`: per-language limits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PluginLanguagesConfig {
    pub javascript: PluginLimitOverrides,
    pub python: PluginLimitOverrides,
}

/// Limits that override `[plugins]`'s for a language or for one plugin; a key left
/// out is not overridden.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PluginLimitOverrides {
    pub timeout_ms: Option<u64>,
    pub memory_limit_mb: Option<u64>,
    pub max_idle_instances: Option<usize>,
    pub max_concurrent_calls: Option<usize>,
    pub max_instances: Option<usize>,
    pub max_idle_mb: Option<u64>,
}

impl PluginsConfig {
    /// `max_file_mb` in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_mb.saturating_mul(1 << 20)
    }
}

/// `plugins.breaker`: a plugin whose calls time out, trap, run out of memory or break
/// the output rules `failures` times within `window_ms` is not called for `open_ms`
/// (its routes answer per `on_error`); then one trial call decides.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct PluginBreakerConfig {
    pub failures: u32,
    pub window_ms: u64,
    pub open_ms: u64,
}

impl Default for PluginBreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window_ms: 10_000,
            open_ms: 5_000,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: std::path::PathBuf::from("plugins.d"),
            timeout_ms: 50,
            memory_limit_mb: 32,
            on_error: OnError::Deny,
            max_body_bytes: 1024 * 1024,
            max_idle_instances: 32,
            max_concurrent_calls: 4,
            max_instances: 64,
            max_idle_mb: 64,
            kv_max_mb: 16,
            max_file_mb: 64,
            breaker: PluginBreakerConfig::default(),
            global: Vec::new(),
            languages: PluginLanguagesConfig::default(),
            limits: BTreeMap::new(),
        }
    }
}

/// `plugins.on_error`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Deny,
    Allow,
}

/// One entry of a plugin chain: `"name"` or `{ name = "...", config = { ... } }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRef {
    pub name: String,
    /// Passed to the plugin's `init` as JSON.
    pub config: toml::Table,
}

impl<'de> Deserialize<'de> for PluginRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PluginRef;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a plugin name or { name = \"...\", config = { ... } }")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<PluginRef, E> {
                Ok(PluginRef {
                    name: name.to_owned(),
                    config: toml::Table::new(),
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PluginRef, A::Error> {
                let mut name = None;
                let mut config = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => name = Some(map.next_value::<String>()?),
                        "config" => config = Some(map.next_value::<toml::Table>()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(
                                other,
                                &["name", "config"],
                            ));
                        }
                    }
                }
                Ok(PluginRef {
                    name: name.ok_or_else(|| serde::de::Error::missing_field("name"))?,
                    config: config.unwrap_or_default(),
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[server]`: the listener, client-facing limits and operator settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on; `--port` overrides the port.
    pub listen: String,
    /// Runtime worker threads; 0 = one per available core.
    pub workers: usize,
    /// A client must send a complete request head within this time (slowloris guard).
    /// An idle keep-alive connection is closed after the same time.
    pub header_read_timeout_ms: u64,
    /// Longest accepted request target (path + query), else 414.
    pub max_uri_bytes: usize,
    /// Most request header fields accepted, else 431.
    pub max_headers: usize,
    /// Largest total size of request header names and values, else 431.
    pub max_header_bytes: usize,
    /// How long shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace_ms: u64,
    /// One log line per request (target `access`).
    pub access_log: bool,
    /// Bearer token that allows management writes from non-loopback clients (else the
    /// FLUXGATE_ADMIN_TOKEN environment variable; neither = loopback only).
    pub admin_token: Option<String>,
    /// Serve HTTP/2 with prior knowledge (h2c) on the plain listener too.
    pub h2c: bool,
    /// HTTP/2 limits (TLS and h2c).
    pub http2: Http2Config,
    /// File the running process writes its PID to once it serves (and that
    /// `fluxgate-host upgrade` reads); `--pid-file` overrides it.
    pub pid_file: Option<std::path::PathBuf>,
    /// Longest a binary upgrade waits for the new process to report ready before
    /// giving up on it (the old process keeps serving).
    pub upgrade_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            workers: 0,
            header_read_timeout_ms: 15_000,
            max_uri_bytes: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 32 * 1024,
            shutdown_grace_ms: 10_000,
            access_log: true,
            admin_token: None,
            h2c: false,
            http2: Http2Config::default(),
            pid_file: None,
            upgrade_timeout_ms: 60_000,
        }
    }
}

/// `[upstreams.NAME]`: a group of interchangeable targets and how to pick one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpstreamConfig {
    pub balancer: BalancerKind,
    pub targets: Vec<TargetConfig>,
    /// Time allowed to open a TCP connection to a target (502/504 after).
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response head (504 after).
    pub request_timeout_ms: u64,
    /// Idle pooled connections are closed after this time.
    pub pool_idle_timeout_ms: u64,
    /// Idle pooled connections kept per target.
    pub pool_max_idle_per_target: usize,
    /// Active probes; absent = targets are assumed healthy.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection of failing targets; absent = off.
    pub outlier_detection: Option<OutlierConfig>,
    /// One breaker per target; absent = off.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Absent = every request is tried once.
    pub retry: Option<RetryConfig>,
    /// How targets are reached: HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// TLS settings for `https://` targets.
    pub tls: Option<UpstreamTlsConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            balancer: BalancerKind::RoundRobin,
            targets: Vec::new(),
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_target: 256,
            health_check: None,
            outlier_detection: None,
            circuit_breaker: None,
            retry: None,
            protocol: UpstreamProtocol::Http1,
            tls: None,
        }
    }
}

/// Load-balancing algorithm of an upstream group.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    IpHash,
    Random,
}

/// One target of an upstream group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetConfig {
    /// `http://host:port` (a path is not allowed: use the route's rewrite keys).
    pub url: String,
    /// Relative share for weighted balancers (1..=10000).
    pub weight: u32,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            weight: 1,
        }
    }
}

/// `[[routes]]`: which requests go where, and how they are rewritten on the way.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouteConfig {
    /// Label in logs and metrics; defaults to the path pattern.
    pub name: Option<String>,
    /// `/literal`, `/:param`, `/{param}`, and a trailing `/*`.
    pub path: String,
    /// Allowed methods; empty = any.
    pub methods: Vec<String>,
    /// Name of an `[upstreams.NAME]` group.
    pub upstream: String,
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub replace_prefix: Option<ReplacePrefix>,
    /// Send the client's Host header upstream (true) or the target's host:port (false).
    pub preserve_host: bool,
    /// Send this Host header upstream instead.
    pub host_rewrite: Option<String>,
    /// When set, the route only serves these user ids.
    pub users: Vec<String>,
    /// Where the user id comes from, first found wins (`header:NAME`, `query:NAME`,
    /// `cookie:NAME`, `form:NAME`, `jwt:CLAIM`, `basic:username`, `ip`).
    pub user_id_key: Vec<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Plugin chain for this route, run after `[plugins] global`.
    pub plugins: Vec<PluginRef>,
    /// One limit shared by every client of the route.
    pub rate_limit: Option<RateLimitConfig>,
    /// One limit per user id (`key`).
    pub user_rate_limit: Option<RateLimitConfig>,
    pub cache: Option<CacheConfig>,
    pub cors: Option<CorsConfig>,
    /// Proxy `Upgrade: websocket` requests (otherwise Upgrade is stripped).
    pub websocket: bool,
}

/// `replace_prefix = { from = "/v1", to = "/v2" }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReplacePrefix {
    pub from: String,
    pub to: String,
}

/// Header edits: `remove` runs first, then `set` (which replaces any existing values).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeaderOps {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// The user id sources used when a route has `users` but no `user_id_key`.
pub const DEFAULT_USER_ID_KEY: &str = "header:x-user-id";
