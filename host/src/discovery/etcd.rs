//! etcd v3 through its documented JSON gateway (no gRPC stack): `POST /v3/kv/range`
//! reads every key under the prefix, then `POST /v3/watch` streams the changes from the
//! next revision on (watched, not polled). Keys are `<prefix>/<service>/<id>`; values
//! are the registry API's registration JSON. Bytes travel base64-encoded and 64-bit
//! numbers as strings, as the gateway's proto3 JSON mapping does.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::http::{self as client, FetchError, ProviderClient};
use super::report::Reporter;
use crate::registry::Registration;

/// The watch stream's buffer is cut off beyond this (one event batch never nears it).
const MAX_PENDING: usize = 16 * 1024 * 1024;

#[derive(Debug, Deserialize, Default)]
struct Header {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct Event {
    /// Absent for PUT (proto3 omits the enum's zero value).
    #[serde(rename = "type", default)]
    kind: Option<String>,
    kv: KeyValue,
}

#[derive(Debug, Deserialize, Default)]
struct WatchResult {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    compact_revision: Option<String>,
    #[serde(default)]
    cancel_reason: Option<String>,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The instances under a prefix, by key, as the watch keeps them.
#[derive(Debug, Default)]
pub(super) struct Instances {
    by_key: BTreeMap<String, Registration>,
}

impl Instances {
    pub(super) fn list(&self) -> Vec<Registration> {
        self.by_key.values().cloned().collect()
    }

    /// Stores (or, for an invalid value, drops and reports) the instance at `key`.
    fn put(&mut self, prefix: &str, key: &str, value: &[u8], report: &Reporter) {
        match parse_entry(prefix, key, value) {
            Ok(reg) => {
                self.by_key.insert(key.to_owned(), reg);
            }
            Err(why) => {
                // A key that turned bad no longer routes its old value either.
                self.by_key.remove(key);
                report.skipped(key, &why);
            }
        }
    }

