//! What the discovery providers found, as plain data: each provider's last good answer
//! and whether it is stale (the provider cannot be reached right now). The gateway
//! merges it with the registry's services when it builds a snapshot.

use std::collections::BTreeMap;

use crate::config::DiscoveryKind;
use crate::registry::Registration;

/// Which answer: a provider (its index in `[[discovery]]`) and the part of it that
/// answers on its own (a Consul service; "" for etcd and DNS SRV).
pub type Part = (usize, String);

/// One part's last good answer.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: DiscoveryKind,
    /// The provider's label (`etcd[0] http://127.0.0.1:2379 /fluxgate/services`).
    pub label: String,
    pub instances: Vec<Registration>,
    /// The provider could not be reached since this answer.
    pub stale: bool,
}

/// Everything the providers found.
#[derive(Debug, Default)]
pub struct Discovered {
    parts: BTreeMap<Part, Found>,
}

impl Discovered {
    /// Replaces a part's instances (the provider answered: no longer stale). Returns
    /// whether the routed instances changed.
    pub fn set(
        &mut self,
        part: Part,
        kind: DiscoveryKind,
        label: &str,
        mut instances: Vec<Registration>,
    ) -> bool {
        instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        let changed = self
            .parts
            .get(&part)
            .is_none_or(|f| f.instances != instances);
        self.parts.insert(
            part,
            Found {
                kind,
                label: label.to_owned(),
                instances,
                stale: false,
            },
        );
        changed
    }

    /// Marks a part stale: its instances stay routed (never emptied by a failed fetch).
    pub fn mark_stale(&mut self, part: &Part) {
        if let Some(found) = self.parts.get_mut(part) {
            found.stale = true;
        }
    }

    /// Every part's answer.
    pub fn parts(&self) -> impl Iterator<Item = &Found> {
        self.parts.values()
    }

    /// Instances by service name.
    pub fn services(&self) -> BTreeMap<String, Vec<(&Registration, &Found)>> {
        let mut out: BTreeMap<String, Vec<(&Registration, &Found)>> = BTreeMap::new();
        for found in self.parts.values() {
            for reg in &found.instances {
                out.entry(reg.service.clone())
                    .or_default()
                    .push((reg, found));
            }
        }
        out
    }
}

/// The registry's services plus the discovered ones: one instance list per service,
/// registry instances first, an address already listed not listed twice.
pub fn merge(
    registry: BTreeMap<String, Vec<Registration>>,
    discovered: &Discovered,
) -> BTreeMap<String, Vec<Registration>> {
    let mut out = registry;
    for (service, instances) in discovered.services() {
        let list = out.entry(service).or_default();
        for (reg, _) in instances {
            let url = reg.url();
            if !list.iter().any(|r| r.url() == url) {
                list.push(reg.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, service: &str, port: u16) -> Registration {
        Registration {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            metadata: BTreeMap::new(),
            check: None,
            ttl_s: None,
        }
    }

    #[test]
    fn a_stale_part_keeps_its_instances_and_an_answer_clears_it() {
        let mut d = Discovered::default();
        let part = (0, String::new());
        assert!(d.set(
            part.clone(),
            DiscoveryKind::Etcd,
            "e",
            vec![reg("a", "s", 1)]
        ));
        assert!(
            !d.set(
                part.clone(),
                DiscoveryKind::Etcd,
                "e",
                vec![reg("a", "s", 1)]
            ),
            "same answer: nothing to rebuild"
        );
        d.mark_stale(&part);
        let services = d.services();
        let (r, found) = services["s"][0];
        assert_eq!((r.id.as_str(), found.stale), ("a", true));
        d.set(part, DiscoveryKind::Etcd, "e", vec![reg("a", "s", 1)]);
        assert!(!d.services()["s"][0].1.stale);
    }

    #[test]
    fn merge_keeps_registry_instances_and_adds_new_addresses_only() {
        let mut d = Discovered::default();
        d.set(
            (0, String::new()),
            DiscoveryKind::DnsSrv,
            "d",
            vec![
                reg("x", "users", 1),
                reg("y", "users", 2),
                reg("z", "other", 3),
            ],
        );
        let registry = BTreeMap::from([("users".to_owned(), vec![reg("r", "users", 1)])]);
        let merged = merge(registry, &d);
        let ids: Vec<&str> = merged["users"].iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r", "y"]);
        assert_eq!(merged["other"].len(), 1);
    }
}
