//! Push/pull: our full state out, a peer's merged in (`sendLocalState`, `mergeState`).

use tokio::time::Instant;

use super::{MemberState, Output, Swim, ip_bytes, k_random_nodes};
use crate::cluster::messages::{Alive, Dead, NodeState, PushNodeState, PushPull, Suspect};

/// Most received push/pull user states held until `take_remote_user_states`.
const MAX_PENDING_USER_STATES: usize = 64;

impl Swim {
    // ---- push/pull (net.go: sendLocalState, mergeRemoteState; state.go: mergeState) ----

    pub(super) fn local_state(&self, join: bool) -> PushPull {
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
            // The driver adds the application's state (`Delegate.LocalState`) when it
            // sends: serialising it only for the push/pulls that happen.
            user_state: Vec::new(),
        }
    }

    pub(super) fn merge_remote(&mut self, remote: PushPull, now: Instant) {
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
    pub(super) fn push_pull_random(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::Message;
    use crate::cluster::swim::MemberEvent;
    use crate::cluster::swim::test_support::*;

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
}
