//! SWIM + Lifeguard membership after HashiCorp memberlist, as a state machine (no I/O, no clock).
//!
//! Each rule cites the memberlist function it follows (`state.go`, `suspicion.go`,
//! `queue.go`, `awareness.go`, `net.go`, `util.go`). The driver feeds packets and push/pull
//! exchanges in and performs the returned [`Output`]s; nothing here reads a clock or a
//! socket, so the whole protocol runs deterministically under a simulated network.
//!
//! Deliberate departures from memberlist:
//! - no TCP fallback ping (`probeNode`'s `sendPingAndWaitForAck`): a probe fails after the
//!   UDP direct and indirect attempts;
//! - no protocol-version negotiation (`verifyProtocol`): we advertise [`VSN`] and accept
//!   any peer whose version triple is well-formed;
//! - serf's reconnect loop (`serf.reconnect`) is built in, because FluxGate has no serf
//!   layer and memberlist alone never heals a partition once both sides reaped each other;
//! - three guards against false positives under packet loss: starting (or shortening) a
//!   suspicion sends the suspect our accusation directly (Lifeguard's buddy system, which
//!   memberlist only applies when probing), an accusation of an *older* incarnation of us
//!   is answered with our current `alive` to the accuser, and a suspicion of a *newer*
//!   incarnation restarts a running timer instead of confirming it. Without them a node
//!   that missed a refutation could declare a live node dead (seen in 3 of 40 simulated
//!   minutes at 10% loss; 0 of 40 with them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::messages::{
    AckResp, Alive, Dead, IndirectPingReq, Message, NackResp, NodeState, Ping, PushNodeState,
    PushPull, Suspect,
};

/// The version vector we advertise: memberlist's `BuildVsnArray` for protocol version 2
/// (understands 1..=5, speaks 2) and delegate protocol 0, as a default Go node sends.
pub const VSN: [u8; 6] = [1, 5, 2, 0, 0, 0];

/// memberlist's `compoundHeaderOverhead`: bytes assumed for a compound message's header.
const COMPOUND_HEADER_OVERHEAD: usize = 2;
/// memberlist's `compoundOverhead`: bytes assumed per message inside a compound.
const COMPOUND_OVERHEAD: usize = 2;
/// memberlist's `userMsgOverhead`: the user message type byte.
const USER_MSG_OVERHEAD: usize = 1;
/// Estimated encoded size of a membership message before its variable-length fields.
const MSG_BASE_ESTIMATE: usize = 60;
/// memberlist's `MetaMaxSize`: larger metadata from a peer is rejected.
const META_MAX_SIZE: usize = 512;
/// Longest node name we accept from a peer (bounds every name-keyed structure).
const MAX_NAME_LEN: usize = 512;
/// memberlist's `pushPullScaleThreshold`: push/pull slows down above this many nodes.
const PUSH_PULL_SCALE_THRESHOLD: usize = 32;
/// Most indirect pings we relay at once (peer input must not grow memory unboundedly).
const MAX_RELAYS: usize = 1024;
/// Most broadcasts held in each queue; memberlist's `Prune` keeps the freshest.
const MAX_QUEUED_BROADCASTS: usize = 4096;
/// Most received user messages held until `take_user_messages`.
const MAX_PENDING_USER_MESSAGES: usize = 4096;
/// Most received push/pull user states held until `take_remote_user_states`.
const MAX_PENDING_USER_STATES: usize = 64;

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

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Unique node name.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Node metadata.
    pub meta: Vec<u8>,
    /// Last known incarnation number.
    pub incarnation: u32,
    /// Current state.
    pub state: MemberState,
    /// When `state` last changed.
    pub state_change: Instant,
}

/// A member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left on purpose (it declared itself dead).
    Left,
}

impl MemberState {
    fn dead_or_left(self) -> bool {
        matches!(self, MemberState::Dead | MemberState::Left)
    }

    fn to_wire(self) -> NodeState {
        match self {
            MemberState::Alive => NodeState::Alive,
            MemberState::Suspect => NodeState::Suspect,
            MemberState::Dead => NodeState::Dead,
            MemberState::Left => NodeState::Left,
        }
    }
}

/// What the state machine wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send these messages to `to` in one UDP packet (the driver compounds/encodes them).
    Packet {
        /// Destination.
        to: SocketAddr,
        /// The message first, then piggy-backed broadcasts.
        messages: Vec<Message>,
    },
    /// Open a TCP stream to `to` and exchange push/pull state; feed the answer back with
    /// [`Swim::handle_push_pull_reply`].
    PushPull {
        /// Destination.
        to: SocketAddr,
        /// Our side of the exchange.
        state: PushPull,
    },
    /// Membership changed (for the registry and logs).
    Event(MemberEvent),
}

/// A membership change, as memberlist's `EventDelegate` reports them.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A member became alive (new, or back from dead/left).
    Joined(Member),
    /// An alive member's metadata changed.
    Updated(Member),
    /// A member is suspected (not in memberlist's delegate; useful for logs).
    Suspected(String),
    /// A member was declared dead.
    Died(String),
    /// A member left on purpose.
    Left(String),
}

