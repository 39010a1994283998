//! The cluster's scale scenarios on the in-memory network (`sim.rs`): what
//! `bench/cluster-sim.sh N` prints, one `name value` line per figure, all in virtual time.
//!
//! One run: N nodes join, go idle, take registrations at a steady rate, lose 1% of their
//! nodes at once, and (optionally) take a burst of many registrations; loss applies
//! throughout. Small-N runs of the same code are unit tests; the full-size run is the
//! ignored test `cluster_sim_bench`, configured by environment variables (see
//! `bench/cluster-sim.sh`).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::messages::{NodeState, PushNodeState, PushPull};
use super::replication::Replication;
use super::sim::SimNetwork;
use super::swim::{MemberEvent, MemberState, VSN, push_pull_scale};
use super::wire;
use crate::registry::{Registration, Registry, TOMBSTONE_GRACE};

/// memberlist's `maxPushStateBytes` (net.go): a push/pull stream above this is refused.
pub const MEMBERLIST_MAX_PUSH_STATE_BYTES: u64 = 20 * 1024 * 1024;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Nodes.
    pub nodes: usize,
    /// Packet loss on every link, from the start.
    pub loss: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Registrations per second, cluster-wide, during the registering phase.
    pub reg_rate: u32,
    /// Length of the registering phase.
    pub reg_duration: Duration,
    /// Registrations made at once in the large-registry phase (0: skip it).
    pub large_registry: usize,
    /// Longest the idle phase lasts (it is one push/pull period at this size otherwise).
    pub idle_max: Duration,
    /// memberlist's TCP fallback ping (on by default, as in memberlist).
    pub tcp_pings: bool,
}

impl Scenario {
    /// The bench's defaults for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Scenario {
            nodes,
            loss: 0.0,
            seed: 1,
            reg_rate: 10,
            reg_duration: Duration::from_secs(30),
            large_registry: 0,
            idle_max: Duration::from_secs(600),
            tcp_pings: true,
        }
    }
}

/// The figures, in print order.
#[derive(Debug, Default)]
pub struct Figures(pub Vec<(String, f64)>);

impl Figures {
    fn put(&mut self, name: &str, value: f64) {
        eprintln!("[sim-bench] {name} {value}");
        self.0.push((name.to_owned(), value));
    }

    fn secs(&mut self, name: &str, d: Duration) {
        self.put(name, (d.as_secs_f64() * 1000.0).round() / 1000.0);
    }

    /// A figure by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// The `p`th percentile (0-100) of sorted values, nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn instance(id: String) -> Registration {
    Registration {
        service: format!("svc-{}", id.len() % 7),
        id,
        address: "10.200.0.1".to_owned(),
        port: 8080,
        metadata: Default::default(),
        check: None,
        ttl_s: None,
    }
}

/// Registrations under way: when each was made and which nodes still lack it.
#[derive(Default)]
struct Spreading {
    pending: Vec<(String, Instant, Vec<usize>)>,
    done: Vec<Duration>,
}

impl Spreading {
    fn add(&mut self, id: String, at: Instant, live: &[usize]) {
        self.pending.push((id, at, live.to_vec()));
    }

    fn check(&mut self, net: &SimNetwork) {
        let now = net.now();
        let done = &mut self.done;
        self.pending.retain_mut(|(id, at, missing)| {
            missing.retain(|&i| !net.node(i).crashed && !net.has_registration(i, id));
            if missing.is_empty() {
                done.push(now - *at);
                return false;
            }
            true
        });
    }
}

