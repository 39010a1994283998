//! The broadcast queue (queue.go): what gossip piggy-backs, in which order, how many times.

use crate::cluster::messages::Message;

/// memberlist's `compoundHeaderOverhead`: bytes assumed for a compound message's header.
pub(super) const COMPOUND_HEADER_OVERHEAD: usize = 2;
/// memberlist's `compoundOverhead`: bytes assumed per message inside a compound.
pub(super) const COMPOUND_OVERHEAD: usize = 2;
/// memberlist's `userMsgOverhead`: the user message type byte.
pub(super) const USER_MSG_OVERHEAD: usize = 1;
/// Estimated encoded size of a membership message before its variable-length fields.
const MSG_BASE_ESTIMATE: usize = 60;
/// Most broadcasts held in each queue; memberlist's `Prune` keeps the freshest.
const MAX_QUEUED_BROADCASTS: usize = 4096;

/// memberlist's `retransmitLimit`: `mult × ceil(log10(n + 1))`.
pub fn retransmit_limit(retransmit_mult: u32, n: usize) -> u32 {
    let node_scale = ((n as f64) + 1.0).log10().ceil() as u32;
    retransmit_mult.saturating_mul(node_scale)
}

/// A rough encoded size of a message, for the packet budget.
pub(super) fn estimated_len(msg: &Message) -> usize {
    match msg {
        Message::User(p) => p.len() + USER_MSG_OVERHEAD,
        Message::Alive(a) => MSG_BASE_ESTIMATE + a.node.len() + a.meta.len(),
        Message::Suspect(s) => MSG_BASE_ESTIMATE + s.node.len() + s.from.len(),
        Message::Dead(d) => MSG_BASE_ESTIMATE + d.node.len() + d.from.len(),
        Message::Ping(p) => MSG_BASE_ESTIMATE + p.node.len() + p.source_node.len(),
        Message::IndirectPing(p) => MSG_BASE_ESTIMATE + p.node.len() + p.source_node.len(),
        Message::Ack(a) => MSG_BASE_ESTIMATE + a.payload.len(),
        Message::Nack(_) => MSG_BASE_ESTIMATE,
        Message::Err(e) => MSG_BASE_ESTIMATE + e.error.len(),
    }
}

/// One queued broadcast (memberlist's `limitedBroadcast`).
#[derive(Debug, Clone)]
pub(super) struct Queued {
    pub(super) name: String,
    pub(super) msg: Message,
    len: usize,
    pub(super) transmits: u32,
    id: u64,
}

/// memberlist's `TransmitLimitedQueue` (queue.go): broadcasts named by what they are
/// about, fewest transmits first, each dropped after the retransmit limit.
#[derive(Debug, Default)]
pub(super) struct TransmitLimitedQueue {
    pub(super) items: Vec<Queued>,
    id_gen: u64,
}

impl TransmitLimitedQueue {
    /// `queueBroadcast`: a new broadcast invalidates a queued one with the same name.
    pub(super) fn queue(&mut self, name: String, msg: Message) {
        self.items.retain(|q| q.name != name);
        self.id_gen += 1;
        let len = estimated_len(&msg);
        self.items.push(Queued {
            name,
            msg,
            len,
            transmits: 0,
            id: self.id_gen,
        });
        self.prune(MAX_QUEUED_BROADCASTS);
    }

    /// `Prune`: drop the most-transmitted (then smallest, oldest) entries beyond `keep`.
    fn prune(&mut self, keep: usize) {
        if self.items.len() <= keep {
            return;
        }
        self.items.sort_by(queue_order);
        self.items.truncate(keep);
    }

