//! Keys for the systems a cluster shares: `[cluster.redis]` (cluster-wide rate limits)
//! and `[[discovery]]` (services read from etcd, DNS SRV or Consul).

use serde::Deserialize;

/// `[cluster.redis]`: the Redis server cluster-scoped rate limits count in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Longest one Redis call may take; a slower answer counts as Redis being down.
    pub timeout_ms: u64,
    /// Tokens a node took from Redis but did not spend go back after this long.
    pub lease_ms: u64,
    /// A node takes tokens for about this much of its own recent demand at a time.
    pub batch_ms: u64,
    /// Prefix of every key the gateway writes.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            timeout_ms: 100,
            lease_ms: 250,
            batch_ms: 50,
            key_prefix: "fluxgate".to_owned(),
        }
    }
}

/// `[[discovery]] type`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Etcd,
    DnsSrv,
    Consul,
}

impl DiscoveryKind {
    /// The name an instance's `owner` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryKind::Etcd => "etcd",
            DiscoveryKind::DnsSrv => "dns_srv",
            DiscoveryKind::Consul => "consul",
        }
    }
}

/// One `[[discovery]]` entry. Which keys apply depends on `type`; the plan reports a
/// key given to a type that does not use it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscoveryConfig {
    #[serde(rename = "type")]
    pub kind: Option<DiscoveryKind>,
    /// etcd: the cluster's client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// etcd: keys `<prefix>/<service>/<id>` hold registration JSON.
    pub prefix: Option<String>,
    /// dns_srv: the service name the instances are served under (`/{service}/*`).
    pub service: Option<String>,
    /// dns_srv: the SRV name, e.g. `_http._tcp.users.service.consul`.
    pub name: Option<String>,
    /// dns_srv: `ip:port` of the DNS server; default: the system resolver.
    pub resolver: Option<String>,
    /// consul: the agent's HTTP address.
    pub address: Option<String>,
    /// consul: the services to follow.
    pub services: Vec<String>,
    /// consul: datacenter (default: the agent's).
    pub datacenter: Option<String>,
    /// consul: ACL token (sent as `X-Consul-Token`).
    pub token: Option<String>,
    /// dns_srv and consul: an active health check applied to every instance found
    /// (etcd values carry their own `check`).
    pub check: Option<DiscoveryCheck>,
    /// Longest a single request to the provider may take.
    pub timeout_ms: u64,
    /// dns_srv: shortest and longest time between lookups (the records' TTL is used
    /// within these bounds).
    pub min_refresh_ms: u64,
    pub max_refresh_ms: u64,
    /// consul: `wait` of a blocking query.
    pub wait_s: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            kind: None,
            endpoints: Vec::new(),
            prefix: None,
            service: None,
            name: None,
            resolver: None,
            address: None,
            services: Vec::new(),
            datacenter: None,
            token: None,
            check: None,
            timeout_ms: 2_000,
            min_refresh_ms: 1_000,
            max_refresh_ms: 300_000,
            wait_s: 60,
        }
    }
}

/// `check = { path = "/health", interval_ms = 2000 }` on a discovery entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscoveryCheck {
    pub path: String,
    pub interval_ms: u64,
}

impl Default for DiscoveryCheck {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval_ms: 2_000,
        }
    }
}
