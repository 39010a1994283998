//! How the registry rides on gossip, shared by the real driver and the simulator:
//! deltas as user messages (re-gossiped when news), the full registry as push/pull
//! user state, and membership events (a dead node's registrations withdrawn).

use std::sync::Arc;

use tokio::time::Instant;

use super::swim::{MemberEvent, Swim};
use crate::registry::{Delta, Registry};

/// Keeps one node's registry and its SWIM state machine in step.
#[derive(Debug, Default)]
pub struct Replication {
    /// The registry's full state as last serialised, and the revision it is of.
    state: Option<(u64, Arc<Vec<u8>>)>,
}

impl Replication {
    /// The registry's full state for a push/pull (memberlist's `Delegate.LocalState`),
    /// serialised when a push/pull needs it and the registry changed since the last one:
    /// a large registry that changes often is not re-encoded on every change.
    pub fn local_state(&mut self, registry: &Registry) -> Arc<Vec<u8>> {
        if let Some((revision, bytes)) = &self.state
            && *revision == registry.revision()
        {
            return bytes.clone();
        }
        let bytes = Arc::new(serde_json::to_vec(&registry.full_state()).unwrap_or_default());
        self.state = Some((registry.revision(), bytes.clone()));
        bytes
    }

    /// Queues a delta for gossip; a newer delta about the same id replaces it.
    pub fn broadcast(swim: &mut Swim, delta: &Delta) {
        if let Ok(payload) = serde_json::to_vec(delta) {
            swim.broadcast_user(format!("registry:{}", delta.id), payload);
        }
    }

    /// Applies one user-message payload; news is gossiped on (memberlist hands a user
    /// message to the application once and never forwards it). Payloads that are not
    /// registry deltas are ignored. Returns whether live instances changed.
    pub fn apply_payload(
        registry: &mut Registry,
        swim: &mut Swim,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        let Ok(delta) = serde_json::from_slice::<Delta>(payload) else {
            return false;
        };
        let applied = registry.apply(delta.clone(), now);
        if applied.is_some() {
            Self::broadcast(swim, &delta);
        }
        applied.unwrap_or(false)
    }

    /// Takes what SWIM received (user messages, push/pull states) into the registry.
    /// Returns whether live instances changed.
    pub fn receive(&mut self, registry: &mut Registry, swim: &mut Swim, now: Instant) -> bool {
        let mut changed = false;
        for payload in swim.take_user_messages() {
            changed |= Self::apply_payload(registry, swim, &payload, now);
        }
        for state in swim.take_remote_user_states() {
            if let Ok(deltas) = serde_json::from_slice::<Vec<Delta>>(&state) {
                changed |= registry.merge(deltas, now);
            }
        }
        changed
    }

    /// Reacts to a membership change. Returns whether live instances changed.
    pub fn on_event(
        registry: &mut Registry,
        swim: &mut Swim,
        event: &MemberEvent,
        now: Instant,
    ) -> bool {
        match event {
            // It may hold tombstones for our instances from a time it thought we were
            // gone: re-announce them with fresh stamps.
            MemberEvent::Joined(_) => {
                for delta in registry.restamp_own(now) {
                    Self::broadcast(swim, &delta);
                }
                false
            }
            MemberEvent::Died(name) | MemberEvent::Left(name) => registry.withdraw_owner(name, now),
            MemberEvent::Updated(_) | MemberEvent::Suspected(_) => false,
        }
    }
}