    /// `GetBroadcasts`: fill `limit` bytes (each message costing `overhead` more), fewest
    /// transmits first and within a tier the largest then newest; count the transmit and
    /// drop a broadcast once it reaches `transmit_limit`.
    pub(super) fn get_broadcasts(
        &mut self,
        overhead: usize,
        limit: usize,
        transmit_limit: u32,
    ) -> Vec<Message> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by(|&a, &b| queue_order(&self.items[a], &self.items[b]));
        let mut used = 0usize;
        let mut taken = Vec::new();
        for idx in order {
            let free = limit.saturating_sub(used + overhead);
            if free == 0 {
                break;
            }
            if self.items[idx].len <= free {
                used += overhead + self.items[idx].len;
                taken.push(idx);
            }
        }
        let msgs = taken.iter().map(|&i| self.items[i].msg.clone()).collect();
        for &i in &taken {
            self.items[i].transmits += 1;
        }
        self.items.retain(|q| q.transmits < transmit_limit);
        msgs
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }
}

/// `limitedBroadcast.Less`: fewer transmits, then longer, then newer first.
fn queue_order(a: &Queued, b: &Queued) -> std::cmp::Ordering {
    a.transmits
        .cmp(&b.transmits)
        .then(b.len.cmp(&a.len))
        .then(b.id.cmp(&a.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::Message;
    use crate::cluster::swim::test_support::*;
    use tokio::time::Instant;

    #[test]
    fn newer_broadcast_about_a_node_replaces_the_older() {
        let mut q = TransmitLimitedQueue::default();
        let sus = Message::Suspect(suspect(1, "m1", "x"));
        let alive = Message::Alive(alive_msg("m1", 9, 2));
        q.queue("m1".into(), sus);
        q.queue("other".into(), Message::User(b"hello".to_vec()));
        q.queue("m1".into(), alive.clone());
        assert_eq!(q.len(), 2);
        let sent = q.get_broadcasts(COMPOUND_OVERHEAD, 1400, 10);
        assert_eq!(sent.len(), 2);
        assert!(sent.contains(&alive));
        assert!(!sent.iter().any(|m| matches!(m, Message::Suspect(_))));

        // Same through the state machine: alive (inc 2) replaces our suspect broadcast.
        let now = Instant::now();
        let mut s = node(1, now);
        hear_alive(&mut s, 4, now);
        let sus = suspect(1, "n2", "n3");
        s.handle_packet(addr(3), vec![Message::Suspect(sus)], now);
        assert!(matches!(&queued_about(&s, "n2")[..], [Message::Suspect(_)]));
        s.handle_packet(addr(2), vec![Message::Alive(alive_msg("n2", 2, 2))], now);
        assert!(matches!(&queued_about(&s, "n2")[..], [Message::Alive(a)] if a.incarnation == 2));
    }

    #[test]
    fn retransmit_limit_is_respected() {
        assert_eq!(retransmit_limit(3, 0), 0);
        assert_eq!(retransmit_limit(3, 1), 3);
        assert_eq!(retransmit_limit(3, 99), 6);
        assert_eq!(retransmit_limit(4, 50), 8);

        let mut q = TransmitLimitedQueue::default();
        q.queue("k".into(), Message::User(vec![1; 10]));
        let mut sends = 0;
        for _ in 0..20 {
            sends += q.get_broadcasts(COMPOUND_OVERHEAD, 1400, 8).len();
        }
        assert_eq!(sends, 8);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn broadcasts_fit_the_packet_budget_fewest_transmits_first() {
        let mut q = TransmitLimitedQueue::default();
        for i in 0..10u8 {
            q.queue(format!("k{i}"), Message::User(vec![i; 300]));
        }
        let first = q.get_broadcasts(COMPOUND_OVERHEAD, 1398, 100);
        let bytes: usize = first
            .iter()
            .map(|m| estimated_len(m) + COMPOUND_OVERHEAD)
            .sum();
        assert_eq!(first.len(), 4);
        assert!(bytes <= 1398);
        // The next packet prefers the six never-sent broadcasts.
        let second = q.get_broadcasts(COMPOUND_OVERHEAD, 1398, 100);
        assert_eq!(second.len(), 4);
        assert!(second.iter().all(|m| !first.contains(m)));
        assert_eq!(q.items.iter().filter(|i| i.transmits == 0).count(), 2);
    }
}
