//! kv-flood (test plugin): on-request makes `writes` kv writes of `value_bytes`-byte values (keys unique per request: clock, an instance counter and the index, padded to `key_bytes` if given; `ttl_ms` if given) and answers 200 `{"ok": <writes that succeeded>, "refused": <writes refused>, "error": <the first refusal or null>}`.

use fluxgate_sdk::{Action, Config, Plugin, Request, kv, now_ms, serde_json};
use serde::Deserialize;
use std::cell::Cell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    writes: usize,
    #[serde(default)]
    value_bytes: usize,
    #[serde(default)]
    key_bytes: usize,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

/// Writes what its config says and reports the store's answers.
pub struct KvFlood {
    settings: Settings,
    value: Vec<u8>,
    /// Requests this instance served: keeps keys unique within a millisecond.
    served: Cell<u64>,
}

#[fluxgate_sdk::plugin]
impl Plugin for KvFlood {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Self {
            value: vec![b'v'; settings.value_bytes],
            settings,
            served: Cell::new(0),
        })
    }

    fn on_request(&self, _req: &mut Request) -> Action {
        let now = now_ms();
        let served = self.served.get();
        self.served.set(served.wrapping_add(1));
        let (mut ok, mut refused, mut error) = (0u64, 0u64, None);
        for i in 0..self.settings.writes {
            let mut key = format!("kv-flood:{now}:{served}:{i}:");
            if key.len() < self.settings.key_bytes {
                key.push_str(&"k".repeat(self.settings.key_bytes - key.len()));
            }
            match kv::set(&key, &self.value, self.settings.ttl_ms) {
                Ok(()) => ok += 1,
                Err(e) => {
                    refused += 1;
                    error.get_or_insert(e);
                }
            }
        }
        Action::json(
            200,
            &serde_json::json!({ "ok": ok, "refused": refused, "error": error }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    fn report(config: &str) -> serde_json::Value {
        let p = testing::init::<KvFlood>(config).unwrap();
        let answer = p
            .on_request(&mut testing::request().build())
            .into_response();
        assert_eq!(answer.status(), 200);
        answer.body_json().unwrap()
    }

    #[test]
    fn reports_what_the_store_refused() {
        testing::reset();
        let r = report(r#"{"writes": 70, "value_bytes": 10}"#);
        assert_eq!(
            (r["ok"].as_u64(), r["refused"].as_u64()),
            (Some(64), Some(6))
        );
        assert!(r["error"].as_str().unwrap().contains("64"));

        let r = report(r#"{"writes": 2, "value_bytes": 65537}"#);
        assert_eq!(
            (r["ok"].as_u64(), r["refused"].as_u64()),
            (Some(0), Some(2))
        );

        let r = report(r#"{"writes": 1, "key_bytes": 1025}"#);
        assert_eq!(r["refused"].as_u64(), Some(1));
        let r = report(r#"{"writes": 1, "key_bytes": 1024, "ttl_ms": 10}"#);
        assert_eq!(
            (r["ok"].as_u64(), r["error"].as_null()),
            (Some(1), Some(()))
        );
    }
}