/// memberlist's `suspicionTimeout` (util.go): `mult × max(1, log10(max(1, n))) × interval`,
/// with the node scale truncated to thousandths as Go's integer `Duration` maths does.
pub fn suspicion_timeout(suspicion_mult: u32, n: usize, interval: Duration) -> Duration {
    let node_scale = (n.max(1) as f64).log10().max(1.0);
    let scale_milli = (node_scale * 1000.0) as u128;
    let nanos = u128::from(suspicion_mult) * scale_milli * interval.as_nanos() / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The overall suspicion timeout (from the start of suspicion) after `n` of `k` wanted
/// confirmations: memberlist's `remainingSuspicionTime` plus the elapsed time it subtracts.
/// It shrinks logarithmically from `max` (no confirmation) to `min` (k confirmations).
pub fn suspicion_total_timeout(n: u32, k: u32, min: Duration, max: Duration) -> Duration {
    if k == 0 {
        return min;
    }
    let frac = (f64::from(n) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let raw = max.as_secs_f64() - frac * (max.as_secs_f64() - min.as_secs_f64());
    let millis = (1000.0 * raw).floor().max(0.0) as u64;
    Duration::from_millis(millis).max(min)
}

/// memberlist's `retransmitLimit`: `mult × ceil(log10(n + 1))`.
pub fn retransmit_limit(retransmit_mult: u32, n: usize) -> u32 {
    let node_scale = ((n as f64) + 1.0).log10().ceil() as u32;
    retransmit_mult.saturating_mul(node_scale)
}

/// memberlist's `pushPullScale`: push/pull slows down as the cluster grows past 32 nodes.
pub fn push_pull_scale(interval: Duration, n: usize) -> Duration {
    if n <= PUSH_PULL_SCALE_THRESHOLD {
        return interval;
    }
    let mult = ((n as f64).log2() - (PUSH_PULL_SCALE_THRESHOLD as f64).log2()).ceil() + 1.0;
    interval.saturating_mul(mult as u32)
}

/// A rough encoded size of a message, for the packet budget.
fn estimated_len(msg: &Message) -> usize {
    match msg {
        Message::User(p) => p.len() + USER_MSG_OVERHEAD,
        Message::Alive(a) => MSG_BASE_ESTIMATE + a.node.len() + a.meta.len(),
        Message::Suspect(s) => MSG_BASE_ESTIMATE + s.node.len() + s.from.len(),
        Message::Dead(d) => MSG_BASE_ESTIMATE + d.node.len() + d.from.len(),
        Message::Ping(p) => MSG_BASE_ESTIMATE + p.node.len() + p.source_node.len(),
        Message::IndirectPing(p) => MSG_BASE_ESTIMATE + p.node.len() + p.source_node.len(),
        Message::Ack(a) => MSG_BASE_ESTIMATE + a.payload.len(),
        Message::Nack(_) => MSG_BASE_ESTIMATE,
        Message::Err(e) => MSG_BASE_ESTIMATE + e.error.len(),
    }
}

/// One queued broadcast (memberlist's `limitedBroadcast`).
#[derive(Debug, Clone)]
struct Queued {
    name: String,
    msg: Message,
    len: usize,
    transmits: u32,
    id: u64,
}

/// memberlist's `TransmitLimitedQueue` (queue.go): broadcasts named by what they are
/// about, fewest transmits first, each dropped after the retransmit limit.
#[derive(Debug, Default)]
struct TransmitLimitedQueue {
    items: Vec<Queued>,
    id_gen: u64,
}

impl TransmitLimitedQueue {
    /// `queueBroadcast`: a new broadcast invalidates a queued one with the same name.
    fn queue(&mut self, name: String, msg: Message) {
        self.items.retain(|q| q.name != name);
        self.id_gen += 1;
        let len = estimated_len(&msg);
        self.items.push(Queued {
            name,
            msg,
            len,
            transmits: 0,
            id: self.id_gen,
        });
        self.prune(MAX_QUEUED_BROADCASTS);
    }

    /// `Prune`: drop the most-transmitted (then smallest, oldest) entries beyond `keep`.
    fn prune(&mut self, keep: usize) {
        if self.items.len() <= keep {
            return;
        }
        self.items.sort_by(queue_order);
        self.items.truncate(keep);
    }

    /// `GetBroadcasts`: fill `limit` bytes (each message costing `overhead` more), fewest
    /// transmits first and within a tier the largest then newest; count the transmit and
    /// drop a broadcast once it reaches `transmit_limit`.
    fn get_broadcasts(
        &mut self,
        overhead: usize,
        limit: usize,
        transmit_limit: u32,
    ) -> Vec<Message> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by(|&a, &b| queue_order(&self.items[a], &self.items[b]));
        let mut used = 0usize;
        let mut taken = Vec::new();
        for idx in order {
            let free = limit.saturating_sub(used + overhead);
            if free == 0 {
                break;
            }
            if self.items[idx].len <= free {
                used += overhead + self.items[idx].len;
                taken.push(idx);
            }
        }
        let msgs = taken.iter().map(|&i| self.items[i].msg.clone()).collect();
        for &i in &taken {
            self.items[i].transmits += 1;
        }
        self.items.retain(|q| q.transmits < transmit_limit);
        msgs
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// `limitedBroadcast.Less`: fewer transmits, then longer, then newer first.
fn queue_order(a: &Queued, b: &Queued) -> std::cmp::Ordering {
    a.transmits
        .cmp(&b.transmits)
        .then(b.len.cmp(&a.len))
        .then(b.id.cmp(&a.id))
}

/// memberlist's `suspicion` (suspicion.go): a timer that starts at `max` and is driven
/// towards `min` by independent confirmations.
#[derive(Debug, Clone)]
struct Suspicion {
    k: u32,
    n: u32,
    min: Duration,
    max: Duration,
    start: Instant,
    deadline: Instant,
    /// Who already confirmed (the accuser included, as `newSuspicion` does).
    confirmations: BTreeSet<String>,
}

impl Suspicion {
    /// `newSuspicion`: the max timeout, or the min when no confirmations are expected.
    fn new(from: &str, k: u32, min: Duration, max: Duration, now: Instant) -> Self {
        let timeout = if k < 1 { min } else { max };
        Suspicion {
            k,
            n: 0,
            min,
            max,
            start: now,
            deadline: now + timeout,
            confirmations: BTreeSet::from([from.to_string()]),
        }
    }

    /// `Confirm`: returns true when this was a new confirmation (worth re-gossiping).
    fn confirm(&mut self, from: &str) -> bool {
        if self.n >= self.k || self.confirmations.contains(from) {
            return false;
        }
        self.confirmations.insert(from.to_string());
        self.n += 1;
        self.deadline = self.start + suspicion_total_timeout(self.n, self.k, self.min, self.max);
        true
    }
}

/// memberlist's `awareness` (Lifeguard local health): 0 is healthy, `max - 1` worst.
#[derive(Debug, Clone)]
struct Awareness {
    max: u32,
    score: u32,
}

impl Awareness {
    /// `ApplyDelta`: clamp to `[0, max - 1]`.
    fn apply_delta(&mut self, delta: i64) {
        let top = i64::from(self.max.saturating_sub(1));
        let score = (i64::from(self.score) + delta).clamp(0, top);
        self.score = u32::try_from(score).unwrap_or(0);
    }

    /// `ScaleTimeout`: `timeout × (score + 1)`.
    fn scale(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.score + 1)
    }
}

/// Our member entry plus what memberlist keeps beside it.
#[derive(Debug, Clone)]
struct NodeEntry {
    member: Member,
    vsn: Vec<u8>,
}

impl NodeEntry {
    /// Highest protocol version the node understands (nacks need 4).
    fn pmax(&self) -> u8 {
        self.vsn.get(1).copied().unwrap_or(0)
    }
}

/// The probe in flight (the state `probeNode` keeps on its goroutine's stack).
#[derive(Debug, Clone)]
struct Probe {
    seq: u32,
    node: String,
    incarnation: u32,
    /// Direct ack deadline; past it we send indirect pings.
    timeout_at: Instant,
    /// The (health-scaled) probe interval's end; past it the probe failed.
    deadline: Instant,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

/// An indirect ping we relay for a peer (`handleIndirectPing`'s ack handler and nack timer).
#[derive(Debug, Clone)]
struct Relay {
    orig_seq: u32,
    reply_to: SocketAddr,
    nack: bool,
    expires: Instant,
}

/// A failed member remembered for reconnects (serf's `failedMembers`).
#[derive(Debug, Clone)]
struct Failed {
    addr: SocketAddr,
    since: Instant,
}

/// The membership state machine of one node.
pub struct Swim {
    config: SwimConfig,
    rng: StdRng,
    /// memberlist's `nodeMap`.
    nodes: BTreeMap<String, NodeEntry>,
    /// memberlist's `nodes`: the shuffled probe order.
    order: Vec<String>,
    probe_index: usize,
    incarnation: u32,
    seq_no: u32,
    left: bool,
    awareness: Awareness,
    suspicions: BTreeMap<String, Suspicion>,
    probe: Option<Probe>,
    relays: BTreeMap<u32, Relay>,
    broadcasts: TransmitLimitedQueue,
    user_broadcasts: TransmitLimitedQueue,
    failed: BTreeMap<String, Failed>,
    next_probe: Option<Instant>,
    next_gossip: Option<Instant>,
    next_push_pull: Option<Instant>,
    next_reconnect: Option<Instant>,
    last_now: Instant,
    local_user_state: Vec<u8>,
    remote_user_states: VecDeque<Vec<u8>>,
    user_messages: VecDeque<Vec<u8>>,
    out: Vec<Output>,
}

impl Swim {
    /// A node alone in its cluster, Alive at incarnation 1 (memberlist's `setAlive`).
    /// Timers start after a random stagger, as `triggerFunc` does.
    pub fn new(config: SwimConfig, now: Instant) -> Self {
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let awareness = Awareness {
            max: config.awareness_max_multiplier.max(1),
            score: 0,
        };
        let mut swim = Swim {
            config,
            rng,
            nodes: BTreeMap::new(),
            order: Vec::new(),
            probe_index: 0,
            incarnation: 0,
            seq_no: 0,
            left: false,
            awareness,
            suspicions: BTreeMap::new(),
            probe: None,
            relays: BTreeMap::new(),
            broadcasts: TransmitLimitedQueue::default(),
            user_broadcasts: TransmitLimitedQueue::default(),
            failed: BTreeMap::new(),
            next_probe: None,
            next_gossip: None,
            next_push_pull: None,
            next_reconnect: None,
            last_now: now,
            local_user_state: Vec::new(),
            remote_user_states: VecDeque::new(),
            user_messages: VecDeque::new(),
            out: Vec::new(),
        };
        swim.start_timers(now);
        swim.incarnation = 1;
        let alive = swim.local_alive(1);
        swim.alive_node(alive, true, now);
        // The self-join event has nowhere to go; the alive broadcast stays queued.
        swim.out.clear();
        swim
    }

    fn start_timers(&mut self, now: Instant) {
        let gossip_on = self.config.gossip_nodes > 0;
        self.next_probe = self.staggered(now, self.config.probe_interval);
        self.next_gossip = self
            .staggered(now, self.config.gossip_interval)
            .filter(|_| gossip_on);
        self.next_push_pull = self.staggered(now, self.config.push_pull_interval);
        self.next_reconnect = self.staggered(now, self.config.reconnect_interval);
    }

    /// A random first firing in `[now, now + period)`; `None` (disabled) for a zero period.
    fn staggered(&mut self, now: Instant, period: Duration) -> Option<Instant> {
        if period.is_zero() {
            return None;
        }
        let nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        Some(now + Duration::from_nanos(self.rng.random_range(0..nanos)))
    }

    /// Push/pull with each seed (`join=true`), memberlist's `Join`.
    pub fn join(&mut self, seeds: &[SocketAddr], now: Instant) -> Vec<Output> {
        self.last_now = now;
        let me = self.config.addr;
        for &seed in seeds.iter().filter(|s| **s != me) {
            let state = self.local_state(true);
            self.out.push(Output::PushPull { to: seed, state });
        }
        self.take_out()
    }

    /// memberlist's `Leave`: declare ourselves dead (`node == from`, read as "left") and
    /// gossip it at once; keep ticking so the broadcast reaches its retransmit limit.
    pub fn leave(&mut self, now: Instant) -> Vec<Output> {
        self.last_now = now;
        if !self.left {
            self.left = true;
            let name = self.config.name.clone();
            let d = Dead {
                incarnation: self.incarnation,
                node: name.clone(),
                from: name,
            };
            self.dead_node(d, now);
            self.gossip(now);
        }
        self.take_out()
    }

    /// Drives timers: probes, probe timeouts, suspicion timeouts, gossip rounds,
    /// push/pull, reconnects and reaping. Call at least every 10-50 ms.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        self.last_now = now;
        self.expire_relays(now);
        self.advance_probe(now);
        self.maybe_start_probe(now);
        self.expire_suspicions(now);
        if due(self.next_gossip, now) {
            self.next_gossip = next_period(self.next_gossip, self.config.gossip_interval, now);
            self.gossip(now);
        }
        if due(self.next_push_pull, now) {
            let period = push_pull_scale(self.config.push_pull_interval, self.order.len());
            self.next_push_pull = Some(now + period);
            self.push_pull_random();
        }
        if due(self.next_reconnect, now) {
            self.next_reconnect =
                next_period(self.next_reconnect, self.config.reconnect_interval, now);
            self.reconnect(now);
        }
        self.take_out()
    }

    /// The earliest instant at which `tick` has something to do.
    pub fn next_deadline(&self) -> Instant {
        let probe_times = match &self.probe {
            Some(p) if !p.indirect_sent => [Some(p.timeout_at), Some(p.deadline)],
            Some(p) => [Some(p.deadline), None],
            None => [self.next_probe, None],
        };
        let timers = [self.next_gossip, self.next_push_pull, self.next_reconnect];
        let suspicions = self.suspicions.values().map(|s| s.deadline);
        let relays = self.relays.values().map(|r| r.expires);
        probe_times
            .into_iter()
            .chain(timers)
            .flatten()
            .chain(suspicions)
            .chain(relays)
            .min()
            .unwrap_or(self.last_now + Duration::from_secs(1))
    }

    /// A UDP packet's messages from `from` (memberlist's `handleCommand` per message).
    pub fn handle_packet(
        &mut self,
        from: SocketAddr,
        messages: Vec<Message>,
        now: Instant,
    ) -> Vec<Output> {
        self.last_now = now;
        for msg in messages {
            self.handle_message(from, msg, now);
        }
        self.take_out()
    }

    fn handle_message(&mut self, from: SocketAddr, msg: Message, now: Instant) {
        match msg {
            Message::Ping(p) => self.handle_ping(from, p),
            Message::IndirectPing(ind) => self.handle_indirect_ping(from, ind, now),
            Message::Ack(ack) => self.handle_ack(ack.seq_no),
            Message::Nack(nack) => self.handle_nack(nack.seq_no),
            Message::Err(e) => tracing::debug!(from = %from, error = %e.error, "gossip peer error"),
            Message::Suspect(s) => self.suspect_node(s, now),
            Message::Alive(a) => self.handle_alive(a, now),
            Message::Dead(d) => self.dead_node(d, now),
            Message::User(payload) => self.handle_user(payload),
        }
    }

    /// An incoming TCP push/pull: answer with our state as it was before merging theirs
    /// (memberlist's `handleConn` sends first, then `mergeRemoteState`).
    pub fn handle_push_pull(
        &mut self,
        from: SocketAddr,
        remote: PushPull,
        now: Instant,
    ) -> (PushPull, Vec<Output>) {
        self.last_now = now;
        tracing::trace!(from = %from, nodes = remote.nodes.len(), join = remote.join, "push/pull in");
        let reply = self.local_state(remote.join);
        self.merge_remote(remote, now);
        (reply, self.take_out())
    }

    /// The answer to our own push/pull (memberlist's `pushPullNode` → `mergeRemoteState`).
    pub fn handle_push_pull_reply(&mut self, remote: PushPull, now: Instant) -> Vec<Output> {
        self.last_now = now;
        self.merge_remote(remote, now);
        self.take_out()
    }

    /// Queue an application broadcast, piggy-backed on gossip after membership messages
    /// (memberlist's `getBroadcasts` asks the delegate second). A newer broadcast with the
    /// same `key` replaces a queued older one. Receivers do not re-gossip user messages
    /// (memberlist hands them to the delegate): the application re-broadcasts news.
    pub fn broadcast_user(&mut self, key: String, payload: Vec<u8>) {
        self.user_broadcasts.queue(key, Message::User(payload));
    }

    /// Application state sent in every push/pull (memberlist's `Delegate.LocalState`).
    pub fn set_local_user_state(&mut self, state: Vec<u8>) {
        self.local_user_state = state;
    }

    /// Non-empty user states received in push/pulls since the last call (oldest first).
    pub fn take_remote_user_states(&mut self) -> Vec<Vec<u8>> {
        self.remote_user_states.drain(..).collect()
    }

    /// `Message::User` payloads received since the last call (oldest first).
    pub fn take_user_messages(&mut self) -> Vec<Vec<u8>> {
        self.user_messages.drain(..).collect()
    }

    /// Every known member, including ourselves and dead members not yet reaped.
    pub fn members(&self) -> Vec<Member> {
        self.order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|e| e.member.clone())
            .collect()
    }

    /// Our node name.
    pub fn local_name(&self) -> &str {
        &self.config.name
    }

    /// Lifeguard awareness: 0 is healthy, higher stretches the probe interval.
    pub fn health_score(&self) -> u32 {
        self.awareness.score
    }

    /// Our current incarnation number.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// Membership and user broadcasts still waiting for transmits (a driver can keep
    /// ticking after `leave` until this reaches zero, as memberlist's `Leave` waits).
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len() + self.user_broadcasts.len()
    }

    fn take_out(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, event: MemberEvent) {
        self.out.push(Output::Event(event));
    }

    fn next_seq(&mut self) -> u32 {
        self.seq_no = self.seq_no.wrapping_add(1);
        self.seq_no
    }

    fn self_ip_bytes(&self) -> Vec<u8> {
        ip_bytes(self.config.addr.ip())
    }

    fn local_alive(&self, incarnation: u32) -> Alive {
        Alive {
            incarnation,
            node: self.config.name.clone(),
            addr: self.self_ip_bytes(),
            port: self.config.addr.port(),
            meta: self.config.meta.clone(),
            vsn: VSN.to_vec(),
        }
    }

    // ---- probing (state.go: probe, probeNode) ----

    fn maybe_start_probe(&mut self, now: Instant) {
        if self.probe.is_some() || !due(self.next_probe, now) {
            return;
        }
        // The Go ticker skips ticks missed while a (health-stretched) probe ran.
        self.next_probe = next_period(self.next_probe, self.config.probe_interval, now);
        self.probe_next_node(now);
    }

    /// `probe`: round-robin over the shuffled list, skipping ourselves and dead nodes,
    /// reaping and reshuffling on wrap-around.
    fn probe_next_node(&mut self, now: Instant) {
        let mut num_check = 0;
        loop {
            if num_check >= self.order.len() {
                return;
            }
            if self.probe_index >= self.order.len() {
                self.reset_nodes(now);
                self.probe_index = 0;
                num_check += 1;
                continue;
            }
            let name = self.order[self.probe_index].clone();
            self.probe_index += 1;
            let skip = name == self.config.name
                || self
                    .nodes
                    .get(&name)
                    .is_none_or(|e| e.member.state.dead_or_left());
            if !skip {
                self.probe_node(name, now);
                return;
            }
            num_check += 1;
        }
    }

    /// `probeNode`, first half: ping (with a suspect message if the node is not alive, so
    /// it can refute at once) and wait `probe_timeout` for an ack.
    fn probe_node(&mut self, name: String, now: Instant) {
        let Some(entry) = self.nodes.get(&name) else {
            return;
        };
        let (addr, state, incarnation) = (
            entry.member.addr,
            entry.member.state,
            entry.member.incarnation,
        );
        let interval = self.awareness.scale(self.config.probe_interval);
        let seq = self.next_seq();
        let ping = Message::Ping(Ping {
            seq_no: seq,
            node: name.clone(),
            source_addr: self.self_ip_bytes(),
            source_port: self.config.addr.port(),
            source_node: self.config.name.clone(),
        });
        if state == MemberState::Alive {
            self.send_msg(addr, ping);
        } else {
            let suspect = Message::Suspect(Suspect {
                incarnation,
                node: name.clone(),
                from: self.config.name.clone(),
            });
            self.out.push(Output::Packet {
                to: addr,
                messages: vec![ping, suspect],
            });
        }
        self.probe = Some(Probe {
            seq,
            node: name,
            incarnation,
            timeout_at: now + self.config.probe_timeout,
            deadline: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
    }

    fn advance_probe(&mut self, now: Instant) {
        let Some(p) = &self.probe else { return };
        if !p.indirect_sent && now >= p.timeout_at {
            self.send_indirect_pings();
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.deadline) {
            self.probe_failed(now);
        }
    }

    /// `probeNode`, second half: ask `indirect_checks` random alive peers to probe for us,
    /// wanting nacks from those that understand protocol 4.
    fn send_indirect_pings(&mut self) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect_sent = true;
        let (seq, target) = (p.seq, p.node.clone());
        let Some(entry) = self.nodes.get(&target) else {
            return;
        };
        let (t_ip, t_port) = (ip_bytes(entry.member.addr.ip()), entry.member.addr.port());
        let me = self.config.name.clone();
        let peers = k_random_nodes(
            &mut self.rng,
            &self.order,
            &self.nodes,
            self.config.indirect_checks,
            |e| {
                e.member.name == me
                    || e.member.name == target
                    || e.member.state != MemberState::Alive
            },
        );
        let mut expected = 0;
        for peer in peers {
            let Some(pe) = self.nodes.get(&peer) else {
                continue;
            };
            let (peer_addr, nack) = (pe.member.addr, pe.pmax() >= 4);
            expected += u32::from(nack);
            let ind = Message::IndirectPing(IndirectPingReq {
                seq_no: seq,
                target: t_ip.clone(),
                port: t_port,
                node: target.clone(),
                nack,
                source_addr: self.self_ip_bytes(),
                source_port: self.config.addr.port(),
                source_node: me.clone(),
            });
            self.send_msg(peer_addr, ind);
        }
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = expected;
        }
    }

    /// `probeNode`'s end: no ack within the probe interval. Missing nacks mean *we* may be
    /// the problem (Lifeguard), so the health score rises by the missing count.
    fn probe_failed(&mut self, now: Instant) {
        let Some(p) = self.probe.take() else { return };
        let delta = if p.expected_nacks > 0 {
            p.expected_nacks.saturating_sub(p.nacks)
        } else {
            1
        };
        self.awareness.apply_delta(i64::from(delta));
        tracing::debug!(node = %p.node, "suspect: no acks received");
        let s = Suspect {
            incarnation: p.incarnation,
            node: p.node,
            from: self.config.name.clone(),
        };
        self.suspect_node(s, now);
    }

    fn handle_ack(&mut self, seq: u32) {
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            // A successful probe improves our health (`awarenessDelta = -1`).
            self.probe = None;
            self.awareness.apply_delta(-1);
            return;
        }
        if let Some(relay) = self.relays.remove(&seq) {
            let ack = Message::Ack(AckResp {
                seq_no: relay.orig_seq,
                payload: Vec::new(),
            });
            self.send_msg(relay.reply_to, ack);
        }
    }

    fn handle_nack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            p.nacks = p.nacks.saturating_add(1).min(p.expected_nacks);
        }
    }

    /// `handlePing`: ack to the advertised source, or to the packet's source.
    fn handle_ping(&mut self, from: SocketAddr, p: Ping) {
        if !p.node.is_empty() && p.node != self.config.name {
            tracing::debug!(node = %p.node, "ping for another node");
            return;
        }
        let reply_to = source_or(&p.source_addr, p.source_port, from);
        let ack = Message::Ack(AckResp {
            seq_no: p.seq_no,
            payload: Vec::new(),
        });
        self.send_msg(reply_to, ack);
    }

    /// `handleIndirectPing`: ping the target with our own sequence number, relay its ack,
    /// and send a nack if none came within `probe_timeout`.
    fn handle_indirect_ping(&mut self, from: SocketAddr, ind: IndirectPingReq, now: Instant) {
        let port = if ind.port == 0 {
            self.config.addr.port()
        } else {
            ind.port
        };
        let Some(target) = socket_addr(&ind.target, port) else {
            return;
        };
        if self.relays.len() >= MAX_RELAYS {
            tracing::warn!("too many indirect pings in flight; dropping one");
            return;
        }
        let local_seq = self.next_seq();
        self.relays.insert(
            local_seq,
            Relay {
                orig_seq: ind.seq_no,
                reply_to: source_or(&ind.source_addr, ind.source_port, from),
                nack: ind.nack,
                expires: now + self.config.probe_timeout,
            },
        );
        let ping = Message::Ping(Ping {
            seq_no: local_seq,
            node: ind.node,
            source_addr: self.self_ip_bytes(),
            source_port: self.config.addr.port(),
            source_node: self.config.name.clone(),
        });
        self.send_msg(target, ping);
    }

    fn expire_relays(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            let Some(relay) = self.relays.remove(&seq) else {
                continue;
            };
            if relay.nack {
                let nack = Message::Nack(NackResp {
                    seq_no: relay.orig_seq,
                });
                self.send_msg(relay.reply_to, nack);
            }
        }
    }

    // ---- state changes (state.go: aliveNode, suspectNode, deadNode, refute) ----

    /// `handleAlive`: port 0 means "the configured port" (protocol < 2).
    fn handle_alive(&mut self, mut a: Alive, now: Instant) {
        if a.port == 0 {
            a.port = self.config.addr.port();
        }
        self.alive_node(a, false, now);
    }

    /// `aliveNode`: learn a node, or accept a newer incarnation of it; about ourselves,
    /// refute anything but our own exact current state.
    fn alive_node(&mut self, a: Alive, bootstrap: bool, now: Instant) {
        let is_local = a.node == self.config.name;
        if (self.left && is_local) || !alive_is_sane(&a) {
            return;
        }
        let Some(addr) = socket_addr(&a.addr, a.port) else {
            return;
        };
        let Some(updates_node) = self.admit_alive(&a, addr, now) else {
            return;
        };
        let Some(entry) = self.nodes.get(&a.node) else {
            return;
        };
        let current = entry.member.incarnation;
        if a.incarnation <= current && !is_local && !updates_node {
            return;
        }
        if a.incarnation < current && is_local {
            return;
        }
        self.suspicions.remove(&a.node);
        if !bootstrap && is_local {
            let same =
                a.incarnation == current && a.meta == entry.member.meta && a.vsn == entry.vsn;
            if !same {
                tracing::warn!(
                    incarnation = a.incarnation,
                    "refuting an alive message about us"
                );
                self.refute(a.incarnation);
            }
            return;
        }
        self.accept_alive(a, addr, now);
    }

    /// `aliveNode`'s lookup: add an unknown node (as dead, so the update below notifies a
    /// join), or check an address change. `Some(updates_node)` to go on, `None` to drop.
    fn admit_alive(&mut self, a: &Alive, addr: SocketAddr, now: Instant) -> Option<bool> {
        let Some(entry) = self.nodes.get(&a.node) else {
            if self.nodes.len() >= self.config.max_members {
                tracing::warn!(node = %a.node, "member limit reached; ignoring new node");
                return None;
            }
            self.insert_node(a, addr, now);
            return Some(false);
        };
        if entry.member.addr == addr {
            return Some(false);
        }
        let reclaim = self.config.dead_node_reclaim_time;
        let can_reclaim = !reclaim.is_zero()
            && now.saturating_duration_since(entry.member.state_change) > reclaim;
        let state = entry.member.state;
        if state == MemberState::Left || (state == MemberState::Dead && can_reclaim) {
            return Some(true);
        }
        tracing::warn!(node = %a.node, mine = %entry.member.addr, theirs = %addr, "conflicting address");
        None
    }

    /// Add at a random offset of the probe order so new nodes are probed soon on average.
    fn insert_node(&mut self, a: &Alive, addr: SocketAddr, now: Instant) {
        let member = Member {
            name: a.node.clone(),
            addr,
            meta: a.meta.clone(),
            incarnation: 0,
            state: MemberState::Dead,
            state_change: now,
        };
        let vsn = a.vsn.clone();
        self.nodes.insert(a.node.clone(), NodeEntry { member, vsn });
        let n = self.order.len();
        let offset = if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        };
        self.order.push(a.node.clone());
        self.order.swap(offset, n);
    }

    /// `aliveNode`'s update of another node: re-gossip, store, notify.
    fn accept_alive(&mut self, a: Alive, addr: SocketAddr, now: Instant) {
        let name = a.node.clone();
        self.broadcasts
            .queue(name.clone(), Message::Alive(a.clone()));
        self.failed.remove(&name);
        let Some(entry) = self.nodes.get_mut(&name) else {
            return;
        };
        let (old_state, old_meta) = (entry.member.state, entry.member.meta.clone());
        if a.vsn.len() >= 6 {
            entry.vsn = a.vsn;
        }
        entry.member.incarnation = a.incarnation;
        entry.member.meta = a.meta;
        entry.member.addr = addr;
        if entry.member.state != MemberState::Alive {
            entry.member.state = MemberState::Alive;
            entry.member.state_change = now;
        }
        let member = entry.member.clone();
        if old_state.dead_or_left() {
            self.emit(MemberEvent::Joined(member));
        } else if old_meta != member.meta {
            self.emit(MemberEvent::Updated(member));
        }
    }

    /// `suspectNode`: confirm a running suspicion, refute one about us, or start one.
    fn suspect_node(&mut self, s: Suspect, now: Instant) {
        if s.from.len() > MAX_NAME_LEN {
            return;
        }
        let Some(entry) = self.nodes.get(&s.node) else {
            return;
        };
        if s.incarnation < entry.member.incarnation {
            self.answer_stale_accusation(&s.node, &s.from);
            return;
        }
        let newer_round = s.incarnation > entry.member.incarnation;
        if let Some(timer) = self.suspicions.get_mut(&s.node) {
            // New independent confirmations are re-gossiped so they reach the others.
            // (Departure: a suspicion of a *newer* incarnation proves the node refuted the
            // round we are timing, so it restarts our timer instead of confirming it.)
            if !newer_round {
                if timer.confirm(&s.from) {
                    self.nudge_suspect(&s.node);
                    self.broadcasts.queue(s.node.clone(), Message::Suspect(s));
                }
                return;
            }
            self.suspicions.remove(&s.node);
            self.broadcasts
                .queue(s.node.clone(), Message::Suspect(s.clone()));
            self.start_suspicion(s, now);
            return;
        }
        if entry.member.state != MemberState::Alive {
            return;
        }
        if s.node == self.config.name {
            tracing::warn!(from = %s.from, "refuting a suspect message");
            self.refute(s.incarnation);
            return;
        }
        self.broadcasts
            .queue(s.node.clone(), Message::Suspect(s.clone()));
        self.start_suspicion(s, now);
    }

    fn start_suspicion(&mut self, s: Suspect, now: Instant) {
        let n = self.order.len();
        let Some(entry) = self.nodes.get_mut(&s.node) else {
            return;
        };
        entry.member.incarnation = s.incarnation;
        entry.member.state = MemberState::Suspect;
        entry.member.state_change = now;
        // k confirmations drive the timer to its minimum two probe intervals early; with
        // fewer than k other nodes (n - 2: not us, not the suspect) expect none.
        let mut k = self.config.suspicion_mult.saturating_sub(2);
        if n.saturating_sub(2) < k as usize {
            k = 0;
        }
        let min = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval);
        let max = min.saturating_mul(self.config.suspicion_max_timeout_mult);
        self.suspicions
            .insert(s.node.clone(), Suspicion::new(&s.from, k, min, max, now));
        self.nudge_suspect(&s.node);
        self.emit(MemberEvent::Suspected(s.node));
    }

    /// Departure: Lifeguard's buddy system, which memberlist applies only when *probing* a
    /// suspect, applied whenever we start or shorten a suspicion timer. The suspect gets
    /// our accusation directly, so it can refute to us (or, having refuted already, send
    /// us its newer `alive`) instead of relying on gossip alone to reach us in time.
    fn nudge_suspect(&mut self, name: &str) {
        let Some(entry) = self.nodes.get(name) else {
            return;
        };
        let (to, incarnation) = (entry.member.addr, entry.member.incarnation);
        let suspect = Suspect {
            incarnation,
            node: name.to_string(),
            from: self.config.name.clone(),
        };
        self.send_msg(to, Message::Suspect(suspect));
    }

    /// The suspicion timer's callback: still suspect (and not re-suspected since) → dead.
    fn expire_suspicions(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .suspicions
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let Some(sus) = self.suspicions.remove(&name) else {
                continue;
            };
            let Some(entry) = self.nodes.get(&name) else {
                continue;
            };
            if entry.member.state != MemberState::Suspect || entry.member.state_change != sus.start
            {
                continue;
            }
            tracing::info!(node = %name, confirmations = sus.n, "suspect timeout reached; marking dead");
            let d = Dead {
                incarnation: entry.member.incarnation,
                node: name,
                from: self.config.name.clone(),
            };
            self.dead_node(d, now);
        }
    }

    /// `deadNode`: mark dead (or left when it says so itself); refute if it is about us
    /// and we are not leaving.
    fn dead_node(&mut self, d: Dead, now: Instant) {
        let Some(entry) = self.nodes.get(&d.node) else {
            return;
        };
        if d.incarnation < entry.member.incarnation {
            self.answer_stale_accusation(&d.node, &d.from);
            return;
        }
        self.suspicions.remove(&d.node);
        if entry.member.state.dead_or_left() {
            return;
        }
        let is_local = d.node == self.config.name;
        if is_local && !self.left {
            tracing::warn!(from = %d.from, "refuting a dead message");
            self.refute(d.incarnation);
            return;
        }
        self.broadcasts
            .queue(d.node.clone(), Message::Dead(d.clone()));
        let left = d.node == d.from;
        let Some(entry) = self.nodes.get_mut(&d.node) else {
            return;
        };
        entry.member.incarnation = d.incarnation;
        entry.member.state = if left {
            MemberState::Left
        } else {
            MemberState::Dead
        };
        entry.member.state_change = now;
        let addr = entry.member.addr;
        if left {
            self.failed.remove(&d.node);
            self.emit(MemberEvent::Left(d.node));
        } else {
            self.remember_failed(&d.node, addr, now);
            self.emit(MemberEvent::Died(d.node));
        }
    }

    /// Departure from memberlist, which ignores accusations of an older incarnation: when
    /// one is about us, tell the accuser our current `alive` directly. It missed our
    /// refutation (gossip is probabilistic) and would otherwise keep timing a stale
    /// suspicion until push/pull repairs it. Costs at most one packet per accusation.
    fn answer_stale_accusation(&mut self, node: &str, from: &str) {
        if node != self.config.name || from == self.config.name || self.left {
            return;
        }
        let Some(to) = self.nodes.get(from).map(|e| e.member.addr) else {
            return;
        };
        let alive = self.local_alive(self.incarnation);
        self.send_msg(to, Message::Alive(alive));
    }

    /// `refute`: take an incarnation above the accusation, lose a health point (being
    /// accused hints that we are slow), and gossip that we are alive.
    fn refute(&mut self, accused: u32) {
        let mut inc = self.incarnation.saturating_add(1);
        if accused >= inc {
            inc = accused.saturating_add(1);
        }
        self.incarnation = inc;
        if let Some(me) = self.nodes.get_mut(&self.config.name) {
            me.member.incarnation = inc;
        }
        self.awareness.apply_delta(1);
        let alive = self.local_alive(inc);
        self.broadcasts
            .queue(self.config.name.clone(), Message::Alive(alive));
    }

    // ---- push/pull (net.go: sendLocalState, mergeRemoteState; state.go: mergeState) ----

    fn local_state(&self, join: bool) -> PushPull {
        let nodes = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|e| PushNodeState {
                name: e.member.name.clone(),
                addr: ip_bytes(e.member.addr.ip()),
                port: e.member.addr.port(),
                meta: e.member.meta.clone(),
                incarnation: e.member.incarnation,
                state: e.member.state.to_wire(),
                vsn: e.vsn.clone(),
            })
            .collect();
        PushPull {
            join,
            nodes,
            user_state: self.local_user_state.clone(),
        }
    }

    fn merge_remote(&mut self, remote: PushPull, now: Instant) {
        let limit = self.config.max_members;
        self.merge_state(remote.nodes.into_iter().take(limit), now);
        if !remote.user_state.is_empty() {
            if self.remote_user_states.len() >= MAX_PENDING_USER_STATES {
                self.remote_user_states.pop_front();
            }
            self.remote_user_states.push_back(remote.user_state);
        }
    }

    /// `mergeState`: alive → `aliveNode`, left → `deadNode` from itself, and dead or
    /// suspect → only *suspect* it ourselves (a remote death claim gets a chance to be
    /// refuted instead of being trusted instantly).
    fn merge_state(&mut self, remote: impl Iterator<Item = PushNodeState>, now: Instant) {
        for r in remote {
            match r.state {
                NodeState::Alive => {
                    let a = Alive {
                        incarnation: r.incarnation,
                        node: r.name,
                        addr: r.addr,
                        port: r.port,
                        meta: r.meta,
                        vsn: r.vsn,
                    };
                    self.alive_node(a, false, now);
                }
                NodeState::Left => {
                    let d = Dead {
                        incarnation: r.incarnation,
                        node: r.name.clone(),
                        from: r.name,
                    };
                    self.dead_node(d, now);
                }
                NodeState::Dead | NodeState::Suspect => {
                    let s = Suspect {
                        incarnation: r.incarnation,
                        node: r.name,
                        from: self.config.name.clone(),
                    };
                    self.suspect_node(s, now);
                }
            }
        }
    }

    /// `pushPull`: a full state exchange with one random alive member.
    fn push_pull_random(&mut self) {
        let me = self.config.name.clone();
        let picked = k_random_nodes(&mut self.rng, &self.order, &self.nodes, 1, |e| {
            e.member.name == me || e.member.state != MemberState::Alive
        });
        let Some(addr) = picked
            .first()
            .and_then(|n| self.nodes.get(n))
            .map(|e| e.member.addr)
        else {
            return;
        };
        let state = self.local_state(false);
        self.out.push(Output::PushPull { to: addr, state });
    }

    // ---- gossip (state.go: gossip; broadcast.go: getBroadcasts; net.go: sendMsg) ----

    /// `gossip`: queued broadcasts to a few random live, suspect or recently dead members.
    fn gossip(&mut self, now: Instant) {
        let me = self.config.name.clone();
        let to_the_dead = self.config.gossip_to_the_dead;
        let targets = k_random_nodes(
            &mut self.rng,
            &self.order,
            &self.nodes,
            self.config.gossip_nodes,
            |e| {
                if e.member.name == me {
                    return true;
                }
                match e.member.state {
                    MemberState::Alive | MemberState::Suspect => false,
                    MemberState::Dead => {
                        now.saturating_duration_since(e.member.state_change) > to_the_dead
                    }
                    MemberState::Left => true,
                }
            },
        );
        let avail = self
            .config
            .udp_buffer_size
            .saturating_sub(COMPOUND_HEADER_OVERHEAD);
        for name in targets {
            let Some(addr) = self.nodes.get(&name).map(|e| e.member.addr) else {
                continue;
            };
            let messages = self.get_broadcasts(COMPOUND_OVERHEAD, avail);
            if messages.is_empty() {
                return;
            }
            self.out.push(Output::Packet { to: addr, messages });
        }
    }

    /// `getBroadcasts`: membership broadcasts first, user broadcasts in what is left.
    fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Message> {
        let transmit_limit = retransmit_limit(self.config.retransmit_mult, self.order.len());
        let mut msgs = self
            .broadcasts
            .get_broadcasts(overhead, limit, transmit_limit);
        let used: usize = msgs.iter().map(|m| estimated_len(m) + overhead).sum();
        let avail = limit.saturating_sub(used);
        if avail > overhead + USER_MSG_OVERHEAD {
            msgs.extend(
                self.user_broadcasts
                    .get_broadcasts(overhead, avail, transmit_limit),
            );
        }
        msgs
    }

    /// `sendMsg`: one message plus whatever broadcasts fit in the rest of the packet.
    fn send_msg(&mut self, to: SocketAddr, msg: Message) {
        let avail = self
            .config
            .udp_buffer_size
            .saturating_sub(estimated_len(&msg) + COMPOUND_HEADER_OVERHEAD);
        let mut messages = vec![msg];
        messages.extend(self.get_broadcasts(COMPOUND_OVERHEAD, avail));
        self.out.push(Output::Packet { to, messages });
    }

    fn handle_user(&mut self, payload: Vec<u8>) {
        if self.user_messages.len() >= MAX_PENDING_USER_MESSAGES {
            tracing::warn!("user message backlog full; dropping the oldest");
            self.user_messages.pop_front();
        }
        self.user_messages.push_back(payload);
    }

    // ---- reaping and reconnects ----

    /// `resetNodes`: drop members dead or left for longer than `gossip_to_the_dead`, then
    /// reshuffle the probe order. We never reap ourselves.
    fn reset_nodes(&mut self, now: Instant) {
        let to_the_dead = self.config.gossip_to_the_dead;
        let me = &self.config.name;
        let reaped: Vec<String> = self
            .order
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .filter(|e| {
                e.member.name != *me
                    && e.member.state.dead_or_left()
                    && now.saturating_duration_since(e.member.state_change) > to_the_dead
            })
            .map(|e| e.member.name.clone())
            .collect();
        for name in &reaped {
            self.nodes.remove(name);
            self.suspicions.remove(name);
        }
        let nodes = &self.nodes;
        self.order.retain(|n| nodes.contains_key(n));
        self.order.shuffle(&mut self.rng);
    }

    fn remember_failed(&mut self, name: &str, addr: SocketAddr, now: Instant) {
        if self.failed.len() >= self.config.max_members && !self.failed.contains_key(name) {
            return;
        }
        self.failed
            .insert(name.to_string(), Failed { addr, since: now });
    }

    /// serf's `reconnect`: join a random failed member with probability
    /// failed / alive, so the cluster as a whole tries each failed member about once per
    /// interval; this is what heals a partition after both sides declared the other dead.
    fn reconnect(&mut self, now: Instant) {
        let timeout = self.config.reconnect_timeout;
        self.failed
            .retain(|_, f| now.saturating_duration_since(f.since) <= timeout);
        // A node that left must not pull itself back into the cluster.
        if self.failed.is_empty() || self.left {
            return;
        }
        let alive = self
            .nodes
            .values()
            .filter(|e| !e.member.state.dead_or_left())
            .count()
            .max(1);
        let prob = self.failed.len() as f64 / alive as f64;
        if self.rng.random::<f64>() > prob {
            return;
        }
        let idx = self.rng.random_range(0..self.failed.len());
        let Some(addr) = self.failed.values().nth(idx).map(|f| f.addr) else {
            return;
        };
        let state = self.local_state(true);
        self.out.push(Output::PushPull { to: addr, state });
    }
}

