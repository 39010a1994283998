//! The service registry as a plain state machine: local writes produce deltas to
//! gossip, remote deltas and full states merge in, newest stamp wins. No I/O, time in.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::model::Registration;

/// Orders writes across nodes: a Lamport counter (seeded with the node's start time in
/// ms, so a restarted node's re-announcements outrank what it said in its previous
/// life) with the owner's name as tie-break.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub clock: u64,
    pub owner: String,
}

/// One registration change as gossiped: `reg: None` is a deregistration (tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub id: String,
    pub stamp: Stamp,
    pub reg: Option<Registration>,
}

/// What the registry holds about one instance id.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stamp: Stamp,
    /// `None` = deregistered (kept as a tombstone until `tombstone_grace` passes).
    pub reg: Option<Registration>,
    /// When the owner must have heard from the instance again (owner only).
    pub expires_at: Option<Instant>,
    pub changed_at: Instant,
}

/// The registry of one node.
#[derive(Debug)]
pub struct Registry {
    node: String,
    clock: u64,
    /// Bumped on every change, so the cluster knows when to refresh its push/pull state.
    revision: u64,
    entries: HashMap<String, Entry>,
    tombstone_grace: Duration,
}

impl Registry {
    /// `start_ms`: wall-clock start time of this node in ms (seeds the clock).
    pub fn new(node: impl Into<String>, start_ms: u64, tombstone_grace: Duration) -> Self {
        Self {
            node: node.into(),
            clock: start_ms,
            revision: 0,
            entries: HashMap::new(),
            tombstone_grace,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Changes so far (any kind).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn next_stamp(&mut self) -> Stamp {
        self.clock += 1;
        self.revision += 1;
        Stamp {
            clock: self.clock,
            owner: self.node.clone(),
        }
    }

    /// Registers (or re-registers, which also renews its TTL) an instance on this node.
    pub fn register(&mut self, reg: Registration, now: Instant) -> Delta {
        let stamp = self.next_stamp();
        let expires_at = reg.ttl_s.map(|s| now + Duration::from_secs(s));
        self.entries.insert(
            reg.id.clone(),
            Entry {
                stamp: stamp.clone(),
                reg: Some(reg.clone()),
                expires_at,
                changed_at: now,
            },
        );
        Delta {
            id: reg.id.clone(),
            stamp,
            reg: Some(reg),
        }
    }

    /// Renews a TTL. Only the owning node tracks TTLs, so only it accepts heartbeats.
    pub fn heartbeat(&mut self, id: &str, now: Instant) -> Result<(), HeartbeatError> {
        let node = self.node.clone();
        let entry = self
            .entries
            .get_mut(id)
            .filter(|e| e.reg.is_some())
            .ok_or(HeartbeatError::Unknown)?;
        if entry.stamp.owner != node {
            return Err(HeartbeatError::OwnedElsewhere(entry.stamp.owner.clone()));
        }
        if let Some(ttl) = entry.reg.as_ref().and_then(|r| r.ttl_s) {
            entry.expires_at = Some(now + Duration::from_secs(ttl));
        }
        Ok(())
    }

    /// Deregisters an instance (whichever node owns it); `None` if it is not registered.
    pub fn deregister(&mut self, id: &str, now: Instant) -> Option<Delta> {
        self.entries.get(id).filter(|e| e.reg.is_some())?;
        let stamp = self.next_stamp();
        self.entries.insert(
            id.to_owned(),
            Entry {
                stamp: stamp.clone(),
                reg: None,
                expires_at: None,
                changed_at: now,
            },
        );
        Some(Delta {
            id: id.to_owned(),
            stamp,
            reg: None,
        })
    }

    /// Applies a remote change if it is newer than what we hold: `None` = not newer
    /// (ignored), `Some(changed)` = taken, `changed` telling whether the set of live
    /// instances changed. Only newer deltas are passed on by gossip.
    pub fn apply(&mut self, delta: Delta, now: Instant) -> Option<bool> {
        self.clock = self.clock.max(delta.stamp.clock);
        if let Some(current) = self.entries.get(&delta.id)
            && current.stamp >= delta.stamp
        {
            return None;
        }
        self.revision += 1;
        let was_live = self.entries.get(&delta.id).is_some_and(|e| e.reg.is_some());
        let live = delta.reg.is_some();
        // A remote write to an instance we owned makes it theirs: our TTL no longer applies.
        self.entries.insert(
            delta.id,
            Entry {
                stamp: delta.stamp,
                reg: delta.reg,
                expires_at: None,
                changed_at: now,
            },
        );
        Some(was_live || live)
    }

    /// Merges a full state (push/pull); returns whether live instances changed.
    pub fn merge(&mut self, state: Vec<Delta>, now: Instant) -> bool {
        let mut changed = false;
        for delta in state {
            changed |= self.apply(delta, now).unwrap_or(false);
        }
        changed
    }

    /// Gives this node's live entries fresh stamps (to gossip again): after a peer
    /// (re)joins, it may hold tombstones for them from a time it thought we were dead.
    pub fn restamp_own(&mut self, now: Instant) -> Vec<Delta> {
        let own: Vec<Registration> = self
            .entries
            .values()
            .filter(|e| e.stamp.owner == self.node)
            .filter_map(|e| e.reg.clone())
            .collect();
        own.into_iter()
            .map(|reg| {
                let expires_at = self.entries.get(&reg.id).and_then(|e| e.expires_at);
                let delta = self.register(reg, now);
                if let Some(entry) = self.entries.get_mut(&delta.id) {
                    // Re-announcing is not a heartbeat: keep the TTL deadline.
                    entry.expires_at = expires_at;
                }
                delta
            })
            .collect()
    }

    /// Everything we hold, tombstones included, for anti-entropy.
    pub fn full_state(&self) -> Vec<Delta> {
        self.entries
            .iter()
            .map(|(id, e)| Delta {
                id: id.clone(),
                stamp: e.stamp.clone(),
                reg: e.reg.clone(),
            })
            .collect()
    }

    /// A node was declared dead: its instances are withdrawn here. They stay as
    /// tombstones with the same stamp, so stale copies cannot resurrect them, while the
    /// node's own re-announcement after a restart (a newer stamp) wins.
    pub fn withdraw_owner(&mut self, owner: &str, now: Instant) -> bool {
        let mut changed = false;
        for entry in self.entries.values_mut() {
            if entry.stamp.owner == owner && entry.reg.is_some() {
                self.revision += 1;
                entry.reg = None;
                entry.expires_at = None;
                entry.changed_at = now;
                changed = true;
            }
        }
        changed
    }

    /// Expires local instances whose TTL passed (returning the deltas to gossip) and
    /// forgets tombstones older than the grace period.
    pub fn expire(&mut self, now: Instant) -> Vec<Delta> {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.reg.is_some() && e.expires_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let deltas = expired
            .iter()
            .filter_map(|id| self.deregister(id, now))
            .collect();
        let grace = self.tombstone_grace;
        self.entries
            .retain(|_, e| e.reg.is_some() || now.saturating_duration_since(e.changed_at) < grace);
        deltas
    }

    /// Whether instance `id` is registered (live) here.
    pub fn is_live(&self, id: &str) -> bool {
        self.entries.get(id).is_some_and(|e| e.reg.is_some())
    }

    /// How many instances are registered (live) here.
    pub fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.reg.is_some()).count()
    }

