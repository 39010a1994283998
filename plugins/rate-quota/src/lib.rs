//! rate-quota: a daily request quota (UTC days) per API key header or client IP, counted in the plugin kv store.

use fluxgate_sdk::{
    Action, Config, DirectResponse, Plugin, Request, Response, is_valid_header_name, kv, log,
    now_ms,
};
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;

/// The longest caller id counted; the kv store takes keys up to 1 KiB.
const MAX_ID_BYTES: usize = 512;

/// The plugin's config, as in the route's `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Requests allowed per caller per UTC day.
    limit: u64,
    /// Who a caller is: `"header:<name>"` or `"ip"`.
    #[serde(default = "default_key")]
    key: String,
    /// Prefix of the response headers `<prefix>-limit` and `<prefix>-remaining`.
    #[serde(default = "default_prefix")]
    header_prefix: String,
}

fn default_key() -> String {
    "header:x-api-key".into()
}

fn default_prefix() -> String {
    "x-quota".into()
}

/// Where the caller's id comes from.
enum KeySource {
    Header(String),
    ClientIp,
}

/// Counts requests per caller per UTC day.
pub struct RateQuota {
    limit: u64,
    source: KeySource,
    limit_header: String,
    remaining_header: String,
}

/// The current UTC day and the milliseconds until it ends.
fn day_and_ttl() -> (u64, u64) {
    let now = now_ms();
    let day = now / DAY_MS;
    (day, (day + 1) * DAY_MS - now)
}

impl RateQuota {
    /// The caller's id; an error response if there is none.
    fn caller(&self, req: &Request) -> Result<String, Action> {
        let id = match &self.source {
            KeySource::ClientIp => Some(req.client_ip()),
            KeySource::Header(name) => req.header(name),
        };
        match id {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(id),
            Some(id) if !id.is_empty() => Err(Action::Respond(DirectResponse::error(
                400,
                "bad_request",
                "quota key too long",
            ))),
            _ => {
                let what = match &self.source {
                    KeySource::Header(name) => format!("missing {name} header"),
                    KeySource::ClientIp => "missing client IP".to_string(),
                };
                Err(Action::Respond(DirectResponse::error(
                    401,
                    "unauthorized",
                    &what,
                )))
            }
        }
    }

    fn remaining(&self, used: i64) -> u64 {
        self.limit.saturating_sub(u64::try_from(used).unwrap_or(0))
    }
}

#[fluxgate_sdk::plugin]
impl Plugin for RateQuota {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.limit == 0 {
            return Err("rate-quota: `limit` must be at least 1".into());
        }
        if settings.limit > i64::MAX as u64 {
            return Err("rate-quota: `limit` is too large".into());
        }
        let source = if settings.key == "ip" {
            KeySource::ClientIp
        } else if let Some(name) = settings.key.strip_prefix("header:") {
            if !is_valid_header_name(name) {
                return Err(format!("rate-quota: {name:?} is not a valid header name"));
            }
            KeySource::Header(name.to_ascii_lowercase())
        } else {
            return Err(format!(
                "rate-quota: `key` must be \"ip\" or \"header:<name>\", not {:?}",
                settings.key
            ));
        };
        let prefix = settings.header_prefix.to_ascii_lowercase();
        if !is_valid_header_name(&prefix) {
            return Err(format!(
                "rate-quota: {prefix:?} is not a valid header name prefix"
            ));
        }
        Ok(Self {
            limit: settings.limit,
            source,
            limit_header: format!("{prefix}-limit"),
            remaining_header: format!("{prefix}-remaining"),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let id = match self.caller(req) {
            Ok(id) => id,
            Err(action) => return action,
        };
        let (day, ttl_ms) = day_and_ttl();
        let used = match kv::incr(&format!("{day}:{id}"), 1, Some(ttl_ms)) {
            Ok(used) => used,
            // Not counted, not let through: as the gateway's default on_error (deny).
            Err(e) => {
                log::error!("rate-quota: the kv store refused the count: {e}");
                return Action::Respond(DirectResponse::error(
                    500,
                    "plugin_error",
                    "quota store unavailable",
                ));
            }
        };
        if u64::try_from(used).is_ok_and(|used| used > self.limit) {
            let retry_after_s = ttl_ms.div_ceil(1000);
            return Action::Respond(
                DirectResponse::json(429, &quota_body(self.limit))
                    .with_header("retry-after", retry_after_s.to_string())
                    .with_header(&self.limit_header, self.limit.to_string())
                    .with_header(&self.remaining_header, "0"),
            );
        }
        Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &mut Response) {
        let Ok(id) = self.caller(req) else {
            return;
        };
        // Reads the count (a read, not a write: kv::incr with 0 would count as one).
        let (day, _) = day_and_ttl();
        let used = kv::get_string(&format!("{day}:{id}"))
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0);
        resp.set_header(&self.limit_header, self.limit.to_string());
        resp.set_header(&self.remaining_header, self.remaining(used).to_string());
    }
}

