//! Load-balancing algorithms: given the targets' weights and load, pick one. Pure code.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::config::BalancerKind;

/// What a balancer sees of one target at pick time.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub weight: u32,
    /// Requests currently in flight to this target.
    pub in_flight: usize,
    /// A stable hash of the target's identity (for ip_hash).
    pub id_hash: u64,
    /// False while the target is unhealthy, ejected or behind an open breaker (or was
    /// already tried by this request): it is skipped, the others keep their order.
    pub available: bool,
}

/// A balancer with its own state; one per upstream group and config snapshot.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(AtomicUsize),
    /// nginx's smooth weighted round robin: current weights per target.
    WeightedRoundRobin(Mutex<Vec<i64>>),
    /// Rotating start so ties do not all land on the first target.
    LeastConnections(AtomicUsize),
    /// Rendezvous (highest random weight) hashing of the client IP: a target leaving the
    /// group only moves the clients that were on it.
    IpHash,
    Random,
}

impl Balancer {
    pub fn new(kind: BalancerKind, targets: usize) -> Self {
        match kind {
            BalancerKind::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(0)),
            BalancerKind::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(Mutex::new(vec![0; targets]))
            }
            BalancerKind::LeastConnections => Balancer::LeastConnections(AtomicUsize::new(0)),
            BalancerKind::IpHash => Balancer::IpHash,
            BalancerKind::Random => Balancer::Random,
        }
    }

    /// Index of the chosen available candidate; `None` when none is available.
    pub fn pick(&self, candidates: &[Candidate], client_ip: IpAddr) -> Option<usize> {
        let n = candidates.len();
        let available = candidates.iter().filter(|c| c.available).count();
        if available <= 1 {
            return candidates.iter().position(|c| c.available);
        }
        Some(match self {
            Balancer::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| candidates[i].available)
                    .unwrap_or(0)
            }
            Balancer::WeightedRoundRobin(current) => {
                // A poisoned lock only means another picker panicked mid-update; the
                // weights are still usable numbers.
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                current.resize(n, 0);
                smooth_weighted(&mut current, candidates)
            }
            Balancer::LeastConnections(start) => {
                let start = start.fetch_add(1, Ordering::Relaxed);
                least_loaded(candidates, start)
            }
            Balancer::IpHash => {
                let ip = hash_ip(client_ip);
                (0..n)
                    .filter(|&i| candidates[i].available)
                    .max_by_key(|&i| mix(ip ^ candidates[i].id_hash))
                    .unwrap_or(0)
            }
            Balancer::Random => {
                let weight = |c: &Candidate| if c.available { u64::from(c.weight) } else { 0 };
                let total: u64 = candidates.iter().map(weight).sum();
                let mut ticket = rand::rng().random_range(0..total.max(1));
                candidates
                    .iter()
                    .position(|c| {
                        let w = weight(c);
                        if ticket < w {
                            true
                        } else {
                            ticket -= w;
                            false
                        }
                    })
                    .unwrap_or(n - 1)
            }
        })
    }
}

/// Each pick adds every weight to its current value, takes the largest and subtracts
/// the total from it: weights 5,1,1 give a a b a c a a rather than a a a a a b c.
/// Unavailable targets take no part (as nginx skips peers that are down).
fn smooth_weighted(current: &mut [i64], candidates: &[Candidate]) -> usize {
    let mut total = 0i64;
    let mut best = None::<usize>;
    for (i, c) in candidates.iter().enumerate() {
        if !c.available {
            continue;
        }
        let w = i64::from(c.weight);
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best.unwrap_or(0);
    current[best] -= total;
    best
}

/// Fewest in-flight requests per unit of weight; ties broken by rotating start.
fn least_loaded(candidates: &[Candidate], start: usize) -> usize {
    let n = candidates.len();
    let mut best = (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| candidates[i].available)
        .unwrap_or(0);
    for step in 1..n {
        let i = (start + step) % n;
        if !candidates[i].available {
            continue;
        }
        let (a, b) = (&candidates[i], &candidates[best]);
        // a.in_flight / a.weight < b.in_flight / b.weight, without division.
        if (a.in_flight as u128) * u128::from(b.weight)
            < (b.in_flight as u128) * u128::from(a.weight)
        {
            best = i;
        }
    }
    best
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    }
}

