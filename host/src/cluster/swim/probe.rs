//! Failure detection: direct and indirect probes, acks, nacks, and pings relayed for peers.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::{
    MemberState, Output, Probe, Relay, Swim, due, ip_bytes, k_random_nodes, next_period,
    socket_addr, source_or,
};
use crate::cluster::messages::{AckResp, IndirectPingReq, Message, NackResp, Ping, Suspect};

/// Most indirect pings we relay at once (peer input must not grow memory unboundedly).
const MAX_RELAYS: usize = 1024;

impl Swim {
    // ---- probing (state.go: probe, probeNode) ----

    pub(super) fn maybe_start_probe(&mut self, now: Instant) {
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

    pub(super) fn advance_probe(&mut self, now: Instant) {
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

    pub(super) fn handle_ack(&mut self, seq: u32) {
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

    pub(super) fn handle_nack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            p.nacks = p.nacks.saturating_add(1).min(p.expected_nacks);
        }
    }

    /// `handlePing`: ack to the advertised source, or to the packet's source.
    pub(super) fn handle_ping(&mut self, from: SocketAddr, p: Ping) {
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
    pub(super) fn handle_indirect_ping(
        &mut self,
        from: SocketAddr,
        ind: IndirectPingReq,
        now: Instant,
    ) {
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

    pub(super) fn expire_relays(&mut self, now: Instant) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::swim::test_support::*;
    use crate::cluster::swim::{MemberEvent, Output};
    use std::time::Duration;

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
}