    fn delete(&mut self, key: &str) {
        self.by_key.remove(key);
    }
}

/// Checks one entry: the key names the service and id, the value is a valid
/// registration of that service and id.
pub(super) fn parse_entry(prefix: &str, key: &str, value: &[u8]) -> Result<Registration, String> {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("key is not under {prefix}/"))?;
    let (service, id) = rest
        .split_once('/')
        .filter(|(s, i)| !s.is_empty() && !i.is_empty())
        .ok_or_else(|| "key is not <prefix>/<service>/<id>".to_owned())?;
    let reg = Registration::from_json(value).map_err(|e| format!("invalid registration: {e}"))?;
    if reg.service != service || reg.id != id {
        return Err(format!(
            "key names service {service:?} id {id:?} but the value says service {:?} id {:?}",
            reg.service, reg.id
        ));
    }
    Ok(reg)
}

/// Reads and watches `prefix` on `endpoints` until the gateway goes away.
pub async fn run(
    endpoints: Vec<http::Uri>,
    prefix: String,
    timeout: Duration,
    mut report: Reporter,
) {
    let client = client::client(timeout);
    let mut next = 0usize;
    while report.gateway_alive() {
        let Some(endpoint) = endpoints.get(next % endpoints.len().max(1)) else {
            return;
        };
        let error = follow(&client, endpoint, &prefix, timeout, &mut report).await;
        let wait = report.failed(&format_args!("{endpoint}: {error}"));
        next += 1;
        tokio::time::sleep(wait).await;
    }
}

/// One range + watch session; returns why it ended.
async fn follow(
    client: &ProviderClient,
    endpoint: &http::Uri,
    prefix: &str,
    timeout: Duration,
    report: &mut Reporter,
) -> FetchError {
    let (key, range_end) = range_of(prefix);
    let range = serde_json::json!({ "key": B64.encode(&key), "range_end": B64.encode(&range_end) });
    let answer: RangeResponse = match post_json(client, endpoint, "/v3/kv/range", &range, timeout)
        .await
        .and_then(|body| Ok(serde_json::from_slice(&body)?))
    {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut instances = Instances::default();
    for kv in &answer.kvs {
        let (k, v) = match decode(kv) {
            Ok(kv) => kv,
            Err(e) => return e,
        };
        instances.put(prefix, &k, &v, report);
    }
    report.found(instances.list());
    let revision: i64 = answer
        .header
        .revision
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let watch = serde_json::json!({ "create_request": {
        "key": B64.encode(&key),
        "range_end": B64.encode(&range_end),
        "start_revision": (revision + 1).to_string(),
    }});
    let request = match json_request(endpoint, "/v3/watch", &watch) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let response = match client::send(client, request, timeout).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return FetchError::Protocol("watch stream closed".into()),
            Some(Err(e)) => return FetchError::Body(e),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        if pending.len() > MAX_PENDING {
            return FetchError::TooLarge;
        }
        let (messages, used) = match split_messages(&pending) {
            Ok(split) => split,
            Err(e) => return FetchError::Json(e),
        };
        let _ = pending.split_to(used);
        let mut changed = false;
        for message in messages {
            let message: WatchMessage = match serde_json::from_value(message) {
                Ok(m) => m,
                Err(e) => return FetchError::Json(e),
            };
            if let Some(error) = message.error {
                return FetchError::Protocol(format!("watch error: {error}"));
            }
            let Some(result) = message.result else {
                continue;
            };
            if result.canceled || result.compact_revision.is_some() {
                return FetchError::Protocol(format!(
                    "watch canceled ({}); reading again",
                    result
                        .cancel_reason
                        .or(result.compact_revision.map(|r| format!("compacted at {r}")))
                        .unwrap_or_default()
                ));
            }
            let _ = result.created;
            for event in result.events {
                let (k, v) = match decode(&event.kv) {
                    Ok(kv) => kv,
                    Err(e) => return e,
                };
                if event.kind.as_deref() == Some("DELETE") {
                    instances.delete(&k);
                } else {
                    instances.put(prefix, &k, &v, report);
                }
                changed = true;
            }
        }
        if changed {
            report.found(instances.list());
        }
    }
}

/// The key range of everything under `prefix/`: [prefix/, prefix0) ('0' follows '/').
fn range_of(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let key = format!("{prefix}/").into_bytes();
    let end = format!("{prefix}0").into_bytes();
    (key, end)
}

fn decode(kv: &KeyValue) -> Result<(String, Vec<u8>), FetchError> {
    let bad = |what: &str| FetchError::Protocol(format!("{what} is not base64"));
    let key = B64.decode(&kv.key).map_err(|_| bad("a key"))?;
    let value = match &kv.value {
        Some(v) => B64.decode(v).map_err(|_| bad("a value"))?,
        None => Vec::new(),
    };
    Ok((String::from_utf8_lossy(&key).into_owned(), value))
}

/// Complete JSON values at the start of `buf` and how many bytes they took (a stream
/// of objects, possibly split anywhere by the transport). An incomplete value waits
/// for more bytes; a malformed one is an error.
pub(super) fn split_messages(
    buf: &[u8],
) -> Result<(Vec<serde_json::Value>, usize), serde_json::Error> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    let mut used = 0;
    loop {
        match stream.next() {
            Some(Ok(value)) => {
                out.push(value);
                used = stream.byte_offset();
            }
            Some(Err(e)) if !e.is_eof() => return Err(e),
            _ => return Ok((out, used)),
        }
    }
}

fn json_request(
    endpoint: &http::Uri,
    path: &str,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>, FetchError> {
    let base = endpoint.to_string();
    let url = format!("{}{path}", base.trim_end_matches('/'));
    Ok(Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?)
}

async fn post_json(
    client: &ProviderClient,
    endpoint: &http::Uri,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let response = client::send(client, json_request(endpoint, path, body)?, timeout).await?;
    tokio::time::timeout(timeout, client::read_body(response.into_body()))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_against_their_key() {
        let value = br#"{"id":"u1","service":"users","address":"127.0.0.1","port":8081}"#;
        let reg = parse_entry("/fg", "/fg/users/u1", value).unwrap();
        assert_eq!(reg.url(), "http://127.0.0.1:8081");
        assert!(parse_entry("/fg", "/fg/orders/u1", value).is_err());
        assert!(parse_entry("/fg", "/fg/users", value).is_err());
        assert!(
            parse_entry("/fg", "/fg/users/u1", b"{not json")
                .unwrap_err()
                .contains("invalid registration")
        );
    }

    #[test]
    fn a_stream_split_anywhere_yields_whole_messages() {
        let text = br#"{"result":{"created":true}}{"result":{"events":[]}}{"res"#;
        let (messages, used) = split_messages(text).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(&text[used..], br#"{"res"#);
        let (none, used) = split_messages(b"{\"a\":").unwrap();
        assert!(none.is_empty());
        assert_eq!(used, 0);
        assert!(split_messages(b"{\"a\":1}}").is_err(), "malformed");
    }

    #[test]
    fn the_range_covers_the_prefix_only() {
        let (k, e) = range_of("/fluxgate/services");
        assert_eq!(k, b"/fluxgate/services/");
        assert_eq!(e, b"/fluxgate/services0");
    }
}
