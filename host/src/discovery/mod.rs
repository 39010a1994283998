//! `[[discovery]]`: services read from the systems a team already runs (etcd, DNS SRV,
//! Consul) and routed like registered ones (`/{service}/*`, health checks applied).
//!
//! - `store`   what the providers found, stale or not (plain data; the gateway merges
//!   it with the registry's services into each snapshot)
//! - `report`  a provider task's link to the gateway: answers, failures logged once,
//!   back-off
//! - `etcd`, `dns_srv`, `consul` the providers, one tokio task each (one per service
//!   for Consul), started by `launch` and stopped with the gateway
//! - `http`    the plain HTTP client etcd's JSON gateway and Consul are spoken to with
//!
//! A discovered instance belongs to its provider: it is not gossiped; each node reads
//! the provider itself.

pub mod consul;
pub mod dns_srv;
pub mod etcd;
pub mod http;
pub mod report;
pub mod store;

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::gateway::Gateway;
use crate::plan::{DiscoveryPlan, Source};
use report::Reporter;

/// Starts one task per provider (per service for Consul).
pub fn start(gateway: &Arc<Gateway>, plans: &[DiscoveryPlan]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (index, plan) in plans.iter().enumerate() {
        let reporter = |part: &str, label: String| {
            Reporter::new(gateway, (index, part.to_owned()), plan.kind, label)
        };
        tracing::info!(provider = %plan.label, "discovery provider starting");
        match &plan.source {
            Source::Etcd { endpoints, prefix } => {
                tasks.push(tokio::spawn(etcd::run(
                    endpoints.clone(),
                    prefix.clone(),
                    plan.timeout,
                    reporter("", plan.label.clone()),
                )));
            }
            Source::DnsSrv {
                service,
                name,
                resolver,
                min_refresh,
                max_refresh,
            } => {
                let settings = dns_srv::Settings {
                    service: service.clone(),
                    name: name.clone(),
                    resolver: *resolver,
                    check: plan.check.clone(),
                    timeout: plan.timeout,
                    min_refresh: *min_refresh,
                    max_refresh: *max_refresh,
                };
                tasks.push(tokio::spawn(dns_srv::run(
                    settings,
                    reporter("", plan.label.clone()),
                )));
            }
            Source::Consul {
                address,
                services,
                datacenter,
                token,
                wait,
            } => {
                for service in services {
                    let settings = consul::Settings {
                        address: address.clone(),
                        service: service.clone(),
                        datacenter: datacenter.clone(),
                        token: token.clone(),
                        check: plan.check.clone(),
                        timeout: plan.timeout,
                        wait: *wait,
                    };
                    let label = format!("{} {service}", plan.label);
                    tasks.push(tokio::spawn(consul::run(
                        settings,
                        reporter(service, label),
                    )));
                }
            }
        }
    }
    tasks
}
