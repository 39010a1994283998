//! path-edit (test plugin): on-request sets the path to `path` and/or the query to `query` (`"query": null` removes it), as given (to try "/../x", "no-slash", "?"), then sets the request headers `x-path-seen` / `x-query-seen` to what it reads back.

use fluxgate_sdk::{Action, Config, Plugin, Request, is_valid_header_value};
use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    path: Option<String>,
    /// Absent: leave the query; null: remove it; a string: set it.
    #[serde(default, deserialize_with = "present")]
    query: Option<Option<String>>,
}

/// A field that is present, possibly null.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Sets the path and query as configured.
pub struct PathEdit(Settings);

#[fluxgate_sdk::plugin]
impl Plugin for PathEdit {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Self(config.parse()?))
    }

    fn on_request(&self, req: &mut Request) -> Action {
        if let Some(path) = &self.0.path {
            req.set_path(path);
        }
        match &self.0.query {
            Some(Some(query)) => req.set_query(query),
            Some(None) => req.remove_query(),
            None => {}
        }
        let path = req.path();
        if is_valid_header_value(path.as_bytes()) {
            req.set_header("x-path-seen", path);
        }
        let query = req.query().unwrap_or_else(|| "(none)".into());
        if is_valid_header_value(query.as_bytes()) {
            req.set_header("x-query-seen", query);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_sdk::testing;

    fn run(config: &str) -> testing::TestRequest {
        let p = testing::init::<PathEdit>(config).unwrap();
        let mut req = testing::request().path("/a/b?x=1").build();
        p.on_request(&mut req).assert_continue();
        req
    }

    #[test]
    fn edits_and_reads_back() {
        let req = run(r#"{"path": "/c/./d/../e", "query": "?"}"#);
        assert_eq!(req.path(), "/c/e");
        assert_eq!(req.header("x-path-seen"), Some("/c/e"));
        assert_eq!(req.query(), Some("?"));
        let req = run(r#"{"query": null}"#);
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.header("x-query-seen"), Some("(none)"));
        let req = run("{}");
        assert_eq!(req.query(), Some("x=1"));
    }

    #[test]
    #[should_panic(expected = "climbs above '/'")]
    fn climbing_fails_the_call() {
        run(r#"{"path": "/../x"}"#);
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn a_relative_path_fails_the_call() {
        run(r#"{"path": "no-slash"}"#);
    }
}
