//! header-rewrite: sets, removes and renames headers on the request and on the response.

use fluxgate_sdk::{
    Action, Config, Info, Plugin, Request, Response, is_reserved_header, is_valid_header_name,
    is_valid_header_value,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The plugin's config, as in the route's `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    request: RulesConfig,
    #[serde(default)]
    response: RulesConfig,
}

/// One direction's rules, as configured.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RulesConfig {
    /// Header -> value; replaces every value of the header.
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Headers to drop.
    #[serde(default)]
    remove: Vec<String>,
    /// Old name -> new name; moves every value.
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

/// Validated rules for one direction, names lower-cased.
#[derive(Debug, Default)]
struct Rules {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    set: Vec<(String, String)>,
}

impl Rules {
    fn new(side: &str, config: RulesConfig) -> Result<Self, String> {
        let name = |n: &str| {
            if !is_valid_header_name(n) {
                Err(format!(
                    "header-rewrite: {side}: {n:?} is not a valid header name"
                ))
            } else if is_reserved_header(n) {
                Err(format!(
                    "header-rewrite: {side}: {n:?} is a framing header the gateway keeps to itself"
                ))
            } else {
                Ok(n.to_ascii_lowercase())
            }
        };
        let mut rules = Rules::default();
        for n in &config.remove {
            rules.remove.push(name(n)?);
        }
        for (old, new) in &config.rename {
            let (old, new) = (name(old)?, name(new)?);
            if old != new {
                rules.rename.push((old, new));
            }
        }
        for (n, value) in config.set {
            if !is_valid_header_value(value.as_bytes()) {
                return Err(format!(
                    "header-rewrite: {side}: the value for {n:?} is not a valid header value"
                ));
            }
            rules.set.push((name(&n)?, value));
        }
        Ok(rules)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty()
    }

    /// Applies the rules in order: remove, rename, set. Reads only the headers the
    /// renames name (one host call each), never the whole header list.
    fn apply<H: HeaderAccess>(&self, headers: &mut H) {
        for name in &self.remove {
            headers.remove(name);
        }
        // Renames happen all at once (so `a -> b, b -> a` swaps). A set carries one
        // value, so several values are joined into one field (RFC 9110 section 5.3).
        let moved: Vec<(&str, Vec<u8>)> = self
            .rename
            .iter()
            .filter_map(|(old, new)| {
                let values = headers.values(old);
                (!values.is_empty()).then(|| (new.as_str(), values.join(&b", "[..])))
            })
            .collect();
        for (old, _) in &self.rename {
            headers.remove(old);
        }
        for (new, value) in moved {
            headers.set(new, &value);
        }
        for (name, value) in &self.set {
            headers.set(name, value.as_bytes());
        }
    }
}

/// The header operations the request and response views share.
trait HeaderAccess {
    fn values(&self, name: &str) -> Vec<Vec<u8>>;
    fn remove(&mut self, name: &str);
    fn set(&mut self, name: &str, value: &[u8]);
}

impl HeaderAccess for Request<'_> {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(name)
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set_header(name, value);
    }
}

impl HeaderAccess for Response<'_> {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(name)
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set_header(name, value);
    }
}

/// Rewrites headers in both directions.
pub struct HeaderRewrite {
    request: Rules,
    response: Rules,
}

#[fluxgate_sdk::plugin]
impl Plugin for HeaderRewrite {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let plugin = Self {
            request: Rules::new("request", settings.request)?,
            response: Rules::new("response", settings.response)?,
        };
        if plugin.request.is_empty() && plugin.response.is_empty() {
            return Err("header-rewrite: no rules in `request` or `response`".into());
        }
        Ok(plugin)
    }

    /// A direction without rules is not called at all.
    fn info(&self) -> Info {
        Info::new()
            .on_request(!self.request.is_empty())
            .on_response(!self.response.is_empty())
    }

    fn on_request(&self, req: &mut Request) -> Action {
        self.request.apply(req);
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        self.response.apply(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing::{self, Harness};
    use serde_json::json;

    fn plugin(config: serde_json::Value) -> Harness<HeaderRewrite> {
        testing::init_json::<HeaderRewrite>(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn declares_only_the_hooks_with_rules() {
        let req_only = plugin(json!({ "request": { "remove": ["x-a"] } }));
        assert!(req_only.info().on_request && !req_only.info().on_response);
        let resp_only = plugin(json!({ "response": { "set": { "x-a": "1" } } }));
        assert!(!resp_only.info().on_request && resp_only.info().on_response);
        let both = plugin(json!({
            "request": { "rename": { "a": "b" } },
            "response": { "remove": ["server"] }
        }));
        assert!(both.info().on_request && both.info().on_response);
        assert!(!both.info().request_body && !both.info().response_body);
    }

    #[test]
    fn request_rules() {
        let p = plugin(json!({
            "request": {
                "set": { "X-Gateway": "fluxgate", "x-env": "prod" },
                "remove": ["X-Internal", "x-absent"],
                "rename": { "x-old": "X-New", "x-nope": "x-never" }
            }
        }));
        let mut req = testing::request()
            .header("x-internal", "secret")
            .header("x-old", "1")
            .header("x-old", "2")
            .header("x-env", "dev")
            .header("x-keep", "k")
            .build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-new"), Some("1, 2"));
        assert_eq!(req.header("x-gateway"), Some("fluxgate"));
        assert_eq!(req.header_values("x-env"), [b"prod"]);
        assert_eq!(req.header("x-never"), None);
        assert_eq!(req.header("x-keep"), Some("k"));
        assert_eq!(req.header("x-old"), None);
        assert_eq!(req.header("x-internal"), None);
        // Cheap: the only reads are one per rename, never the whole header list.
        let reads: Vec<&str> = req
            .host_calls()
            .into_iter()
            .filter(|c| !c.starts_with("set-") && !c.starts_with("remove-"))
            .collect();
        assert_eq!(reads, ["header-values", "header-values"]);
    }

    #[test]
    fn response_rules() {
        let p = plugin(json!({
            "response": {
                "set": { "x-powered-by": "fluxgate" },
                "remove": ["server"],
                "rename": { "x-upstream-id": "x-request-id" }
            }
        }));
        let mut req = testing::request().build();
        // No request rules: on_request is not called.
        p.on_request(&mut req).assert_continue();
        assert!(req.edits().is_empty() && req.host_calls().is_empty());
        let mut resp = testing::response(200)
            .header("Server", "nginx")
            .header("x-upstream-id", "abc")
            .build();
        p.on_response(&req, &mut resp);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.header("server"), None);
        assert_eq!(resp.header("x-upstream-id"), None);
        assert_eq!(resp.header("x-request-id"), Some("abc"));
        assert_eq!(resp.header("x-powered-by"), Some("fluxgate"));
        assert!(!resp.host_calls().contains(&"headers"));
    }

    #[test]
    fn renames_happen_at_once() {
        let p = plugin(json!({ "request": { "rename": { "x-a": "x-b", "x-b": "x-a" } } }));
        let mut req = testing::request()
            .header("x-a", "1")
            .header("x-b", "2")
            .build();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.header("x-a"), Some("2"));
        assert_eq!(req.header("x-b"), Some("1"));
    }

    #[test]
    fn nothing_to_do_changes_nothing() {
        let p = plugin(json!({ "request": { "remove": ["x-a"], "rename": { "x-b": "x-c" } } }));
        let mut req = testing::request().header("x-d", "1").build();
        let before = req.clone();
        p.on_request(&mut req).assert_continue();
        assert_eq!(req.headers(), before.headers());
        assert_eq!(req.path(), before.path());
        assert_eq!(req.query(), before.query());
    }

    #[test]
    fn readme_config_initialises() {
        let p = plugin(json!({
            "request": {
                "set": { "x-env": "prod" },
                "remove": ["x-debug"],
                "rename": { "x-token": "authorization" }
            },
            "response": { "set": { "x-powered-by": "fluxgate" }, "remove": ["server"] }
        }));
        assert!(p.info().on_request && p.info().on_response);
    }

    #[test]
    fn invalid_config_is_an_init_error() {
        for config in [
            json!({}),
            json!({ "request": {} }),
            json!({ "request": { "set": { "bad name": "v" } } }),
            json!({ "request": { "set": { "x-a": "line\r\nbreak" } } }),
            json!({ "response": { "remove": [""] } }),
            json!({ "response": { "rename": { "a": "b:c" } } }),
            json!({ "request": { "add": { "a": "b" } } }),
            json!({ "request": { "remove": ["Content-Length"] } }),
            json!({ "response": { "rename": { "x-len": "transfer-encoding" } } }),
        ] {
            assert!(
                testing::init_json::<HeaderRewrite>(&config).is_err(),
                "accepted {config}"
            );
        }
    }
}
