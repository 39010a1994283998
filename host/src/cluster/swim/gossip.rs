//! Gossip rounds: queued broadcasts piggy-backed on packets, and user messages received.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::queue::{COMPOUND_HEADER_OVERHEAD, COMPOUND_OVERHEAD, USER_MSG_OVERHEAD, estimated_len};
use super::{MemberState, Output, Swim, k_random_nodes, retransmit_limit};
use crate::cluster::messages::Message;

/// Most received user messages held until `take_user_messages`.
pub(super) const MAX_PENDING_USER_MESSAGES: usize = 4096;

impl Swim {
    // ---- gossip (state.go: gossip; broadcast.go: getBroadcasts; net.go: sendMsg) ----

    /// `gossip`: queued broadcasts to a few random live, suspect or recently dead members.
    pub(super) fn gossip(&mut self, now: Instant) {
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
    pub(super) fn send_msg(&mut self, to: SocketAddr, msg: Message) {
        let avail = self
            .config
            .udp_buffer_size
            .saturating_sub(estimated_len(&msg) + COMPOUND_HEADER_OVERHEAD);
        let mut messages = vec![msg];
        messages.extend(self.get_broadcasts(COMPOUND_OVERHEAD, avail));
        self.out.push(Output::Packet { to, messages });
    }

    pub(super) fn handle_user(&mut self, payload: Vec<u8>) {
        if self.user_messages.len() >= MAX_PENDING_USER_MESSAGES {
            tracing::warn!("user message backlog full; dropping the oldest");
            self.user_messages.pop_front();
        }
        self.user_messages.push_back(payload);
    }
}
