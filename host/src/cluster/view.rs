//! What the rest of the gateway sees of the cluster: [`ClusterView`] and [`state_name`].
//!
//! Kept out of `driver.rs` on purpose: the driver imports `Gateway`, and `Gateway` holds a
//! `ClusterView`, so the view must not depend on the gateway (no import cycle).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::swim::{Member, MemberState};

/// What the rest of the gateway sees of the cluster: its members, for
/// `/api/v1/health`.
#[derive(Debug, Default)]
pub struct ClusterView {
    members: Mutex<Vec<Member>>,
    pub gossip_addr: Mutex<Option<SocketAddr>>,
    leave: Notify,
    /// Members alive or suspected (not yet declared dead), this node included: what
    /// cluster-scoped rate limits divide by without Redis.
    alive: Arc<AtomicUsize>,
}

impl ClusterView {
    /// A view that keeps `alive` up to date with the member list.
    pub fn with_alive_counter(alive: Arc<AtomicUsize>) -> Self {
        Self {
            alive,
            ..Self::default()
        }
    }

    /// Asks the loop to leave the cluster (peers then see this node as "left", not
    /// dead) and stop; the cluster task ends once the leave has been gossiped.
    pub fn leave(&self) {
        self.leave.notify_one();
    }

    pub fn members(&self) -> Vec<Member> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the member list (the driver, after each membership change).
    pub(super) fn set_members(&self, members: Vec<Member>) {
        let alive = members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .count();
        self.alive.store(alive.max(1), Ordering::Relaxed);
        *self.members.lock().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// Completes once [`ClusterView::leave`] has been called (the driver waits on it).
    pub(super) fn leave_requested(&self) -> Notified<'_> {
        self.leave.notified()
    }
}

/// `state` as `/api/v1/health` shows it.
pub fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}
