//! DNS SRV (also Consul's DNS interface and Kubernetes headless services): the SRV
//! records of one name become the instances of one service, looked up again when the
//! records' TTL runs out (within `min_refresh_ms`..`max_refresh_ms`).
//!
//! Only the records of the lowest priority are used (SRV's rule: higher priorities are
//! fallbacks); their weights become balancing weights. A target's address comes from
//! the answer's additional records, else from an A/AAAA lookup of the target.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolveError, TokioResolver};

use super::report::Reporter;
use crate::registry::Registration;
use crate::registry::model::Check;

/// A DNS SRV provider's settings.
pub struct Settings {
    pub service: String,
    pub name: String,
    pub resolver: Option<SocketAddr>,
    pub check: Option<Check>,
    pub timeout: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

/// One SRV record, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub host: String,
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

/// The instances of `targets`: the lowest priority only, weights as metadata.
pub(super) fn instances(
    service: &str,
    targets: &[Target],
    check: Option<&Check>,
) -> Vec<Registration> {
    let Some(best) = targets.iter().map(|t| t.priority).min() else {
        return Vec::new();
    };
    targets
        .iter()
        .filter(|t| t.priority == best)
        .filter_map(|t| {
            let address = t.ip?.to_string();
            Some(Registration {
                id: format!("{}:{}", t.host, t.port),
                service: service.to_owned(),
                address,
                port: t.port,
                metadata: BTreeMap::from([
                    ("weight".to_owned(), t.weight.clamp(1, 10_000).to_string()),
                    ("srv_target".to_owned(), t.host.clone()),
                ]),
                check: check.cloned(),
                ttl_s: None,
            })
        })
        // A record the registry would refuse (port 0, say) is not routed.
        .filter(|r| r.check().is_ok())
        .collect()
}

fn resolver(settings: &Settings) -> Result<TokioResolver, ResolveError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = settings.timeout;
    opts.attempts = 1;
    // Every lookup asks the server: the provider schedules its own refreshes by TTL.
    opts.cache_size = 0;
    Ok(match settings.resolver {
        Some(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioConnectionProvider::default(),
            )
            .with_options(opts)
            .build()
        }
        None => TokioResolver::builder_tokio()?.with_options(opts).build(),
    })
}

/// Looks `name` up now: the targets and how long the answer is valid.
async fn lookup(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<Target>, Duration), ResolveError> {
    let answer = resolver.srv_lookup(name).await?;
    let ttl = answer
        .as_lookup()
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    let mut additional: BTreeMap<String, IpAddr> = BTreeMap::new();
    for record in answer.as_lookup().records() {
        let ip = match record.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        additional
            .entry(record.name().to_ascii().trim_end_matches('.').to_owned())
            .or_insert(ip);
    }
    let mut targets = Vec::new();
    for srv in answer.iter() {
        let host = srv.target().to_ascii().trim_end_matches('.').to_owned();
        let ip = match additional.get(&host) {
            Some(ip) => Some(*ip),
            None => resolver
                .lookup_ip(srv.target().clone())
                .await
                .ok()
                .and_then(|ips| ips.iter().next()),
        };
        targets.push(Target {
            host,
            priority: srv.priority(),
            weight: srv.weight(),
            port: srv.port(),
            ip,
        });
    }
    Ok((targets, ttl))
}

/// Looks the name up again whenever its TTL runs out, until the gateway goes away.
pub async fn run(settings: Settings, mut report: Reporter) {
    let resolver = match resolver(&settings) {
        Ok(r) => r,
        Err(e) => {
            report.failed(&format_args!("no resolver: {e}"));
            return;
        }
    };
    while report.gateway_alive() {
        let wait = match lookup(&resolver, &settings.name).await {
            Ok((targets, ttl)) => {
                for t in targets.iter().filter(|t| t.ip.is_none()) {
                    report.skipped(
                        &format!("{} -> {}:{}", settings.name, t.host, t.port),
                        &"the target has no A/AAAA record",
                    );
                }
                report.found(instances(
                    &settings.service,
                    &targets,
                    settings.check.as_ref(),
                ));
                ttl.clamp(settings.min_refresh, settings.max_refresh)
            }
            // "No such name" is an answer (no instances), not an outage.
            Err(e) if e.is_no_records_found() => {
                report.found(Vec::new());
                settings.min_refresh
            }
            Err(e) => report.failed(&format_args!("{}: {e}", settings.name)),
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, priority: u16, weight: u16, ip: Option<&str>) -> Target {
        Target {
            host: host.into(),
            priority,
            weight,
            port: 8080,
            ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn lowest_priority_targets_with_addresses_become_instances() {
        let targets = [
            target("a.local", 10, 5, Some("127.0.0.1")),
            target("b.local", 10, 0, Some("127.0.0.2")),
            target("backup.local", 20, 1, Some("127.0.0.3")),
            target("c.local", 10, 1, None),
            Target {
                port: 0,
                ..target("zero.local", 10, 1, Some("127.0.0.4"))
            },
        ];
        let list = instances("users", &targets, None);
        let ids: Vec<&str> = list.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a.local:8080", "b.local:8080"]);
        assert_eq!(list[0].weight(), 5);
        assert_eq!(list[1].weight(), 1, "SRV weight 0 still gets traffic");
        assert!(list.iter().all(|r| r.check().is_ok()));
    }
}