/// The 429 body.
fn quota_body(limit: u64) -> impl Serialize {
    #[derive(Serialize)]
    struct Body {
        error: &'static str,
        message: String,
    }
    Body {
        error: "quota_exceeded",
        message: format!("daily quota of {limit} requests used"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing::{self, Harness};
    use serde_json::json;

    /// 2023-11-14T22:13:20Z: 6400 s before UTC midnight.
    const NOW_MS: u64 = 1_700_000_000_000;

    fn plugin(config: serde_json::Value) -> Harness<RateQuota> {
        testing::reset();
        testing::set_now_ms(NOW_MS);
        testing::init_json::<RateQuota>(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn keyed(key: &str) -> testing::TestRequest {
        testing::request().header("x-api-key", key).build()
    }

    /// The response headers `on_response` sets for `req`.
    fn answered(p: &Harness<RateQuota>, req: &testing::TestRequest) -> testing::TestResponse {
        let mut resp = testing::response(200).build();
        p.on_response(req, &mut resp);
        resp
    }

    #[test]
    fn counts_up_to_the_limit_then_429() {
        let p = plugin(json!({ "limit": 2 }));
        assert!(p.info().on_request && p.info().on_response);
        let mut req = keyed("k1");

        p.on_request(&mut req).assert_continue();
        assert!(req.edits().is_empty());
        let resp = answered(&p, &req);
        assert_eq!(resp.header("x-quota-limit"), Some("2"));
        assert_eq!(resp.header("x-quota-remaining"), Some("1"));

        assert!(p.on_request(&mut req).is_continue());
        let resp = answered(&p, &req);
        assert_eq!(resp.header("x-quota-remaining"), Some("0"));

        let denied = p.on_request(&mut req).into_response();
        assert_eq!(denied.status(), 429);
        assert_eq!(denied.header("retry-after"), Some("6400"));
        assert_eq!(denied.header("x-quota-remaining"), Some("0"));
        assert_eq!(
            denied.body_json::<serde_json::Value>(),
            Ok(json!({
                "error": "quota_exceeded",
                "message": "daily quota of 2 requests used"
            }))
        );

        // Another key has its own quota.
        assert!(p.on_request(&mut keyed("k2")).is_continue());
    }

    #[test]
    fn the_quota_resets_at_utc_midnight() {
        let p = plugin(json!({ "limit": 1 }));
        let mut req = keyed("k1");
        assert!(p.on_request(&mut req).is_continue());
        assert!(!p.on_request(&mut req).is_continue());
        testing::advance_ms(6_399_000);
        let denied = p.on_request(&mut req).into_response();
        assert_eq!(denied.header("retry-after"), Some("1"));
        testing::advance_ms(1_000);
        assert!(p.on_request(&mut req).is_continue(), "a new day");
        // The old day's counter expired with its TTL.
        assert_eq!(kv::get("19675:k1"), None);
        assert_eq!(kv::get_string("19676:k1").as_deref(), Some("1"));
    }

    #[test]
    fn missing_key_is_401() {
        let p = plugin(json!({ "limit": 5 }));
        let resp = p
            .on_request(&mut testing::request().build())
            .into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.body_json::<serde_json::Value>(),
            Ok(json!({ "error": "unauthorized", "message": "missing x-api-key header" }))
        );
        // No key on the response side: nothing added.
        let resp = answered(&p, &testing::request().build());
        assert!(resp.edits().is_empty());
    }

    #[test]
    fn by_ip_with_custom_prefix() {
        let p = plugin(json!({ "limit": 3, "key": "ip", "header_prefix": "X-RateLimit" }));
        let mut a = testing::request().client_ip("10.0.0.1").build();
        let mut b = testing::request().client_ip("::1").build();
        assert!(p.on_request(&mut a).is_continue());
        assert!(p.on_request(&mut a).is_continue());
        assert!(p.on_request(&mut b).is_continue());
        let resp = answered(&p, &a);
        assert_eq!(resp.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(resp.header("x-ratelimit-remaining"), Some("1"));
    }

    #[test]
    fn custom_header_key() {
        let p = plugin(json!({ "limit": 1, "key": "header:X-Consumer-Id" }));
        let mut req = testing::request().header("x-consumer-id", "alice").build();
        assert!(p.on_request(&mut req).is_continue());
        assert_eq!(p.on_request(&mut req).into_response().status(), 429);
        let mut long = testing::request()
            .header("x-consumer-id", "a".repeat(MAX_ID_BYTES + 1))
            .build();
        assert_eq!(p.on_request(&mut long).into_response().status(), 400);
    }

    #[test]
    fn readme_configs_initialise() {
        for config in [
            json!({ "limit": 1000, "key": "header:x-consumer-id" }),
            json!({ "limit": 100, "key": "ip", "header_prefix": "x-ratelimit" }),
        ] {
            assert!(testing::init_json::<RateQuota>(&config).is_ok(), "{config}");
        }
    }

    #[test]
    fn invalid_config_is_an_init_error() {
        for config in [
            json!({}),
            json!({ "limit": 0 }),
            json!({ "limit": -1 }),
            json!({ "limit": 5, "key": "cookie:x" }),
            json!({ "limit": 5, "key": "header:" }),
            json!({ "limit": 5, "header_prefix": "x quota" }),
            json!({ "limit": 5, "per": "day" }),
        ] {
            assert!(
                testing::init_json::<RateQuota>(&config).is_err(),
                "accepted {config}"
            );
        }
    }
}