fn due(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|t| now >= t)
}

/// The first period boundary after `now`, skipping missed ones like a Go ticker.
fn next_period(prev: Option<Instant>, period: Duration, now: Instant) -> Option<Instant> {
    let prev = prev?;
    if period.is_zero() {
        return None;
    }
    let behind = now.saturating_duration_since(prev).as_nanos();
    let steps = behind / period.as_nanos() + 1;
    let steps = u32::try_from(steps).unwrap_or(u32::MAX);
    Some(prev + period.saturating_mul(steps))
}

/// memberlist's `kRandomNodes`: up to `k` distinct non-excluded members; exhaustive by
/// shuffling when the list is small, else up to `3n` random picks.
fn k_random_nodes(
    rng: &mut StdRng,
    order: &[String],
    nodes: &BTreeMap<String, NodeEntry>,
    k: usize,
    exclude: impl Fn(&NodeEntry) -> bool,
) -> Vec<String> {
    let n = order.len();
    let mut picked: Vec<String> = Vec::with_capacity(k);
    let keep = |name: &String| nodes.get(name).is_some_and(|e| !exclude(e));
    if n < k.saturating_mul(3) {
        let mut shuffled: Vec<&String> = order.iter().collect();
        shuffled.shuffle(rng);
        picked.extend(
            shuffled
                .into_iter()
                .filter(|name| keep(name))
                .take(k)
                .cloned(),
        );
        return picked;
    }
    for _ in 0..3 * n {
        if picked.len() >= k {
            break;
        }
        let name = &order[rng.random_range(0..n)];
        if keep(name) && !picked.contains(name) {
            picked.push(name.clone());
        }
    }
    picked
}

