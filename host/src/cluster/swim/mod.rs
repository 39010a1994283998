//! SWIM + Lifeguard membership after HashiCorp memberlist, as a state machine (no I/O, no clock).
//!
//! Each rule cites the memberlist function it follows (`state.go`, `suspicion.go`,
//! `queue.go`, `awareness.go`, `net.go`, `util.go`). The driver feeds packets and push/pull
//! exchanges in and performs the returned [`Output`]s; nothing here reads a clock or a
//! socket, so the whole protocol runs deterministically under a simulated network.
//!
//! Deliberate departures from memberlist:
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
//!
//! Files: this one holds the [`Swim`] type, its public driving methods and the member
//! types; `probe.rs`, `membership.rs` (alive/suspect/dead/refute), `push_pull.rs`,
//! `gossip.rs` and `reconnect.rs` each add one section of `Swim`'s methods. `queue.rs`,
//! `suspicion.rs`, `awareness.rs` and `config.rs` hold the plain types `Swim` is made of;
//! they never name `Swim`, which keeps this folder free of import cycles.

mod awareness;
mod config;
mod gossip;
mod membership;
mod probe;
mod push_pull;
mod queue;
mod reconnect;
mod suspicion;
#[cfg(test)]
mod test_support;

pub use config::SwimConfig;
pub use queue::retransmit_limit;
pub use suspicion::{suspicion_timeout, suspicion_total_timeout};

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::messages::{Alive, Dead, Message, NodeState, Ping, PushPull};
use awareness::Awareness;
use queue::TransmitLimitedQueue;
use suspicion::Suspicion;

/// The version vector we advertise: memberlist's `BuildVsnArray` for protocol version 2
/// (understands 1..=5, speaks 2) and delegate protocol 0, as a default Go node sends.
pub const VSN: [u8; 6] = [1, 5, 2, 0, 0, 0];
/// memberlist's `pushPullScaleThreshold`: push/pull slows down above this many nodes.
const PUSH_PULL_SCALE_THRESHOLD: usize = 32;

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
    /// [`Swim::handle_push_pull_reply`]. `state.user_state` is empty: the driver fills in
    /// the application's state at send time (memberlist asks `Delegate.LocalState` then).
    PushPull {
        /// Destination.
        to: SocketAddr,
        /// Our side of the exchange.
        state: PushPull,
    },
    /// memberlist's TCP fallback ping (`sendPingAndWaitForAck`): open a TCP stream to
    /// `to`, send `ping`, and wait for an ack with the same sequence number until
    /// `deadline`; report the outcome with [`Swim::handle_tcp_ping_result`] (a node that
    /// only UDP cannot reach is then not suspected).
    TcpPing {
        /// The probed node.
        to: SocketAddr,
        /// The probe's ping (same sequence number as the UDP one).
        ping: Ping,
        /// When the probe ends; the stream is given up then.
        deadline: Instant,
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

/// memberlist's `pushPullScale`: push/pull slows down as the cluster grows past 32 nodes.
pub fn push_pull_scale(interval: Duration, n: usize) -> Duration {
    if n <= PUSH_PULL_SCALE_THRESHOLD {
        return interval;
    }
    let mult = ((n as f64).log2() - (PUSH_PULL_SCALE_THRESHOLD as f64).log2()).ceil() + 1.0;
    interval.saturating_mul(mult as u32)
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
    /// The TCP fallback ping sent with the indirect pings, if any.
    fallback: Option<Fallback>,
}

/// Where a probe's TCP fallback ping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// Sent; the driver has not reported yet.
    Pending,
    /// The node answered over TCP.
    Contacted,
    /// No answer (refused, timed out, wrong reply).
    Failed,
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
            Some(p) => [Some(p.decision_at()), None],
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
    /// (memberlist's `handleConn` sends first, then `mergeRemoteState`). As for
    /// [`Output::PushPull`], the caller adds its application state to the reply.
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

    /// The outcome of an [`Output::TcpPing`]: `contacted` when the node acked over TCP.
    pub fn handle_tcp_ping_result(
        &mut self,
        seq: u32,
        contacted: bool,
        now: Instant,
    ) -> Vec<Output> {
        self.last_now = now;
        self.tcp_ping_result(seq, contacted);
        self.advance_probe(now);
        self.take_out()
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

    /// Non-empty user states received in push/pulls since the last call (oldest first).
    pub fn take_remote_user_states(&mut self) -> Vec<Vec<u8>> {
        self.remote_user_states.drain(..).collect()
    }

    /// `Message::User` payloads received since the last call (oldest first).
    pub fn take_user_messages(&mut self) -> Vec<Vec<u8>> {
        self.user_messages.drain(..).collect()
    }

    /// One member by name (None: unknown or reaped).
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.nodes.get(name).map(|e| &e.member)
    }

    /// How many known members (ourselves included) are alive.
    pub fn alive_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|e| e.member.state == MemberState::Alive)
            .count()
    }

    /// Every known member, including ourselves and dead members not yet reaped.
    pub fn members(&self) -> Vec<Member> {
        self.order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|e| e.member.clone())
            .collect()
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
    use crate::cluster::swim::test_support::*;

    #[test]
    fn new_node_is_alive_at_incarnation_one() {
        let s = node(1, Instant::now());
        let me = member(&s.members(), "n1").clone();
        assert_eq!((me.state, me.incarnation), (MemberState::Alive, 1));
        assert_eq!(s.config.name, "n1");
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
