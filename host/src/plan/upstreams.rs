//! `[upstreams.NAME]`: target addresses parsed once, policy values checked.

use std::sync::Arc;

use crate::config::{Problem, UpstreamConfig};
use crate::tls::client::{self, ClientTls};
use crate::upstream::addr::TargetAddr;

/// One target, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPlan {
    pub addr: TargetAddr,
    pub weight: u32,
}

/// One upstream group, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPlan {
    pub name: Arc<str>,
    /// Its settings as written (timeouts, pool sizes, policies).
    pub config: UpstreamConfig,
    pub targets: Vec<TargetPlan>,
    /// How `https://` targets are reached (always built: the defaults verify against
    /// the web roots).
    pub tls: ClientTls,
}

/// Checks and compiles one group; `at` is its key path (`upstreams.NAME`). Returns
/// `None` when something was wrong (the problems say what).
pub fn compile_upstream(
    name: &str,
    upstream: &UpstreamConfig,
    at: &str,
    out: &mut Vec<Problem>,
) -> Option<UpstreamPlan> {
    let before = out.len();
    let key = |key: &str| format!("{at}.{key}");
    if upstream.targets.is_empty() {
        out.push(Problem::new(key("targets"), "needs at least one target"));
    }
    let mut targets = Vec::with_capacity(upstream.targets.len());
    for (i, target) in upstream.targets.iter().enumerate() {
        match TargetAddr::parse(&target.url) {
            Ok(addr) => targets.push(TargetPlan {
                addr,
                weight: target.weight,
            }),
            Err(e) => out.push(Problem::new(key(&format!("targets[{i}].url")), e)),
        }
        if !(1..=10_000).contains(&target.weight) {
            out.push(Problem::new(
                key(&format!("targets[{i}].weight")),
                "must be between 1 and 10000",
            ));
        }
    }
    super::policy::check_upstream(at, upstream, out);
    for (k, value) in [
        ("connect_timeout_ms", upstream.connect_timeout_ms),
        ("request_timeout_ms", upstream.request_timeout_ms),
    ] {
        if value == 0 {
            out.push(Problem::new(key(k), "must be greater than 0"));
        }
    }
    let secure = targets.iter().any(|t| t.addr.is_https());
    if upstream.tls.is_some() && !secure {
        out.push(Problem::new(
            key("tls"),
            "applies to https:// targets only, and this group has none",
        ));
    }
    if upstream
        .tls
        .as_ref()
        .is_some_and(|t| t.insecure_skip_verify)
    {
        tracing::warn!(
            upstream = name,
            "tls.insecure_skip_verify = true: the targets' certificates are not checked"
        );
    }
    let tls = match client::compile(upstream.tls.as_ref()) {
        Ok(tls) => Some(tls),
        Err(problems) => {
            for p in problems {
                out.push(Problem::new(key(&format!("tls.{}", p.key)), p.message));
            }
            None
        }
    };
    if out.len() > before {
        return None;
    }
    Some(UpstreamPlan {
        name: Arc::from(name),
        config: upstream.clone(),
        targets,
        tls: tls?,
    })
}