    /// Live instances by service name.
    pub fn services(&self) -> BTreeMap<String, Vec<(&Registration, &Stamp)>> {
        let mut out: BTreeMap<String, Vec<(&Registration, &Stamp)>> = BTreeMap::new();
        for entry in self.entries.values() {
            if let Some(reg) = &entry.reg {
                out.entry(reg.service.clone())
                    .or_default()
                    .push((reg, &entry.stamp));
            }
        }
        for instances in out.values_mut() {
            instances.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        }
        out
    }

    /// Entries held, tombstones included (memory accounting and tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("no such instance")]
    Unknown,
    #[error("instance is owned by node {0}; heartbeat there or re-register here")]
    OwnedElsewhere(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, service: &str, ttl: Option<u64>) -> Registration {
        Registration {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 9000,
            metadata: Default::default(),
            check: None,
            ttl_s: ttl,
        }
    }

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn deltas_replicate_and_newer_stamps_win() {
        let now = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        let mut b = Registry::new("b", 5_000, GRACE);
        let d1 = a.register(reg("x", "svc", None), now);
        assert_eq!(b.apply(d1.clone(), now), Some(true));
        assert_eq!(b.apply(d1.clone(), now), None, "a repeat is not newer");
        assert_eq!(b.services()["svc"].len(), 1);
        // b deregisters it: b's clock already moved past a's stamp, so the tombstone wins.
        let tomb = b.deregister("x", now).unwrap();
        assert!(tomb.stamp > d1.stamp);
        assert_eq!(a.apply(tomb, now), Some(true));
        assert!(a.services().is_empty());
        // The stale registration arriving late does not bring it back.
        assert_eq!(a.apply(d1, now), None);
        assert!(a.services().is_empty());
    }

