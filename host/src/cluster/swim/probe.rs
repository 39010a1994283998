//! Failure detection: direct and indirect probes, acks, nacks, and pings relayed for peers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Fallback, MemberState, Output, Probe, Relay, Swim, due, ip_bytes, k_random_nodes, next_period,
    socket_addr, source_or,
};
use crate::cluster::messages::{AckResp, IndirectPingReq, Message, NackResp, Ping, Suspect};

/// Most indirect pings we relay at once (peer input must not grow memory unboundedly).
const MAX_RELAYS: usize = 1024;
/// How long past the probe's end we wait for the driver to report a TCP fallback ping
/// still under way (its stream is given up at the probe's end; this covers the hand-over,
/// as `probeNode` waits for the fallback goroutine to finish).
const FALLBACK_GRACE: Duration = Duration::from_millis(50);

impl Probe {
    /// When the probe's outcome is decided: its end, or shortly after while a TCP
    /// fallback ping is still unreported.
    pub(super) fn decision_at(&self) -> Instant {
        if self.fallback == Some(Fallback::Pending) {
            self.deadline + FALLBACK_GRACE
        } else {
            self.deadline
        }
    }
}

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
            fallback: None,
        });
    }

    pub(super) fn advance_probe(&mut self, now: Instant) {
        let Some(p) = &self.probe else { return };
        if !p.indirect_sent && now >= p.timeout_at {
            self.send_indirect_pings();
        }
        let Some(p) = &self.probe else { return };
        if now < p.decision_at() {
            return;
        }
        if p.fallback == Some(Fallback::Contacted) {
            // `probeNode`: the UDP probes failed but TCP got through; the node is not
            // suspected (and the probe counts as a success for our health).
            tracing::warn!(node = %p.node, "was able to connect over TCP but other probes failed, network may be misconfigured");
            self.probe = None;
            self.awareness.apply_delta(-1);
            return;
        }
        self.probe_failed(now);
    }

    /// Records the driver's report on the TCP fallback ping of the probe `seq`.
    pub(super) fn tcp_ping_result(&mut self, seq: u32, contacted: bool) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            p.fallback = Some(if contacted {
                Fallback::Contacted
            } else {
                Fallback::Failed
            });
        }
    }

    /// `probeNode`, second half: ask `indirect_checks` random alive peers to probe for us,
    /// wanting nacks from those that understand protocol 4, and (unless disabled) try the
    /// node directly over TCP if it speaks protocol 3 or later.
    fn send_indirect_pings(&mut self) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect_sent = true;
        let (seq, target, deadline) = (p.seq, p.node.clone(), p.deadline);
        let Some(entry) = self.nodes.get(&target) else {
            return;
        };
        let (t_ip, t_port) = (ip_bytes(entry.member.addr.ip()), entry.member.addr.port());
        let (t_addr, t_pmax) = (entry.member.addr, entry.pmax());
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
        let fallback = !self.config.disable_tcp_pings && t_pmax >= 3;
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = expected;
            p.fallback = fallback.then_some(Fallback::Pending);
        }
        if fallback {
            let ping = Ping {
                seq_no: seq,
                node: target,
                source_addr: self.self_ip_bytes(),
                source_port: self.config.addr.port(),
                source_node: me,
            };
            self.out.push(Output::TcpPing {
                to: t_addr,
                ping,
                deadline,
            });
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
    use crate::cluster::swim::{MemberEvent, Output, SwimConfig};

    /// Ticks `s` every 10 ms from `now` until it pings someone; (time, target, seq).
    fn first_probe(s: &mut Swim, now: Instant) -> (Instant, SocketAddr, u32) {
        let mut t = now;
        loop {
            t += Duration::from_millis(10);
            let out = s.tick(t);
            let ping = out.iter().find_map(|o| match o {
                Output::Packet { to, messages } => match &messages[0] {
                    Message::Ping(p) => Some((*to, p.seq_no)),
                    _ => None,
                },
                _ => None,
            });
            if let Some((to, seq)) = ping {
                return (t, to, seq);
            }
        }
    }

    fn tcp_pings(out: &[Output]) -> Vec<(SocketAddr, u32, Instant)> {
        out.iter()
            .filter_map(|o| match o {
                Output::TcpPing { to, ping, deadline } => Some((*to, ping.seq_no, *deadline)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn failed_probe_goes_indirect_and_tcp_then_suspects() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 5, now);
        let (probe_start, ping_to, seq) = first_probe(&mut s, now);
        let out = s.tick(probe_start + Duration::from_millis(500));
        let indirect: Vec<_> = out
            .iter()
            .filter(|o| matches!(o, Output::Packet { messages, .. } if matches!(messages[0], Message::IndirectPing(_))))
            .collect();
        assert_eq!(indirect.len(), 3, "IndirectChecks peers asked");
        let deadline = probe_start + Duration::from_secs(1);
        assert_eq!(
            tcp_pings(&out),
            vec![(ping_to, seq, deadline)],
            "a TCP fallback ping with the probe's sequence number, until its end"
        );
        // The probe's end: the fallback has not reported yet, so the decision waits.
        assert!(s.tick(deadline).is_empty());
        assert_eq!(s.next_deadline(), deadline + FALLBACK_GRACE);
        let out = s.handle_tcp_ping_result(seq, false, deadline + Duration::from_millis(5));
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
    fn tcp_fallback_ack_keeps_the_node_alive() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 5, now);
        s.awareness.apply_delta(2);
        let (probe_start, ping_to, seq) = first_probe(&mut s, now);
        let out = s.tick(probe_start + Duration::from_millis(500));
        let pings = tcp_pings(&out);
        assert_eq!(pings.len(), 1);
        // Health 2 stretches the probe to three intervals.
        let deadline = pings[0].2;
        assert_eq!(deadline, probe_start + Duration::from_secs(3));
        // The TCP ack comes back; UDP acks never do.
        s.handle_tcp_ping_result(seq, true, probe_start + Duration::from_millis(520));
        assert!(
            s.probe.is_some(),
            "decided at the probe's end, as probeNode does"
        );
        let out = s.tick(deadline);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Event(_))),
            "no suspicion: {out:?}"
        );
        let target = s.members().into_iter().find(|m| m.addr == ping_to);
        assert_eq!(target.map(|m| m.state), Some(MemberState::Alive));
        assert_eq!(
            s.health_score(),
            1,
            "a probe answered over TCP counts as a success"
        );
        assert!(
            s.probe.as_ref().is_none_or(|p| p.seq != seq),
            "that probe is over (the tick may have started the next)"
        );
        // A report for another sequence number changes nothing.
        s.handle_tcp_ping_result(seq.wrapping_add(99), true, probe_start);
    }

    #[test]
    fn tcp_fallback_unreported_is_a_failure_after_the_grace() {
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 5, now);
        let (probe_start, ping_to, _) = first_probe(&mut s, now);
        s.tick(probe_start + Duration::from_millis(500));
        let end = probe_start + Duration::from_secs(1);
        assert!(
            s.tick(end + FALLBACK_GRACE - Duration::from_millis(1))
                .is_empty()
        );
        s.tick(end + FALLBACK_GRACE);
        let target = s.members().into_iter().find(|m| m.addr == ping_to);
        assert_eq!(target.map(|m| m.state), Some(MemberState::Suspect));
    }

    #[test]
    fn no_tcp_fallback_when_disabled_or_for_old_protocols() {
        let now = Instant::now();
        let mut cfg = SwimConfig::lan("n1", addr(1));
        cfg.rng_seed = Some(1);
        cfg.disable_tcp_pings = true;
        let mut s = Swim::new(cfg, now);
        hear_alive(&mut s, 5, now);
        let (probe_start, ping_to, _) = first_probe(&mut s, now);
        assert!(tcp_pings(&s.tick(probe_start + Duration::from_millis(500))).is_empty());
        s.tick(probe_start + Duration::from_secs(1));
        let target = s.members().into_iter().find(|m| m.addr == ping_to);
        assert_eq!(target.map(|m| m.state), Some(MemberState::Suspect));

        // memberlist only pings protocol >= 3 nodes over TCP.
        let mut s = node(1, now);
        let mut old = alive_msg("n2", 2, 1);
        old.vsn = vec![1, 2, 2, 0, 0, 0];
        s.handle_packet(addr(2), vec![Message::Alive(old)], now);
        let (probe_start, _, _) = first_probe(&mut s, now);
        assert!(tcp_pings(&s.tick(probe_start + Duration::from_millis(500))).is_empty());
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
