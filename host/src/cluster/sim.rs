//! Deterministic in-memory network of `Swim` nodes for the cluster tests and the
//! `bench/cluster-sim.sh` scenarios (`sim_bench.rs`).
//!
//! It models a virtual clock, per-link loss, delay, partitions, crashes and restarts,
//! UDP-only outages (TCP still gets through, as for memberlist's fallback ping; under
//! loss a TCP ping pays TCP's retransmission timeouts), and
//! "foreign" members: memberlist nodes without our registry (a Go peer), which neither
//! apply nor relay registry deltas and send no registry state. Nothing sleeps: the clock
//! is an `Instant` advanced by explicit steps, every random choice comes from seeded
//! `StdRng`s, and each node is driven the way the real driver does it (tick when
//! `next_deadline` has passed, feed packets, push/pulls and TCP ping results in). Bytes
//! are counted as the driver would send them (messages encoded by the real codec, the
//! compound and CRC framing, push/pull streams unencrypted), so the figures are wire
//! sizes in virtual time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::messages::{Message, PushPull};
use super::replication::Replication;
use super::swim::{MemberEvent, MemberState, Output, Swim, SwimConfig};
use super::wire;
use crate::registry::{Delta, Registry, TOMBSTONE_GRACE};

/// How a packet or a push/pull leg takes to arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimDelay {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly random in `[low, high]`.
    Uniform(Duration, Duration),
}

/// Counters of what the network did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// UDP packets sent.
    pub packets: u64,
    /// Packets dropped by the loss probability.
    pub lost: u64,
    /// Packets dropped by a partition or a crashed receiver.
    pub blocked: u64,
    /// Push/pull exchanges started.
    pub push_pulls: u64,
    /// Push/pull exchanges that failed (partition, crash, unknown address).
    pub push_pulls_failed: u64,
    /// TCP fallback pings sent, and how many reached the node.
    pub tcp_pings: u64,
    /// TCP fallback pings answered.
    pub tcp_pings_answered: u64,
    /// UDP bytes sent (as the driver frames them: compound and CRC, no encryption).
    pub udp_bytes: u64,
    /// TCP bytes sent (push/pull streams both ways, TCP pings and acks).
    pub tcp_bytes: u64,
    /// The largest push/pull stream message seen, in bytes.
    pub max_push_pull_bytes: u64,
}

impl SimStats {
    /// Every byte sent, UDP and TCP.
    pub fn bytes(&self) -> u64 {
        self.udp_bytes + self.tcp_bytes
    }
}

/// Something on the wire.
enum Payload {
    Packet {
        from: usize,
        to: usize,
        messages: Vec<Message>,
    },
    PushPullRequest {
        from: usize,
        from_gen: u64,
        to: usize,
        state: PushPull,
    },
    PushPullReply {
        from: usize,
        to: usize,
        to_gen: u64,
        state: PushPull,
    },
    /// The outcome of a TCP fallback ping, back at the prober.
    TcpPingResult {
        to: usize,
        to_gen: u64,
        seq: u32,
        contacted: bool,
    },
}

struct InFlight {
    due: Instant,
    seq: u64,
    payload: Payload,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    /// Reversed so `BinaryHeap` pops the earliest (then first sent) item.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One simulated host.
pub struct SimNode {
    /// The node's state machine (replaced on restart).
    pub swim: Swim,
    /// A crashed node neither processes nor sends anything.
    pub crashed: bool,
    /// A memberlist node without our registry (as a Go peer): it drops user messages
    /// and push/pull state, and never relays them.
    pub foreign: bool,
    /// Bumped on restart so replies to the old process are dropped like a broken stream.
    generation: u64,
    /// Every membership event the node reported, with its time.
    pub events: Vec<(Instant, MemberEvent)>,
    /// User payloads this node has seen (received or originated), with the first time.
    pub user_seen: BTreeMap<Vec<u8>, Instant>,
    /// The node's service registry, once `enable_registries` was called: replicated
    /// exactly as the real driver does it (`Replication`).
    pub registry: Option<Registry>,
    replication: Replication,
    /// Events already shown to the registry.
    events_applied: usize,
}

/// N `Swim` nodes at 10.0.0.1:7946, 10.0.0.2:7946, ... on a simulated network.
pub struct SimNetwork {
    start: Instant,
    now: Instant,
    step: Duration,
    rng: StdRng,
    seed: u64,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<InFlight>,
    next_seq: u64,
    loss: f64,
    link_loss: HashMap<(usize, usize), f64>,
    /// Nodes no UDP packet reaches or leaves (TCP still works).
    udp_blocked: Vec<bool>,
    delay: SimDelay,
    /// Partition group per node; nodes in different groups cannot talk.
    groups: Option<Vec<u8>>,
    relay_user: bool,
    relay_registry: bool,
    configure: Box<dyn Fn(&mut SwimConfig)>,
    /// What the network did so far.
    pub stats: SimStats,
}

impl SimNetwork {
    /// `n` nodes with memberlist's LAN defaults, none joined yet.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, |_| {})
    }