/// Runs the scenario; the figures come back in print order.
pub fn run(sc: &Scenario) -> Figures {
    let n = sc.nodes;
    let mut fig = Figures::default();
    let mut rng = StdRng::seed_from_u64(sc.seed ^ 0xbe4c);
    let tcp_pings = sc.tcp_pings;
    let mut net = SimNetwork::with_config(n, sc.seed, move |c| c.disable_tcp_pings = !tcp_pings);
    net.set_loss(sc.loss);
    let all: Vec<usize> = (0..n).collect();
    let t_start = net.now();

    // Join: everybody at once through node 0 (the worst case for dissemination).
    for i in 1..n {
        net.join(i, 0);
    }
    let check = Duration::from_millis(250);
    let converged = net.run_until_every(Duration::from_secs(1800), check, |net| {
        net.all_count_alive(&all)
    });
    match converged {
        Some(took) => fig.secs("members_converged_s", took),
        None => fig.put("members_converged_s", f64::NAN),
    }
    net.enable_registries();

    // Idle: let the join's broadcasts drain, then one push/pull period (scaled for this
    // size, so every node starts about one push/pull in the window).
    net.run_until_every(Duration::from_secs(120), check, |net| {
        (0..net.len()).all(|i| net.node(i).swim.pending_broadcasts() == 0)
    });
    let window = push_pull_scale(Duration::from_secs(30), n).min(sc.idle_max);
    let (b0, t0) = (net.stats.bytes(), net.now());
    net.stats.max_push_pull_bytes = 0;
    net.run_for(window);
    let idle = (net.stats.bytes() - b0) as f64 / n as f64 / (net.now() - t0).as_secs_f64();
    fig.put("gossip_bytes_per_node_s_idle", idle.round());
    fig.put(
        "push_pull_bytes_max_idle",
        net.stats.max_push_pull_bytes as f64,
    );

    // Registering: `reg_rate` per second cluster-wide, each on a random node.
    let mut spreading = Spreading::default();
    let mut owner_of: BTreeMap<String, usize> = BTreeMap::new();
    let every = Duration::from_secs(1) / sc.reg_rate.max(1);
    let (b0, t0) = (net.stats.bytes(), net.now());
    let end = t0 + sc.reg_duration;
    let mut next_reg = t0;
    let mut next_check = t0;
    let mut k = 0;
    while net.now() < end {
        if net.now() >= next_reg {
            let origin = rng.random_range(0..n);
            let id = format!("r{k}");
            k += 1;
            net.register(origin, instance(id.clone()));
            owner_of.insert(id.clone(), origin);
            spreading.add(id, net.now(), &all);
            next_reg += every;
        }
        if net.now() >= next_check {
            spreading.check(&net);
            next_check += Duration::from_millis(20);
        }
        net.step();
    }
    let registering = (net.stats.bytes() - b0) as f64 / n as f64 / (net.now() - t0).as_secs_f64();
    // Stragglers (a node that missed every gossiped copy) wait for push/pull.
    let limit = net.now() + push_pull_scale(Duration::from_secs(30), n) + Duration::from_secs(60);
    while !spreading.pending.is_empty() && net.now() < limit {
        spreading.check(&net);
        net.run_for(Duration::from_millis(20));
    }
    let not_spread = spreading.pending.len();
    let mut spread = std::mem::take(&mut spreading.done);
    spread.sort();
    fig.secs("registration_p50_s", percentile(&spread, 50.0));
    fig.secs("registration_p99_s", percentile(&spread, 99.0));
    fig.secs("registration_max_s", percentile(&spread, 100.0));
    fig.put("registrations", spread.len() as f64);
    fig.put("registrations_not_everywhere", not_spread as f64);
    fig.put("gossip_bytes_per_node_s_registering", registering.round());

    // Failure: 1% of the nodes (at least one) crash at once; each owns a registration.
    let victims: Vec<usize> = {
        let candidates: Vec<usize> = (1..n).collect();
        candidates
            .choose_multiple(&mut rng, (n / 100).max(1))
            .copied()
            .collect()
    };
    for &v in &victims {
        let id = format!("victim-{v}");
        net.register(v, instance(id.clone()));
        owner_of.insert(id, v);
    }
    let victim_ids: Vec<(usize, Vec<String>)> = victims
        .iter()
        .map(|&v| {
            let ids = owner_of
                .iter()
                .filter(|(_, o)| **o == v)
                .map(|(id, _)| id.clone())
                .collect();
            (v, ids)
        })
        .collect();
    net.run_until_every(Duration::from_secs(60), check, |net| {
        victim_ids.iter().all(|(_, ids)| {
            ids.iter()
                .all(|id| (0..net.len()).all(|i| net.has_registration(i, id)))
        })
    });
    let survivors: Vec<usize> = (0..n).filter(|i| !victims.contains(i)).collect();
    let t_crash = net.now();
    for &v in &victims {
        net.crash(v);
    }
    let names: Vec<(usize, String)> = victims.iter().map(|&v| (v, SimNetwork::name(v))).collect();
    let mut detected: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut withdrawn: BTreeMap<usize, Duration> = BTreeMap::new();
    let limit = t_crash + Duration::from_secs(300);
    while (detected.len() < victims.len() || withdrawn.len() < victims.len()) && net.now() < limit {
        net.run_for(Duration::from_millis(50));
        let since = net.now() - t_crash;
        for (v, name) in &names {
            if !detected.contains_key(v)
                && survivors.iter().all(|&o| {
                    matches!(
                        net.state_of(o, name),
                        Some(MemberState::Dead | MemberState::Left) | None
                    )
                })
            {
                detected.insert(*v, since);
            }
        }
        for (v, ids) in &victim_ids {
            if !withdrawn.contains_key(v)
                && survivors
                    .iter()
                    .all(|&o| ids.iter().all(|id| !net.has_registration(o, id)))
            {
                withdrawn.insert(*v, since);
            }
        }
    }
    let mut first: Vec<Duration> = names
        .iter()
        .filter_map(|(_, name)| {
            survivors
                .iter()
                .filter_map(|&o| {
                    net.node(o).events.iter().find_map(|(t, e)| {
                        (*t >= t_crash && *e == MemberEvent::Died(name.clone()))
                            .then(|| *t - t_crash)
                    })
                })
                .min()
        })
        .collect();
    first.sort();
    let mut detected: Vec<Duration> = detected.into_values().collect();
    detected.sort();
    let mut withdrawn: Vec<Duration> = withdrawn.into_values().collect();
    withdrawn.sort();
    fig.put("crashed", victims.len() as f64);
    fig.secs("failure_first_detected_p50_s", percentile(&first, 50.0));
    fig.secs("failure_detected_p50_s", percentile(&detected, 50.0));
    fig.secs("failure_detected_p99_s", percentile(&detected, 99.0));
    fig.put(
        "failure_not_detected",
        (victims.len() - detected.len()) as f64,
    );
    fig.secs("withdrawn_p50_s", percentile(&withdrawn, 50.0));
    fig.secs("withdrawn_p99_s", percentile(&withdrawn, 99.0));

    // Large registry: many registrations at once, spread over the survivors.
    if sc.large_registry > 0 {
        let base = survivors
            .iter()
            .filter_map(|&i| net.node(i).registry.as_ref().map(|r| r.live_count()))
            .max()
            .unwrap_or(0);
        let expected = base + sc.large_registry;
        let t0 = net.now();
        let b0 = net.stats.bytes();
        net.stats.max_push_pull_bytes = 0;
        for j in 0..sc.large_registry {
            let origin = survivors[j % survivors.len()];
            net.register(origin, instance(format!("big{j}")));
        }
        let took = net.run_until_every(Duration::from_secs(3600), Duration::from_secs(1), |net| {
            survivors.iter().all(|&i| {
                net.node(i)
                    .registry
                    .as_ref()
                    .is_some_and(|r| r.live_count() >= expected)
            })
        });
        match took {
            Some(took) => fig.secs("large_registry_converged_s", took),
            None => fig.put("large_registry_converged_s", f64::NAN),
        }
        let secs = (net.now() - t0).as_secs_f64();
        fig.put("large_registry_entries", expected as f64);
        fig.put(
            "gossip_bytes_per_node_s_large_registry",
            ((net.stats.bytes() - b0) as f64 / n as f64 / secs).round(),
        );
        fig.put(
            "push_pull_bytes_max_large_registry",
            net.stats.max_push_pull_bytes as f64,
        );
    }
    fig.put(
        "push_pull_within_memberlist_limit",
        f64::from(u8::from(
            net.stats.max_push_pull_bytes <= MEMBERLIST_MAX_PUSH_STATE_BYTES,
        )),
    );

    // False deaths: a Died event about a node that never crashed, over the whole run.
    let false_deaths = (0..n)
        .flat_map(|i| net.node(i).events.iter())
        .filter(|(t, e)| {
            *t >= t_start
                && matches!(e, MemberEvent::Died(name)
                    if !names.iter().any(|(_, v)| v == name))
        })
        .count();
    fig.put("false_deaths", false_deaths as f64);
    fig.put("tcp_fallback_pings", net.stats.tcp_pings as f64);
    fig.put("loss", sc.loss);
    fig.put(
        "virtual_s",
        ((net.now() - t_start).as_secs_f64() * 10.0).round() / 10.0,
    );
    fig
}