    #[test]
    fn full_state_merge_converges_both_ways() {
        let now = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        let mut b = Registry::new("b", 1_000, GRACE);
        a.register(reg("a1", "s", None), now);
        b.register(reg("b1", "s", None), now);
        b.register(reg("b2", "t", None), now);
        assert!(a.merge(b.full_state(), now));
        assert!(b.merge(a.full_state(), now));
        let names = |r: &Registry| {
            r.services()
                .values()
                .flatten()
                .map(|(reg, _)| reg.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&a), names(&b));
        assert_eq!(names(&a).len(), 3);
    }

    #[test]
    fn ttl_expires_only_on_the_owner_and_heartbeats_renew() {
        let t0 = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        let mut b = Registry::new("b", 1_000, GRACE);
        let d = a.register(reg("x", "s", Some(10)), t0);
        b.apply(d, t0);
        assert!(a.expire(t0 + Duration::from_secs(9)).is_empty());
        a.heartbeat("x", t0 + Duration::from_secs(9)).unwrap();
        assert!(a.expire(t0 + Duration::from_secs(15)).is_empty(), "renewed");
        assert_eq!(
            b.heartbeat("x", t0),
            Err(HeartbeatError::OwnedElsewhere("a".into()))
        );
        assert!(
            b.expire(t0 + Duration::from_secs(100)).is_empty(),
            "b does not expire a's"
        );
        let gone = a.expire(t0 + Duration::from_secs(20));
        assert_eq!(gone.len(), 1);
        assert_eq!(b.apply(gone[0].clone(), t0), Some(true));
        assert!(b.services().is_empty());
        assert_eq!(a.heartbeat("x", t0), Err(HeartbeatError::Unknown));
    }

    #[test]
    fn a_dead_owner_is_withdrawn_and_its_restart_wins_back() {
        let now = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        let mut b = Registry::new("b", 1_000, GRACE);
        let old = a.register(reg("x", "s", None), now);
        b.apply(old.clone(), now);
        assert!(b.withdraw_owner("a", now));
        assert!(b.services().is_empty());
        assert_eq!(b.apply(old, now), None, "a stale copy cannot resurrect it");
        // a restarts later: its clock is seeded with a later start time.
        let mut a2 = Registry::new("a", 900_000, GRACE);
        let again = a2.register(reg("x", "s", None), now);
        assert_eq!(b.apply(again, now), Some(true));
        assert_eq!(b.services()["s"].len(), 1);
    }

    #[test]
    fn restamping_wins_over_tombstones_left_by_a_false_death() {
        let now = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        let mut b = Registry::new("b", 1_000, GRACE);
        b.apply(a.register(reg("x", "s", Some(30)), now), now);
        b.withdraw_owner("a", now);
        let before = a.revision();
        let again = a.restamp_own(now);
        assert_eq!(again.len(), 1);
        assert!(a.revision() > before);
        assert_eq!(b.apply(again[0].clone(), now), Some(true));
        assert_eq!(b.services()["s"].len(), 1);
        assert!(
            a.expire(now + Duration::from_secs(31)).len() == 1,
            "TTL kept"
        );
    }

    #[test]
    fn tombstones_are_forgotten_after_the_grace_period() {
        let t0 = Instant::now();
        let mut a = Registry::new("a", 1_000, GRACE);
        a.register(reg("x", "s", None), t0);
        a.deregister("x", t0).unwrap();
        assert_eq!(a.len(), 1);
        a.expire(t0 + GRACE - Duration::from_secs(1));
        assert_eq!(a.len(), 1);
        a.expire(t0 + GRACE);
        assert!(a.is_empty());
        assert!(a.deregister("x", t0).is_none());
    }
}
