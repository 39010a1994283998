//! The local node's identity and protocol timings ([`SwimConfig`], `DefaultLANConfig`).

use std::net::SocketAddr;
use std::time::Duration;

/// Timings and identity of the local node; [`SwimConfig::lan`] gives memberlist's
/// `DefaultLANConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct SwimConfig {
    /// Unique node name.
    pub name: String,
    /// Address other nodes reach us at (UDP and TCP share it).
    pub addr: SocketAddr,
    /// Node metadata gossiped in `alive` (at most 512 bytes are accepted by peers).
    pub meta: Vec<u8>,
    /// Time between failure probes (scaled by the health score).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking peers for indirect probes.
    pub probe_timeout: Duration,
    /// Peers asked to probe indirectly after a missed ack.
    pub indirect_checks: usize,
    /// Skip the TCP fallback ping of a failed probe (memberlist's `DisableTcpPings`).
    pub disable_tcp_pings: bool,
    /// Suspicion timeout multiplier (×log10(n)×probe interval).
    pub suspicion_mult: u32,
    /// The suspicion timeout without confirmations is this many times the minimum.
    pub suspicion_max_timeout_mult: u32,
    /// Broadcasts are retransmitted `retransmit_mult × ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Time between gossip rounds (zero disables gossip).
    pub gossip_interval: Duration,
    /// Members gossiped to per round.
    pub gossip_nodes: usize,
    /// How long dead members still receive gossip and are kept before being reaped.
    pub gossip_to_the_dead: Duration,
    /// Time between periodic push/pull exchanges (zero disables them).
    pub push_pull_interval: Duration,
    /// Upper bound of the Lifeguard health multiplier (the score stays below it).
    pub awareness_max_multiplier: u32,
    /// Packet budget for piggy-backed broadcasts (memberlist's `UDPBufferSize`).
    pub udp_buffer_size: usize,
    /// A dead member's name may be claimed by a new address after this long (zero: never).
    pub dead_node_reclaim_time: Duration,
    /// Time between reconnect attempts to failed members (serf's; zero disables).
    pub reconnect_interval: Duration,
    /// How long a failed member is remembered for reconnects (serf's `ReconnectTimeout`).
    pub reconnect_timeout: Duration,
    /// Most members kept; alive messages about further unknown nodes are ignored.
    pub max_members: usize,
    /// Seed for the protocol's randomness (`None`: from the OS); tests fix it.
    pub rng_seed: Option<u64>,
}

impl SwimConfig {
    /// memberlist's `DefaultLANConfig` timings, plus serf's reconnect defaults.
    pub fn lan(name: impl Into<String>, addr: SocketAddr) -> Self {
        SwimConfig {
            name: name.into(),
            addr,
            meta: Vec::new(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            disable_tcp_pings: false,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_to_the_dead: Duration::from_secs(30),
            push_pull_interval: Duration::from_secs(30),
            awareness_max_multiplier: 8,
            udp_buffer_size: 1400,
            dead_node_reclaim_time: Duration::ZERO,
            reconnect_interval: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(24 * 3600),
            max_members: 10_000,
            rng_seed: None,
        }
    }
}