/// The bytes of one push/pull stream message with `members` alive members (named and
/// addressed as the simulator's) and a registry of `registrations` instances as its user
/// state, encoded by the real codec: what a node of such a cluster sends per exchange.
pub fn push_pull_bytes(members: usize, registrations: usize) -> usize {
    let nodes = (0..members)
        .map(|i| {
            let addr = SimNetwork::addr(i);
            PushNodeState {
                name: SimNetwork::name(i),
                addr: match addr.ip() {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                },
                port: addr.port(),
                meta: Vec::new(),
                incarnation: 1,
                state: NodeState::Alive,
                vsn: VSN.to_vec(),
            }
        })
        .collect();
    let start = Instant::now();
    let mut registry = Registry::new("node-0", 1_000_000, TOMBSTONE_GRACE);
    for j in 0..registrations {
        registry.register(instance(format!("big{j}")), start);
    }
    let user_state = Replication::default()
        .local_state(&registry)
        .as_ref()
        .clone();
    let state = PushPull {
        join: false,
        nodes,
        user_state,
    };
    wire::encode_push_pull(&state).len()
}

/// Registration spread among `n` nodes of which the last `foreign` are memberlist nodes
/// without our registry (Go peers): p50 and p99 over `count` registrations made one at a
/// time on random registry nodes, with registry relaying on or off (push/pull alone).
pub fn foreign_spread(
    n: usize,
    foreign: usize,
    relay: bool,
    count: usize,
    seed: u64,
) -> (Duration, Duration) {
    let mut net = SimNetwork::new(n, seed);
    let ours = n - foreign;
    for i in ours..n {
        net.set_foreign(i);
    }
    for i in 1..n {
        net.join(i, 0);
    }
    let all: Vec<usize> = (0..n).collect();
    net.run_until(Duration::from_secs(120), |net| net.all_count_alive(&all));
    net.enable_registries();
    net.set_registry_relay(relay);
    let mut rng = StdRng::seed_from_u64(seed);
    let ours: Vec<usize> = (0..ours).collect();
    let mut spread = Vec::new();
    for k in 0..count {
        let id = format!("f{k}");
        net.register(*ours.choose(&mut rng).unwrap_or(&0), instance(id.clone()));
        let took =
            net.run_until_every(Duration::from_secs(300), Duration::from_millis(10), |net| {
                ours.iter().all(|&i| net.has_registration(i, &id))
            });
        spread.push(took.unwrap_or(Duration::from_secs(300)));
    }
    spread.sort();
    (percentile(&spread, 50.0), percentile(&spread, 99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// `bench/cluster-sim.sh N`: the full-size run, figures on standard output.
    #[test]
    #[ignore = "benchmark: run through bench/cluster-sim.sh"]
    fn cluster_sim_bench() {
        let mut sc = Scenario::new(env("SIM_NODES", 1000));
        sc.loss = env("LOSS", 0.0);
        sc.seed = env("SIM_SEED", 1);
        sc.reg_rate = env("SIM_REG_RATE", 10);
        sc.reg_duration = Duration::from_secs(env("SIM_REG_S", 30));
        sc.large_registry = env("SIM_LARGE_REGISTRY", 0);
        sc.tcp_pings = env("SIM_TCP_PINGS", 1) == 1;
        let started = std::time::Instant::now();
        let fig = run(&sc);
        println!("nodes {}", sc.nodes);
        for (name, value) in &fig.0 {
            println!("{name} {value}");
        }
        let members = sc.nodes;
        for regs in [0, 1_000, 10_000] {
            println!(
                "push_pull_bytes_{members}_members_{regs}_registrations {}",
                push_pull_bytes(members, regs)
            );
        }
        println!("memberlist_max_push_state_bytes {MEMBERLIST_MAX_PUSH_STATE_BYTES}");
        if env("SIM_FOREIGN", 1) == 1 {
            for (foreign, relay, label) in [
                (0, true, "no_go_of_10_relay"),
                (1, true, "one_go_of_10_relay"),
                (1, false, "one_go_of_10_push_pull_only"),
            ] {
                let (p50, p99) = foreign_spread(10, foreign, relay, 20, sc.seed);
                println!("{label}_registration_p50_s {:.3}", p50.as_secs_f64());
                println!("{label}_registration_p99_s {:.3}", p99.as_secs_f64());
            }
        }
        println!("wall_s {:.1}", started.elapsed().as_secs_f64());
    }

    /// Every phase at a small size: the figures exist and meet the goals with room.
    #[test]
    fn small_cluster_scenario_meets_the_goals() {
        let mut sc = Scenario::new(40);
        sc.reg_duration = Duration::from_secs(5);
        sc.large_registry = 500;
        sc.idle_max = Duration::from_secs(30);
        let fig = run(&sc);
        let get = |name: &str| fig.get(name).unwrap_or(f64::NAN);
        assert!(get("members_converged_s") < 60.0);
        assert!(get("registration_p99_s") < 3.0);
        assert_eq!(get("registrations"), 50.0);
        assert_eq!(get("registrations_not_everywhere"), 0.0);
        assert!(get("failure_detected_p99_s") < 15.0);
        assert_eq!(get("failure_not_detected"), 0.0);
        assert!(get("withdrawn_p99_s") < 15.0);
        assert!(get("gossip_bytes_per_node_s_idle") < 2048.0);
        assert!(get("large_registry_converged_s") < 600.0);
        assert_eq!(get("push_pull_within_memberlist_limit"), 1.0);
        assert_eq!(get("false_deaths"), 0.0);
    }

    #[test]
    fn registrations_reach_every_registry_node_past_a_foreign_member() {
        // One memberlist node without our registry among 10 (a Go peer): it drops the
        // deltas gossiped to it and relays nothing; our nodes relay what is news to them.
        let (p50, p99) = foreign_spread(10, 1, true, 10, 13);
        eprintln!("[sim] 1 foreign of 10, relaying: registration on all 9 p50 {p50:?} p99 {p99:?}");
        assert!(p99 <= Duration::from_secs(2), "p99 {p99:?}");
    }

    #[test]
    fn push_pull_state_at_1000_members_and_10000_registrations_fits_memberlist() {
        let bytes = push_pull_bytes(1000, 10_000);
        eprintln!("[sim] push/pull at 1,000 members and 10,000 registrations: {bytes} bytes");
        assert!((bytes as u64) < MEMBERLIST_MAX_PUSH_STATE_BYTES);
        assert!(bytes > push_pull_bytes(1000, 0));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