/// FNV-1a: a hash that is the same on every node and every build, so ip_hash sends a
/// client to the same target whichever gateway of a cluster it reaches.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 finaliser: spreads FNV's weak low bits before comparing scores.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                weight,
                in_flight: 0,
                id_hash: stable_hash(format!("t{i}").as_bytes()),
                available: true,
            })
            .collect()
    }

    fn picks(b: &Balancer, c: &[Candidate], n: usize) -> Vec<usize> {
        let ip = "127.0.0.1".parse().unwrap();
        (0..n).map(|_| b.pick(c, ip).unwrap()).collect()
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(BalancerKind::RoundRobin, 3);
        assert_eq!(picks(&b, &cands(&[1, 1, 1]), 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_round_robin_is_smooth_like_nginx() {
        let b = Balancer::new(BalancerKind::WeightedRoundRobin, 3);
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(picks(&b, &cands(&[5, 1, 1]), 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let b = Balancer::new(BalancerKind::WeightedRoundRobin, 2);
        let seq = picks(&b, &cands(&[2, 1]), 300);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 200);
    }

    #[test]
    fn least_connections_prefers_the_idlest_per_weight_and_rotates_ties() {
        let b = Balancer::new(BalancerKind::LeastConnections, 3);
        let mut c = cands(&[1, 1, 1]);
        c[0].in_flight = 5;
        c[1].in_flight = 1;
        c[2].in_flight = 3;
        assert_eq!(picks(&b, &c, 3), vec![1, 1, 1]);
        c[2].weight = 4; // 3/4 < 1/1
        assert_eq!(picks(&b, &c, 1), vec![2]);
        let even = cands(&[1, 1, 1]);
        let mut seen = picks(&b, &even, 3);
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
    }

    #[test]
    fn ip_hash_is_sticky_and_only_moves_clients_of_a_removed_target() {
        let b = Balancer::IpHash;
        let c = cands(&[1, 1, 1, 1]);
        let ips: Vec<IpAddr> = (0..200u8).map(|i| IpAddr::from([10, 0, i, 1])).collect();
        let before: Vec<usize> = ips.iter().map(|ip| b.pick(&c, *ip).unwrap()).collect();
        let again: Vec<usize> = ips.iter().map(|ip| b.pick(&c, *ip).unwrap()).collect();
        assert_eq!(before, again);
        for t in 0..4 {
            assert!(
                before.iter().filter(|&&i| i == t).count() > 20,
                "target {t} underused"
            );
        }
        let without_last = &c[..3];
        for (ip, was) in ips.iter().zip(&before) {
            let now = b.pick(without_last, *ip).unwrap();
            if *was != 3 {
                assert_eq!(now, *was);
            }
        }
    }

    #[test]
    fn random_respects_weights() {
        let b = Balancer::Random;
        let seq = picks(&b, &cands(&[9, 1]), 5000);
        let heavy = seq.iter().filter(|&&i| i == 0).count();
        assert!((4200..4800).contains(&heavy), "{heavy}");
    }

    #[test]
    fn unavailable_targets_are_skipped_by_every_algorithm() {
        let ip = "10.1.2.3".parse().unwrap();
        let kinds = [
            BalancerKind::RoundRobin,
            BalancerKind::WeightedRoundRobin,
            BalancerKind::LeastConnections,
            BalancerKind::IpHash,
            BalancerKind::Random,
        ];
        for kind in kinds {
            let b = Balancer::new(kind, 3);
            let mut c = cands(&[1, 5, 1]);
            c[1].available = false;
            let seen: Vec<usize> = (0..60).map(|_| b.pick(&c, ip).unwrap()).collect();
            assert!(!seen.contains(&1), "{kind:?} picked an unavailable target");
            if kind != BalancerKind::IpHash {
                assert!(seen.contains(&0) && seen.contains(&2), "{kind:?}: {seen:?}");
            }
            c[0].available = false;
            c[2].available = false;
            assert_eq!(b.pick(&c, ip), None, "{kind:?}");
            c[2].available = true;
            assert_eq!(b.pick(&c, ip), Some(2), "{kind:?}");
        }
        // Smooth weighting stays exact over the targets that remain.
        let b = Balancer::new(BalancerKind::WeightedRoundRobin, 3);
        let mut c = cands(&[5, 9, 1]);
        c[1].available = false;
        let seq = picks(&b, &c, 60);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 50);
    }

    #[test]
    fn empty_and_single_groups() {
        let b = Balancer::new(BalancerKind::RoundRobin, 0);
        assert_eq!(b.pick(&[], "127.0.0.1".parse().unwrap()), None);
        assert_eq!(picks(&b, &cands(&[3]), 2), vec![0, 0]);
    }
}
