//! Open WebSocket tunnels, counted so a drain (shutdown or upgrade) can wait for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The open tunnels, so a drain (shutdown or upgrade) can let them finish within its
/// grace period instead of cutting them when the process exits.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

/// Held by a tunnel's task: counted open until dropped.
pub struct OpenTunnel(Arc<Tunnels>);

impl Tunnels {
    /// Counts a tunnel (from its handshake on) until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenTunnel {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenTunnel(self.clone())
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Completes once no tunnel is open.
    pub async fn all_closed(&self) {
        loop {
            // Registered before the check, so a close in between is not missed.
            let closed = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}
