//! `[cluster.redis]` and `[[discovery]]`: value checks, and the typed settings the
//! cluster limiter and the discovery providers start from.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{DiscoveryConfig, DiscoveryKind, Problem, RedisConfig};
use crate::registry::model::{Check, is_service_name};

/// `[cluster.redis]` compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub timeout: Duration,
    pub lease: Duration,
    pub batch: Duration,
    pub key_prefix: String,
}

/// Where one `[[discovery]]` entry reads its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// etcd v3 through its JSON gateway: the endpoints' base URLs (`http://host:port`).
    Etcd {
        endpoints: Vec<http::Uri>,
        prefix: String,
    },
    DnsSrv {
        service: String,
        name: String,
        /// `None` = the system resolver.
        resolver: Option<SocketAddr>,
        min_refresh: Duration,
        max_refresh: Duration,
    },
    Consul {
        address: http::Uri,
        services: Vec<String>,
        datacenter: Option<String>,
        token: Option<String>,
        wait: Duration,
    },
}

/// One `[[discovery]]` entry compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryPlan {
    pub kind: DiscoveryKind,
    /// What logs and `/api/v1/services` call it: `etcd[0] http://…`.
    pub label: String,
    pub source: Source,
    /// Health check given to every instance found (etcd values carry their own).
    pub check: Option<Check>,
    /// Longest one request to the provider may take.
    pub timeout: Duration,
}

/// Checks `[cluster.redis]`.
pub(super) fn compile_redis(r: &RedisConfig, out: &mut Vec<Problem>) -> Option<RedisSettings> {
    let before = out.len();
    let at = |k: &str| format!("cluster.redis.{k}");
    if let Err(e) = redis::Client::open(r.url.as_str()) {
        out.push(Problem::new(
            at("url"),
            format!("\"{}\" is not a usable Redis URL: {e}", r.url),
        ));
    }
    for (key, value, max) in [
        ("timeout_ms", r.timeout_ms, 60_000),
        ("lease_ms", r.lease_ms, 3_600_000),
        ("batch_ms", r.batch_ms, 60_000),
    ] {
        if value == 0 || value > max {
            out.push(Problem::new(
                at(key),
                format!("must be between 1 and {max}"),
            ));
        }
    }
    if r.batch_ms > r.lease_ms {
        out.push(Problem::new(at("batch_ms"), "must be at most lease_ms"));
    }
    if r.key_prefix.is_empty() || r.key_prefix.len() > 128 {
        out.push(Problem::new(at("key_prefix"), "must be 1-128 characters"));
    }
    (out.len() == before).then(|| RedisSettings {
        url: r.url.clone(),
        timeout: Duration::from_millis(r.timeout_ms),
        lease: Duration::from_millis(r.lease_ms),
        batch: Duration::from_millis(r.batch_ms),
        key_prefix: r.key_prefix.clone(),
    })
}

/// Checks and compiles the `[[discovery]]` entries.
pub(super) fn compile_discovery(
    entries: &[DiscoveryConfig],
    out: &mut Vec<Problem>,
) -> Vec<DiscoveryPlan> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, d)| compile_entry(&format!("discovery[{i}]"), i, d, out))
        .collect()
}