    /// Like [`SimNetwork::new`], with `configure` applied to every node's config.
    pub fn with_config(n: usize, seed: u64, configure: impl Fn(&mut SwimConfig) + 'static) -> Self {
        assert!(n < 1 << 24, "addresses are 10.0.0.1 ..= 10.255.255.255");
        let start = Instant::now();
        let mut net = SimNetwork {
            start,
            now: start,
            step: Duration::from_millis(10),
            rng: StdRng::seed_from_u64(seed),
            seed,
            nodes: Vec::with_capacity(n),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            next_seq: 0,
            loss: 0.0,
            link_loss: HashMap::new(),
            udp_blocked: vec![false; n],
            delay: SimDelay::Uniform(Duration::from_millis(1), Duration::from_millis(5)),
            groups: None,
            relay_user: false,
            relay_registry: true,
            configure: Box::new(configure),
            stats: SimStats::default(),
        };
        for i in 0..n {
            let swim = net.make_swim(i, 0);
            net.by_addr.insert(Self::addr(i), i);
            net.nodes.push(SimNode {
                swim,
                crashed: false,
                foreign: false,
                generation: 0,
                events: Vec::new(),
                user_seen: BTreeMap::new(),
                registry: None,
                replication: Replication::default(),
                events_applied: 0,
            });
        }
        net
    }

