//! api-key-auth: lets a request through only with a known API key, forwarding the key's identity.

use fluxgate_sdk::{
    Action, Config, DirectResponse, Plugin, Request, is_reserved_header, is_valid_header_name,
    is_valid_header_value,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// The plugin's config, as in the route's `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// API key -> identity.
    keys: BTreeMap<String, String>,
    /// The request header carrying the key.
    #[serde(default = "default_header")]
    header: String,
    /// The header the identity is forwarded in.
    #[serde(default = "default_identity_header")]
    identity_header: String,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_identity_header() -> String {
    "x-consumer-id".into()
}

/// Checks the API key header against the configured keys.
pub struct ApiKeyAuth {
    header: String,
    identity_header: String,
    /// (SHA-256 of the key, identity). Hashing first gives every comparison the same
    /// length, so neither a key's bytes nor its length leak through timing.
    keys: Vec<([u8; 32], String)>,
}

#[fluxgate_sdk::plugin]
impl Plugin for ApiKeyAuth {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.keys.is_empty() {
            return Err("api-key-auth: `keys` must name at least one key".into());
        }
        for name in [&settings.header, &settings.identity_header] {
            if !is_valid_header_name(name) {
                return Err(format!("api-key-auth: {name:?} is not a valid header name"));
            }
            if is_reserved_header(name) {
                return Err(format!(
                    "api-key-auth: {name:?} is a framing header the gateway keeps to itself"
                ));
            }
        }
        let header = settings.header.to_ascii_lowercase();
        let identity_header = settings.identity_header.to_ascii_lowercase();
        if header == identity_header {
            return Err("api-key-auth: `header` and `identity_header` must differ".into());
        }
        let mut keys = Vec::with_capacity(settings.keys.len());
        for (key, identity) in settings.keys {
            if key.is_empty() {
                return Err("api-key-auth: an API key must not be empty".into());
            }
            if !is_valid_header_value(identity.as_bytes()) {
                return Err(format!(
                    "api-key-auth: identity {identity:?} is not a valid header value"
                ));
            }
            keys.push((digest(key.as_bytes()), identity));
        }
        Ok(Self {
            header,
            identity_header,
            keys,
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let Some(presented) = req.header_bytes(&self.header).filter(|k| !k.is_empty()) else {
            return unauthorized("missing API key");
        };
        let presented = digest(&presented);
        // Compare against every key, without stopping at a match.
        let mut identity = None;
        for (key, id) in &self.keys {
            if bool::from(key.ct_eq(&presented)) {
                identity = Some(id.clone());
            }
        }
        let Some(identity) = identity else {
            return unauthorized("invalid API key");
        };
        req.remove_header(&self.header);
        req.set_header(&self.identity_header, identity);
        Action::Continue
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn unauthorized(message: &str) -> Action {
    Action::Respond(
        DirectResponse::error(401, "unauthorized", message)
            .with_header("www-authenticate", "ApiKey"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing::{self, Edit, Harness};
    use serde_json::json;

    fn plugin(config: serde_json::Value) -> Harness<ApiKeyAuth> {
        testing::init_json::<ApiKeyAuth>(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn default_plugin() -> Harness<ApiKeyAuth> {
        plugin(json!({ "keys": { "k1": "alice", "k2": "bob" } }))
    }

    fn assert_401(outcome: testing::RequestOutcome, message: &str) {
        let resp = outcome.into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.header("www-authenticate"), Some("ApiKey"));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.body_json::<serde_json::Value>(),
            Ok(json!({ "error": "unauthorized", "message": message }))
        );
    }

    #[test]
    fn only_on_request() {
        let info = default_plugin().info();
        assert!(info.on_request && !info.on_response && !info.request_body);
        assert_eq!(ApiKeyAuth::HOOKS, fluxgate_sdk::Hooks::ON_REQUEST);
    }

    #[test]
    fn missing_key_is_401() {
        let p = default_plugin();
        assert_401(
            p.on_request(&mut testing::request().build()),
            "missing API key",
        );
        let mut empty = testing::request().header("x-api-key", "").build();
        assert_401(p.on_request(&mut empty), "missing API key");
    }

    #[test]
    fn wrong_key_is_401() {
        let p = default_plugin();
        for key in ["nope", "k", "k10", "K1"] {
            let mut req = testing::request().header("x-api-key", key).build();
            assert_401(p.on_request(&mut req), "invalid API key");
            assert!(req.edits().is_empty());
        }
    }

    #[test]
    fn good_key_forwards_identity_and_drops_the_key() {
        let p = default_plugin();
        let mut req = testing::request()
            .path("/orders")
            .header("X-Api-Key", "k2")
            .header("x-consumer-id", "spoofed")
            .build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(
            req.edits(),
            [
                Edit::RemoveHeader("x-api-key".into()),
                Edit::SetHeader("x-consumer-id".into(), b"bob".to_vec()),
            ]
        );
        assert_eq!(req.path(), "/orders");
        assert_eq!(req.header("x-api-key"), None);
        assert_eq!(req.header_values("x-consumer-id"), [b"bob"]);
        // One header read: the key's.
        assert_eq!(req.host_calls(), ["header", "remove-header", "set-header"]);
    }

    #[test]
    fn custom_headers() {
        let p = plugin(json!({
            "keys": { "secret": "svc-a" },
            "header": "X-Key",
            "identity_header": "X-Who"
        }));
        let mut req = testing::request().header("x-key", "secret").build();
        p.on_request(&mut req).assert_continue();
        assert!(req.edits().contains(&Edit::RemoveHeader("x-key".into())));
        assert_eq!(req.header("x-key"), None);
        assert_eq!(req.header("x-who"), Some("svc-a"));
        // The default header name is not looked at.
        let mut req = testing::request().header("x-api-key", "secret").build();
        assert_401(p.on_request(&mut req), "missing API key");
    }

    #[test]
    fn readme_configs_initialise() {
        for config in [
            json!({ "keys": { "k1": "alice", "k2": "bob" } }),
            json!({ "keys": { "p-123": "acme" }, "header": "x-partner-key", "identity_header": "x-partner" }),
        ] {
            assert!(
                testing::init_json::<ApiKeyAuth>(&config).is_ok(),
                "{config}"
            );
        }
    }

    #[test]
    fn invalid_config_is_an_init_error() {
        for config in [
            json!({}),
            json!({ "keys": {} }),
            json!({ "keys": { "": "alice" } }),
            json!({ "keys": ["k1"] }),
            json!({ "keys": { "k1": "alice" }, "header": "bad header" }),
            json!({ "keys": { "k1": "alice" }, "identity_header": "X-API-KEY" }),
            json!({ "keys": { "k1": "alice" }, "identity_header": "Content-Length" }),
            json!({ "keys": { "k1": "alice" }, "header": "connection" }),
            json!({ "keys": { "k1": "ali\nce" } }),
            json!({ "keys": { "k1": "alice" }, "unknown": true }),
        ] {
            assert!(
                testing::init_json::<ApiKeyAuth>(&config).is_err(),
                "accepted {config}"
            );
        }
    }
}