fn compile_entry(
    at: &str,
    index: usize,
    d: &DiscoveryConfig,
    out: &mut Vec<Problem>,
) -> Option<DiscoveryPlan> {
    let before = out.len();
    let key = |k: &str| format!("{at}.{k}");
    let Some(kind) = d.kind else {
        out.push(Problem::new(
            key("type"),
            "is required (\"etcd\", \"dns_srv\" or \"consul\")",
        ));
        return None;
    };
    // Keys a type does not use are mistakes, not silently ignored settings.
    let given: [(&str, bool, &[DiscoveryKind]); 9] = [
        ("endpoints", !d.endpoints.is_empty(), &[DiscoveryKind::Etcd]),
        ("prefix", d.prefix.is_some(), &[DiscoveryKind::Etcd]),
        ("service", d.service.is_some(), &[DiscoveryKind::DnsSrv]),
        ("name", d.name.is_some(), &[DiscoveryKind::DnsSrv]),
        ("resolver", d.resolver.is_some(), &[DiscoveryKind::DnsSrv]),
        ("address", d.address.is_some(), &[DiscoveryKind::Consul]),
        ("services", !d.services.is_empty(), &[DiscoveryKind::Consul]),
        (
            "datacenter",
            d.datacenter.is_some(),
            &[DiscoveryKind::Consul],
        ),
        ("token", d.token.is_some(), &[DiscoveryKind::Consul]),
    ];
    for (name, present, types) in given {
        if present && !types.contains(&kind) {
            out.push(Problem::new(
                key(name),
                format!("does not apply to type \"{}\"", kind.as_str()),
            ));
        }
    }
    if d.check.is_some() && kind == DiscoveryKind::Etcd {
        out.push(Problem::new(
            key("check"),
            "does not apply to type \"etcd\" (each registration carries its own check)",
        ));
    }
    let check = d.check.as_ref().map(|c| Check {
        path: c.path.clone(),
        interval_ms: c.interval_ms,
    });
    if let Some(c) = &check {
        if !c.path.starts_with('/') || c.path.parse::<http::uri::PathAndQuery>().is_err() {
            out.push(Problem::new(
                key("check.path"),
                "must be a path starting with '/'",
            ));
        }
        if !(100..=3_600_000).contains(&c.interval_ms) {
            out.push(Problem::new(
                key("check.interval_ms"),
                "must be between 100 and 3600000",
            ));
        }
    }
    if d.timeout_ms == 0 || d.timeout_ms > 60_000 {
        out.push(Problem::new(
            key("timeout_ms"),
            "must be between 1 and 60000",
        ));
    }
    let (source, label) = match kind {
        DiscoveryKind::Etcd => {
            if d.endpoints.is_empty() {
                out.push(Problem::new(
                    key("endpoints"),
                    "needs at least one endpoint",
                ));
            }
            let endpoints: Vec<http::Uri> = d
                .endpoints
                .iter()
                .enumerate()
                .filter_map(|(j, e)| base_url(&key(&format!("endpoints[{j}]")), e, out))
                .collect();
            let prefix = d
                .prefix
                .clone()
                .unwrap_or_else(|| "/fluxgate/services".to_owned());
            let prefix = prefix.trim_end_matches('/').to_owned();
            if prefix.is_empty() {
                out.push(Problem::new(key("prefix"), "must not be empty or \"/\""));
            }
            let label = format!(
                "etcd[{index}] {} {prefix}",
                d.endpoints.first().map_or("", String::as_str)
            );
            (Source::Etcd { endpoints, prefix }, label)
        }
        DiscoveryKind::DnsSrv => {
            let service = d.service.clone().unwrap_or_default();
            if !is_service_name(&service) {
                out.push(Problem::new(
                    key("service"),
                    "is required: 1-128 letters, digits, '-', '_' or '.' (not \"api\" or \"metrics\")",
                ));
            }
            let name = d.name.clone().unwrap_or_default();
            if name.is_empty() || name.len() > 253 || name.contains(['/', ' ', '@']) {
                out.push(Problem::new(
                    key("name"),
                    "is required: an SRV name like _http._tcp.users.service.consul",
                ));
            }
            let resolver = match &d.resolver {
                None => None,
                Some(r) => match r.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        out.push(Problem::new(
                            key("resolver"),
                            format!("\"{r}\" is not ip:port (e.g. 127.0.0.1:8600)"),
                        ));
                        None
                    }
                },
            };
            if d.min_refresh_ms == 0 || d.min_refresh_ms > d.max_refresh_ms {
                out.push(Problem::new(
                    key("min_refresh_ms"),
                    "must be greater than 0 and at most max_refresh_ms",
                ));
            }
            let label = format!("dns_srv[{index}] {name}");
            (
                Source::DnsSrv {
                    service,
                    name,
                    resolver,
                    min_refresh: Duration::from_millis(d.min_refresh_ms),
                    max_refresh: Duration::from_millis(d.max_refresh_ms),
                },
                label,
            )
        }
        DiscoveryKind::Consul => {
            let address = match &d.address {
                Some(a) => base_url(&key("address"), a, out),
                None => {
                    out.push(Problem::new(
                        key("address"),
                        "is required (e.g. http://127.0.0.1:8500)",
                    ));
                    None
                }
            };
            if d.services.is_empty() {
                out.push(Problem::new(key("services"), "needs at least one service"));
            }
            for (j, s) in d.services.iter().enumerate() {
                if !is_service_name(s) {
                    out.push(Problem::new(
                        key(&format!("services[{j}]")),
                        format!("\"{s}\" is not a service name"),
                    ));
                }
            }
            if d.wait_s == 0 || d.wait_s > 600 {
                out.push(Problem::new(key("wait_s"), "must be between 1 and 600"));
            }
            let label = format!(
                "consul[{index}] {}",
                d.address.as_deref().unwrap_or_default()
            );
            (
                Source::Consul {
                    address: address.unwrap_or_default(),
                    services: d.services.clone(),
                    datacenter: d.datacenter.clone(),
                    token: d.token.clone(),
                    wait: Duration::from_secs(d.wait_s),
                },
                label,
            )
        }
    };
    (out.len() == before).then(|| DiscoveryPlan {
        kind,
        label,
        source,
        check,
        timeout: Duration::from_millis(d.timeout_ms),
    })
}