    /// Node `i`'s address: 10.0.0.1 for node 0, counting up through the 10/8 network.
    pub fn addr(i: usize) -> SocketAddr {
        let offset = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00ff_ffff;
        SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | offset), 7946))
    }

    /// Node `i`'s name.
    pub fn name(i: usize) -> String {
        format!("node-{i}")
    }

    fn make_swim(&self, i: usize, generation: u64) -> Swim {
        let mut cfg = SwimConfig::lan(Self::name(i), Self::addr(i));
        cfg.rng_seed = Some(self.seed ^ ((i as u64) << 16) ^ (generation << 40));
        (self.configure)(&mut cfg);
        Swim::new(cfg, self.now)
    }

    /// Number of nodes (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Node `i`'s state machine, e.g. to queue a broadcast.
    pub fn swim_mut(&mut self, i: usize) -> &mut Swim {
        &mut self.nodes[i].swim
    }

    /// Node `i` joins through node `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        self.join_many(i, &[seed]);
    }

    /// Node `i` joins through each of `seeds` (a push/pull with each, as `Join` does).
    pub fn join_many(&mut self, i: usize, seeds: &[usize]) {
        let addrs: Vec<SocketAddr> = seeds.iter().map(|&s| Self::addr(s)).collect();
        let outs = self.nodes[i].swim.join(&addrs, self.now);
        self.route(i, outs);
    }

    /// Loss probability on every link without its own setting.
    pub fn set_loss(&mut self, p: f64) {
        self.loss = p;
    }

    /// Loss probability for packets from `a` to `b`.
    pub fn set_link_loss(&mut self, a: usize, b: usize, p: f64) {
        self.link_loss.insert((a, b), p);
    }

    /// No UDP packet reaches or leaves node `i` while `blocked` (a firewall dropping UDP);
    /// its TCP streams still work.
    pub fn set_udp_blocked(&mut self, i: usize, blocked: bool) {
        self.udp_blocked[i] = blocked;
    }

    /// Delay of every packet and push/pull leg.
    pub fn set_delay(&mut self, delay: SimDelay) {
        self.delay = delay;
    }

    /// Cut `side` off from everyone else (UDP and TCP alike).
    pub fn partition(&mut self, side: &[usize]) {
        self.partition_groups(&[side]);
    }

    /// Split the network into `groups` plus one group of every node not listed; nodes in
    /// different groups cannot reach each other (UDP and TCP alike).
    pub fn partition_groups(&mut self, groups: &[&[usize]]) {
        let mut group_of = vec![0u8; self.nodes.len()];
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                group_of[i] = u8::try_from(g + 1).unwrap_or(u8::MAX);
            }
        }
        self.groups = Some(group_of);
    }

    /// Remove the partition.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Stop node `i` dead: no processing, no sending.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].crashed = true;
    }

    /// Make node `i` a memberlist node without our registry (see [`SimNode::foreign`]).
    pub fn set_foreign(&mut self, i: usize) {
        self.nodes[i].foreign = true;
        self.nodes[i].registry = None;
    }

    /// A fresh process for node `i` (same name and address, incarnation 1); call
    /// [`SimNetwork::join`] to have it rejoin.
    pub fn restart(&mut self, i: usize) {
        let generation = self.nodes[i].generation + 1;
        let swim = self.make_swim(i, generation);
        let start_ms = self.virtual_ms();
        let node = &mut self.nodes[i];
        node.swim = swim;
        node.crashed = false;
        node.generation = generation;
        // A new process starts with an empty registry, its clock seeded with its start.
        if node.registry.is_some() {
            node.registry = Some(Registry::new(Self::name(i), start_ms, TOMBSTONE_GRACE));
            node.replication = Replication::default();
            node.events_applied = node.events.len();
        }
    }

    /// Milliseconds of virtual time since the start, offset like a wall clock.
    fn virtual_ms(&self) -> u64 {
        1_000_000 + (self.now - self.start).as_millis() as u64
    }

    /// Gives every node but the foreign ones a service registry replicated over the
    /// simulated gossip.
    pub fn enable_registries(&mut self) {
        let start_ms = self.virtual_ms();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.foreign {
                continue;
            }
            node.registry = Some(Registry::new(Self::name(i), start_ms, TOMBSTONE_GRACE));
            node.events_applied = node.events.len();
        }
    }

    /// Whether registry deltas received by gossip are gossiped on (the default, as the
    /// driver does); off, only their origin gossips them and push/pull does the rest.
    pub fn set_registry_relay(&mut self, relay: bool) {
        self.relay_registry = relay;
    }

    /// Registers `reg` on node `i` (as `POST /api/v1/services/register` there would).
    pub fn register(&mut self, i: usize, reg: crate::registry::Registration) {
        let now = self.now;
        let node = &mut self.nodes[i];
        if let Some(registry) = node.registry.as_mut() {
            let delta = registry.register(reg, now);
            Replication::broadcast(&mut node.swim, &delta);
        }
    }

    /// Live instance ids node `i`'s registry holds.
    pub fn registry_ids(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i]
            .registry
            .as_ref()
            .map(|r| {
                r.services()
                    .values()
                    .flatten()
                    .map(|(reg, _)| reg.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether node `i`'s registry holds instance `id` live.
    pub fn has_registration(&self, i: usize, id: &str) -> bool {
        self.nodes[i]
            .registry
            .as_ref()
            .is_some_and(|r| r.is_live(id))
    }

    /// Act as the application layer (the registry) does: re-broadcast every user
    /// payload the first time a node sees it, keyed by its content.
    pub fn set_relay_user(&mut self, relay: bool) {
        self.relay_user = relay;
    }

    /// Node `i` originates a user broadcast.
    pub fn broadcast_user(&mut self, i: usize, key: &str, payload: &[u8]) {
        let node = &mut self.nodes[i];
        node.user_seen.insert(payload.to_vec(), self.now);
        node.swim.broadcast_user(key.to_string(), payload.to_vec());
    }

    /// Advance the clock one step: deliver what is due, tick due nodes, run the
    /// application layer.
    pub fn step(&mut self) {
        self.now += self.step;
        while self.queue.peek().is_some_and(|f| f.due <= self.now) {
            if let Some(item) = self.queue.pop() {
                self.deliver(item.payload);
            }
        }
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.crashed || node.swim.next_deadline() > self.now {
                continue;
            }
            let outs = node.swim.tick(self.now);
            self.route(i, outs);
        }
        self.app_layer();
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Run until `done` holds (checked every 100 ms of virtual time) or `limit` passed;
    /// the virtual time it took, if it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        done: impl FnMut(&SimNetwork) -> bool,
    ) -> Option<Duration> {
        self.run_until_every(limit, Duration::from_millis(100), done)
    }

    /// [`SimNetwork::run_until`] with `done` checked every `check_every`.
    pub fn run_until_every(
        &mut self,
        limit: Duration,
        check_every: Duration,
        mut done: impl FnMut(&SimNetwork) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let mut next_check = start;
        while self.now - start <= limit {
            if self.now >= next_check {
                if done(self) {
                    return Some(self.now - start);
                }
                next_check += check_every;
            }
            self.step();
        }
        None
    }

    /// The names node `i` sees as alive.
    pub fn alive_names(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i]
            .swim
            .members()
            .into_iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.name)
            .collect()
    }

    /// How node `i` sees `name` (None: unknown or reaped).
    pub fn state_of(&self, i: usize, name: &str) -> Option<MemberState> {
        self.nodes[i].swim.member(name).map(|m| m.state)
    }

    /// Every node in `set` sees exactly the nodes of `set` alive.
    pub fn all_agree(&self, set: &[usize]) -> bool {
        let names: Vec<String> = set.iter().map(|&j| Self::name(j)).collect();
        set.iter().all(|&i| {
            self.nodes[i].swim.alive_count() == set.len()
                && names
                    .iter()
                    .all(|name| self.state_of(i, name) == Some(MemberState::Alive))
        })
    }

    /// Every node in `set` sees `set.len()` members alive (cheaper than
    /// [`SimNetwork::all_agree`]; the same when nobody else is alive).
    pub fn all_count_alive(&self, set: &[usize]) -> bool {
        set.iter()
            .all(|&i| self.nodes[i].swim.alive_count() == set.len())
    }

    fn delay(&mut self) -> Duration {
        match self.delay {
            SimDelay::Fixed(d) => d,
            SimDelay::Uniform(lo, hi) if hi > lo => {
                let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
                lo + Duration::from_nanos(self.rng.random_range(0..=span))
            }
            SimDelay::Uniform(lo, _) => lo,
        }
    }

    fn enqueue_at(&mut self, due: Instant, payload: Payload) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.queue.push(InFlight { due, seq, payload });
    }

    fn enqueue(&mut self, payload: Payload) {
        let due = self.now + self.delay();
        self.enqueue_at(due, payload);
    }

    /// The loss probability of packets from `a` to `b`.
    fn link_loss(&self, a: usize, b: usize) -> f64 {
        self.link_loss.get(&(a, b)).copied().unwrap_or(self.loss)
    }

    fn can_reach(&self, a: usize, b: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    fn route(&mut self, from: usize, outs: Vec<Output>) {
        for out in outs {
            match out {
                Output::Packet { to, messages } => self.send_packet(from, to, messages),
                Output::PushPull { to, state } => self.start_push_pull(from, to, state),
                Output::TcpPing { to, ping, deadline } => {
                    let seq = ping.seq_no;
                    let bytes = Self::packet_bytes(&[Message::Ping(ping)]);
                    self.stats.tcp_bytes += bytes;
                    self.tcp_ping(from, to, seq, deadline)
                }
                Output::Event(e) => self.nodes[from].events.push((self.now, e)),
            }
        }
    }

    /// The bytes the driver would put on the wire for `messages` (one packet).
    fn packet_bytes(messages: &[Message]) -> u64 {
        let body: usize = messages.iter().map(|m| wire::encode_message(m).len()).sum();
        // Compound header and per-part lengths when more than one; the CRC header.
        let framing = if messages.len() > 1 {
            2 + 2 * messages.len()
        } else {
            0
        };
        (body + framing + 5) as u64
    }

    fn send_packet(&mut self, from: usize, to: SocketAddr, messages: Vec<Message>) {
        self.stats.packets += 1;
        self.stats.udp_bytes += Self::packet_bytes(&messages);
        let Some(&to) = self.by_addr.get(&to) else {
            self.stats.blocked += 1;
            return;
        };
        if self.udp_blocked[from] || self.udp_blocked[to] {
            self.stats.blocked += 1;
            return;
        }
        let loss = self.link_loss(from, to);
        if loss > 0.0 && self.rng.random::<f64>() < loss {
            self.stats.lost += 1;
            return;
        }
        self.enqueue(Payload::Packet { from, to, messages });
    }

    /// A TCP ping takes a connect and a ping/ack round trip; a node that is down or cut
    /// off does not answer, and the prober hears so at the probe's end.
    fn tcp_ping(&mut self, from: usize, to: SocketAddr, seq: u32, deadline: Instant) {
        self.stats.tcp_pings += 1;
        let to_gen = self.nodes[from].generation;
        let answered = self
            .by_addr
            .get(&to)
            .is_some_and(|&t| !self.nodes[t].crashed && self.can_reach(from, t));
        // Connect, then the ping and its ack. Under loss, TCP retransmits: a lost SYN or
        // SYN-ACK after Linux's 1 s initial timeout, a lost data segment after its 200 ms
        // minimum RTO (so at 10% loss about a fifth of these pings miss the probe's end).
        let mut back_at = self.now + self.delay() + self.delay();
        if let Some(&t) = self.by_addr.get(&to) {
            let (out, back) = (self.link_loss(from, t), self.link_loss(t, from));
            for (p, retry) in [
                (out, Duration::from_secs(1)),
                (back, Duration::from_secs(1)),
                (out, Duration::from_millis(200)),
                (back, Duration::from_millis(200)),
            ] {
                if p > 0.0 && self.rng.random::<f64>() < p {
                    back_at += retry;
                }
            }
        }
        let (due, contacted) = if answered && back_at <= deadline {
            self.stats.tcp_pings_answered += 1;
            // The ack: a sequence number and an empty payload.
            self.stats.tcp_bytes += 8;
            (back_at, true)
        } else {
            (deadline, false)
        };
        let result = Payload::TcpPingResult {
            to: from,
            to_gen,
            seq,
            contacted,
        };
        self.enqueue_at(due, result);
    }

    /// Fills in the application's push/pull state as the driver does at send time.
    fn with_user_state(&mut self, i: usize, mut state: PushPull) -> PushPull {
        // Encoded afresh each time: a cache per node (as the driver keeps one) would hold
        // a whole registry's bytes for each of a thousand nodes.
        if let Some(registry) = self.nodes[i].registry.as_ref() {
            state.user_state = Replication::default()
                .local_state(registry)
                .as_ref()
                .clone();
        }
        let bytes = wire::encode_push_pull(&state).len() as u64;
        self.stats.tcp_bytes += bytes;
        self.stats.max_push_pull_bytes = self.stats.max_push_pull_bytes.max(bytes);
        state
    }

    fn start_push_pull(&mut self, from: usize, to: SocketAddr, state: PushPull) {
        self.stats.push_pulls += 1;
        let Some(&to) = self.by_addr.get(&to) else {
            self.stats.push_pulls_failed += 1;
            return;
        };
        let state = self.with_user_state(from, state);
        let from_gen = self.nodes[from].generation;
        self.enqueue(Payload::PushPullRequest {
            from,
            from_gen,
            to,
            state,
        });
    }

    fn deliver(&mut self, payload: Payload) {
        let now = self.now;
        match payload {
            Payload::Packet { from, to, messages } => {
                if self.nodes[to].crashed || !self.can_reach(from, to) {
                    self.stats.blocked += 1;
                    return;
                }
                let outs = self.nodes[to]
                    .swim
                    .handle_packet(Self::addr(from), messages, now);
                self.route(to, outs);
            }
            Payload::PushPullRequest {
                from,
                from_gen,
                to,
                state,
            } => {
                let broken = self.nodes[from].crashed || self.nodes[from].generation != from_gen;
                if broken || self.nodes[to].crashed || !self.can_reach(from, to) {
                    self.stats.push_pulls_failed += 1;
                    return;
                }
                let (reply, outs) =
                    self.nodes[to]
                        .swim
                        .handle_push_pull(Self::addr(from), state, now);
                self.route(to, outs);
                let reply = self.with_user_state(to, reply);
                self.enqueue(Payload::PushPullReply {
                    from: to,
                    to: from,
                    to_gen: from_gen,
                    state: reply,
                });
            }
            Payload::PushPullReply {
                from,
                to,
                to_gen,
                state,
            } => {
                let broken = self.nodes[to].crashed || self.nodes[to].generation != to_gen;
                if broken || !self.can_reach(from, to) {
                    self.stats.push_pulls_failed += 1;
                    return;
                }
                let outs = self.nodes[to].swim.handle_push_pull_reply(state, now);
                self.route(to, outs);
            }
            Payload::TcpPingResult {
                to,
                to_gen,
                seq,
                contacted,
            } => {
                if self.nodes[to].crashed || self.nodes[to].generation != to_gen {
                    return;
                }
                let outs = self.nodes[to]
                    .swim
                    .handle_tcp_ping_result(seq, contacted, now);
                self.route(to, outs);
            }
        }
    }

    /// The registry's part: collect user payloads, re-broadcast news when relaying.
    fn app_layer(&mut self) {
        let now = self.now;
        let relay = self.relay_user;
        let relay_registry = self.relay_registry;
        for node in self.nodes.iter_mut().filter(|n| !n.crashed) {
            if let Some(registry) = node.registry.as_mut() {
                for (_, event) in &node.events[node.events_applied..] {
                    Replication::on_event(registry, &mut node.swim, event, now);
                }
                node.events_applied = node.events.len();
                if relay_registry {
                    node.replication.receive(registry, &mut node.swim, now);
                } else {
                    for payload in node.swim.take_user_messages() {
                        if let Ok(delta) = serde_json::from_slice::<Delta>(&payload) {
                            registry.apply(delta, now);
                        }
                    }
                    for state in node.swim.take_remote_user_states() {
                        if let Ok(deltas) = serde_json::from_slice::<Vec<Delta>>(&state) {
                            registry.merge(deltas, now);
                        }
                    }
                }
                continue;
            }
            let _ = node.swim.take_remote_user_states();
            let payloads = node.swim.take_user_messages();
            if node.foreign {
                continue;
            }
            for payload in payloads {
                if node.user_seen.contains_key(&payload) {
                    continue;
                }
                node.user_seen.insert(payload.clone(), now);
                if relay {
                    let key = String::from_utf8_lossy(&payload).into_owned();
                    node.swim.broadcast_user(key, payload);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::swim::suspicion_timeout;
    use super::*;

    const N: usize = 50;

    /// N nodes, all joining through node 0 at once; returns the time until every node
    /// sees all N alive.
    fn converged(seed: u64) -> (SimNetwork, Duration) {
        let mut net = SimNetwork::new(N, seed);
        for i in 1..N {
            net.join(i, 0);
        }
        let all: Vec<usize> = (0..N).collect();
        let took = net.run_until(Duration::from_secs(60), |net| net.all_agree(&all));
        let took = took.expect("50 nodes converge within 60 s");
        (net, took)
    }

    fn count_events(
        net: &SimNetwork,
        since: Instant,
        pred: impl Fn(&MemberEvent) -> bool,
    ) -> usize {
        (0..net.len())
            .flat_map(|i| net.node(i).events.iter())
            .filter(|(t, e)| *t >= since && pred(e))
            .count()
    }

    #[test]
    fn fifty_nodes_join_via_one_seed_and_converge() {
        let (net, took) = converged(1);
        eprintln!(
            "[sim] 50 nodes joined via one seed: all see 50 alive after {took:?} virtual ({} packets, {} push/pulls)",
            net.stats.packets, net.stats.push_pulls
        );
        // Usually about a second of gossip; a mass join can starve an early broadcast
        // (retransmit limits are tiny while the cluster is small), and then the first
        // push/pull round (staggered within PushPullInterval, 30 s) completes the view.
        assert!(took <= Duration::from_secs(30), "took {took:?}");
    }

    #[test]
    fn ten_percent_loss_for_sixty_seconds_declares_nobody_dead() {
        let (mut net, _) = converged(2);
        let t0 = net.now();
        net.set_loss(0.10);
        net.run_for(Duration::from_secs(60));
        let died = count_events(&net, t0, |e| {
            matches!(e, MemberEvent::Died(_) | MemberEvent::Left(_))
        });
        let suspected = count_events(&net, t0, |e| matches!(e, MemberEvent::Suspected(_)));
        let refutations: u32 = (0..N).map(|i| net.node(i).swim.incarnation() - 1).sum();
        let max_health = (0..N)
            .map(|i| net.node(i).swim.health_score())
            .max()
            .unwrap_or(0);
        eprintln!(
            "[sim] 10% loss for 60 s: {died} dead declarations; {refutations} refutations, \
             {suspected} suspect events seen cluster-wide; {} of {} packets lost; \
             max health score at the end {max_health}",
            net.stats.lost, net.stats.packets
        );
        assert_eq!(died, 0, "no false positives");
        assert!(net.stats.lost > 0);
        for i in 0..N {
            let members = net.node(i).swim.members();
            assert_eq!(members.len(), N);
            assert!(members.iter().all(|m| !m.state.eq(&MemberState::Dead)));
        }
    }

    #[test]
    fn crashed_nodes_are_declared_dead_by_everyone_in_bounded_time() {
        let (mut net, _) = converged(3);
        let crashed: Vec<usize> = (0..N).filter(|i| i % 10 == 4).collect();
        let survivors: Vec<usize> = (0..N).filter(|i| i % 10 != 4).collect();
        let t0 = net.now();
        for &c in &crashed {
            net.crash(c);
        }
        let all_dead = |net: &SimNetwork| {
            survivors.iter().all(|&o| {
                crashed.iter().all(|&c| {
                    matches!(
                        net.state_of(o, &SimNetwork::name(c)),
                        Some(MemberState::Dead) | None
                    )
                })
            })
        };
        let took = net
            .run_until(Duration::from_secs(60), all_dead)
            .expect("all crashed nodes detected");
        let mut detect: Vec<Duration> = Vec::new();
        for &o in &survivors {
            for &c in &crashed {
                let name = SimNetwork::name(c);
                let died = net
                    .node(o)
                    .events
                    .iter()
                    .find(|(t, e)| *t >= t0 && *e == MemberEvent::Died(name.clone()));
                detect.push(
                    died.map(|(t, _)| *t - t0)
                        .expect("a Died event per observer"),
                );
            }
        }
        detect.sort();
        let min_timeout = suspicion_timeout(4, N, Duration::from_secs(1));
        // First failed probe (SWIM: e/(e-1) periods on average, geometric tail) + the
        // probe itself + the suspicion timeout at k confirmations + the dead gossip. Over
        // 150 crash/observer samples on other seeds the worst was 12.9 s.
        let bound = min_timeout + Duration::from_secs(8);
        let avg = detect.iter().sum::<Duration>() / detect.len() as u32;
        eprintln!(
            "[sim] crash 5 of 50: every survivor marked all dead after {took:?}; per observer min {:?} \
             avg {avg:?} max {:?} (suspicion timeout {min_timeout:?}, bound {bound:?})",
            detect[0],
            detect[detect.len() - 1]
        );
        assert!(detect[detect.len() - 1] <= bound);
        // Survivors still agree on each other.
        assert!(net.all_agree(&survivors));
    }

    #[test]
    fn partition_of_ten_for_thirty_seconds_heals() {
        let (mut net, _) = converged(4);
        let minority: Vec<usize> = (40..N).collect();
        let all: Vec<usize> = (0..N).collect();
        net.partition(&minority);
        net.run_for(Duration::from_secs(30));
        // The 40 have declared all 10 dead; the 10 (probing 49 targets round-robin at one
        // per second each) have only declared part of the 40 dead so far.
        for i in 0..40 {
            let alive = net.alive_names(i);
            assert_eq!(alive.len(), 40, "node {i} sees only its side");
        }
        let minority_dead = (0..40)
            .filter(|&i| net.state_of(45, &SimNetwork::name(i)) == Some(MemberState::Dead))
            .count();
        eprintln!(
            "[sim] after 30 s of partition node-45 has declared {minority_dead} of the 40 dead"
        );
        assert!(minority_dead > 0);
        net.heal();
        let took = net.run_until(Duration::from_secs(120), |net| net.all_agree(&all));
        let took = took.expect("all 50 agree again after healing");
        let refuted = (0..N)
            .filter(|&i| net.node(i).swim.incarnation() > 1)
            .count();
        eprintln!(
            "[sim] partition 10|40 for 30 s: all 50 agree again {took:?} after healing \
             ({refuted} nodes refuted with a higher incarnation)"
        );
        assert!(refuted > 0, "nodes declared dead came back by refutation");
    }

    #[test]
    fn user_broadcast_reaches_all_fifty() {
        let (mut net, _) = converged(5);
        net.set_relay_user(true);
        let payload = b"route:/api/v2 -> pool-b".to_vec();
        net.broadcast_user(7, "route:/api/v2", &payload);
        let took = net.run_until(Duration::from_secs(30), |net| {
            (0..N).all(|i| net.node(i).user_seen.contains_key(&payload))
        });
        let took = took.expect("user broadcast reaches all 50");
        eprintln!("[sim] user broadcast from one node reached all 50 after {took:?} virtual");
        assert!(took <= Duration::from_secs(5));
    }

    #[test]
    fn restarted_node_rejoins_and_wins_by_incarnation() {
        let (mut net, _) = converged(6);
        let victim = 9;
        let name = SimNetwork::name(victim);
        let others: Vec<usize> = (0..N).filter(|&i| i != victim).collect();
        net.crash(victim);
        let dead = net.run_until(Duration::from_secs(60), |net| {
            others
                .iter()
                .all(|&o| net.state_of(o, &name) == Some(MemberState::Dead))
        });
        assert!(dead.is_some());
        net.restart(victim);
        assert_eq!(net.node(victim).swim.incarnation(), 1);
        net.join(victim, 0);
        let all: Vec<usize> = (0..N).collect();
        let took = net.run_until(Duration::from_secs(60), |net| net.all_agree(&all));
        let took = took.expect("restarted node rejoins");
        let inc = net.node(victim).swim.incarnation();
        eprintln!(
            "[sim] restarted node (declared dead first) rejoined: all 50 agree after {took:?}, incarnation {inc}"
        );
        assert!(
            inc > 1,
            "it refuted the dead claim with a higher incarnation"
        );
        for &o in &others {
            let seen = net
                .node(o)
                .swim
                .members()
                .into_iter()
                .find(|m| m.name == name)
                .map(|m| m.incarnation);
            assert_eq!(seen, Some(inc));
        }
    }

    #[test]
    fn restart_before_detection_keeps_membership() {
        let (mut net, _) = converged(7);
        net.crash(3);
        net.run_for(Duration::from_millis(300));
        net.restart(3);
        net.join(3, 0);
        let all: Vec<usize> = (0..N).collect();
        // The fresh process knows only itself until its join push/pull answers.
        assert_eq!(net.node(3).swim.members().len(), 1);
        let took = net.run_until(Duration::from_secs(30), |net| net.all_agree(&all));
        let took = took.expect("the restarted node learns everyone again");
        eprintln!("[sim] quick restart (before detection): all 50 agree after {took:?}");
    }

    #[test]
    fn long_partition_heals_only_through_reconnect() {
        // 120 s apart: both sides declare the other dead *and reap it* (30 s of gossip to
        // the dead), so plain memberlist has nobody left to talk to across the cut.
        let minority: Vec<usize> = (40..N).collect();
        let all: Vec<usize> = (0..N).collect();
        let split = |reconnect: bool| {
            let mut net = SimNetwork::with_config(N, 8, move |c| {
                if !reconnect {
                    c.reconnect_interval = Duration::ZERO;
                }
            });
            for i in 1..N {
                net.join(i, 0);
            }
            assert!(
                net.run_until(Duration::from_secs(60), |net| net.all_agree(&all))
                    .is_some()
            );
            net.partition(&minority);
            net.run_for(Duration::from_secs(120));
            assert_eq!(net.node(0).swim.members().len(), 40, "the 10 were reaped");
            net.heal();
            net
        };
        let mut without = split(false);
        without.run_for(Duration::from_secs(60));
        assert_eq!(
            without.alive_names(0).len(),
            40,
            "no reconnect: still split"
        );
        assert_eq!(
            without.alive_names(45).len(),
            10,
            "no reconnect: still split"
        );

        let mut with = split(true);
        let took = with.run_until(Duration::from_secs(120), |net| net.all_agree(&all));
        let took = took.expect("reconnect heals a partition both sides reaped");
        eprintln!(
            "[sim] partition 10|40 for 120 s (both sides reaped): all 50 agree {took:?} after healing (reconnect)"
        );
    }

    #[test]
    fn graceful_leave_is_seen_as_left() {
        let (mut net, _) = converged(9);
        let now = net.now();
        let outs = net.swim_mut(5).leave(now);
        net.route(5, outs);
        let name = SimNetwork::name(5);
        let others: Vec<usize> = (0..N).filter(|&i| i != 5).collect();
        let took = net.run_until(Duration::from_secs(10), |net| {
            others
                .iter()
                .all(|&o| net.state_of(o, &name) == Some(MemberState::Left))
        });
        let took = took.expect("everyone sees the leave");
        eprintln!("[sim] graceful leave seen as Left by all 49 after {took:?}");
        assert_eq!(
            count_events(&net, net.start, |e| *e == MemberEvent::Died(name.clone())),
            0
        );
    }

    #[test]
    fn a_broken_link_is_bridged_by_indirect_probes() {
        // node-0 and node-1 cannot talk to each other at all (both directions), but every
        // other path works: indirect pings through 3 peers keep them alive for each other.
        let (mut net, _) = converged(10);
        net.set_delay(SimDelay::Fixed(Duration::from_millis(2)));
        net.set_link_loss(0, 1, 1.0);
        net.set_link_loss(1, 0, 1.0);
        let t0 = net.now();
        net.run_for(Duration::from_secs(30));
        let died = count_events(&net, t0, |e| matches!(e, MemberEvent::Died(_)));
        let suspected = count_events(&net, t0, |e| matches!(e, MemberEvent::Suspected(_)));
        eprintln!("[sim] broken link 0<->1 for 30 s: {died} dead, {suspected} suspect events");
        assert_eq!(died, 0);
        assert_eq!(
            net.state_of(0, &SimNetwork::name(1)),
            Some(MemberState::Alive)
        );
        assert_eq!(
            net.state_of(1, &SimNetwork::name(0)),
            Some(MemberState::Alive)
        );
    }

    fn instance(id: &str) -> crate::registry::Registration {
        crate::registry::Registration {
            id: id.to_owned(),
            service: "svc".to_owned(),
            address: "10.1.0.1".to_owned(),
            port: 80,
            metadata: Default::default(),
            check: None,
            ttl_s: None,
        }
    }

    fn registries_agree(net: &SimNetwork, nodes: &[usize], expected: &BTreeSet<String>) -> bool {
        nodes.iter().all(|&i| net.registry_ids(i) == *expected)
    }

    #[test]
    fn registries_converge_spread_fast_and_agree_after_a_partition() {
        let (mut net, _) = converged(11);
        net.enable_registries();
        let all: Vec<usize> = (0..N).collect();
        // Spread: one registration at a time from a different node; time until all 50 hold it.
        let mut spread = Vec::new();
        let mut expected = BTreeSet::new();
        for k in 0..20 {
            let id = format!("i{k}");
            net.register((k * 7) % N, instance(&id));
            expected.insert(id.clone());
            let took = net
                .run_until(Duration::from_secs(30), |net| {
                    (0..N).all(|i| net.registry_ids(i).contains(&id))
                })
                .expect("a registration reaches all 50 nodes");
            spread.push(took);
        }
        spread.sort();
        eprintln!(
            "[sim] registration visible on all 50 nodes: p50 {:?}, max {:?}",
            spread[spread.len() / 2],
            spread[spread.len() - 1]
        );
        // Partition 10 away for 30 s; each side registers more meanwhile.
        let minority: Vec<usize> = (40..N).collect();
        net.partition(&minority);
        net.register(3, instance("during-majority"));
        net.register(45, instance("during-minority"));
        net.run_for(Duration::from_secs(30));
        // The majority has declared the 10 dead and withdrawn what they own.
        let owned_by_minority: Vec<String> = (0..20)
            .filter(|k| (k * 7) % N >= 40)
            .map(|k| format!("i{k}"))
            .collect();
        assert!(!owned_by_minority.is_empty());
        for id in &owned_by_minority {
            assert!(
                !net.registry_ids(0).contains(id),
                "{id} withdrawn on the majority side"
            );
        }
        net.heal();
        expected.insert("during-majority".to_owned());
        expected.insert("during-minority".to_owned());
        let took = net
            .run_until(Duration::from_secs(120), |net| {
                net.all_agree(&all) && registries_agree(net, &all, &expected)
            })
            .expect("all 50 registries agree after healing");
        eprintln!("[sim] registries of all 50 nodes agree {took:?} after the partition healed");

        // A crashed owner's registrations leave every other registry.
        net.crash(14);
        let owned: Vec<String> = (0..20)
            .filter(|k| (k * 7) % N == 14)
            .map(|k| format!("i{k}"))
            .collect();
        assert!(!owned.is_empty());
        let others: Vec<usize> = (0..N).filter(|&i| i != 14).collect();
        let took = net
            .run_until(Duration::from_secs(60), |net| {
                others
                    .iter()
                    .all(|&i| owned.iter().all(|id| !net.registry_ids(i).contains(id)))
            })
            .expect("a crashed node's registrations are withdrawn everywhere");
        eprintln!("[sim] crashed node's registrations withdrawn on all 49 others after {took:?}");
    }

    #[test]
    fn a_node_only_udp_cannot_reach_stays_alive_through_the_tcp_fallback() {
        // Node 7's UDP is dropped both ways for 40 s (a firewall); TCP still works. With
        // memberlist's fallback ping every probe of it succeeds over TCP; without, it is
        // suspected and declared dead like a crashed node.
        let run = |tcp_pings: bool| {
            let mut net =
                SimNetwork::with_config(20, 12, move |c| c.disable_tcp_pings = !tcp_pings);
            for i in 1..20 {
                net.join(i, 0);
            }
            let all: Vec<usize> = (0..20).collect();
            assert!(
                net.run_until(Duration::from_secs(60), |net| net.all_agree(&all))
                    .is_some()
            );
            let t0 = net.now();
            net.set_udp_blocked(7, true);
            net.run_for(Duration::from_secs(40));
            let about_7 = |pred: fn(&MemberEvent, &str) -> bool| {
                count_events(&net, t0, |e| pred(e, "node-7"))
            };
            let suspected = about_7(|e, n| *e == MemberEvent::Suspected(n.to_owned()));
            let died = about_7(|e, n| *e == MemberEvent::Died(n.to_owned()));
            let others_died = count_events(&net, t0, |e| matches!(e, MemberEvent::Died(_))) - died;
            eprintln!(
                "[sim] UDP to/from node-7 dropped for 40 s, TCP pings {}: {suspected} suspect and \
                 {died} dead events about it, {others_died} about others; {} TCP pings, {} answered",
                if tcp_pings { "on" } else { "off" },
                net.stats.tcp_pings,
                net.stats.tcp_pings_answered
            );
            (suspected, died, others_died, net)
        };
        let (suspected, died, others_died, net) = run(true);
        assert_eq!((suspected, died, others_died), (0, 0, 0));
        assert!(net.stats.tcp_pings_answered > 0);
        for i in (0..20).filter(|&i| i != 7) {
            assert_eq!(net.state_of(i, "node-7"), Some(MemberState::Alive));
        }
        let (_, died, _, net) = run(false);
        assert!(died > 0, "without the fallback node-7 is declared dead");
        assert_eq!(net.stats.tcp_pings, 0);
    }
}