/// Bounds on what an alive message may carry, plus `aliveNode`'s version sanity check.
fn alive_is_sane(a: &Alive) -> bool {
    if a.node.is_empty() || a.node.len() > MAX_NAME_LEN || a.meta.len() > META_MAX_SIZE {
        return false;
    }
    if a.vsn.len() >= 3 {
        let (pmin, pmax) = (a.vsn[0], a.vsn[1]);
        if pmin == 0 || pmax == 0 || pmin > pmax {
            tracing::warn!(node = %a.node, "ignoring alive message with bad protocol versions");
            return false;
        }
    }
    true
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// An address from memberlist's raw IP bytes (4 or 16) and port; anything else is `None`.
fn socket_addr(ip: &[u8], port: u16) -> Option<SocketAddr> {
    let ip = match ip.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The advertised source when present (`SourceAddr`/`SourcePort`), else the packet's.
fn source_or(addr: &[u8], port: u16, from: SocketAddr) -> SocketAddr {
    if port == 0 {
        return from;
    }
    socket_addr(addr, port).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7946))
    }

    fn node(i: u8, now: Instant) -> Swim {
        let mut cfg = SwimConfig::lan(format!("n{i}"), addr(i));
        cfg.rng_seed = Some(u64::from(i));
        Swim::new(cfg, now)
    }

    /// `s` hears `alive` (incarnation 1) from n2 up to n`last`.
    fn hear_alive(s: &mut Swim, last: u8, now: Instant) {
        for i in 2..=last {
            s.handle_packet(
                addr(i),
                vec![Message::Alive(alive_msg(&format!("n{i}"), i, 1))],
                now,
            );
        }
    }

    fn suspect(incarnation: u32, node: &str, from: &str) -> Suspect {
        Suspect {
            incarnation,
            node: node.into(),
            from: from.into(),
        }
    }

    fn alive_msg(name: &str, i: u8, inc: u32) -> Alive {
        Alive {
            incarnation: inc,
            node: name.to_string(),
            addr: vec![10, 0, 0, i],
            port: 7946,
            meta: Vec::new(),
            vsn: VSN.to_vec(),
        }
    }

    fn member<'a>(members: &'a [Member], name: &str) -> &'a Member {
        members
            .iter()
            .find(|m| m.name == name)
            .expect("member present")
    }

    fn queued_about(s: &Swim, name: &str) -> Vec<Message> {
        s.broadcasts
            .items
            .iter()
            .filter(|q| q.name == name)
            .map(|q| q.msg.clone())
            .collect()
    }

    fn push_state(name: &str, i: u8, inc: u32, state: NodeState) -> PushNodeState {
        PushNodeState {
            name: name.to_string(),
            addr: vec![10, 0, 0, i],
            port: 7946,
            meta: Vec::new(),
            incarnation: inc,
            state,
            vsn: VSN.to_vec(),
        }
    }

    #[test]
    fn new_node_is_alive_at_incarnation_one() {
        let s = node(1, Instant::now());
        let me = member(&s.members(), "n1").clone();
        assert_eq!((me.state, me.incarnation), (MemberState::Alive, 1));
        assert_eq!(s.local_name(), "n1");
    }

    #[test]
    fn refutation_bumps_incarnation_past_the_accusation() {
        let now = Instant::now();
        let mut s = node(1, now);
        let sus = suspect(1, "n1", "n2");
        s.handle_packet(addr(2), vec![Message::Suspect(sus)], now);
        assert_eq!(s.incarnation(), 2);
        assert_eq!(member(&s.members(), "n1").state, MemberState::Alive);
        assert!(matches!(&queued_about(&s, "n1")[..], [Message::Alive(a)] if a.incarnation == 2));
        assert_eq!(s.health_score(), 1, "refuting costs a health point");

        let dead = Dead {
            incarnation: 7,
            node: "n1".into(),
            from: "n3".into(),
        };
        s.handle_packet(addr(3), vec![Message::Dead(dead)], now);
        assert_eq!(s.incarnation(), 8);
        assert_eq!(member(&s.members(), "n1").state, MemberState::Alive);

        // An accusation about an older incarnation is ignored.
        let old = suspect(3, "n1", "n2");
        s.handle_packet(addr(2), vec![Message::Suspect(old)], now);
        assert_eq!(s.incarnation(), 8);
    }

    #[test]
    fn suspicion_timeout_matches_memberlist() {
        let sec = Duration::from_secs(1);
        // DefaultLANConfig: SuspicionMult 4, ProbeInterval 1 s.
        assert_eq!(suspicion_timeout(4, 1, sec), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 10, sec), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 50, sec), Duration::from_millis(6792));
        // memberlist's TestSuspicionTimeout table (mult 3, divided by 3).
        for (n, ms) in [
            (5, 1000),
            (10, 1000),
            (50, 1698),
            (100, 2000),
            (500, 2698),
            (1000, 3000),
        ] {
            assert_eq!(
                suspicion_timeout(3, n, sec) / 3,
                Duration::from_millis(ms),
                "n = {n}"
            );
        }
        // Max is SuspicionMaxTimeoutMult (6) × min.
        assert_eq!(
            suspicion_timeout(4, 50, sec) * 6,
            Duration::from_millis(40_752)
        );
    }

    #[test]
    fn confirmations_shorten_the_suspicion_timeout() {
        // memberlist's TestSuspicion_remainingSuspicionTime (k 3, 2 s .. 30 s) + elapsed.
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(30));
        let total = |n| suspicion_total_timeout(n, 3, min, max);
        assert_eq!(total(0), Duration::from_secs(30));
        assert_eq!(total(1), Duration::from_secs(16));
        assert_eq!(total(2), Duration::from_millis(7810));
        assert_eq!(total(3), min);
        assert_eq!(total(4), min);

        // Through the state machine: 50 known nodes, k = 2, min 6.792 s, max 40.752 s.
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 50, now);
        let accuse = |from: &str| Message::Suspect(suspect(1, "n2", from));
        s.handle_packet(addr(3), vec![accuse("n3")], now);
        let deadline = |s: &Swim| s.suspicions["n2"].deadline - now;
        assert_eq!(deadline(&s), Duration::from_millis(40_752));
        s.handle_packet(addr(3), vec![accuse("n3")], now); // the accuser never confirms
        assert_eq!(deadline(&s), Duration::from_millis(40_752));
        s.handle_packet(addr(4), vec![accuse("n4")], now);
        assert_eq!(deadline(&s), Duration::from_millis(19_325));
        s.handle_packet(addr(5), vec![accuse("n5")], now);
        assert_eq!(deadline(&s), Duration::from_millis(6792));

        // The timer fires into a dead declaration.
        let out = s.tick(now + Duration::from_millis(6792));
        assert!(out.contains(&Output::Event(MemberEvent::Died("n2".into()))));
        assert_eq!(member(&s.members(), "n2").state, MemberState::Dead);
    }

    #[test]
    fn newer_broadcast_about_a_node_replaces_the_older() {
        let mut q = TransmitLimitedQueue::default();
        let sus = Message::Suspect(suspect(1, "m1", "x"));
        let alive = Message::Alive(alive_msg("m1", 9, 2));
        q.queue("m1".into(), sus);
        q.queue("other".into(), Message::User(b"hello".to_vec()));
        q.queue("m1".into(), alive.clone());
        assert_eq!(q.len(), 2);
        let sent = q.get_broadcasts(COMPOUND_OVERHEAD, 1400, 10);
        assert_eq!(sent.len(), 2);
        assert!(sent.contains(&alive));
        assert!(!sent.iter().any(|m| matches!(m, Message::Suspect(_))));

        // Same through the state machine: alive (inc 2) replaces our suspect broadcast.
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 4, now);
        let sus = suspect(1, "n2", "n3");
        s.handle_packet(addr(3), vec![Message::Suspect(sus)], now);
        assert!(matches!(&queued_about(&s, "n2")[..], [Message::Suspect(_)]));
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 2))], now);
        assert!(matches!(&queued_about(&s, "n2")[..], [Message::Alive(a)] if a.incarnation == 2));
    }

    #[test]
    fn retransmit_limit_is_respected() {
        assert_eq!(retransmit_limit(3, 0), 0);
        assert_eq!(retransmit_limit(3, 1), 3);
        assert_eq!(retransmit_limit(3, 99), 6);
        assert_eq!(retransmit_limit(4, 50), 8);

        let mut q = TransmitLimitedQueue::default();
        q.queue("k".into(), Message::User(vec![1; 10]));
        let mut sends = 0;
        for _ in 0..20 {
            sends += q.get_broadcasts(COMPOUND_OVERHEAD, 1400, 8).len();
        }
        assert_eq!(sends, 8);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn broadcasts_fit_the_packet_budget_fewest_transmits_first() {
        let mut q = TransmitLimitedQueue::default();
        for i in 0..10u8 {
            q.queue(format!("k{i}"), Message::User(vec![i; 300]));
        }
        let first = q.get_broadcasts(COMPOUND_OVERHEAD, 1398, 100);
        let bytes: usize = first
            .iter()
            .map(|m| estimated_len(m) + COMPOUND_OVERHEAD)
            .sum();
        assert_eq!(first.len(), 4);
        assert!(bytes <= 1398);
        // The next packet prefers the six never-sent broadcasts.
        let second = q.get_broadcasts(COMPOUND_OVERHEAD, 1398, 100);
        assert_eq!(second.len(), 4);
        assert!(second.iter().all(|m| !first.contains(m)));
        assert_eq!(q.items.iter().filter(|i| i.transmits == 0).count(), 2);
    }

    #[test]
    fn merge_alive_with_higher_incarnation_wins() {
        let now = Instant::now();
        let mut s = node(1, now);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 3))], now);
        let sus = suspect(3, "n2", "n3");
        s.handle_packet(addr(3), vec![Message::Suspect(sus)], now);
        assert_eq!(member(&s.members(), "n2").state, MemberState::Suspect);

        let same = PushPull {
            join: false,
            nodes: vec![push_state("n2", 2, 3, NodeState::Alive)],
            user_state: vec![],
        };
        s.handle_push_pull_reply(same, now);
        assert_eq!(
            member(&s.members(), "n2").state,
            MemberState::Suspect,
            "equal incarnation loses"
        );

        let newer = PushPull {
            join: false,
            nodes: vec![
                push_state("n2", 2, 4, NodeState::Alive),
                push_state("n5", 5, 1, NodeState::Alive),
            ],
            user_state: b"registry".to_vec(),
        };
        let out = s.handle_push_pull_reply(newer, now);
        let n2 = member(&s.members(), "n2").clone();
        assert_eq!((n2.state, n2.incarnation), (MemberState::Alive, 4));
        assert_eq!(member(&s.members(), "n5").state, MemberState::Alive);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Event(MemberEvent::Joined(m)) if m.name == "n5"))
        );
        assert_eq!(s.take_remote_user_states(), vec![b"registry".to_vec()]);
        assert!(s.suspicions.is_empty(), "alive clears the suspicion timer");
    }

    #[test]
    fn merge_suspect_or_dead_of_us_triggers_refute() {
        let now = Instant::now();
        let mut s = node(1, now);
        let remote = PushPull {
            join: true,
            nodes: vec![push_state("n1", 1, 1, NodeState::Suspect)],
            user_state: vec![],
        };
        let (reply, _) = s.handle_push_pull(addr(2), remote, now);
        assert!(reply.join);
        assert_eq!(
            reply.nodes[0].incarnation, 1,
            "reply is our state before the merge"
        );
        assert_eq!(s.incarnation(), 2);

        let remote = PushPull {
            join: false,
            nodes: vec![push_state("n1", 1, 5, NodeState::Dead)],
            user_state: vec![],
        };
        s.handle_push_pull_reply(remote, now);
        assert_eq!(s.incarnation(), 6);
        assert_eq!(member(&s.members(), "n1").state, MemberState::Alive);
    }

    #[test]
    fn stale_accusation_gets_a_direct_alive_reply() {
        let now = Instant::now();
        let mut s = node(1, now);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 1))], now);
        s.handle_packet(addr(3), vec![Message::Alive(alive_msg("n3", 3, 1))], now);
        let accuse = suspect(1, "n1", "n2");
        s.handle_packet(addr(3), vec![Message::Suspect(accuse.clone())], now);
        assert_eq!(s.incarnation(), 2);
        // n2 missed the refutation and accuses incarnation 1 again (relayed by n3).
        let out = s.handle_packet(addr(3), vec![Message::Suspect(accuse)], now);
        assert_eq!(s.incarnation(), 2, "no second bump");
        let reply = out.iter().any(|o| {
            matches!(o, Output::Packet { to, messages }
            if *to == addr(2) && matches!(&messages[0], Message::Alive(a) if a.incarnation == 2))
        });
        assert!(reply, "the stale accuser hears our current alive: {out:?}");
    }

    #[test]
    fn starting_a_suspicion_nudges_the_suspect() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 5, now);
        let sus = suspect(1, "n2", "n3");
        let out = s.handle_packet(addr(3), vec![Message::Suspect(sus)], now);
        let nudged = out.iter().any(|o| {
            matches!(o, Output::Packet { to, messages }
            if *to == addr(2) && matches!(&messages[0], Message::Suspect(x) if x.from == "n1"))
        });
        assert!(nudged, "{out:?}");
    }

    #[test]
    fn suspicion_of_a_newer_incarnation_restarts_the_timer() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 50, now);
        let accuse = |inc: u32, from: &str| Message::Suspect(suspect(inc, "n2", from));
        s.handle_packet(addr(3), vec![accuse(1, "n3"), accuse(1, "n4")], now);
        assert_eq!(
            s.suspicions["n2"].deadline - now,
            Duration::from_millis(19_325)
        );
        // n2 refuted (we missed it) and is suspected again at incarnation 2: a fresh round,
        // not a confirmation that would fire our stale timer at once.
        let later = now + Duration::from_secs(20);
        s.handle_packet(addr(5), vec![accuse(2, "n5")], later);
        assert_eq!(
            s.suspicions["n2"].deadline - later,
            Duration::from_millis(40_752)
        );
        assert_eq!(member(&s.members(), "n2").incarnation, 2);
        s.tick(later + Duration::from_millis(10));
        assert_eq!(member(&s.members(), "n2").state, MemberState::Suspect);
    }

    #[test]
    fn merge_dead_of_another_only_suspects_it() {
        let now = Instant::now();
        let mut s = node(1, now);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 1))], now);
        let remote = PushPull {
            join: false,
            nodes: vec![push_state("n2", 2, 1, NodeState::Dead)],
            user_state: vec![],
        };
        let out = s.handle_push_pull_reply(remote, now);
        assert_eq!(member(&s.members(), "n2").state, MemberState::Suspect);
        assert!(out.contains(&Output::Event(MemberEvent::Suspected("n2".into()))));
    }

    #[test]
    fn failed_probe_goes_indirect_then_suspects() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 5, now);
        // Find the first probe.
        let mut t = now;
        let ping_to = loop {
            t += Duration::from_millis(10);
            let out = s.tick(t);
            let ping = out.iter().find_map(|o| match o {
                Output::Packet { to, messages } if matches!(messages[0], Message::Ping(_)) => {
                    Some(*to)
                }
                _ => None,
            });
            if let Some(to) = ping {
                break to;
            }
        };
        let probe_start = t;
        let out = s.tick(probe_start + Duration::from_millis(500));
        let indirect: Vec<_> = out
            .iter()
            .filter(|o| matches!(o, Output::Packet { messages, .. } if matches!(messages[0], Message::IndirectPing(_))))
            .collect();
        assert_eq!(indirect.len(), 3, "IndirectChecks peers asked");
        let out = s.tick(probe_start + Duration::from_secs(1));
        let target = s
            .members()
            .into_iter()
            .find(|m| m.addr == ping_to)
            .expect("target");
        assert_eq!(target.state, MemberState::Suspect);
        assert!(out.contains(&Output::Event(MemberEvent::Suspected(target.name.clone()))));
        // Three expected nacks, none came: Lifeguard adds 3.
        assert_eq!(s.health_score(), 3);
    }

    #[test]
    fn ack_completes_the_probe_and_heals() {
        let now = Instant::now();
        let mut s = node(1, now);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 1))], now);
        s.awareness.apply_delta(2);
        let mut t = now;
        let seq = loop {
            t += Duration::from_millis(10);
            let seq = s.tick(t).iter().find_map(|o| match o {
                Output::Packet { messages, .. } => messages.iter().find_map(|m| match m {
                    Message::Ping(p) => Some(p.seq_no),
                    _ => None,
                }),
                _ => None,
            });
            if let Some(seq) = seq {
                break seq;
            }
        };
        s.handle_packet(
            addr(2),
            vec![Message::Ack(AckResp {
                seq_no: seq,
                payload: vec![],
            })],
            t,
        );
        assert_eq!(s.health_score(), 1);
        s.tick(t + Duration::from_secs(3));
        assert_eq!(member(&s.members(), "n2").state, MemberState::Alive);
    }

    #[test]
    fn indirect_ping_is_relayed_or_nacked() {
        let now = Instant::now();
        let mut s = node(1, now);
        let ind = IndirectPingReq {
            seq_no: 77,
            target: vec![10, 0, 0, 3],
            port: 7946,
            node: "n3".into(),
            nack: true,
            source_addr: vec![10, 0, 0, 2],
            source_port: 7946,
            source_node: "n2".into(),
        };
        let out = s.handle_packet(addr(2), vec![Message::IndirectPing(ind.clone())], now);
        let Some(Output::Packet { to, messages }) = out.first() else {
            panic!("no ping")
        };
        assert_eq!(*to, addr(3));
        let Message::Ping(p) = &messages[0] else {
            panic!("not a ping")
        };
        let out = s.handle_packet(
            addr(3),
            vec![Message::Ack(AckResp {
                seq_no: p.seq_no,
                payload: vec![],
            })],
            now,
        );
        assert!(matches!(&out[..], [Output::Packet { to, messages }]
            if *to == addr(2) && messages[0] == Message::Ack(AckResp { seq_no: 77, payload: vec![] })));

        s.handle_packet(addr(2), vec![Message::IndirectPing(ind)], now);
        let out = s.tick(now + Duration::from_millis(500));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Packet { to, messages }
            if *to == addr(2) && messages[0] == Message::Nack(NackResp { seq_no: 77 })))
        );
    }

    #[test]
    fn leave_declares_itself_left_and_ignores_later_alives() {
        let now = Instant::now();
        let mut s = node(1, now);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 1))], now);
        let out = s.leave(now);
        let sent_dead = out.iter().any(|o| matches!(o, Output::Packet { messages, .. }
            if messages.iter().any(|m| matches!(m, Message::Dead(d) if d.node == "n1" && d.from == "n1"))));
        assert!(sent_dead);
        assert_eq!(member(&s.members(), "n1").state, MemberState::Left);
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n1", 1, 9))], now);
        assert_eq!(member(&s.members(), "n1").state, MemberState::Left);

        // And the receiver records it as left, not dead.
        let mut r = node(2, now);
        r.handle_packet(addr(1), vec![Message::Alive(alive_msg("n1", 1, 1))], now);
        let d = Dead {
            incarnation: 1,
            node: "n1".into(),
            from: "n1".into(),
        };
        let out = r.handle_packet(addr(1), vec![Message::Dead(d)], now);
        assert!(out.contains(&Output::Event(MemberEvent::Left("n1".into()))));
    }

    #[test]
    fn peer_input_is_bounded() {
        let now = Instant::now();
        let mut cfg = SwimConfig::lan("n1", addr(1));
        cfg.max_members = 5;
        let mut s = Swim::new(cfg, now);
        hear_alive(&mut s, 20, now);
        assert_eq!(s.members().len(), 5);
        let mut bad = alive_msg("big", 30, 1);
        bad.meta = vec![0; META_MAX_SIZE + 1];
        let mut bad_addr = alive_msg("odd", 31, 1);
        bad_addr.addr = vec![1, 2, 3];
        let mut cfg = SwimConfig::lan("n1", addr(1));
        cfg.rng_seed = Some(1);
        let mut s = Swim::new(cfg, now);
        s.handle_packet(
            addr(30),
            vec![Message::Alive(bad), Message::Alive(bad_addr)],
            now,
        );
        assert_eq!(s.members().len(), 1);
        for _ in 0..(MAX_PENDING_USER_MESSAGES + 10) {
            s.handle_packet(addr(2), vec![Message::User(vec![1])], now);
        }
        assert_eq!(s.take_user_messages().len(), MAX_PENDING_USER_MESSAGES);
    }

    #[test]
    fn push_pull_scale_matches_memberlist() {
        let sec = Duration::from_secs(1);
        assert_eq!(push_pull_scale(sec, 32), sec);
        assert_eq!(push_pull_scale(sec, 33), 2 * sec);
        assert_eq!(push_pull_scale(sec, 64), 2 * sec);
        assert_eq!(push_pull_scale(sec, 65), 3 * sec);
    }
}
