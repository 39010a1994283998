//! Reaping long-dead members, and serf's reconnects to failed ones that heal partitions.

use std::net::SocketAddr;

use rand::Rng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use super::{Failed, Output, Swim};

impl Swim {
    // ---- reaping and reconnects ----

    /// `resetNodes`: drop members dead or left for longer than `gossip_to_the_dead`, then
    /// reshuffle the probe order. We never reap ourselves.
    pub(super) fn reset_nodes(&mut self, now: Instant) {
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

    pub(super) fn remember_failed(&mut self, name: &str, addr: SocketAddr, now: Instant) {
        if self.failed.len() >= self.config.max_members && !self.failed.contains_key(name) {
            return;
        }
        self.failed
            .insert(name.to_string(), Failed { addr, since: now });
    }

    /// serf's `reconnect`: join a random failed member with probability
    /// failed / alive, so the cluster as a whole tries each failed member about once per
    /// interval; this is what heals a partition after both sides declared the other dead.
    pub(super) fn reconnect(&mut self, now: Instant) {
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
