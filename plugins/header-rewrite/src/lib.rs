//! header-rewrite: sets, removes and renames headers on the request and on the response.

use fluxgate_sdk::{
    Config, Info, Plugin, Request, Response, export_plugin, is_valid_header_name,
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
            if is_valid_header_name(n) {
                Ok(n.to_ascii_lowercase())
            } else {
                Err(format!(
                    "header-rewrite: {side}: {n:?} is not a valid header name"
                ))
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

    /// Applies the rules in order: remove, rename, set.
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

impl HeaderAccess for Request {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(name).map(<[u8]>::to_vec).collect()
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set_header(name, value);
    }
}

impl HeaderAccess for Response {
    fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(name).map(<[u8]>::to_vec).collect()
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

    fn info(&self) -> Info {
        Info::none()
            .on_request(!self.request.is_empty())
            .on_response(!self.response.is_empty())
    }

    fn on_request(&self, req: &mut Request) -> fluxgate_sdk::Action {
        self.request.apply(req);
        fluxgate_sdk::Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &mut Response) {
        self.response.apply(resp);
    }
}

export_plugin!(HeaderRewrite);

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
        let req = testing::request()
            .header("x-internal", "secret")
            .header("x-old", "1")
            .header("x-old", "2")
            .header("x-env", "dev")
            .header("x-keep", "k")
            .build();
        let edits = p.on_request(&req).into_edits();
        let mut removed = edits.remove_headers.clone();
        removed.sort();
        assert_eq!(removed, vec!["x-internal", "x-old"]);
        assert_eq!(edits.set_header("x-new"), Some("1, 2"));
        assert_eq!(edits.set_header("x-gateway"), Some("fluxgate"));
        assert_eq!(edits.set_header("x-env"), Some("prod"));
        assert_eq!(edits.set_header("x-never"), None);
        let fwd = req.with_edits(&edits);
        assert_eq!(fwd.header("x-keep"), Some("k"));
        assert_eq!(fwd.header("x-old"), None);
        assert_eq!(fwd.header("x-internal"), None);
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
        let req = testing::request().build();
        assert!(p.on_request(&req).into_edits().is_empty());
        let resp = testing::response(200)
            .header("Server", "nginx")
            .header("x-upstream-id", "abc")
            .build();
        let edits = p.on_response(&req, &resp);
        assert_eq!(edits.status, None);
        assert!(edits.removes_header("server"));
        assert!(edits.removes_header("x-upstream-id"));
        assert_eq!(edits.set_header("x-request-id"), Some("abc"));
        assert_eq!(edits.set_header("x-powered-by"), Some("fluxgate"));
    }

    #[test]
    fn renames_happen_at_once() {
        let p = plugin(json!({ "request": { "rename": { "x-a": "x-b", "x-b": "x-a" } } }));
        let req = testing::request()
            .header("x-a", "1")
            .header("x-b", "2")
            .build();
        let fwd = req.with_edits(&p.on_request(&req).into_edits());
        assert_eq!(fwd.header("x-a"), Some("2"));
        assert_eq!(fwd.header("x-b"), Some("1"));
    }

    #[test]
    fn nothing_to_do_is_no_edit() {
        let p = plugin(json!({ "request": { "remove": ["x-a"], "rename": { "x-b": "x-c" } } }));
        assert!(
            p.on_request(&testing::request().header("x-d", "1").build())
                .into_edits()
                .is_empty()
        );
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
        ] {
            assert!(
                testing::init_json::<HeaderRewrite>(&config).is_err(),
                "accepted {config}"
            );
        }
    }
}