/// An `http://host:port` base URL (no path, no TLS: the providers are spoken to in
/// plain HTTP on a trusted network).
fn base_url(at: &str, text: &str, out: &mut Vec<Problem>) -> Option<http::Uri> {
    let parsed = text.parse::<http::Uri>().ok().filter(|u| {
        u.scheme_str() == Some("http")
            && u.authority().is_some()
            && matches!(u.path(), "" | "/")
            && u.query().is_none()
    });
    if parsed.is_none() {
        out.push(Problem::new(
            at,
            format!("\"{text}\" is not a URL like http://127.0.0.1:2379 (http only, no path)"),
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use crate::plan::test_problems as problems;
    use crate::plan::{Overrides, parse};

    #[test]
    fn the_issue_examples_are_valid_and_compiled() {
        let text = "[cluster]\ngossip = false\n[cluster.redis]\nurl = \"redis://127.0.0.1:6379\"\n\
            [[discovery]]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/fluxgate/services\"\n\
            [[discovery]]\ntype = \"dns_srv\"\nservice = \"users\"\nname = \"_http._tcp.users.service.consul\"\nresolver = \"127.0.0.1:8600\"\n\
            [[discovery]]\ntype = \"consul\"\naddress = \"http://127.0.0.1:8500\"\nservices = [\"users\", \"orders\"]\ndatacenter = \"dc1\"\ntoken = \"t\"\n";
        assert_eq!(problems(text), Vec::<String>::new());
        let plan = parse(text, &Overrides::default()).unwrap();
        assert_eq!(plan.discovery.len(), 3);
        assert_eq!(plan.redis.as_ref().unwrap().url, "redis://127.0.0.1:6379");
        assert!(!plan.cluster.as_ref().unwrap().gossip);
    }

    #[test]
    fn bad_discovery_and_redis_values_name_their_keys() {
        let text = "[cluster.redis]\nurl = \"http://nope\"\ntimeout_ms = 0\nbatch_ms = 900\nlease_ms = 100\n\
            [[discovery]]\nendpoints = [\"x\"]\n\
            [[discovery]]\ntype = \"etcd\"\nendpoints = [\"ftp://x\"]\nservice = \"users\"\n\
            [[discovery]]\ntype = \"dns_srv\"\nservice = \"api\"\nresolver = \"nowhere\"\n\
            [[discovery]]\ntype = \"consul\"\nservices = [\"a/b\"]\ncheck = { path = \"x\" }\n";
        let found = problems(text);
        for expected in [
            "cluster.redis.url:",
            "cluster.redis.timeout_ms:",
            "cluster.redis.batch_ms:",
            "discovery[0].type:",
            "discovery[1].endpoints[0]:",
            "discovery[1].service: does not apply to type \"etcd\"",
            "discovery[2].service:",
            "discovery[2].name:",
            "discovery[2].resolver:",
            "discovery[3].address:",
            "discovery[3].services[0]:",
            "discovery[3].check.path:",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn cluster_scope_keys_are_checked() {
        let text = "[upstreams.u]\ntargets = [{ url = \"http://127.0.0.1:9000\" }]\n[[routes]]\npath = \"/a\"\nupstream = \"u\"\n\
            rate_limit = { capacity = 5, refill_per_s = 1.0, on_redis_error = \"deny\" }\n";
        assert_eq!(
            problems(text),
            vec!["routes[0].rate_limit.on_redis_error: only applies with scope = \"cluster\""]
        );
        let text = text.replace("on_redis_error = \"deny\"", "scope = \"cluster\"");
        assert_eq!(problems(&text), Vec::<String>::new());
        let text = text.replace("\"cluster\"", "\"galaxy\"");
        assert!(problems(&text)[0].starts_with("routes[0].rate_limit.scope"));
    }
}
