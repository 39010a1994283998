//! How a provider task tells the gateway what it found: fresh answers replace the
//! instances, failures keep them (marked stale), and each change of reachability is
//! logged once (`policy::outage`), with back-off for the next try.

use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::store::Part;
use crate::config::DiscoveryKind;
use crate::gateway::Gateway;
use crate::policy::outage::{Outage, Transition};
use crate::registry::Registration;

/// First retry after a failed fetch, doubled up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One provider part's link to the gateway.
pub struct Reporter {
    gateway: Weak<Gateway>,
    part: Part,
    kind: DiscoveryKind,
    label: String,
    outage: Outage,
    instances: IntGauge,
    stale: IntGauge,
    errors: IntCounter,
    skipped: IntCounter,
}

impl Reporter {
    pub fn new(gateway: &Arc<Gateway>, part: Part, kind: DiscoveryKind, label: String) -> Self {
        let m = &gateway.metrics;
        let l = [label.as_str()];
        Self {
            instances: m.discovery_instances.with_label_values(&l),
            stale: m.discovery_stale.with_label_values(&l),
            errors: m.discovery_errors.with_label_values(&l),
            skipped: m.discovery_skipped.with_label_values(&l),
            gateway: Arc::downgrade(gateway),
            part,
            kind,
            label,
            outage: Outage::new(FIRST_RETRY, MAX_RETRY),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// False once the gateway is gone: the task should end.
    pub fn gateway_alive(&self) -> bool {
        self.gateway.strong_count() > 0
    }

    /// A fresh, complete answer.
    pub fn found(&mut self, instances: Vec<Registration>) {
        if let Some(Transition::Up {
            was_down_for: Some(d),
        }) = self.outage.success(Instant::now())
        {
            tracing::info!(provider = %self.label, down_for = ?d, instances = instances.len(), "discovery provider reachable again");
        }
        self.instances.set(instances.len() as i64);
        self.stale.set(0);
        if let Some(gateway) = self.gateway.upgrade() {
            gateway.set_discovered(self.part.clone(), self.kind, &self.label, instances);
        }
    }

    /// A fetch or watch failed: the last instances stay (stale). Returns how long to
    /// wait before trying again.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        self.errors.inc();
        self.stale.set(1);
        if self.outage.failure(Instant::now()) == Some(Transition::Down) {
            tracing::warn!(provider = %self.label, "discovery provider unreachable: {error}; keeping its last known instances (stale) and retrying with back-off");
        }
        if let Some(gateway) = self.gateway.upgrade() {
            gateway.mark_discovery_stale(&self.part);
        }
        self.outage.retry_in()
    }

    /// An entry that is not a valid registration: named in the log and skipped.
    pub fn skipped(&self, entry: &str, why: &dyn std::fmt::Display) {
        self.skipped.inc();
        tracing::warn!(provider = %self.label, entry, "discovery entry skipped: {why}");
    }
}
