//! Consul's health API with blocking queries: `GET /v1/health/service/<name>?passing=1
//! &index=<X-Consul-Index>&wait=<wait_s>s[&dc=…]`, with `X-Consul-Token` when a token is
//! set. Each service is followed by its own loop; the index rules are Consul's
//! documented ones (reset when it goes backwards, never below 1, rate-limited).
//!
//! Written against Consul's documented API and tested against responses recorded from
//! that documentation; it has not been run against a live Consul.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Deserialize;
use tokio::time::Instant;

use super::http::{self as client, FetchError, ProviderClient};
use super::report::Reporter;
use crate::registry::Registration;
use crate::registry::model::Check;

/// Shortest time between two queries of one service (Consul's advice: rate-limit
/// blocking queries, an index can change often).
const MIN_GAP: Duration = Duration::from_millis(100);

/// A Consul provider's settings for one service.
#[derive(Clone)]
pub struct Settings {
    pub address: http::Uri,
    pub service: String,
    pub datacenter: Option<String>,
    pub token: Option<String>,
    pub check: Option<Check>,
    pub timeout: Duration,
    pub wait: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    status: String,
}

/// The index to send next, from the one sent and the one answered (Consul's rules:
/// reset to 0 when it goes backwards; otherwise at least 1).
pub(super) fn next_index(sent: u64, answered: Option<u64>) -> u64 {
    match answered {
        None => 0,
        Some(a) if a < sent => 0,
        Some(a) => a.max(1),
    }
}

/// Entries left out of a listing: (entry, why), to be logged.
pub(super) type Skipped = Vec<(String, String)>;

/// The passing instances of a health listing; entries that are not usable are
/// returned with the reason, to be logged.
pub(super) fn parse(
    service: &str,
    body: &[u8],
    check: Option<&Check>,
) -> Result<(Vec<Registration>, Skipped), serde_json::Error> {
    let raw: Vec<serde_json::Value> = serde_json::from_slice(body)?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let entry: Entry = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                skipped.push((format!("{service}[{i}]"), e.to_string()));
                continue;
            }
        };
        let name = format!("{}/{}", entry.node.node, entry.service.id);
        // `passing` asks Consul for passing instances only; a stray one is dropped.
        if entry.checks.iter().any(|c| c.status != "passing") {
            continue;
        }
        let address = if entry.service.address.is_empty() {
            entry.node.address.clone()
        } else {
            entry.service.address.clone()
        };
        let mut metadata = entry.service.meta.unwrap_or_default();
        if let Some(tags) = entry.service.tags.filter(|t| !t.is_empty()) {
            metadata.insert("tags".to_owned(), tags.join(","));
        }
        metadata.insert("consul_node".to_owned(), entry.node.node.clone());
        if let Some(w) = entry.service.weights {
            metadata.insert("weight".to_owned(), w.passing.clamp(1, 10_000).to_string());
        }
        let reg = Registration {
            id: name.clone(),
            service: service.to_owned(),
            address,
            port: entry.service.port,
            metadata,
            check: check.cloned(),
            ttl_s: None,
        };
        match reg.check() {
            Ok(()) => found.push(reg),
            Err(e) => skipped.push((name, e.to_string())),
        }
    }
    Ok((found, skipped))
}

fn request(s: &Settings, index: u64) -> Result<Request<Full<Bytes>>, FetchError> {
    let base = s.address.to_string();
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("passing", "1");
    if index > 0 {
        query.append_pair("index", &index.to_string());
        query.append_pair("wait", &format!("{}s", s.wait.as_secs().max(1)));
    }
    if let Some(dc) = &s.datacenter {
        query.append_pair("dc", dc);
    }
    let url = format!(
        "{}/v1/health/service/{}?{}",
        base.trim_end_matches('/'),
        s.service,
        query.finish()
    );
    let mut req = Request::get(url);
    if let Some(token) = &s.token {
        req = req.header("x-consul-token", token);
    }
    Ok(req.body(Full::new(Bytes::new()))?)
}

/// One query: the instances, skipped entries and the index answered.
async fn query(
    client: &ProviderClient,
    s: &Settings,
    index: u64,
) -> Result<(Vec<Registration>, Skipped, Option<u64>), FetchError> {
    // Consul adds up to wait/16 of jitter to a blocking query.
    let limit = if index > 0 {
        s.wait + s.wait / 16 + s.timeout
    } else {
        s.timeout
    };
    let response = client::send(client, request(s, index)?, limit).await?;
    let answered = response
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = tokio::time::timeout(limit, client::read_body(response.into_body()))
        .await
        .map_err(|_| FetchError::Timeout(limit))??;
    let (found, skipped) = parse(&s.service, &body, s.check.as_ref())?;
    Ok((found, skipped, answered))
}

/// Follows one service until the gateway goes away.
pub async fn run(settings: Settings, mut report: Reporter) {
    let client = client::client(settings.timeout);
    let mut index = 0u64;
    while report.gateway_alive() {
        let started = Instant::now();
        match query(&client, &settings, index).await {
            Ok((found, skipped, answered)) => {
                for (entry, why) in &skipped {
                    report.skipped(entry, why);
                }
                report.found(found);
                let next = next_index(index, answered);
                let same = next == index;
                index = next;
                if same {
                    tokio::time::sleep_until(started + MIN_GAP).await;
                }
            }
            Err(e) => {
                let wait = report.failed(&format_args!("{}: {e}", settings.service));
                index = 0;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules_follow_the_documentation() {
        assert_eq!(next_index(0, Some(7)), 7);
        assert_eq!(next_index(7, Some(9)), 9);
        assert_eq!(next_index(9, Some(3)), 0, "went backwards: start over");
        assert_eq!(next_index(0, Some(0)), 1, "never 0 once answered");
        assert_eq!(next_index(5, None), 0, "no index header: plain queries");
    }

    #[test]
    fn entries_become_instances_and_bad_ones_are_named() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"users-1","Service":"users","Address":"","Port":8080,"Tags":["a","b"],"Weights":{"Passing":3,"Warning":1}},
           "Checks":[{"Status":"passing"}]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"users-2","Service":"users","Address":"10.9.9.9","Port":0},
           "Checks":[]},
          {"Node":{"Node":"n3"},"Service":{"ID":"x"}},
          {"Node":{"Node":"n4","Address":"10.0.0.4"},
           "Service":{"ID":"users-4","Service":"users","Address":"","Port":1},
           "Checks":[{"Status":"critical"}]}
        ]"#;
        let (found, skipped) = parse("users", body, None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].url(), "http://10.0.0.1:8080");
        assert_eq!(found[0].weight(), 3);
        assert_eq!(found[0].metadata["tags"], "a,b");
        let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["n2/users-2", "users[2]"]);
    }
}
