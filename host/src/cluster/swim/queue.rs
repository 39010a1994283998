//! The broadcast queue (queue.go): what gossip piggy-backs, in which order, how many times.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

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
}

/// A queued broadcast's place in the send order (`limitedBroadcast.Less`): fewer
/// transmits first, then longer, then newer (`Reverse` on length and id).
type Rank = (u32, Reverse<usize>, Reverse<u64>);

/// memberlist's `TransmitLimitedQueue` (queue.go): broadcasts named by what they are
/// about, fewest transmits first, each dropped after the retransmit limit. Like
/// memberlist's btree, the order is kept sorted, so taking a packet's worth costs a few
/// lookups however long the queue is (thousands of entries at 1,000 members).
#[derive(Debug, Default)]
pub(super) struct TransmitLimitedQueue {
    ranked: BTreeMap<Rank, Queued>,
    by_name: HashMap<String, Rank>,
    id_gen: u64,
}

impl TransmitLimitedQueue {
    /// `queueBroadcast`: a new broadcast invalidates a queued one with the same name.
    pub(super) fn queue(&mut self, name: String, msg: Message) {
        if let Some(old) = self.by_name.remove(&name) {
            self.ranked.remove(&old);
        }
        self.id_gen += 1;
        let rank = (0, Reverse(estimated_len(&msg)), Reverse(self.id_gen));
        self.by_name.insert(name.clone(), rank);
        self.ranked.insert(rank, Queued { name, msg });
        self.prune(MAX_QUEUED_BROADCASTS);
    }

    /// `Prune`: drop the most-transmitted (then smallest, oldest) entries beyond `keep`.
    fn prune(&mut self, keep: usize) {
        while self.ranked.len() > keep {
            let Some((_, q)) = self.ranked.pop_last() else {
                return;
            };
            self.by_name.remove(&q.name);
        }
    }

    /// `GetBroadcasts`: fill `limit` bytes (each message costing `overhead` more), tier by
    /// tier of transmit count, in each tier the largest message that still fits (newest
    /// among equals); count the transmit and drop a broadcast once it reaches
    /// `transmit_limit`.
    pub(super) fn get_broadcasts(
        &mut self,
        overhead: usize,
        limit: usize,
        transmit_limit: u32,
    ) -> Vec<Message> {
        let (Some(min_tr), Some(max_tr)) = (
            self.ranked.first_key_value().map(|(r, _)| r.0),
            self.ranked.last_key_value().map(|(r, _)| r.0),
        ) else {
            return Vec::new();
        };
        let mut used = 0usize;
        let mut taken: Vec<(Rank, Queued)> = Vec::new();
        let mut tier = min_tr;
        while tier <= max_tr {
            let free = limit.saturating_sub(used + overhead);
            if free == 0 {
                break;
            }
            // The first entry of this tier no longer than `free`.
            let from = (tier, Reverse(free), Reverse(u64::MAX));
            let to = (
                tier.saturating_add(1),
                Reverse(usize::MAX),
                Reverse(u64::MAX),
            );
            let Some(rank) = self.ranked.range(from..to).next().map(|(r, _)| *r) else {
                tier += 1;
                continue;
            };
            let Some(q) = self.ranked.remove(&rank) else {
                break;
            };
            used += overhead + rank.1.0;
            // Re-ranked after the walk, so a bumped entry is not met again this packet.
            taken.push((rank, q));
        }
        let msgs = taken.iter().map(|(_, q)| q.msg.clone()).collect();
        for ((transmits, len, id), q) in taken {
            let transmits = transmits + 1;
            if transmits >= transmit_limit {
                self.by_name.remove(&q.name);
                continue;
            }
            let rank = (transmits, len, id);
            self.by_name.insert(q.name.clone(), rank);
            self.ranked.insert(rank, q);
        }
        msgs
    }

    pub(super) fn len(&self) -> usize {
        self.ranked.len()
    }

    /// Queued broadcasts in send order, with their transmit counts (for tests).
    #[cfg(test)]
    pub(super) fn items(&self) -> impl Iterator<Item = (u32, &Queued)> {
        self.ranked.iter().map(|(r, q)| (r.0, q))
    }
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
        assert_eq!(q.items().filter(|(t, _)| *t == 0).count(), 2);
    }
}
