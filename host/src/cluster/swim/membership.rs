//! Membership state changes: alive, suspect, dead and refute (state.go), with our guards.

use std::net::SocketAddr;

use rand::Rng;
use tokio::time::Instant;

use super::suspicion::{Suspicion, suspicion_timeout};
use super::{Member, MemberEvent, MemberState, NodeEntry, Swim, socket_addr};
use crate::cluster::messages::{Alive, Dead, Message, Suspect};

/// memberlist's `MetaMaxSize`: larger metadata from a peer is rejected.
pub(super) const META_MAX_SIZE: usize = 512;
/// Longest node name we accept from a peer (bounds every name-keyed structure).
const MAX_NAME_LEN: usize = 512;

impl Swim {
    // ---- state changes (state.go: aliveNode, suspectNode, deadNode, refute) ----

    /// `handleAlive`: port 0 means "the configured port" (protocol < 2).
    pub(super) fn handle_alive(&mut self, mut a: Alive, now: Instant) {
        if a.port == 0 {
            a.port = self.config.addr.port();
        }
        self.alive_node(a, false, now);
    }

    /// `aliveNode`: learn a node, or accept a newer incarnation of it; about ourselves,
    /// refute anything but our own exact current state.
    pub(super) fn alive_node(&mut self, a: Alive, bootstrap: bool, now: Instant) {
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
    pub(super) fn suspect_node(&mut self, s: Suspect, now: Instant) {
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
    pub(super) fn expire_suspicions(&mut self, now: Instant) {
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
    pub(super) fn dead_node(&mut self, d: Dead, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::swim::gossip::MAX_PENDING_USER_MESSAGES;
    use crate::cluster::swim::test_support::*;
    use crate::cluster::swim::{Output, SwimConfig};

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
}
